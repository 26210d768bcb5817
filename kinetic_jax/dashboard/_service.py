"""The computations behind the JSON margin service, on the public kinetic_jax API.

Everything returned is plain JSON: finite floats, strings, lists and dicts (a
non-finite number becomes ``null``, never ``NaN``).
"""

from __future__ import annotations

import math
import threading
import time
from importlib import resources
from typing import Any

import numpy as np

import kinetic_jax as kj
from kinetic_jax import Book, BookError

# Service limits (the engine itself allows more; a web service must bound the work).
MAX_SCENARIOS = 1 << 20
MAX_CELLS = 1 << 27  # scenarios x contracts held in one simulation
MAX_BINS = 400
DEFAULT_BINS = 60


class CompileCounter:
    """Counts JAX traces and backend compilations process-wide (via
    ``jax.monitoring``), so the service can show that a value change does not
    recompile."""

    TRACE = "/jax/core/compile/jaxpr_trace_duration"
    COMPILE = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.traces = 0
        self.compiles = 0
        self.compile_seconds = 0.0
        self.recent: list[str] = []  # names of the last compiled programs
        self._lock = threading.Lock()

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == self.TRACE:
            with self._lock:
                self.traces += 1
        elif event == self.COMPILE:
            with self._lock:
                self.compiles += 1
                self.compile_seconds += duration
                self.recent.append(str(kwargs.get("fun_name", "?")))
                del self.recent[:-8]

    def snapshot(self) -> dict:
        with self._lock:
            return {"traces": self.traces, "compiles": self.compiles,
                    "compile_seconds": round(self.compile_seconds, 3),
                    "recent_compiles": list(self.recent)}


_counter: CompileCounter | None = None


def compile_counter() -> CompileCounter:
    """The process-wide counter (registered with jax.monitoring once)."""
    global _counter
    if _counter is None:
        import jax.monitoring

        _counter = CompileCounter()
        jax.monitoring.register_event_duration_secs_listener(_counter)
    return _counter


def reference_book_text() -> bytes:
    """The reference book shipped with the package (a copy of
    examples/reference_book.toml)."""
    return resources.files("kinetic_jax.dashboard").joinpath("reference_book.toml").read_bytes()


def reference_book() -> Book:
    return kj.loads_book(reference_book_text(), name="reference_book.toml")


def finite(x: Any) -> Any:
    """`x` with every non-finite float replaced by None (recursively)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.floating, np.integer)):
        return finite(x.item())
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def check_limits(book: Book) -> None:
    """Raises BookError if the book asks the service for too much work."""
    n = book.settings.scenarios
    if n > MAX_SCENARIOS:
        raise BookError("model.scenarios",
                        f"{n} is above the service's limit of {MAX_SCENARIOS:,} scenarios")
    cells = n * max(1, len(book.contracts))
    if cells > MAX_CELLS:
        raise BookError(
            "model.scenarios",
            f"{n:,} scenarios x {len(book.contracts)} contracts = {cells:,} simulated outcomes, "
            f"above the service's limit of {MAX_CELLS:,}; lower the scenario count",
        )


def hierarchy_dict(book: Book) -> dict:
    h = book.hierarchy
    return {
        "nodes": [{"name": n.name, "parent": n.parent, "rho": n.rho} for n in h.nodes],
        "clusters": [{"name": c.name, "parent": c.parent, "loading": c.loading}
                     for c in h.clusters],
    }


def histogram(losses: np.ndarray, bins: int, report: kj.MarginReport | None = None) -> dict:
    """Histogram of the simulated book losses (dollars). With the margin
    `report` of the same book, `var` and `es` (= the base, the ES of the same
    draws) are added; without it they are None and the caller has them."""
    losses = np.asarray(losses, np.float64)
    losses = losses[np.isfinite(losses)]
    lo, hi = (float(losses.min()), float(losses.max())) if losses.size else (0.0, 0.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(losses, bins=bins, range=(lo, hi))
    n = max(1, losses.size)
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "probability": (counts / n).tolist(),
        "scenarios": int(losses.size),
        "mean": float(losses.mean()) if losses.size else 0.0,
        "std": float(losses.std()) if losses.size else 0.0,
        "min": lo,
        "max": hi,
        "var": report.var if report is not None else None,
        "es": report.base if report is not None else None,
        "confidence": report.confidence if report is not None else None,
    }


def losses_response(book: Book, bins: int) -> dict:
    """The loss histogram alone, with VaR and ES of the same draws."""
    t0 = time.perf_counter()
    report, losses = kj.margin_with_losses(book)
    out = {"histogram": histogram(losses, bins, report), "timing": {
        "losses_ms": round((time.perf_counter() - t0) * 1e3, 1)}}
    return finite(out)


def sensitivities(book: Book) -> dict:
    """``kinetic_jax.sensitivities(book).to_dict()``."""
    return finite(kj.sensitivities(book).to_dict())


def margin_response(book: Book, bins: int, with_sensitivities: bool,
                    with_histogram: bool = True) -> dict:
    """Everything the page shows for one book (the histogram and the
    sensitivities optional: the page asks for them in follow-up requests, so
    the tiles come back after one engine call)."""
    t0 = time.perf_counter()
    # One compiled program and one simulation for the report and the histogram
    # (every request shape shares it, so nothing compiles after warm-up).
    report, losses = kj.margin_with_losses(book)
    t1 = time.perf_counter()
    hist = histogram(losses, bins, report) if with_histogram else None
    t2 = time.perf_counter()
    sens = sensitivities(book) if with_sensitivities else None
    t3 = time.perf_counter()
    out = {
        "report": report.to_dict(),
        "waterfall": report.waterfall(),
        "histogram": hist,
        "sensitivities": sens,
        "hierarchy": hierarchy_dict(book),
        "timing": {
            "margin_ms": round((t1 - t0) * 1e3, 1),
            "losses_ms": round((t2 - t1) * 1e3, 1) if with_histogram else None,
            "sensitivities_ms": round((t3 - t2) * 1e3, 1) if with_sensitivities else None,
            "total_ms": round((t3 - t0) * 1e3, 1),
        },
    }
    return finite(out)

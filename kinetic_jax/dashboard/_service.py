"""The computations behind the JSON margin service, on the public kinetic_jax API.

Everything returned is plain JSON: finite floats, strings, lists and dicts (a
non-finite number becomes ``null``, never ``NaN``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from collections.abc import Hashable
from importlib import resources
from typing import Any

import numpy as np

import kinetic_jax as kj
from kinetic_jax import Book, BookError

# Service limits (the engine itself allows more; a web service must bound the work).
# Scenario counts: powers of two only, so that at most len(SCENARIO_CHOICES)
# programs per book shape are ever compiled.
SCENARIO_CHOICES = tuple(1 << k for k in range(10, 21))  # 1,024 .. 1,048,576
MAX_SCENARIOS = SCENARIO_CHOICES[-1]
MAX_CELLS = 1 << 26  # scenarios x contracts held in one simulation
MAX_BINS = 400
DEFAULT_BINS = 60
MAX_CONTRACTS = 2000
MAX_CONTRACTS_PER_EVENT = 500
MAX_PARLAYS = 64
MAX_POSITIONS = 4000
# Under a liquidation horizon, a parlay whose live legs share correlated loaded
# factors is marked by a Gauss-Hermite integral over those factors (at most 3):
# scenarios x parlays x legs x QUADRATURE_NODES ** factors evaluations. The
# reference book at 1,048,576 scenarios needs 2^32 (one parlay on BTC and ETH).
MAX_QUADRATURE = 1 << 32
QUADRATURE_NODES = 32  # per factor (kinetic_jax._marks.NODES; SPEC-horizon §6.5)


@dataclasses.dataclass(frozen=True)
class Limits:
    """The work one request may ask of the service (docs/dashboard.md, "Limits").

    The exact worst case holds one row per region of each event, as wide as the
    event, so its size grows with the square of the contracts of one event:
    `max_contracts_per_event` bounds it; `max_contracts`, `max_positions` and
    `max_cells` (scenarios x contracts) bound the simulation; `max_parlays`
    bounds the joint enumeration of parlay-linked events; `max_quadrature`
    bounds the parlay marks at a liquidation horizon (scenarios x parlays x legs
    x Gauss-Hermite nodes).
    """

    max_contracts: int = MAX_CONTRACTS
    max_contracts_per_event: int = MAX_CONTRACTS_PER_EVENT
    max_parlays: int = MAX_PARLAYS
    max_positions: int = MAX_POSITIONS
    max_cells: int = MAX_CELLS
    max_quadrature: int = MAX_QUADRATURE
    scenarios: tuple[int, ...] = SCENARIO_CHOICES

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if f.name == "scenarios" else (value,)
            least = 0 if f.name == "max_parlays" else 1
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < least
                                 for v in values):
                raise ValueError(f"Limits.{f.name}: {value!r} is not "
                                 + ("a tuple of positive integers" if f.name == "scenarios"
                                    else f"an integer >= {least}"))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "scenarios": list(self.scenarios)}


class ProgramCache:
    """A bounded LRU of the compiled programs the service has asked JAX for.

    JAX keeps every compiled program in memory for the life of the process; a
    service that lets its callers pick shapes must bound that. Each request
    names its program (endpoint, scenarios, padded size); when a request needs
    a program beyond the `capacity` most recently used, JAX's in-memory caches
    are cleared (`jax.clear_caches`), so at most `capacity` programs are held.
    """

    def __init__(self, capacity: int = 12):
        if capacity < 1:
            raise ValueError(f"ProgramCache capacity: {capacity!r} is below 1")
        self.capacity = capacity
        self.evictions = 0
        self._keys: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def use(self, key: Hashable) -> bool:
        """Marks `key` as used; returns True if the caches were cleared for it."""
        with self._lock:
            if key in self._keys:
                self._keys.move_to_end(key)
                return False
            self._keys[key] = None
            if len(self._keys) <= self.capacity:
                return False
            import jax

            jax.clear_caches()
            self._keys.clear()
            self._keys[key] = None
            self.evictions += 1
            return True

    def snapshot(self) -> dict:
        with self._lock:
            return {"programs": len(self._keys), "capacity": self.capacity,
                    "evictions": self.evictions}


def program_key(kind: str, book: Book) -> tuple:
    """The name of the program a request runs: its kind, scenario count and
    contracts padded to a power of two (the engine pads shapes to buckets); under
    a liquidation horizon (a program of its own) also the shape of its parlay
    quadrature, which depends on the parlays' legs still live at the horizon."""
    n = max(1, len(book.contracts))
    key = (kind, book.settings.scenarios, 1 << (n - 1).bit_length())
    if book.settings.horizon_days is None:
        return key
    return (*key, "horizon", *quadrature_shape(book))


def quadrature_shape(book: Book) -> tuple[int, int, int]:
    """``(parlays, legs, factors)`` of the Gauss-Hermite parlay marks of `book`
    at its horizon, as ``kinetic_jax.book_arrays`` lays them out (padded);
    ``(0, 0, 0)`` in resolution mode or without such parlays."""
    if book.settings.horizon_days is None:
        return 0, 0, 0
    arrays, _ = kj.book_arrays(book)
    parlays, factors = arrays.quad_cluster.shape
    return parlays, (arrays.legs.shape[1] if parlays else 0), factors


def quadrature_work(book: Book) -> int:
    """Gauss-Hermite evaluations of `book`'s parlay marks: scenarios x parlays x
    legs x QUADRATURE_NODES ** factors (0 in resolution mode)."""
    parlays, legs, factors = quadrature_shape(book)
    if not parlays:
        return 0
    return book.settings.scenarios * parlays * legs * QUADRATURE_NODES ** factors


_counter: kj.CompileCounter | None = None


def compile_counter() -> kj.CompileCounter:
    """The process-wide counter (registered with jax.monitoring once)."""
    global _counter
    if _counter is None:
        _counter = kj.CompileCounter().listen()
    return _counter


def reference_book_text() -> bytes:
    """The reference book shipped with the package (examples/reference_book.toml
    links to it)."""
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


def check_limits(book: Book, limits: Limits = Limits()) -> None:
    """Raises BookError (naming the field) if the book asks the service for
    more work than `limits` allow. Runs before any engine work."""
    n = book.settings.scenarios
    if n not in limits.scenarios:
        choices = ", ".join(f"{x:,}" for x in limits.scenarios)
        raise BookError("model.scenarios",
                        f"{n:,} is not one of the service's scenario counts ({choices}); "
                        f"the limit is {max(limits.scenarios):,} scenarios")
    if len(book.contracts) > limits.max_contracts:
        raise BookError("contracts", f"{len(book.contracts):,} contracts, over the service's "
                                     f"limit of {limits.max_contracts:,}")
    if len(book.positions) > limits.max_positions:
        raise BookError("positions", f"{len(book.positions):,} positions, over the service's "
                                     f"limit of {limits.max_positions:,}")
    for event, idx in book.events().items():
        if len(idx) > limits.max_contracts_per_event:
            raise BookError(f"contracts (event {event!r})",
                            f"{len(idx):,} contracts on one event, over the service's limit "
                            f"of {limits.max_contracts_per_event:,}")
    parlays = sum(c.type == "parlay" for c in book.contracts)
    if parlays > limits.max_parlays:
        raise BookError("contracts", f"{parlays:,} parlays, over the service's limit of "
                                     f"{limits.max_parlays:,}")
    cells = n * max(1, len(book.contracts))
    if cells > limits.max_cells:
        raise BookError(
            "model.scenarios",
            f"{n:,} scenarios x {len(book.contracts)} contracts = {cells:,} simulated outcomes, "
            f"above the service's limit of {limits.max_cells:,}; lower the scenario count",
        )
    work = quadrature_work(book)
    if work > limits.max_quadrature:
        parlays, legs, factors = quadrature_shape(book)
        raise BookError(
            "model.horizon_days",
            f"{book.settings.horizon_days!r} days leaves {parlays:,} parlay(s) (padded) with "
            f"live legs on {factors} correlated loaded factor(s): {n:,} scenarios x {parlays:,} "
            f"x {legs} legs x {QUADRATURE_NODES}^{factors} nodes = {work:,} quadrature "
            f"evaluations, above the service's limit of {limits.max_quadrature:,}; lower the "
            f"scenario count",
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

"""The computations behind the JSON margin service, on the public kinetic_jax API.

Everything returned is plain JSON: finite floats, strings, lists and dicts (a
non-finite number becomes ``null``, never ``NaN``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import threading
import time
import typing
from collections.abc import Hashable, Iterable
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
# Legs of one parlay: its exact worst case searches over them (branch and bound,
# recursive); 900 legs took 4.3 s and 990 exhausted Python's recursion limit.
MAX_PARLAY_LEGS = 64
# Stress scenarios: each is a full revaluation of the book (20,000 of them took
# 8-13 s on the 2-core machine, against 0.07 s without).
MAX_STRESS = 256
MAX_POSITIONS = 4000
# Under a liquidation horizon, a parlay whose live legs share correlated loaded
# factors is marked by a Gauss-Hermite integral over those factors (at most 3):
# scenarios x parlays x legs x nodes ** grid dimensions evaluations, with the
# engine's node count (64 to 256 by loading) and grid (the last factor in closed
# form where it can be): see `Quadrature`. The reference book needs 2^27 at
# 1,048,576 scenarios (one parlay on BTC and ETH: 2 legs x 64 nodes).
MAX_QUADRATURE = 1 << 32
# Each underlying's PnL curves: pnl_points spots x the binaries held on it, each
# a closed-form mark (kinetic_jax.mark_at_spot), for the report and the page's
# per-leg split.
MAX_PNL_CELLS = 1 << 21


@dataclasses.dataclass(frozen=True)
class Limits:
    """The work one request may ask of the service (docs/dashboard.md, "Limits").

    The exact worst case holds one row per region of each event, as wide as the
    event, so its size grows with the square of the contracts of one event:
    `max_contracts_per_event` bounds it; `max_contracts`, `max_positions` and
    `max_cells` (scenarios x contracts) bound the simulation; `max_parlays`
    bounds the joint enumeration of parlay-linked events and `max_parlay_legs`
    the worst-case search over one parlay's legs; `max_stress` bounds the stress
    scenarios (each a revaluation of the book); `max_quadrature`
    bounds the parlay marks at a liquidation horizon (scenarios x parlays x legs
    x Gauss-Hermite grid points, [`Quadrature`][]); `max_pnl_cells` bounds the
    PnL curves across spot (points x binaries held on an underlying).
    """

    max_contracts: int = MAX_CONTRACTS
    max_contracts_per_event: int = MAX_CONTRACTS_PER_EVENT
    max_parlays: int = MAX_PARLAYS
    max_parlay_legs: int = MAX_PARLAY_LEGS
    max_stress: int = MAX_STRESS
    max_positions: int = MAX_POSITIONS
    max_cells: int = MAX_CELLS
    max_quadrature: int = MAX_QUADRATURE
    max_pnl_cells: int = MAX_PNL_CELLS
    scenarios: tuple[int, ...] = SCENARIO_CHOICES

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if f.name == "scenarios" else (value,)
            least = 0 if f.name in ("max_parlays", "max_stress") else 1
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
    a program beyond the `capacity` most recently used, the engine's in-memory
    caches are cleared (`kinetic_jax.clear_caches`: JAX's programs, and the
    books laid out), so at most `capacity` programs are held. They are cleared
    too when a request may compile (it names a program not held) and the
    process holds more than half the memory maps the kernel allows it
    (`kinetic_jax.near_map_limit`): each XLA program holds its own, and a
    process at the limit dies with a segmentation fault. One program name can
    stand for several XLA programs, so the capacity alone does not bound them.

    The engine's threads run their work inside [`running`][]: a clear waits
    until no other thread is running a program (JAX's caches are not cleared
    under a computation that is tracing or compiling), and no program starts
    while it clears.
    """

    def __init__(self, capacity: int = 12):
        if capacity < 1:
            raise ValueError(f"ProgramCache capacity: {capacity!r} is below 1")
        self.capacity = capacity
        self.evictions = 0
        self._keys: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self._lock = threading.Condition()
        self._running = 0  # threads inside `running`
        self._clearing = False  # a thread waits to clear: no program starts meanwhile

    @contextlib.contextmanager
    def running(self, keys: Iterable[Hashable]):
        """Marks `keys` (the programs of one request) as used and counts the
        caller as running a program until the block ends; yields whether JAX's
        caches were cleared first.

        The caches are cleared when the request's new programs would take the
        count beyond the capacity. The clear waits until no other thread runs a
        program, and no program starts while a clear is pending. Afterwards the
        cache holds exactly the request's programs, however many it names."""
        keys = list(dict.fromkeys(keys))
        with self._lock:
            self._lock.wait_for(lambda: not self._clearing)
            fresh = sum(k not in self._keys for k in keys)
            cleared = (len(self._keys) + fresh > self.capacity
                       or (fresh > 0 and kj.near_map_limit()))
            if cleared:
                self._clearing = True
                try:
                    self._lock.wait_for(lambda: self._running == 0)
                    kj.clear_caches()
                finally:
                    self._clearing = False
                    self._lock.notify_all()
                self._keys.clear()
                self.evictions += 1
            for k in keys:
                self._keys[k] = None
                self._keys.move_to_end(k)
            self._running += 1
        try:
            yield cleared
        finally:
            with self._lock:
                self._running -= 1
                self._lock.notify_all()

    def snapshot(self) -> dict:
        with self._lock:
            return {"programs": len(self._keys), "capacity": self.capacity,
                    "evictions": self.evictions}


def is_dynamic(book: Book) -> bool:
    """Whether the engine marks `book` at a horizon (a liquidation horizon, or
    underlyings, whose resolution mode runs to the book's latest date): a
    program of its own, with arrays shaped by the book's structure."""
    return book.settings.horizon_days is not None or bool(book.underlyings)


def engine_arrays(book: Book) -> kj.BookArrays:
    """``kinetic_jax.book_arrays(book)``: the limits (on the parse thread), the
    program key and the margin (on the engine thread) of one request read the
    same layout, built once (`kj.book_arrays` keeps the last few books)."""
    return kj.book_arrays(book)[0]


def program_key(kind: str, book: Book) -> tuple:
    """The name of the program a request runs: its kind, scenario count and
    contracts padded to a power of two (the engine pads shapes to buckets); for
    a book marked at a horizon (`is_dynamic`) also the engine's array layout
    (every array's shape and the static fields, e.g. the parlay quadrature's
    nodes and width, the underlyings' bridge points), on which its program
    depends."""
    n = max(1, len(book.contracts))
    key = (kind, book.settings.scenarios, 1 << (n - 1).bit_length())
    if not is_dynamic(book):
        return key
    arrays = engine_arrays(book)
    layout = tuple((f.name, tuple(v.shape) if hasattr(v, "shape") else v)
                   for f in dataclasses.fields(arrays) for v in (getattr(arrays, f.name),))
    return (*key, "horizon", layout)


class Quadrature(typing.NamedTuple):
    """The Gauss-Hermite parlay marks of a book at its horizon, as the engine lays
    them out (``kinetic_jax.book_arrays``: `quad_cluster`, `quad_width`,
    `quad_nodes`, `quad_closed`; kinetic_jax._marks): `parlays` (padded) marked by
    the integral, `legs` evaluated per parlay, `factors` loaded clusters, `nodes`
    per dimension, and `closed` when the last factor is integrated in closed form
    (the grid then spans one dimension fewer)."""

    parlays: int = 0
    legs: int = 0
    factors: int = 0
    nodes: int = 0
    closed: bool = False

    @property
    def points(self) -> int:
        """Grid points per (scenario, parlay): nodes ** (factors - closed)."""
        return self.nodes ** (self.factors - int(self.closed)) if self.parlays else 0

    def work(self, scenarios: int) -> int:
        """Interval probabilities evaluated: scenarios x parlays x legs x points."""
        return scenarios * self.parlays * self.legs * self.points


def quadrature(book: Book) -> Quadrature:
    """`book`'s [`Quadrature`][] (all zero in v1 resolution mode or without such
    parlays)."""
    if not is_dynamic(book):
        return Quadrature()
    arrays = engine_arrays(book)
    parlays, factors = arrays.quad_cluster.shape
    if not parlays:
        return Quadrature()
    return Quadrature(parlays, int(arrays.quad_width), factors, int(arrays.quad_nodes),
                      bool(arrays.quad_closed))


def quadrature_work(book: Book) -> int:
    """Gauss-Hermite evaluations of `book`'s parlay marks (`Quadrature.work`)."""
    return quadrature(book).work(book.settings.scenarios)


def pnl_cells(book: Book) -> int:
    """Closed-form marks on the PnL curves: pnl_points x binaries held on an
    underlying (0 without underlyings)."""
    if not book.underlyings:
        return 0
    qty = book.net_quantities()
    held = sum(c.underlying is not None and not c.is_linear and qty[c.id] != 0
               for c in book.contracts)
    return (book.settings.pnl_points or kj.DEFAULT_PNL_POINTS) * max(1, held)


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
    for c in book.contracts:
        if c.type == "parlay" and len(c.legs) > limits.max_parlay_legs:
            raise BookError(f"contracts (contract {c.id!r}).legs",
                            f"{len(c.legs):,} legs, over the service's limit of "
                            f"{limits.max_parlay_legs:,} legs per parlay")
    if len(book.stress) > limits.max_stress:
        raise BookError("stress", f"{len(book.stress):,} stress scenarios, over the service's "
                                  f"limit of {limits.max_stress:,}")
    cells = n * max(1, len(book.contracts))
    if cells > limits.max_cells:
        raise BookError(
            "model.scenarios",
            f"{n:,} scenarios x {len(book.contracts)} contracts = {cells:,} simulated outcomes, "
            f"above the service's limit of {limits.max_cells:,}; lower the scenario count",
        )
    quad = quadrature(book)
    work = quad.work(n)
    if work > limits.max_quadrature:
        grid = quad.factors - int(quad.closed)
        raise BookError(
            "model.horizon_days",
            f"{book.settings.horizon_days!r} days leaves {quad.parlays:,} parlay(s) (padded) "
            f"with live legs on {quad.factors} correlated loaded factor(s): {n:,} scenarios x "
            f"{quad.parlays:,} x {quad.legs} legs x {quad.nodes}^{grid} Gauss-Hermite points "
            f"= {work:,} quadrature evaluations, above the service's limit of "
            f"{limits.max_quadrature:,}; lower the scenario count",
        )
    cells = pnl_cells(book)
    if cells > limits.max_pnl_cells:
        points = book.settings.pnl_points or kj.DEFAULT_PNL_POINTS
        raise BookError(
            "model.pnl_points",
            f"{points:,} points x {cells // points:,} binaries held on underlyings = "
            f"{cells:,} marks on the PnL curves, above the service's limit of "
            f"{limits.max_pnl_cells:,}; lower model.pnl_points",
        )


def hierarchy_dict(book: Book) -> dict:
    h = book.hierarchy
    return {
        "nodes": [{"name": n.name, "parent": n.parent, "rho": n.rho} for n in h.nodes],
        "clusters": [{"name": c.name, "parent": c.parent, "loading": c.loading}
                     for c in h.clusters],
    }


def histogram(losses: np.ndarray, bins: int, report: kj.MarginReport | None = None,
              weights: np.ndarray | None = None) -> dict:
    """Histogram of the simulated book losses (dollars). With the margin
    `report` of the same book, `var` and `es` (= the base, the ES of the same
    draws) are added; without it they are None and the caller has them.
    `weights`: the draws' likelihood ratios (importance-sampled books); `counts`
    are draws, `probability`, `mean` and `std` are weighted, self-normalised (a
    draw's probability is its weight over the weights' sum, so the
    probabilities add up to 1)."""
    losses = np.asarray(losses, np.float64)
    w = np.ones_like(losses) if weights is None else np.asarray(weights, np.float64)
    keep = np.isfinite(losses)
    losses, w = losses[keep], w[keep]
    lo, hi = (float(losses.min()), float(losses.max())) if losses.size else (0.0, 0.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(losses, bins=bins, range=(lo, hi))
    mass, _ = np.histogram(losses, bins=bins, range=(lo, hi), weights=w)
    n = float(np.sum(w)) if losses.size and np.sum(w) > 0 else 1.0
    mean = float(np.sum(w * losses) / n) if losses.size else 0.0
    spread = float(np.sum(w * (losses - mean) ** 2) / n) if losses.size else 0.0
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "probability": (mass / n).tolist(),
        "scenarios": int(losses.size),
        "mean": mean,
        "std": spread ** 0.5,
        "min": lo,
        "max": hi,
        "var": report.var if report is not None else None,
        "es": report.base if report is not None else None,
        "confidence": report.confidence if report is not None else None,
    }


def losses_response(book: Book, bins: int) -> dict:
    """The loss histogram alone, with VaR and ES of the same draws."""
    t0 = time.perf_counter()
    report, losses, weights = kj.margin_with_losses(book, with_weights=True)
    out = {"histogram": histogram(losses, bins, report, weights), "timing": {
        "losses_ms": round((time.perf_counter() - t0) * 1e3, 1)}}
    return finite(out)


def sensitivities(book: Book) -> dict:
    """``kinetic_jax.sensitivities(book).to_dict()``, with the conditional
    estimator's run at the page's scenario count (importance-sampled) rather
    than the library's 8x: the service's work stays bounded by its scenario
    limits, and the panel answers in about the time of a few margin calls."""
    jump = book.settings.scenarios if kj.default_estimator(book) == "conditional" else None
    return finite(kj.sensitivities(book, jump_scenarios=jump).to_dict())


def underlying_views(book: Book, report: kj.MarginReport) -> list[dict]:
    """Per underlying, what the page's "Perps x binaries" view adds to the
    report's ``underlyings`` (SPEC-horizon.md §6.7), on the same spots as its
    ``pnl_curve``: the curve split by leg, ``pnl_binaries`` = sum over the
    binaries held on it of q (m_h(S) - p) (``kinetic_jax.mark_at_spot`` at the
    report's horizon; h = 0 without one) and ``pnl_linear`` = e_u (S - S0) (its
    perps and futures), so that their sum is the report's curve;
    ``portfolio_value`` = sum of q p over those binaries (linear positions are
    worth 0 at the mark); and the ids of its ``linear`` and ``binaries``
    contracts, in book order."""
    qty = book.net_quantities()
    times = book.maturities()
    h = book.horizon_years or 0.0
    out = []
    for u, rep in zip(book.underlyings, report.underlyings, strict=True):
        spots = np.asarray(rep.pnl_spot, np.float64)
        binaries = np.zeros_like(spots)
        value = 0.0
        linear, legs = [], []
        for i, c in enumerate(book.contracts):
            if c.underlying != u.id:
                continue
            if c.is_linear:
                linear.append(c.id)
                continue
            legs.append(c.id)
            q = qty[c.id]
            if q == 0:
                continue
            value += q * c.price
            marks = kj.mark_at_spot(c.type, c.price, times[i], h, u.spot, u.vol, spots)
            binaries += q * (marks - c.price)
        out.append({"id": u.id, "portfolio_value": value,
                    "pnl_binaries": binaries.tolist(),
                    "pnl_linear": (rep.linear_exposure * (spots - u.spot)).tolist(),
                    "linear": linear, "binaries": legs})
    return out


def margin_response(book: Book, bins: int, with_sensitivities: bool,
                    with_histogram: bool = True) -> dict:
    """Everything the page shows for one book (the histogram and the
    sensitivities optional: the page asks for them in follow-up requests, so
    the tiles come back after one engine call): `report` is
    ``MarginReport.to_dict()`` unchanged (what ``kinetic-jax margin --json``
    prints); `underlyings` adds the per-underlying view (`underlying_views`)."""
    t0 = time.perf_counter()
    # One compiled program and one simulation for the report and the histogram
    # (every request shape shares it, so nothing compiles after warm-up).
    report, losses, weights = kj.margin_with_losses(book, with_weights=True)
    t1 = time.perf_counter()
    hist = histogram(losses, bins, report, weights) if with_histogram else None
    views = underlying_views(book, report)
    t2 = time.perf_counter()
    sens = sensitivities(book) if with_sensitivities else None
    t3 = time.perf_counter()
    out = {
        "report": report.to_dict(),
        "underlyings": views,
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

"""Test helpers: pytree comparison, a central finite-difference gradient checker,
a small book builder and an exact (enumerated) reference for the loss
distribution of small books.

The enumeration here is written from SPEC.md §2.2 alone and shares no code with
the engine's worst-case table, so it is an independent reference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree
from scipy.stats import multivariate_normal, norm

import kinetic_jax as kj
from kinetic_jax import Book, Contract, Hierarchy, Position, Settings, _shortfall

# ---------------------------------------------------------------------------
# Pytree comparison
# ---------------------------------------------------------------------------


def tree_allclose(x, y, *, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """True when `x` and `y` have the same tree structure, array leaves have the
    same shape and dtype and are elementwise close, and other leaves are equal."""
    xs, xtree = jax.tree_util.tree_flatten(x)
    ys, ytree = jax.tree_util.tree_flatten(y)
    if xtree != ytree:
        return False
    for a, b in zip(xs, ys):
        if isinstance(a, (np.ndarray, jax.Array, np.generic)) or isinstance(
            b, (np.ndarray, jax.Array, np.generic)
        ):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape or a.dtype != b.dtype:
                return False
            if not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif a != b:
            return False
    return True


def assert_tree_allclose(x, y, *, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Like [`tree_allclose`][], but says which leaf differs."""
    xs, xtree = jax.tree_util.tree_flatten_with_path(x)
    ys, ytree = jax.tree_util.tree_flatten_with_path(y)
    assert jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(y), (xtree, ytree)
    for (path, a), (_, b) in zip(xs, ys):
        name = jax.tree_util.keystr(path)
        if isinstance(a, (np.ndarray, jax.Array, np.generic)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol,
                                       err_msg=name)
        else:
            assert a == b, (name, a, b)


# ---------------------------------------------------------------------------
# Finite differences
# ---------------------------------------------------------------------------


def finite_difference_grad(fn: Callable, x, *, eps: float = 1e-5):
    """Central finite-difference gradient of a scalar function of a pytree.

    Every floating-point leaf of `x` is perturbed coordinate by coordinate,
    ``(fn(x + eps e_i) - fn(x - eps e_i)) / (2 eps)``. Integer leaves get a zero
    gradient. Use float64 (the `x64` fixture) for tight tolerances: in float32 the
    truncation/rounding trade-off limits the agreement to about 1e-3 relative.

    **Returns:** a pytree like `x` (float leaves: the gradient; others: zeros).
    """
    leaves, treedef = jax.tree_util.tree_flatten(x)
    is_float = [jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in leaves]
    float_leaves = [leaf for leaf, f in zip(leaves, is_float) if f]
    flat, unravel = ravel_pytree(float_leaves)

    def call(v):
        it = iter(unravel(v))
        rebuilt = [next(it) if f else leaf for leaf, f in zip(leaves, is_float)]
        return float(fn(jax.tree_util.tree_unflatten(treedef, rebuilt)))

    flat = np.asarray(flat)
    grad = np.zeros(flat.shape, np.float64)
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        grad[i] = (call(jnp.asarray(flat + step)) - call(jnp.asarray(flat - step))) / (2 * eps)
    it = iter(unravel(jnp.asarray(grad, flat.dtype)))
    out = [next(it) if f else jnp.zeros_like(leaf) for leaf, f in zip(leaves, is_float)]
    return jax.tree_util.tree_unflatten(treedef, out)


def directional_derivative(fn: Callable, x, direction, *, eps: float = 1e-5) -> float:
    """Central finite difference of scalar `fn` at pytree `x` along pytree
    `direction` (same structure; float leaves): (fn(x + eps d) - fn(x - eps d)) / 2 eps.
    Cheap (two calls) where the full gradient would need 2 * size calls."""
    plus = jax.tree.map(lambda a, d: a + eps * d, x, direction)
    minus = jax.tree.map(lambda a, d: a - eps * d, x, direction)
    return (float(fn(plus)) - float(fn(minus))) / (2 * eps)


def check_grad(
    fn: Callable,
    x,
    *,
    eps: float = 1e-5,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    grad=None,
    directions: int | None = None,
    seed: int = 0,
):
    """Asserts that `grad` (default ``jax.grad(fn)(x)``) matches central finite
    differences of `fn` at `x`.

    - `directions`: None compares every coordinate; an integer compares that many
      random directional derivatives instead (``<grad, d>`` against the finite
      difference along d), which costs 2 calls of `fn` per direction.

    **Returns:** the analytic gradient (for further checks).
    """
    if grad is None:
        grad = jax.grad(fn)(x)
    if directions is None:
        fd = finite_difference_grad(fn, x, eps=eps)
        assert_tree_allclose(grad, fd, rtol=rtol, atol=atol)
        return grad
    rng = np.random.default_rng(seed)
    for _ in range(directions):
        d = jax.tree.map(
            lambda a: jnp.asarray(rng.standard_normal(np.shape(a)), jnp.result_type(a)), x
        )
        analytic = sum(float(jnp.vdot(g, v)) for g, v in
                       zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
        numeric = directional_derivative(fn, x, d, eps=eps)
        assert abs(analytic - numeric) <= atol + rtol * abs(numeric), (analytic, numeric)
    return grad


# ---------------------------------------------------------------------------
# Book builder
# ---------------------------------------------------------------------------


def binary(cid: str, price: float, cluster: str = "Sports", **kw) -> Contract:
    return Contract(cid, cluster, "binary", price, **kw)


def above(cid: str, event: str, threshold: float, price: float, cluster: str = "BTC",
          **kw) -> Contract:
    return Contract(cid, cluster, "above", price, event=event, threshold=threshold, **kw)


def below(cid: str, event: str, threshold: float, price: float, cluster: str = "BTC",
          **kw) -> Contract:
    return Contract(cid, cluster, "below", price, event=event, threshold=threshold, **kw)


def outcome(cid: str, event: str, label: str, price: float, cluster: str = "Election",
            **kw) -> Contract:
    return Contract(cid, cluster, "outcome", price, event=event, outcome=label, **kw)


def parlay(cid: str, legs: Iterable[str], price: float, cluster: str = "Parlays",
           **kw) -> Contract:
    return Contract(cid, cluster, "parlay", price, legs=tuple(legs), **kw)


def make_book(
    contracts: Iterable[Contract],
    quantities: Mapping[str, float] | None = None,
    *,
    hierarchy: Hierarchy | None = None,
    **settings,
) -> Book:
    """A validated book: `quantities` maps contract id -> signed quantity;
    `settings` are [`Settings`][] fields (default: the engine's defaults)."""
    positions = tuple(Position(k, float(v)) for k, v in (quantities or {}).items())
    kw = {} if hierarchy is None else {"hierarchy": hierarchy}
    return Book(tuple(contracts), positions, settings=Settings(**settings), **kw)


def sensitivity_result(book: Book, estimator: str = "conditional") -> kj.SensitivityResult:
    """The jitted result behind ``kj.sensitivities(book, estimator=...)`` at the
    default temperature (the same call, so the same compiled program)."""
    arrays, _, params = kj.margin_inputs(book)
    s = book.settings
    jumps = kj.jump_run(s) if estimator == "conditional" else None
    return kj.sensitivity_jit(arrays, params, jax.random.key(s.seed), s.scenarios,
                              kj.tail_size(s.scenarios, s.confidence),
                              jnp.asarray(kj.DEFAULT_TEMPERATURE, arrays.price.dtype),
                              estimator, jumps)


def quantities_of(book: Book) -> np.ndarray:
    """Net quantity per contract, in book order."""
    q = book.net_quantities()
    return np.array([q[c.id] for c in book.contracts])


def prices_of(book: Book) -> np.ndarray:
    return np.array([c.price for c in book.contracts])


def full_collateral(book: Book) -> float:
    """SPEC.md §2.3: q p for longs, |q| (1 - p) for shorts."""
    q, p = quantities_of(book), prices_of(book)
    return float(np.sum(np.where(q > 0, q * p, -q * (1 - p))))


# ---------------------------------------------------------------------------
# A book shared by several test modules
# ---------------------------------------------------------------------------


def parlay_book(scale: float = 1.0, **settings):
    """Five games, a BTC ladder and four parlays sharing legs (two-, three- and a
    cross-asset parlay); some legs held, some not."""
    contracts = [
        *(binary(f"G{i}", p) for i, p in enumerate([0.62, 0.55, 0.48, 0.7, 0.35])),
        above("BTC-100K", "BTC-DEC", 100_000, 0.55, "BTC"),
        above("BTC-110K", "BTC-DEC", 110_000, 0.33, "BTC"),
        parlay("P01", ["G0", "G1"], 0.36),
        parlay("P012", ["G0", "G1", "G2"], 0.15),
        parlay("P23", ["G2", "G3"], 0.32),
        parlay("P4B", ["G4", "BTC-110K"], 0.12),
    ]
    qty = {"G0": 400, "G2": -300, "G3": 250, "BTC-110K": 500, "P01": -1000,
           "P012": -1500, "P23": 800, "P4B": -2000}
    return make_book(contracts, {k: v * scale for k, v in qty.items()}, **settings)


# ---------------------------------------------------------------------------
# Exact enumeration (SPEC.md §2.2, written independently of the engine)
# ---------------------------------------------------------------------------


def _event_key(c: Contract) -> str:
    return c.id if c.type == "binary" else (c.event or c.id)


def _event_regions(book: Book, idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, patterns) of one event: the intervals of u = Phi(X) between
    cuts, each with the YES pattern of the event's contracts (book order)."""
    cs = [book.contracts[i] for i in idx]
    probs = [c.price if c.probability is None else c.probability for c in cs]
    if cs[0].type == "outcome" and sum(probs) > 1:
        total = sum(probs)
        probs = [p / total for p in probs]
    intervals = []
    before = 0.0
    for c, p in zip(cs, probs):
        if c.type in ("above", "binary"):
            intervals.append((1 - p, 1.0))
        elif c.type == "below":
            intervals.append((0.0, p))
        else:
            intervals.append((before, min(before + p, 1.0)))
            before += p
    points = sorted({0.0, 1.0, *(a for a, _ in intervals), *(b for _, b in intervals)})
    regions: dict[tuple, float] = {}
    for a, b in zip(points[:-1], points[1:]):
        if b - a <= 1e-12:
            continue
        m = (a + b) / 2
        pattern = tuple(float(lo < m <= hi) for lo, hi in intervals)
        regions[pattern] = regions.get(pattern, 0.0) + (b - a)
    patterns = np.array(list(regions), dtype=np.float64)
    return np.array(list(regions.values())), patterns


def _events_independent(book: Book, keys: list[str], events: dict[str, list[int]]) -> bool:
    """True when distinct events are independent in the model: no two events load
    (with non-zero loading) on factors that are correlated or the same."""
    h = book.hierarchy
    corr = kj.correlation_of(h)
    load = dict(zip(h.cluster_names, h.loadings))
    cl = [book.contracts[events[e][0]].cluster for e in keys]
    names = list(h.cluster_names)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            ca, cb = cl[a], cl[b]
            rho = 1.0 if ca == cb else corr[names.index(ca), names.index(cb)]
            if load[ca] * load[cb] * rho > 0:
                return False
    return True


MAX_ENUMERATION = 1 << 20


def enumerate_outcomes(book: Book) -> tuple[np.ndarray, np.ndarray | None]:
    """Every joint outcome the model allows.

    **Returns:** ``(yes, prob)``: `yes` is (outcomes, contracts) of 0/1 in book
    order (parlay YES iff all legs YES); `prob` the probability of each joint
    outcome when the events are independent (else None: then only the support is
    exact, which is all a worst case needs).
    """
    events: dict[str, list[int]] = {}
    for i, c in enumerate(book.contracts):
        if c.type != "parlay":
            events.setdefault(_event_key(c), []).append(i)
    keys = list(events)
    regions = [_event_regions(book, events[e]) for e in keys]
    n = len(book.contracts)
    rows = math.prod(len(r[0]) for r in regions)
    if rows > MAX_ENUMERATION:
        raise ValueError(f"{rows} joint outcomes: too many to enumerate")
    yes = np.zeros((rows, n))
    prob = np.ones(rows)
    # Mixed-radix enumeration, vectorised over all joint outcomes.
    stride = rows
    code = np.arange(rows)
    for e, (lengths, patterns) in zip(keys, regions):
        stride //= len(lengths)
        r = (code // stride) % len(lengths)
        yes[:, events[e]] = patterns[r]
        prob *= lengths[r]
    ids = {c.id: i for i, c in enumerate(book.contracts)}
    for i, c in enumerate(book.contracts):
        if c.type == "parlay":
            yes[:, i] = np.prod(yes[:, [ids[leg] for leg in c.legs]], axis=1)
    independent = _events_independent(book, keys, events)
    return yes, (prob if independent else None)


def exact_losses(book: Book, cluster: str | None = None):
    """``(losses, prob)`` of the book (or of one cluster) over every joint outcome;
    prob is None when the events are not independent (see enumerate_outcomes)."""
    yes, prob = enumerate_outcomes(book)
    q, p = quantities_of(book), prices_of(book)
    if cluster is not None:
        q = np.where([c.cluster == cluster for c in book.contracts], q, 0.0)
    return (p[None, :] - yes) @ q, prob


def exact_es(book: Book, confidence: float | None = None, cluster: str | None = None) -> float:
    """Exact ES of the book's (or a cluster's) loss, by enumeration (independent
    events only)."""
    losses, prob = exact_losses(book, cluster)
    assert prob is not None, "events are correlated: no exact distribution by enumeration"
    a = book.settings.confidence if confidence is None else confidence
    return reference_es(losses, prob, a)


def reference_es(values, probabilities, confidence: float) -> float:
    """Acerbi–Tasche ES of a discrete distribution, written out here as the tail
    integral of the quantile function: sort losses decreasingly and take
    probability mass from the top until 1 - alpha is used up."""
    v = np.asarray(values, np.float64)
    p = np.asarray(probabilities, np.float64)
    order = np.argsort(-v, kind="stable")
    budget = 1.0 - confidence
    total = 0.0
    for value, mass in zip(v[order], p[order]):
        take = min(mass, budget)
        total += take * value
        budget -= take
        if budget <= 0:
            break
    return total / (1.0 - confidence)


def brute_worst_case(book: Book) -> float:
    """The largest loss over every joint outcome (exact enumeration)."""
    losses, _ = exact_losses(book)
    return float(losses.max())


# ---------------------------------------------------------------------------
# Random small books (hypothesis)
# ---------------------------------------------------------------------------


@st.composite
def books(draw, max_games: int = 4, parlays: bool = True, zero_loadings: bool = False,
          **settings):
    """A small random book of every contract type: up to two strike ladders
    (above and below mixed, cuts nested up to a jitter inside the 0.02
    tolerance), an outcome event (possibly with an unlisted remainder or a
    small overround), independent games and parlays over any non-parlay
    contracts (two legs on one event included). Quantities are signed, some
    zero. `zero_loadings` puts the ladders in zero-loading clusters, so every
    event is independent and the loss distribution is exactly enumerable."""
    contracts: list[Contract] = []
    ladder_clusters = ("Sports", "Election") if zero_loadings else ("BTC", "SPX")
    for e in range(draw(st.integers(0, 2))):
        n = draw(st.integers(1, 3))
        cuts = sorted(draw(st.lists(st.floats(0.05, 0.95), min_size=n, max_size=n)))
        for j, u in enumerate(cuts):
            u = min(0.97, max(0.03, u + draw(st.floats(-0.007, 0.007))))
            kind = draw(st.sampled_from(["above", "below"]))
            price = round(1 - u if kind == "above" else u, 4)
            contracts.append(Contract(f"L{e}-{j}", ladder_clusters[e], kind, price,
                                      event=f"LAD{e}", threshold=float(j)))
    if draw(st.booleans()):
        n = draw(st.integers(2, 3))
        raw = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=n, max_size=n)))
        # Listed outcomes sum to 1, leave an unlisted remainder, or carry a 3%
        # overround (then the probabilities are prices / sum).
        total = draw(st.sampled_from([1.0, 0.8, 1.03]))
        for j, w in enumerate(raw / raw.sum() * total):
            contracts.append(outcome(f"O{j}", "VOTE", f"o{j}", round(max(0.01, w), 4)))
    for g in range(draw(st.integers(1 if not contracts else 0, max_games))):
        contracts.append(binary(f"G{g}", round(draw(st.floats(0.05, 0.95)), 4)))
    if parlays:
        legs_pool = [c.id for c in contracts]
        for k in range(draw(st.integers(0, 2)) if len(legs_pool) >= 2 else 0):
            legs = draw(st.lists(st.sampled_from(legs_pool), min_size=2, max_size=3,
                                 unique=True))
            contracts.append(parlay(f"P{k}", legs, round(draw(st.floats(0.02, 0.6)), 4)))
    qty = {}
    for c in contracts:
        q = draw(st.sampled_from([0.0, 1.0, -1.0])) * draw(st.integers(1, 20)) * 50.0
        if q:
            qty[c.id] = q
    return make_book(contracts, qty, **settings)


def contract_probabilities(book: Book) -> np.ndarray:
    """P(YES) of every contract in the model (parlays: nan), from its event's
    regions: each event latent is marginally standard normal whatever the factors."""
    out = np.full(len(book.contracts), np.nan)
    events: dict[str, list[int]] = {}
    for i, c in enumerate(book.contracts):
        if c.type != "parlay":
            events.setdefault(_event_key(c), []).append(i)
    for idx in events.values():
        lengths, patterns = _event_regions(book, idx)
        out[idx] = lengths @ patterns
    return out


# ---------------------------------------------------------------------------
# The command line, in-process
# ---------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Runs ``kinetic-jax ARGV`` in-process; returns (exit status, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from kinetic_jax._cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def es_of(losses, masses, confidence: float) -> float:
    """Acerbi–Tasche ES of a discrete distribution (float64): the largest losses
    taking probability mass until 1 - alpha is used (non-monotone losses: sorted)."""
    v = np.asarray(losses, np.float64).ravel()
    p = np.asarray(masses, np.float64).ravel()
    order = np.argsort(-v, kind="stable")
    v, p = v[order], p[order]
    budget = 1.0 - confidence
    taken = np.minimum(p, np.maximum(budget - (np.cumsum(p) - p), 0.0))
    return float(np.sum(taken * v) / budget)


def z_grid(cells: int, width: float = 8.0):
    """Midpoints and exact standard-normal masses of `cells` equal cells on
    [-width, width] (the tails beyond are dropped)."""
    from scipy.stats import norm

    edges = np.linspace(-width, width, cells + 1)
    return (edges[1:] + edges[:-1]) / 2, np.diff(norm.cdf(edges))


def pair_exact(px: float, py: float, q: float, loading: float = 0.9,
               rho: float = 0.68) -> dict[str, float]:
    """Long q of X / short q of Y, two ``above`` contracts in two clusters of one
    node (`rho`, both clusters at `loading`): latent correlation r = loading^2 rho.
    When the worst outcome (X NO, Y YES) has probability P1 < 1 %, the 99 % ES is
    [P1 L1 + (1 % - P1) L2] / 1 % and dES/dtheta = (L1 - L2) / 1 % dP1/dtheta (+ q
    from the marks for prices), with dP1/dr = -phi2(cx, cy; r), dP1/dpx =
    -P(Y > cy | X = cx), dP1/dpy = P(X <= cx | Y = cy). Returns p1, es, d_rho,
    d_loading (of one cluster's loading), d_px, d_py."""
    r = loading * loading * rho
    cx, cy = norm.ppf(1 - px), norm.ppf(1 - py)
    mvn = multivariate_normal(cov=[[1, r], [r, 1]])
    p1 = float(norm.cdf(cx) - mvn.cdf([cx, cy]))
    l1, l2 = q * (px + 1 - py), q * (px - py)
    jump = (l1 - l2) / 0.01
    phi2 = float(mvn.pdf([cx, cy]))
    s = math.sqrt(1 - r * r)
    return {"p1": p1, "es": (p1 * l1 + (0.01 - p1) * l2) / 0.01,
            "d_rho": -jump * phi2 * loading * loading,
            "d_loading": -jump * phi2 * loading * rho,
            "d_px": float(jump * -(1 - norm.cdf((cy - r * cx) / s)) + q),
            "d_py": float(jump * norm.cdf((cx - r * cy) / s) - q)}


class ProgramLog:
    """Records every trace and compile in the process (any thread) while
    listening: ``(event, function, thread)``. A compile is a miss of JAX's
    in-memory cache (a persistent-cache hit counts too), as for
    [`kinetic_jax.CompileCounter`][]; the log names what compiled and where."""

    def __init__(self):
        self.events: list[tuple[str, str, str]] = []

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event in (kj.CompileCounter.TRACE, kj.CompileCounter.COMPILE):
            self.events.append((event.rsplit("/", 1)[-1], str(kwargs.get("fun_name")),
                                threading.current_thread().name))

    def compiled(self) -> list[str]:
        return [f for e, f, _ in self.events if e == "backend_compile_duration"]

    def __enter__(self) -> ProgramLog:
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc) -> bool:
        jax.monitoring.unregister_event_duration_listener(self)
        return False


# ---------------------------------------------------------------------------
# The shortfall estimators, jitted as the engine runs them
# ---------------------------------------------------------------------------
# Called eagerly, every primitive of an estimator compiles on its own (one test of
# tests/test_shortfall.py made 285 compiles). Under `equinox.filter_jit` the sizes
# (Python ints) are static and each estimator is one program per shape and dtype.

expected_shortfall = eqx.filter_jit(kj.expected_shortfall)
tail_statistics = eqx.filter_jit(_shortfall.tail_statistics)
weighted_tail = eqx.filter_jit(_shortfall.weighted_tail)
weighted_tail_statistics = eqx.filter_jit(_shortfall.weighted_tail_statistics)
sortfree_tail_statistics = eqx.filter_jit(_shortfall.sortfree_tail_statistics)

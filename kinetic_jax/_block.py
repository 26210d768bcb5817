"""The independent block: the positions no factor touches, margined by their exact law.

A contract whose every atom (its own, or each parlay leg's) lies on an event of
a cluster with loading 0 (the default hierarchy's Sports and Politics events) is
independent of every factor. The slots of such contracts that share no event
with the rest of the book form the *independent block*; the book's loss splits
into two independent parts,

    L = R + S,   R = the rest's loss (simulated),   S = the block's loss (exact law),

and the base ES_alpha(R + S) is estimated against S's exact law instead of the
simulated S: conditional Monte Carlo over S, the variance left being R's alone
(docs/methodology.md, "The exact-block sampler").

S's law ([`block_law`][], on the host, float64): with quantities that are whole
multiples of g (integers, or after scaling by 10, 100 or 1,000, to the precision
of the engine's dtype), S = S0 - g k, k an integer, so S lives on a lattice of
spacing g. The block's slots joined through parlays' legs form *components*; each
component's joint outcomes are enumerated over the intervals between its events'
cuts (an atom holds on a whole interval or on none of it), and the components'
laws of k are convolved.
A cluster whose held positions all lie in the block gets its own exact law too:
its ES is exact (standard error 0). It comes from the same enumeration (each
component is enumerated once, and a component's intervals are at least as fine
as any of its slots need), so the clusters' laws cost only their convolutions.

In JAX the law is data (a [`BlockLaw`][]): it is the law of the book's
quantities and prices, computed once per call on the host, so derivatives
through it see the block as fixed (use [`sensitivities`][] for those).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Bool, Float

from ._arrays import LAYOUT_CACHE_SIZE, BookArrays
from ._shortfall import sortfree_tail_statistics, weighted_tail_statistics
from ._simulation import atom_cuts_jit

MAX_STATES = 1 << 14  # joint intervals of one component's events
MAX_LATTICE = 1 << 16  # points of the block's lattice
SCALES = (1, 10, 100, 1000)  # quantities scaled to integers
STEPS = 48  # bisection steps on the base's VaR


class BlockLaw(eqx.Module):
    """The independent block of a book as arrays (see module doc).

    - `rest`: 1.0 on slots outside the block (the rows of R), 0.0 inside.
    - `frozen`: 1.0 on the block's events: the importance sampler does not shift
      them (R does not depend on them, so shifting them would only add weight
      noise).
    - `origin`, `spacing`, `probs`: S's law, P(S = origin + spacing j) = probs[j]
      (values increasing; zero-padded to `MAX_LATTICE` points whatever the
      book, so that new quantities keep the compiled program: the fixed width
      costs about 10 % of a reference-book call against a width fitted to its
      512 points).
    - `cluster_exact`: clusters whose held positions all lie in the block; their
      loss's law is `cluster_origin`, `cluster_spacing`, `cluster_probs` (rows of
      other clusters a point mass at 0, never read).
    """

    rest: Float[Array, " C"]
    frozen: Float[Array, " E"]
    origin: Float[Array, ""]
    spacing: Float[Array, ""]
    probs: Float[Array, " L"]
    cluster_exact: Bool[Array, " K"]
    cluster_origin: Float[Array, " K"]
    cluster_spacing: Float[Array, " K"]
    cluster_probs: Float[Array, "K M"]


def independent_slots(arrays: BookArrays) -> np.ndarray:
    """The held slots of the independent block (bool per slot): every atom on an
    event of a loading-0 cluster, and no event shared with a held slot outside
    the block (a parlay with one leg on a loaded event takes its other legs'
    events out of the block, and with them every slot on those events). Empty
    for a book with a liquidation horizon or underlyings (marks, not atoms)."""
    q = np.asarray(arrays.quantity)
    n = q.size
    if arrays.dynamic or arrays.spot.shape[0]:
        return np.zeros(n, bool)
    event = np.asarray(arrays.event)
    legs = np.asarray(arrays.legs)
    free_event = (np.asarray(arrays.loading)[np.asarray(arrays.event_cluster)] == 0) & ~np.asarray(
        arrays.event_raw)
    real = legs < n
    leg_events = np.where(real, event[np.minimum(legs, n - 1)], -1)  # (C, L), -1: none
    atom_free = np.where(real, free_event[np.maximum(leg_events, 0)], True)
    held = q != 0
    block = held & np.all(atom_free, axis=1) & ~np.asarray(arrays.on_path) & ~np.asarray(
        arrays.linear)
    while True:  # events touched by the rest leave the block, with their slots
        taken = np.unique(leg_events[held & ~block])
        shared = np.isin(leg_events, taken[taken >= 0]).any(axis=1)
        if not np.any(block & shared):
            return block
        block &= ~shared


def _lattice(q: np.ndarray, tolerance: float) -> float | None:
    """The largest g with every quantity a whole multiple of it, to `tolerance`
    relative (None: none of `SCALES` makes them integers). The quantities are
    the engine's, rounded to its dtype: in float32, 72.1 is 72.0999985, and
    10 x that is an integer only to float32's precision."""
    for scale in SCALES:
        scaled = q * scale
        if np.all(np.abs(scaled - np.round(scaled)) <= tolerance * np.maximum(1.0, np.abs(scaled))):
            return math.gcd(*(int(abs(round(x))) for x in scaled)) / scale
    return None


def _convolve(law: np.ndarray, component: np.ndarray) -> np.ndarray:
    """``np.convolve(law, component)``; a sparse component (a game: two
    outcomes `q` lattice steps apart) as a sum of shifted copies of `law`, a few
    passes over it instead of `component.size` (the law of a block of 49 games
    and parlays: 125 -> 10 ms)."""
    nonzero = np.flatnonzero(component)
    if nonzero.size * 8 >= component.size:
        return np.convolve(law, component)
    out = np.zeros(law.size + component.size - 1)
    for j in nonzero:
        out[j: j + law.size] += component[j] * law
    return out


class _Component(NamedTuple):
    """One component of the block: its slots, the probability of each joint
    interval of its events (`prob`), and per slot whether it is YES there."""

    slots: tuple[int, ...]
    prob: np.ndarray
    yes: dict[int, np.ndarray]


def _components(idx: np.ndarray, lo, hi, event, legs) -> list[_Component] | None:
    """The components of the slots `idx` (joined through parlays' legs), each
    enumerated over the intervals between its events' cuts (an atom holds on a
    whole interval or on none of it); None if one has more than `MAX_STATES`
    joint intervals."""
    n = legs.shape[0]
    atoms = {int(i): [int(leg) for leg in legs[i] if leg < n] for i in idx}
    parent: dict[int, int] = {}

    def root(e):
        while parent.setdefault(e, e) != e:
            e = parent[e]
        return e

    for slot_atoms in atoms.values():
        first = root(int(event[slot_atoms[0]]))
        for leg in slot_atoms[1:]:
            parent[root(int(event[leg]))] = first
    slots_of: dict[int, list[int]] = {}
    for i, slot_atoms in atoms.items():
        slots_of.setdefault(root(int(event[slot_atoms[0]])), []).append(i)
    events_of: dict[int, list[int]] = {}
    for e in sorted(parent):
        events_of.setdefault(root(e), []).append(e)
    out = []
    for comp in sorted(slots_of):
        slots_c, events = slots_of[comp], events_of[comp]
        legs_used = sorted({leg for i in slots_c for leg in atoms[i]})
        where = {e: j for j, e in enumerate(events)}
        edges = []
        for e in events:  # the intervals between the event's cuts
            cuts = np.unique([c for leg in legs_used if event[leg] == e
                              for c in (lo[leg], hi[leg]) if np.isfinite(c)])
            edges.append(np.concatenate([[-np.inf], cuts, [np.inf]]))
        shape = tuple(len(x) - 1 for x in edges)
        if math.prod(shape) > MAX_STATES:
            return None
        grid = np.indices(shape).reshape(len(shape), -1)  # (events, states)
        prob = np.ones(grid.shape[1])
        for j, x in enumerate(edges):
            cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
            prob *= np.diff(cdf)[grid[j]]
        holds = {}
        for leg in legs_used:  # lo < X <= hi on a whole interval (a, b] or on none of it
            j = where[int(event[leg])]
            a, b = edges[j][:-1][grid[j]], edges[j][1:][grid[j]]
            holds[leg] = (lo[leg] <= a) & (b <= hi[leg])
        yes = {i: np.logical_and.reduce([holds[leg] for leg in atoms[i]]) for i in slots_c}
        out.append(_Component(tuple(slots_c), prob, yes))
    return out


def _law_of(components: list[_Component], slots: np.ndarray, q, price, tolerance: float
            ) -> tuple | None:
    """``(origin, spacing, probs)`` of S = sum over `slots` of q (p - YES), values
    increasing, or None (non-lattice quantities to `tolerance`, a lattice too
    big). `slots` is any set of the `components`' slots: a component's
    enumeration is exact for any of its slots (its intervals are at least as
    fine as theirs). S is that of the quantities on the lattice, g x steps: the
    engine's to its dtype's rounding."""
    idx = np.flatnonzero(slots)
    g = _lattice(q[idx], tolerance)
    if g is None or g == 0:
        return None
    steps = np.zeros(q.size, np.int64)
    steps[idx] = np.round(q[idx] / g)  # q = g * steps on `slots`
    law, k_min = np.ones(1), 0
    for comp in components:
        mine = [i for i in comp.slots if slots[i]]
        if not mine:
            continue
        k = np.zeros(comp.prob.size, np.int64)
        for i in mine:
            k += steps[i] * comp.yes[i]
        law = _convolve(law, np.bincount(k - k.min(), weights=comp.prob))
        k_min += int(k.min())
        if law.size > MAX_LATTICE:
            return None
    s0 = float(np.sum(g * steps[idx] * price[idx]))
    # S = s0 - g k: increasing values are decreasing k.
    top = k_min + law.size - 1
    return s0 - g * top, g, law[::-1]


def block_law(arrays: BookArrays) -> tuple[BlockLaw | None, int]:
    """``(law, positions)``: the [`BlockLaw`][] of `arrays` and the number of held
    positions it covers, or ``(None, 0)`` where the book has no independent
    block or its law is out of reach (quantities on no lattice of `SCALES`, a
    component above `MAX_STATES` joint intervals, a lattice above
    `MAX_LATTICE` points)."""
    block = independent_slots(arrays)
    if not block.any():
        return None, 0
    dtype = arrays.price.dtype
    q = np.asarray(arrays.quantity, np.float64)
    price = np.asarray(arrays.price, np.float64)
    lo, hi = (np.asarray(x, np.float64) for x in atom_cuts_jit(arrays))
    event, legs = np.asarray(arrays.event), np.asarray(arrays.legs)
    # Quantities read to the precision they are held in (float32: 2^-23 relative).
    tolerance = max(float(np.finfo(dtype).eps), 1e-9)
    components = _components(np.flatnonzero(block), lo, hi, event, legs)
    whole = None if components is None else _law_of(components, block, q, price, tolerance)
    if whole is None:
        return None, 0
    cluster = np.asarray(arrays.cluster)
    k = arrays.loading.shape[0]
    held = q != 0
    laws = {}
    for c in range(k):
        mine = held & (cluster == c)
        if mine.any() and not np.any(mine & ~block):
            laws[c] = _law_of(components, mine, q, price, tolerance)
    laws = {c: law for c, law in laws.items() if law is not None}
    cluster_probs = np.zeros((k, MAX_LATTICE))
    cluster_probs[:, 0] = 1.0  # clusters without a law: a point mass at 0 (never read)
    cluster_origin, cluster_spacing = np.zeros(k), np.ones(k)
    for c, (origin, spacing, probs) in laws.items():
        cluster_probs[c, :probs.size] = probs
        cluster_origin[c], cluster_spacing[c] = origin, spacing
    origin, spacing, probs = whole
    padded = np.zeros(MAX_LATTICE)
    padded[:probs.size] = probs
    n_events = arrays.event_cluster.shape[0]
    frozen = np.zeros(n_events)
    used = legs[block]
    frozen[np.unique(event[used[used < q.size]])] = 1.0
    values = dict(rest=~block, frozen=frozen, origin=origin, spacing=spacing, probs=padded,
                  cluster_origin=cluster_origin, cluster_spacing=cluster_spacing,
                  cluster_probs=cluster_probs)
    # One transfer for every leaf (one call per leaf cost a few ms a law).
    law = BlockLaw(**jax.device_put({
        **{name: np.asarray(x, dtype) for name, x in values.items()},
        "cluster_exact": np.array([c in laws for c in range(k)])}))
    return law, int(block.sum())


def empty_law(arrays: BookArrays) -> BlockLaw:
    """The law of an empty block (S = 0, every slot in R): what the exact-block
    sampler runs on for a book without an independent block (or whose law is
    out of reach), so that a block appearing or vanishing with new quantities
    keeps the compiled program. Its base is the self-normalised importance
    estimate of the book's ES, its clusters all sampled."""
    dtype = arrays.price.dtype
    k = arrays.loading.shape[0]
    probs = np.zeros(MAX_LATTICE)
    probs[0] = 1.0
    cluster_probs = np.zeros((k, MAX_LATTICE))
    cluster_probs[:, 0] = 1.0
    f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return BlockLaw(rest=f(np.ones(arrays.quantity.shape[0])),
                    frozen=f(np.zeros(arrays.event_cluster.shape[0])), origin=f(0.0),
                    spacing=f(1.0), probs=f(probs), cluster_exact=jnp.zeros(k, bool),
                    cluster_origin=f(np.zeros(k)), cluster_spacing=f(np.ones(k)),
                    cluster_probs=f(cluster_probs))


# The laws of the last few arrays objects (by identity), with the arrays (so
# that their ids stay theirs): see sampler_law.
_LAWS: OrderedDict[int, tuple[BookArrays, tuple[BlockLaw, int]]] = OrderedDict()
_LAWS_LOCK = threading.Lock()


def clear_laws() -> None:
    """Forgets the laws [`sampler_law`][] keeps (see [`clear_caches`][])."""
    with _LAWS_LOCK:
        _LAWS.clear()


def sampler_law(arrays: BookArrays) -> tuple[BlockLaw, int]:
    """``(law, positions)`` for the exact-block sampler: [`block_law`][], or
    [`empty_law`][] and 0 where that has none.

    Host work (docs/benchmarks.md, "The host layer of a margin call"), kept
    for the last `LAYOUT_CACHE_SIZE` arrays objects, by identity: [`book_arrays`][] hands
    out the same object for the same book, and a BookArrays is immutable."""
    with _LAWS_LOCK:
        hit = _LAWS.get(id(arrays))
        if hit is not None and hit[0] is arrays:
            _LAWS.move_to_end(id(arrays))
            return hit[1]
    law, positions = block_law(arrays)
    out = (empty_law(arrays), 0) if law is None else (law, positions)
    with _LAWS_LOCK:
        _LAWS[id(arrays)] = (arrays, out)
        while len(_LAWS) > LAYOUT_CACHE_SIZE:
            _LAWS.popitem(last=False)
    return out


def lattice_statistics(
    origin: Float[Array, " R"],
    spacing: Float[Array, " R"],
    probs: Float[Array, "R M"],
    confidence: Float[Array, ""],
) -> tuple[Float[Array, " R"], Float[Array, " R"]]:
    """``(es, var)`` of each row's exact lattice law (values origin + spacing j,
    increasing): the weighted Acerbi–Tasche estimator
    ([`weighted_tail_statistics`][]) with the lattice's values, from the top, as
    the draws and their probabilities as the masses, which is the law's exact
    ES."""
    m = probs.shape[-1]
    values = origin[:, None] + spacing[:, None] * jnp.arange(m, dtype=probs.dtype)
    es, _, var, _ = weighted_tail_statistics(jnp.flip(values, -1), jnp.flip(probs, -1),
                                             confidence, 1)
    return es, var


def pairs_excess(
    rest: Float[Array, " Np"],
    weights: Float[Array, " Np"],
    law: BlockLaw,
    confidence: Float[Array, ""],
) -> tuple[Float[Array, ""], Float[Array, " Np"], Float[Array, " Np"]]:
    """``(var, h, mass)`` of R + S from R's weighted draws `rest` (padding:
    weight 0) and S's exact law: each draw's self-normalised mass w / sum(w),
    the VaR v solving P(R + S > v) = 1 - alpha, and each draw's expected excess
    h = E_S[(R_n + S - v)^+] (0 on padding); see [`pairs_tail_statistics`][]."""
    budget = 1 - confidence
    size = law.probs.shape[0]
    dtype = law.probs.dtype
    values = law.origin + law.spacing * jnp.arange(size, dtype=dtype)
    zero = jnp.zeros(1, dtype)
    p_above = jnp.concatenate([jnp.cumsum(law.probs[::-1])[::-1], zero])
    m_above = jnp.concatenate([jnp.cumsum((law.probs * values)[::-1])[::-1], zero])
    live = weights > 0
    mass = weights / jnp.sum(weights)
    r = jnp.where(live, rest, 0.0)

    def above(x):  # per draw, the index into p_above / m_above of S's first value > x
        j = jnp.clip(jnp.floor((x - law.origin) / law.spacing), -1, size - 1)
        return j.astype(jnp.int32) + 1

    # The bisection is on data alone (the ES's derivative at its own VaR does not
    # move the VaR: the envelope theorem), so its bounds carry no tangent.
    r_fixed, mass_fixed = lax.stop_gradient((r, mass))
    highest = jnp.max(jnp.where(law.probs > 0, values, -jnp.inf))
    lo = jnp.min(jnp.where(live, r_fixed, jnp.inf)) + law.origin - 1
    hi = jnp.max(jnp.where(live, r_fixed, -jnp.inf)) + highest + 1

    def moving(state):
        step, lo, hi, _ = state
        mid = 0.5 * (lo + hi)
        return (step < STEPS) & (lo < mid) & (mid < hi)

    def bisect(state):
        step, lo, hi, j_hi = state
        mid = 0.5 * (lo + hi)
        j = above(mid - r_fixed)
        high = jnp.sum(mass_fixed * p_above[j]) > budget
        keep = lambda old, new: jnp.where(high, old, new)  # noqa: E731
        return step + 1, keep(mid, lo), keep(hi, mid), keep(j_hi, j)

    # The upper bound v and the very indices that put P(R + S > v) within the
    # budget: the excess below is evaluated on those, never on a second rounding
    # of (v - R - origin) / spacing, which could count an atom at v as above it
    # and move the ES by (its mass / budget - 1) times the rounding.
    start = (jnp.int32(0), lo, hi, above(hi - r_fixed))
    _, _, var, j = lax.while_loop(moving, bisect, start)
    p, m = p_above[j], m_above[j]
    return var, jnp.where(live, m + p * (r - var), 0.0), mass


def pairs_tail_statistics(
    rest: Float[Array, " Np"],
    weights: Float[Array, " Np"],
    law: BlockLaw,
    confidence: Float[Array, ""],
) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """``(es, standard_error, var)`` of R + S from R's weighted draws `rest`
    (padding: weight 0) and S's exact law.

    Each draw holds the self-normalised mass w / sum(w) (so a book that is all
    block, R = 0, gets its exact ES with standard error 0). The VaR v solves
    P(R + S > v) = 1 - alpha by bisection (at most `STEPS` steps, fewer once the
    midpoint rounds to a bound), each step one index computation and gather per
    draw (the first lattice point above x is floor((x - origin) / spacing) + 1,
    no search); v is the upper bound, and the excess is evaluated on the very
    indices that put that bound's tail within the budget. Then, with h(r) =
    E_S[(r + S - v)^+] = E[S; S > v - r] + P(S > v - r) (r - v),

        ES = v + sum_n mass_n h(R_n) / (1 - alpha),

    whose delta-method standard error is sqrt(Var[w (h(R) - hbar)] / N) /
    (mean(w) (1 - alpha)) with hbar the estimate's own sum_n mass_n h(R_n)."""
    budget = 1 - confidence
    var, h, mass = pairs_excess(rest, weights, law, confidence)
    live = weights > 0
    count = jnp.sum(live, dtype=h.dtype)
    # sum_n mass_n h_n about the first live draw's h: draws whose h are all equal
    # (R = 0: a book all block) give that h exactly, whatever the weights' rounding,
    # so the ES is the same for every seed and its standard error exactly 0.
    anchor = h[jnp.argmax(live)]
    hbar = anchor + jnp.sum(mass * (h - anchor))
    es = var + hbar / budget
    mean_w = jnp.sum(weights) / count
    d = jnp.where(live, weights * (h - hbar), 0.0)  # sums to 0 by hbar's definition
    se = jnp.sqrt(jnp.sum(d * d) / count / count) / (mean_w * budget)
    return es, se, var


def block_statistics(
    losses: Float[Array, "K+2 Np"],
    weights: Float[Array, " Np"],
    law: BlockLaw,
    confidence: Float[Array, ""],
    scenarios: int,
) -> tuple[Float[Array, " K+1"], Float[Array, " K+1"], Float[Array, " K+1"]]:
    """``(es, se, var)`` per cluster and (last) for the whole book from the loss
    rows of the exact-block sampler (K clusters, the book, the rest R): see
    [`exact_block_rows`][]; the clusters' rows by the weighted estimator."""
    k = law.cluster_exact.shape[0]
    es, se, var, _ = sortfree_tail_statistics(losses[: k + 1], weights, confidence, scenarios)
    return exact_block_rows(es, se, var, losses[k + 1], weights, law, confidence)


def exact_block_rows(
    es: Float[Array, " K+1"],
    se: Float[Array, " K+1"],
    var: Float[Array, " K+1"],
    rest: Float[Array, " Np"],
    weights: Float[Array, " Np"],
    law: BlockLaw,
    confidence: Float[Array, ""],
) -> tuple[Float[Array, " K+1"], Float[Array, " K+1"], Float[Array, " K+1"]]:
    """The sampled ``(es, se, var)`` of the K clusters and the book (last), with
    the clusters inside the block replaced by their exact law's (se 0) and the
    book's by the ES of R + S from the rest's losses `rest` and S's law
    ([`pairs_tail_statistics`][]). Under the empty law ([`empty_law`][]: no
    block) the book keeps its sampled figures, the same weighted estimator as
    its clusters', so a book of one cluster has base = that cluster's ES."""
    k = law.cluster_exact.shape[0]
    exact_es, exact_var = lattice_statistics(law.cluster_origin, law.cluster_spacing,
                                             law.cluster_probs, confidence)
    exact = law.cluster_exact
    c_es = jnp.where(exact, exact_es, es[:k])
    c_se = jnp.where(exact, 0.0, se[:k])
    c_var = jnp.where(exact, exact_var, var[:k])
    base, base_se, base_var = lax.cond(
        jnp.all(law.rest > 0),
        lambda: (es[k], se[k], var[k]),
        lambda: pairs_tail_statistics(rest, weights, law, confidence))
    join = lambda x, y: jnp.concatenate([x, y[None]])  # noqa: E731
    return join(c_es, base), join(c_se, base_se), join(c_var, base_var)


@jax.custom_jvp
def _without_derivative(x):
    return x


def _refuse_tangent(primals, tangents):
    (x,), (t,) = primals, tangents
    if not isinstance(t, SymbolicZero):
        raise ValueError(
            "quantity, price, probability, loading: the 'exact_block' sampler's law is "
            "fixed data for the book's values, so a derivative through it would miss the "
            "block's own terms; differentiate the 'importance' sampler's margin, or use "
            "kj.sensitivities")
    return x, t


_without_derivative.defjvp(_refuse_tangent, symbolic_zeros=True)


def held_fixed(arrays: BookArrays, law: BlockLaw | None) -> BookArrays:
    """`arrays` whose values the block's law depends on (quantities, prices,
    probabilities, loadings) refuse differentiation when `law` is given: a
    derivative would hold the law fixed, silently missing the block's terms, so
    `jax.grad` / `jax.jvp` with respect to them raises instead (rho and
    confidence, which the law does not depend on, differentiate as usual)."""
    if law is None:
        return arrays
    return eqx.tree_at(lambda a: (a.quantity, a.price, a.probability, a.loading), arrays,
                       replace_fn=_without_derivative)


def freeze(proposal, law: BlockLaw | None):
    """`proposal` with the block's events unshifted (see [`BlockLaw`][])."""
    if law is None or proposal is None:
        return proposal
    return eqx.tree_at(lambda p: p.event_shift, proposal,
                       proposal.event_shift * (1 - law.frozen)[None, :])


def check_law(law: BlockLaw | None, sampler: str) -> None:
    if law is not None and sampler != "exact_block":
        raise ValueError(f"law: given with sampler {sampler!r}; it is the "
                         f"'exact_block' sampler's")


"""Deterministic stress scenarios (SPEC.md §5.2): exact, no simulation.

A scenario fixes every cluster factor and may force contracts YES or NO:

    f_S           given (a node's value applies to every cluster below it)
    f_U           = R_US R_SS^+ f_S          (conditional mean of the others)
    X_e | f       = a_c f_c + sqrt(1 - a_c^2) eta_e,  events independent given f
    P(X_e in (lo, hi] | f) = Phi((hi - a f_c)/s) - Phi((lo - a f_c)/s),  s = sqrt(1 - a^2)

An atom is the interval of u = Phi(X) its contract is YES on (the cuts the
simulation uses: above (1 - p, 1], below (0, p], outcomes consecutive from 0
with the overround scaling and the last outcome reaching 1 when the event's
probabilities sum to 1). `resolve` restricts an event's latent to the YES
atom of a contract (NO: its complement, two intervals for a middle outcome);
restrictions on one event intersect. Every probability on the event is then
conditional on the restriction, and a parlay's is the product over its legs'
events of the conditional probability of the intersection of its legs' atoms.
The scenario's loss is sum_i q_i (p_i - P(YES_i)), per cluster too.

Under a liquidation horizon (SPEC-horizon.md §6; not specified there) the
scenario is what the horizon reveals: the loss is sum_i q_i (p_i - E[m_h,i | f]),
and since the mark is P(YES | Z) with Z_e | f = a f_c + s eta^Z_e,

    E[m_h | f] = P(X_e in (lo, hi] | f),  X_e | f ~ N(sqrt(r) a f_c, 1 - r a^2),

with r the fraction of the event revealed: tau = min(1, h / T) (r = 1, v1, for
an event resolving by h), and for a binary on an underlying expiring by h, on
the Brownian bridge, r = T / h. A perp or future's expected value change is exact,
(F0 / S0) S0 (exp(sigma sqrt(t r) a f_c - sigma^2 t r a^2 / 2) - 1), S_t at
t = min(T, h), r = t / h (a future expiring by h settles on the bridge).
Parlays take the product over their legs' events, exact when the legs share no
loaded factor after the horizon, an approximation otherwise (their post-horizon
factors F^W are not fixed by the scenario).

Regions are handled exactly as unions of intervals in u; a piece shorter than
1e-9 in u is dropped, the tolerance the worst-case table uses to merge cuts, so
a resolution is possible exactly when the worst-case table has an outcome for
it. The stress matrix P (scenarios x contracts) is built once on the host in
float64 (NumPy, SciPy); the losses are linear in the quantities, and
[`scenario_losses`][] computes them in JAX (differentiable in quantity and
price, with P held fixed).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int
from scipy.special import ndtr, ndtri

from ._errors import BookError
from ._hierarchy import Hierarchy, correlation_of
from ._worst_case import _MERGE, OUTCOME_FULL

if TYPE_CHECKING:
    from ._book import Book, Stress

# Pieces of a region shorter than this in u = Phi(X) are empty: the worst-case
# table's merge tolerance, so both agree on which outcomes are possible.
REGION_TOLERANCE = _MERGE

Region = list[tuple[float, float]]  # disjoint intervals (lo, hi) of u, sorted


def stress_field(i: int, stress: Stress, key: str) -> str:
    return f"stress[{i}] (name {stress.name!r}).{key}"


# ---- intervals of the event latent, in u = Phi(X) ---------------------------------
def atom_intervals(book: Book) -> dict[int, tuple[float, float]]:
    """Contract index -> (lo, hi): the contract is YES iff lo < u <= hi, for every
    non-parlay contract of `book`, with the simulation's probabilities and cuts."""
    probs = book.simulation_probabilities()
    out: dict[int, tuple[float, float]] = {}
    for idx in book.events().values():
        cum = 0.0
        for i in idx:
            c, p = book.contracts[i], probs[i]
            if c.type in ("above", "binary"):
                out[i] = (1.0 - p, 1.0)
            elif c.type == "below":
                out[i] = (0.0, p)
            else:
                out[i] = (cum, min(cum + p, 1.0))
                cum += p
        if book.contracts[idx[0]].type == "outcome" and cum >= 1.0 - OUTCOME_FULL:
            out[idx[-1]] = (out[idx[-1]][0], 1.0)
    return out


def _clean(region: Region) -> Region:
    return [(lo, hi) for lo, hi in region if hi - lo > REGION_TOLERANCE]


def intersect(a: Region, b: Region) -> Region:
    """The intersection of two unions of intervals."""
    return _clean(sorted((max(l1, l2), min(h1, h2)) for l1, h1 in a for l2, h2 in b))


def complement(lo: float, hi: float) -> Region:
    """(0, 1) less (lo, hi]."""
    return _clean([(0.0, lo), (hi, 1.0)])


def event_restrictions(book: Book, i: int, stress: Stress,
                       atoms: dict[int, tuple[float, float]] | None = None) -> dict[str, Region]:
    """Event key -> the region its latent is restricted to by `stress.resolve`
    (events without a resolution are left out). Raises [`BookError`][] naming
    ``stress[i]`` when the resolutions leave an event no region."""
    atoms = atom_intervals(book) if atoms is None else atoms
    index = {c.id: j for j, c in enumerate(book.contracts)}
    regions: dict[str, Region] = {}
    given: dict[str, list[str]] = {}
    for cid, value in stress.resolve:
        j = index[cid]
        event = book.contracts[j].event_key
        lo, hi = atoms[j]
        allowed = [(lo, hi)] if value == "YES" else complement(lo, hi)
        regions[event] = intersect(regions.get(event, [(0.0, 1.0)]), allowed)
        given.setdefault(event, []).append(f"{cid} = {value}")
        if not regions[event]:
            raise BookError(stress_field(i, stress, "resolve"),
                            f"{', '.join(given[event])} leave event {event!r} no outcome "
                            f"(the resolutions cannot all hold)")
    return regions


# ---- factors -----------------------------------------------------------------------
def clusters_below(hierarchy: Hierarchy, name: str) -> list[int]:
    """Indices of the clusters a factor name covers: the cluster itself, or every
    cluster below a hierarchy node."""
    names = hierarchy.cluster_names
    if name in names:
        return [names.index(name)]
    return [k for k, c in enumerate(names) if name in hierarchy.ancestors(c)]


def stress_factors(hierarchy: Hierarchy, factors) -> np.ndarray:
    """Every cluster factor of a scenario (float64, K): the given values (a node's
    on every cluster below it), the others at their conditional mean
    mu_U = R_US R_SS^+ f_S under the LCA correlation R. No factors: all zero.

    `factors` maps node or cluster names to values in standard deviations; the
    names must be valid and must not overlap (checked by [`Book`][])."""
    k = len(hierarchy.cluster_names)
    f = np.zeros(k)
    given = np.zeros(k, bool)
    for name, value in dict(factors).items():
        for c in clusters_below(hierarchy, name):
            f[c] = float(value)
            given[c] = True
    if given.any() and not given.all():
        r = correlation_of(hierarchy)
        s, u = np.flatnonzero(given), np.flatnonzero(~given)
        f[u] = r[np.ix_(u, s)] @ np.linalg.pinv(r[np.ix_(s, s)]) @ f[s]
    return f


# ---- probabilities given the factors ------------------------------------------------
def _mass(region: Region, shift: float, scale: float) -> float:
    """P(Phi(X) in region) for X ~ N(shift, scale^2), accurate in both tails."""
    total = 0.0
    for lo, hi in region:
        a = (float(ndtri(lo)) - shift) / scale if lo > 0 else -math.inf
        b = (float(ndtri(hi)) - shift) / scale if hi < 1 else math.inf
        if a > 0:  # upper tail: difference of survival functions
            total += float(ndtr(-a) - ndtr(-b))
        else:
            total += float(ndtr(b) - ndtr(a))
    return total


def scenario_probabilities(book: Book, i: int, stress: Stress,
                           atoms: dict[int, tuple[float, float]] | None = None) -> np.ndarray:
    """P(YES) of every contract of `book` in scenario `stress` (float64, book
    order), exact: see the module doc."""
    atoms = atom_intervals(book) if atoms is None else atoms
    f = stress_factors(book.hierarchy, stress.factors)
    clusters = book.hierarchy.cluster_names
    loadings = book.hierarchy.loadings
    restricted = event_restrictions(book, i, stress, atoms)
    index = {c.id: j for j, c in enumerate(book.contracts)}
    events = book.events()
    event_of = {j: e for e, idx in events.items() for j in idx}

    reveal = revealed_fractions(book)

    def law(event: str) -> tuple[float, float]:
        k = clusters.index(book.contracts[events[event][0]].cluster)
        a = float(loadings[k])
        r = reveal[events[event][0]]
        return math.sqrt(r) * a * f[k], math.sqrt(1.0 - r * a * a)

    def conditional(event: str, region: Region) -> float:
        shift, scale = law(event)
        allowed = restricted.get(event, [(0.0, 1.0)])
        denominator = _mass(allowed, shift, scale)
        if not denominator > 0:
            raise BookError(stress_field(i, stress, "resolve"),
                            f"the resolutions on event {event!r} have probability 0 to "
                            f"double precision at these factor values")
        return min(1.0, _mass(intersect(region, allowed), shift, scale) / denominator)

    out = np.empty(len(book.contracts))
    h = book.model_horizon_years
    times = book.maturities()
    for j, c in enumerate(book.contracts):
        if c.is_linear:  # expected value change per unit (module doc)
            u = book.underlying(c.underlying)
            k = clusters.index(u.cluster)
            # S_t at t = min(T, h); for t < h, B(t) on the bridge: given f,
            # B(t) ~ N(sqrt(t r) a f, t - t r a^2) with r = t / h.
            a, t = float(loadings[k]), min(times[j] or h, h)
            r = t / h
            drift = (u.vol * math.sqrt(t * r) * a * f[k] - u.vol ** 2 * t * r * a * a / 2)
            out[j] = book.forward_price(c) * math.expm1(drift)
            continue
        if c.type != "parlay":
            out[j] = conditional(event_of[j], [atoms[j]])
            continue
        by_event: dict[str, Region] = {}
        for leg in c.legs:
            leg_j = index[leg]
            e = event_of[leg_j]
            by_event[e] = intersect(by_event.get(e, [(0.0, 1.0)]), [atoms[leg_j]])
        out[j] = math.prod(conditional(e, region) for e, region in by_event.items())
    return out


def revealed_fractions(book: Book) -> list[float]:
    """Per contract, the fraction r of its event's latent revealed by the
    horizon (module doc): 1 in resolution mode and for events resolving by h,
    h / T for the others, T / h for a binary on an underlying expiring by h."""
    h = book.model_horizon_years
    if h is None:
        return [1.0] * len(book.contracts)
    out = []
    for c, t in zip(book.contracts, book.maturities()):
        if t is None:
            out.append(1.0)
        elif t > h:
            out.append(h / t)
        else:
            out.append(t / h if c.underlying is not None else 1.0)
    return out


@functools.lru_cache(maxsize=16)
def stress_matrix(book: Book) -> np.ndarray:
    """P(YES) of every contract in every stress scenario of `book`: (S, n) float64,
    read-only. Cached per book: one margin call needs it twice (the arrays and
    the report's exact stress losses)."""
    atoms = atom_intervals(book)
    rows = [scenario_probabilities(book, i, s, atoms) for i, s in enumerate(book.stress)]
    matrix = np.array(rows).reshape(len(book.stress), len(book.contracts))
    matrix.flags.writeable = False
    return matrix


# ---- losses --------------------------------------------------------------------------
def scenario_losses(
    quantity: Float[Array, " C"],
    price: Float[Array, " C"],
    cluster: Int[Array, " C"],
    stress_yes: Float[Array, "S C"],
    clusters: int,
) -> Float[Array, "S K"]:
    """Loss of each cluster in each stress scenario, sum_i q_i (p_i - P_si), in
    dollars; differentiable in `quantity` and `price` (`stress_yes` is data)."""
    weights = jax.nn.one_hot(cluster, clusters, dtype=quantity.dtype) * quantity[:, None]
    return jnp.matmul(price[None, :] - stress_yes, weights, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass(frozen=True)
class StressResult:
    """One stress scenario's loss in dollars (positive: a loss), whole book and per
    cluster (every cluster of the hierarchy)."""

    name: str
    loss: float
    clusters: dict[str, float]

    def to_dict(self) -> dict:
        return {"name": self.name, "loss": self.loss, "clusters": dict(self.clusters)}


def stress_losses(book: Book) -> tuple[StressResult, ...]:
    """Every stress scenario of `book` with its exact loss (float64), in the
    order of the book file."""
    if not book.stress:
        return ()
    p_yes = stress_matrix(book)
    qty = book.net_quantities()
    q = np.array([qty[c.id] for c in book.contracts])
    price = np.array([c.loss_price for c in book.contracts])
    names = book.hierarchy.cluster_names
    member = np.array([[c.cluster == k for k in names] for c in book.contracts], float)
    member = member.reshape(len(book.contracts), len(names))
    per_cluster = ((price[None, :] - p_yes) * q[None, :]) @ member
    return tuple(
        StressResult(s.name, float(np.sum(row)), {k: float(v) for k, v in zip(names, row)})
        for s, row in zip(book.stress, per_cluster)
    )

"""Joint simulation: correlated cluster factors -> event latents -> contract outcomes.

    F = z L^T,            z ~ N(0, I),  L = cholesky(R)          (scenarios x clusters)
    X_e = a_c F_c + sqrt(1 - a_c^2) eta_e                        (scenarios x events)
    atom_i = lo_i < X_{e(i)} <= hi_i                             (an interval of the latent)
    YES_i = prod over legs l of i of atom_l                      (parlays; else its own atom)

Cuts come from probabilities (SPEC.md §2.2): ``above`` is (Phi^-1(1-p), inf),
``below`` is (-inf, Phi^-1(p)), an ``outcome`` is (Phi^-1(c_before),
Phi^-1(c_before + p)) with c_before the probability of the outcomes listed
before it on its event. Draws are keyed by (event name, scenario block) (see
[`block_noise`][]), so they depend on neither padding, nor chunking, nor the
order of the book.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax, ops
from jax.scipy.special import ndtri
from jaxtyping import Array, Float, PRNGKeyArray

from ._arrays import ABOVE, BELOW, OUTCOME, BookArrays
from ._hierarchy import correlation_matrix
from ._marks import horizon_mark_rows
from ._programs import program
from ._threefry import threefry_normal
from ._worst_case import OUTCOME_FULL

HIGHEST = lax.Precision.HIGHEST
# latent_rows materialises the event latents when each event row feeds at least
# this many contract slots on average.
FEW_EVENTS = 16


def simulation_probability(arrays: BookArrays) -> Float[Array, " C"]:
    """Per contract slot: the probability its atom is simulated with. Prices by
    default (or separately given probabilities); outcome probabilities of an event
    whose prices sum above 1 are divided by the sum."""
    p = jnp.where(arrays.probability_given, arrays.probability, arrays.price)
    is_outcome = arrays.kind == OUTCOME
    n_events = arrays.event_cluster.shape[0]
    total = ops.segment_sum(jnp.where(is_outcome, p, 0.0), arrays.event, num_segments=n_events)
    scale = jnp.maximum(total[arrays.event], 1.0)
    return jnp.where(is_outcome, p / scale, p)


def _safe_ndtri(u):
    """Phi^-1(u) with -inf at u <= 0 and +inf at u >= 1, and zero gradient there."""
    inside = (u > 0) & (u < 1)
    x = ndtri(jnp.where(inside, u, 0.5))
    return jnp.where(inside, x, jnp.where(u <= 0, -jnp.inf, jnp.inf))


def atom_cuts(arrays: BookArrays) -> tuple[Float[Array, " C"], Float[Array, " C"]]:
    """``(lo, hi)``: each slot's atom is YES iff lo < X_event <= hi (latent units).
    Parlays and padding get (-inf, inf): their own atom is always YES."""
    p = simulation_probability(arrays)
    is_outcome = arrays.kind == OUTCOME
    pm = jnp.where(is_outcome, p, 0.0)
    s = pm[arrays.outcome_order]
    # Inclusive sums, and the previous element's inclusive sum: an outcome's lower
    # edge is then bit-for-bit the upper edge of the outcome listed before it.
    incl = jnp.cumsum(s)
    prev = jnp.concatenate([jnp.zeros_like(incl[:1]), incl[:-1]])
    start = prev[arrays.outcome_start]
    lo_sorted, hi_sorted = prev - start, incl - start
    before = jnp.zeros_like(p).at[arrays.outcome_order].set(lo_sorted)
    upto = jnp.zeros_like(p).at[arrays.outcome_order].set(hi_sorted)
    n_events = arrays.event_cluster.shape[0]
    total = ops.segment_sum(pm, arrays.event, num_segments=n_events)[arrays.event]
    # The last outcome of an event whose probabilities sum to 1 reaches u = 1 exactly.
    out_hi = jnp.where(arrays.outcome_last & (total >= 1 - OUTCOME_FULL), 1.0, upto)
    zero, one = jnp.zeros_like(p), jnp.ones_like(p)
    lo_u = jnp.select([arrays.kind == ABOVE, arrays.kind == BELOW, is_outcome],
                      [1 - p, zero, before], zero)
    hi_u = jnp.select([arrays.kind == ABOVE, arrays.kind == BELOW, is_outcome],
                      [one, p, out_hi], one)
    return _safe_ndtri(lo_u), _safe_ndtri(hi_u)


# For host code (the exact-block law, a what-if's new rows): one dispatch instead of
# dozens of eager ops (host time 24 -> 12 ms).
atom_cuts_jit = program(atom_cuts)


class Noise(eqx.Module):
    """The standard-normal draws of one simulation: `factors` z (N, K) for the
    cluster factors and `events` eta (N, E) for each event's own noise."""

    factors: Float[Array, "N K"]
    events: Float[Array, "N E"]


BLOCK = 1024
"""Scenarios per draw block. Draws are keyed by (stream, block), so a scenario's
numbers depend on neither the padding of the arrays, nor the chunk size, nor how
blocks are spread over devices."""


def n_blocks(scenarios: int) -> int:
    return -(-scenarios // BLOCK)


def block_noise(key: PRNGKeyArray, block, n_factors: int, event_seed, dtype) -> Noise:
    """The standard normals of scenario block `block` (BLOCK rows): factor noise
    from ``fold_in(k_factors, block)``, the noise of the event with name hash
    (h1, h2) from ``fold_in(fold_in(fold_in(k_events, h1), h2), block)``."""
    kf, ke = jax.random.split(key)
    # jax.random.normal's draws, bit for bit, by a fused hash (_threefry.py), in
    # float32 whatever the values' dtype: a float64 run sees the same scenarios as a
    # float32 run, and the two agree to float32 rounding.
    z = threefry_normal(jax.random.fold_in(kf, block), (BLOCK, n_factors))

    def draw(seed):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(ke, seed[0]), seed[1]),
                               block)
        return threefry_normal(k, (BLOCK,))

    eta = jax.vmap(draw, out_axes=1)(event_seed)
    return Noise(z.astype(dtype), eta.astype(dtype))


def chunk_noise(key: PRNGKeyArray, arrays: BookArrays, first_block, blocks: int) -> Noise:
    """The normals of `blocks` consecutive blocks from `first_block` (traced)."""
    k = arrays.loading.shape[0]
    noise = jax.vmap(lambda b: block_noise(key, b, k, arrays.event_seed, arrays.rho.dtype))(
        first_block + jnp.arange(blocks))
    return jax.tree.map(lambda x: x.reshape(blocks * BLOCK, x.shape[-1]), noise)


def draw_noise(key: PRNGKeyArray, arrays: BookArrays, scenarios: int) -> Noise:
    """The first `scenarios` draws of the block-keyed stream (see [`block_noise`][])."""
    noise = chunk_noise(key, arrays, 0, n_blocks(scenarios))
    return jax.tree.map(lambda x: x[:scenarios], noise)


def latent_rows(noise: Noise, arrays: BookArrays) -> Float[Array, "E N"]:
    """X_e = a_c F_c + sqrt(1 - a_c^2) eta_e with F = L z (L = cholesky(R)), one row
    per event, scenarios on the last axis; differentiable in rho and the loadings.

    Scenarios lie on the minor axis in this module's kernels: every gather then
    moves whole contiguous rows (an event's latents to each of its contracts, a
    leg's atoms to its parlay), which on a CPU is about twice as fast as gathering
    columns of the (N, E) layout. [`latents_from_noise`][] is the transpose."""
    corr = correlation_matrix(arrays.rho, arrays.lca)
    chol = jnp.linalg.cholesky(corr)
    factors = jnp.matmul(chol, noise.factors.T, precision=HIGHEST)  # (K, N)
    eta = noise.events.T
    a = arrays.loading[arrays.event_cluster][:, None]
    latents = factors[arrays.event_cluster] * a + jnp.sqrt(1 - a * a) * eta
    if arrays.spot.shape[0]:  # underlyings: Brownian-bridge noise is used raw (_marks.py)
        latents = jnp.where(arrays.event_raw[:, None], eta, latents)
    if latents.shape[0] * FEW_EVENTS <= arrays.quantity.shape[0]:
        # Few events, many slots: the latents go through an identity matmul (exact:
        # x * 1 plus zeros), whose operand XLA computes once. Otherwise XLA fuses the
        # event noise (threefry hash and erf_inv, _threefry.py) into each consumer of
        # the slots' gather, once per slot and scenario, and into each of the ~10
        # loops it splits a horizon's marks into: a what-if session of a BTC perp and
        # 1,999 BTC binaries (8 event rows) at 32,768 scenarios opened in 3.5 s, 0.9 s
        # this way (docs/benchmarks.md). With as many events as slots the matmul
        # (E^2 per scenario) costs more than it saves.
        eye = jnp.eye(latents.shape[0], dtype=latents.dtype)
        latents = jnp.matmul(eye, latents, precision=HIGHEST)
    return latents


def latents_from_noise(noise: Noise, arrays: BookArrays) -> Float[Array, "N E"]:
    """The event latents of [`latent_rows`][], one column per event."""
    return latent_rows(noise, arrays).T


def event_latents(
    key: PRNGKeyArray, arrays: BookArrays, scenarios: int
) -> Float[Array, "N E"]:
    """Event latents X_e, standard normal each, correlated through the factors."""
    return latents_from_noise(draw_noise(key, arrays, scenarios), arrays)


def outcomes(
    key: PRNGKeyArray,
    arrays: BookArrays,
    scenarios: int,
    temperature: Float[Array, ""] | float | None = None,
) -> Float[Array, "N C"]:
    """Simulated YES of every contract slot in every scenario.

    **Arguments:**

    - `key`: PRNG key; the same key gives the same scenarios.
    - `arrays`: the book.
    - `scenarios`: number of draws N (static).
    - `temperature`: None for hard 0/1 outcomes; else see [`contract_outcomes`][].

    **Returns:** an (N, C) array of outcomes in [0, 1], in the values' dtype.
    """
    return contract_outcomes(event_latents(key, arrays, scenarios), arrays, temperature)


def contract_outcomes(
    latents: Float[Array, "N E"],
    arrays: BookArrays,
    temperature: Float[Array, ""] | float | None = None,
) -> Float[Array, "N C"]:
    """YES of every contract slot given the event latents (one column per event):
    [`outcome_rows`][], one column per contract slot."""
    return outcome_rows(latents.T, arrays, temperature).T


def outcome_rows(
    latents: Float[Array, "E N"],
    arrays: BookArrays,
    temperature: Float[Array, ""] | float | None = None,
) -> Float[Array, "C N"]:
    """YES of every contract slot given the event latents, one row per slot and
    per event, scenarios on the last axis (see [`latent_rows`][]).

    With a liquidation horizon (``arrays.dynamic``) these are the marks at the
    horizon given the revealed latents (_marks.py); resolved atoms as below.

    With `temperature` None the outcomes are hard 0/1. Otherwise each atom's
    indicator is replaced by ``sigmoid((X - lo)/t) * sigmoid((hi - X)/t)`` (latent
    units; parlays multiply their legs'), which tends to the indicator as t -> 0
    and is differentiable in prices, rho and loadings.
    """
    lo, hi = atom_cuts(arrays)
    if arrays.dynamic:
        # A liquidation horizon: each slot's mark given the revealed latents.
        return horizon_mark_rows(latents, arrays, lo, hi, temperature)
    x = latents[arrays.event]  # (C, N): whole rows
    lo, hi = lo[:, None], hi[:, None]
    n = x.shape[1]
    dtype = arrays.price.dtype
    if temperature is None:
        atom = jnp.concatenate([(x > lo) & (x <= hi), jnp.ones((1, n), bool)])
        yes = atom[arrays.legs[:, 0]]
        for leg in range(1, arrays.legs.shape[1]):
            yes = yes & atom[arrays.legs[:, leg]]
        return yes.astype(dtype)
    log_atom = jax.nn.log_sigmoid((x - lo) / temperature) + jax.nn.log_sigmoid(
        (hi - x) / temperature
    )
    log_atom = jnp.concatenate([log_atom, jnp.zeros((1, n), dtype)])
    log_yes = log_atom[arrays.legs[:, 0]]
    for leg in range(1, arrays.legs.shape[1]):
        log_yes = log_yes + log_atom[arrays.legs[:, leg]]
    return jnp.exp(log_yes)

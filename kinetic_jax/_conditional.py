"""Unbiased sensitivities of expected shortfall by conditioning on each event's noise.

Prices (through their cuts), rho and loadings move the *jumps* of the loss: a
contract flips when its event latent X_e = a F_c + s eta_e (s = sqrt(1 - a^2))
crosses a cut. Pathwise derivatives of indicators are zero and likelihood ratios
of the latents blow up as 1/s^2 (loadings near 1), so neither is usable. Instead,
for each event, condition on everything but its own noise eta_e (standard normal
under the model) and integrate it exactly (smoothed perturbation analysis;
Fu & Hu 1997, Glasserman 1991). With g = (L_r - v)^+ for a loss row r (a cluster,
or the whole book) and v its VaR, the envelope theorem gives

    d ES_r / d theta = E[ d/d theta (L_r - v)^+ ] / (1 - alpha)
      = E[ sum_j phi(eta*_j) (g(X_e -> c_j^-) - g(X_e -> c_j^+)) d eta*_j / d theta ]
        / (1 - alpha)  +  (marks: q_i for a price in row r),

summed over every cut c_j (one per non-parlay contract: an ``above``'s lower
cut, a ``below``'s or an ``outcome``'s upper cut), with eta*_j = (c_j - a F_c) / s
the noise at which event e crosses c_j. g(X_e -> c^-/+) is the row loss with
event e's latent just below/above the cut and everything else as simulated: it
flips the contracts on the event and the parlays with a leg on it
(``BookArrays.touch``). The estimator is unbiased at every scenario count (no
smoothing temperature) and is exact in the limit; its noise comes only from the
scenarios near each row's VaR.

eta*_j is linear in the factor noise z (F = chol(R) z), so the scenario sums
collapse to two aggregates per (batch, cut, row), S0 = sum A and S1 = sum A z,
with A the stopped coefficient above; a tiny surrogate of theta built from them
gives every derivative by one reverse pass, and its spread over the streamed
chunks of scenarios (at least `MIN_BATCHES` of them when the scenarios allow)
gives each derivative's standard error (batch means).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.stats import norm
from jaxtyping import Array, Float

from ._arrays import ABOVE, BELOW, OUTCOME, PARLAY, BookArrays, row_membership
from ._hierarchy import correlation_matrix
from ._sampler import Proposal, chunk_size, row_losses, stream
from ._simulation import BLOCK, HIGHEST, atom_cuts, contract_outcomes, latents_from_noise

MIN_BATCHES = 16
_ELEMENTS = 1 << 24  # (scenario, cut, touched, leg) entries per chunk


def boundary_cuts(arrays: BookArrays) -> tuple[Float[Array, " C"], Array]:
    """Each slot's own cut (``above``: lo; ``below``/``outcome``: hi) and whether
    it is a real, finite jump of its event."""
    lo, hi = atom_cuts(arrays)
    cut = jnp.where(arrays.kind == ABOVE, lo, hi)
    kinds = (arrays.kind == ABOVE) | (arrays.kind == BELOW) | (arrays.kind == OUTCOME)
    valid = kinds & jnp.isfinite(cut)
    return jnp.where(valid, cut, 0.0), valid


class Aggregates(eqx.Module):
    """Per batch b (a streamed chunk of scenarios), cut j and row r:
    S0 = sum_n A_njr and S1 = sum_n A_njr z_n (K factors), and the tail aggregates
    for quantities: tau = sum_n take_rn and Y = sum_n take_rn YES_n (C contracts)."""

    s0: Float[Array, "B C R"]
    s1: Float[Array, "B C R K"]
    tau: Float[Array, "B R"]
    yes: Float[Array, "B R C"]


def _inside(lo, hi, c, left: bool):
    """Whether an atom (lo, hi] holds the latent just left (c^-) or right (c^+) of c."""
    if left:
        return (lo < c) & (c <= hi)
    return (lo <= c) & (c < hi)


def _event_side_loss(arrays: BookArrays, lo, hi, cut, left: bool) -> Float[Array, " C"]:
    """For each cut j: sum over the non-parlay contracts t on its event of q_t YES_t
    with the latent just left/right of c_j (one row of contracts at a time)."""
    on = (arrays.kind != PARLAY) & (arrays.quantity != 0)

    def row(j):
        same = (arrays.event == arrays.event[j]) & on
        return jnp.sum(jnp.where(same & _inside(lo, hi, cut[j], left), arrays.quantity, 0.0))

    return lax.map(row, jnp.arange(cut.shape[0]), batch_size=256)


def aggregate_chunk(arrays: BookArrays, scenarios: int) -> tuple[int, int]:
    """``(chunk, sub)``: scenarios per streamed chunk of the aggregation pass, and
    the equal sub-batches each chunk splits into so that there are at least
    `MIN_BATCHES` batches for the standard errors (when the scenarios allow)."""
    n_slots, width = arrays.touch_parlay.shape
    per = max(1, n_slots * width * arrays.legs.shape[1])
    limit = min(_ELEMENTS // per, -(-scenarios // MIN_BATCHES))
    chunk = chunk_size(arrays, scenarios, max(BLOCK, limit // BLOCK * BLOCK))
    count = -(-scenarios // chunk)
    sub = 1
    while sub * count < MIN_BATCHES and sub < 16:
        sub *= 2
    return chunk, sub


def aggregates(
    arrays: BookArrays,
    key,
    scenarios: int,
    proposal: Proposal | None,
    var: Float[Array, " R"],
    take: Float[Array, "R Np"],
    confidence: Float[Array, ""],
) -> Aggregates:
    """Streams the scenarios again (same draws) and accumulates the aggregates."""
    fixed = lax.stop_gradient(arrays)
    lo, hi = atom_cuts(fixed)
    cut, valid = boundary_cuts(fixed)
    n_slots = fixed.kind.shape[0]
    n_events = fixed.event_cluster.shape[0]
    dtype = fixed.price.dtype
    one = lambda c: row_membership(fixed, c)  # noqa: E731
    # Non-parlay contracts on the cut's event: their loss moves in the event's
    # cluster row and the book row.
    non_parlay = (fixed.kind != PARLAY).astype(dtype)
    q_event = (jax.nn.one_hot(fixed.event, n_events, dtype=dtype)
               * (fixed.quantity * non_parlay)[:, None])  # (C, E)
    side_np = {s: _event_side_loss(fixed, lo, hi, cut, s) for s in (True, False)}
    ev_j = fixed.event
    rows_np = one(fixed.event_cluster[ev_j])  # (C, R)
    # Parlays with a leg on the cut's event: YES recomputed with the event moved.
    par = fixed.touch_parlay  # (C, P)
    legs = fixed.legs[par]  # (C, P, L); n_slots means "always YES"
    safe = jnp.minimum(legs, n_slots - 1)
    on_event = ((fixed.event[safe] == ev_j[:, None, None]) & (fixed.kind[safe] != PARLAY)
                & (legs < n_slots))
    side_leg = {s: _inside(lo[safe], hi[safe], cut[:, None, None], s).astype(dtype)
                for s in (True, False)}
    w_par = fixed.quantity[par][..., None] * one(fixed.cluster[par])  # (C, P, R)
    chol = jnp.linalg.cholesky(correlation_matrix(fixed.rho, fixed.lca))
    cl_j = fixed.event_cluster[ev_j]  # cluster of each cut's event
    a_j = fixed.loading[cl_j]
    s_j = jnp.sqrt(1 - a_j * a_j)
    chunk, sub = aggregate_chunk(fixed, scenarios)
    count = -(-scenarios // chunk)

    def fn(noise, index, log_w):
        x = latents_from_noise(noise, fixed)
        yes = contract_outcomes(x, fixed)  # (n, C)
        atom = jnp.concatenate([yes, jnp.ones((yes.shape[0], 1), yes.dtype)], axis=1)
        losses = row_losses(fixed, yes)  # (n, R)
        ev_now = jnp.matmul(yes, q_event, precision=HIGHEST)[:, ev_j]  # (n, C)
        leg_now = atom[:, legs]  # (n, C, P, L)
        par_now = yes[:, par]  # (n, C, P)

        def delta(left):
            d_np = ev_now - side_np[left][None, :]
            moved = jnp.prod(jnp.where(on_event[None], side_leg[left][None], leg_now), -1)
            d_par = jnp.einsum("njp,jpr->njr", par_now - moved, w_par, precision=HIGHEST)
            return d_np[..., None] * rows_np[None] + d_par  # (n, C, R)

        base = losses[:, None, :] - var[None, None, :]
        jump = jnp.maximum(base + delta(True), 0.0) - jnp.maximum(base + delta(False), 0.0)
        factors = jnp.matmul(noise.factors, chol.T, precision=HIGHEST)
        eta = (cut[None, :] - a_j[None, :] * factors[:, cl_j]) / s_j[None, :]
        w = jnp.where(index < scenarios, jnp.exp(log_w), 0.0)
        coef = jnp.where(valid[None, :], w[:, None] * norm.pdf(eta), 0.0)[..., None] * jump
        coef = coef / (scenarios * (1 - confidence))  # (n, C, R)
        t = jnp.where((index < scenarios)[:, None],
                      take[:, jnp.minimum(index, take.shape[1] - 1)].T, 0.0)
        split = lambda v: v.reshape(sub, v.shape[0] // sub, *v.shape[1:])  # noqa: E731
        coef, t, z, yes = split(coef), split(t), split(noise.factors), split(yes)
        s0 = jnp.sum(coef, axis=1)
        s1 = jnp.einsum("bnjr,bnk->bjrk", coef, z, precision=HIGHEST)
        tau = jnp.sum(t, axis=1)
        y = jnp.einsum("bnr,bnc->brc", t, yes, precision=HIGHEST)
        return s0, s1, tau, y

    out = stream(fixed, key, scenarios, chunk, proposal, fn, per_scenario=False)
    return Aggregates(*(v.reshape(count * sub, *v.shape[2:]) for v in out))


def jump_surrogate(arrays: BookArrays, agg: Aggregates) -> Float[Array, "B R"]:
    """sum_n A_nj eta*_nj per batch and row, as a function of prices (cuts), rho
    and loadings; its gradient is the jump term of the module doc."""
    cut, _ = boundary_cuts(arrays)
    chol = jnp.linalg.cholesky(correlation_matrix(arrays.rho, arrays.lca))
    cl_j = arrays.event_cluster[arrays.event]
    a_j = arrays.loading[cl_j]
    s_j = jnp.sqrt(1 - a_j * a_j)
    lz = jnp.einsum("jk,bjrk->bjr", chol[cl_j], agg.s1, precision=HIGHEST)
    return jnp.sum((cut[None, :, None] * agg.s0 - a_j[None, :, None] * lz)
                   / s_j[None, :, None], axis=1)


def tail_surrogate(arrays: BookArrays, agg: Aggregates) -> Float[Array, "B R"]:
    """Per batch b and row r: sum_i [i in r] q_i (p_i - Y_bi / tau_b), the batch's
    estimate of the tail mean of the row loss with outcomes held fixed (its
    gradient in quantities is E[p_i - YES_i | tail]). Prices enter with a stopped
    gradient: their mark effect, q_i exactly, is added without noise by the caller."""
    qm = arrays.quantity[:, None] * row_membership(arrays)  # (C, R)
    tau = agg.tau[..., None]
    mean_yes = jnp.where(tau > 0, agg.yes / jnp.where(tau > 0, tau, 1.0),
                         jnp.sum(agg.yes, 0) / jnp.maximum(jnp.sum(agg.tau, 0), 1e-30)[:, None])
    price = lax.stop_gradient(arrays.price)
    return jnp.einsum("c,cr->r", price, qm)[None] - jnp.einsum("brc,cr->br", mean_yes, qm,
                                                                precision=HIGHEST)


def mark_surrogate(arrays: BookArrays) -> Float[Array, " R"]:
    """sum_i [i in r] q_i p_i: the marks' (exact) share of d ES_r / d p_i = q_i, as
    the whole tail holds mass 1 - alpha."""
    return jnp.einsum("c,cr->r", arrays.price * lax.stop_gradient(arrays.quantity),
                      row_membership(arrays))

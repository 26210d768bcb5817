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
from jaxtyping import Array, Float, Int

from ._arrays import ABOVE, BELOW, OUTCOME, PARLAY, BookArrays, row_membership
from ._hierarchy import correlation_matrix
from ._sampler import Proposal, chunk_size, outcome_losses, stream
from ._simulation import BLOCK, HIGHEST, atom_cuts, latent_rows, outcome_rows

MIN_BATCHES = 16
_ELEMENTS = 1 << 20  # (scenario, cut, touched, leg) entries per chunk (cache-sized)


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


def touched_rows(arrays: BookArrays) -> tuple[Int[Array, "C T"], Float[Array, "C T R"]]:
    """For each cut j, the loss rows its crossing can move: its event's cluster,
    the whole book and the cluster of each parlay with a leg on the event
    (``touch_parlay``), repeats dropped; with their one-hot maps onto the R rows.
    When that list is no shorter than R, every row (T = R)."""
    n_rows = arrays.loading.shape[0] + 1
    n_slots, width = arrays.touch_parlay.shape
    if 2 + width >= n_rows:
        cand = jnp.broadcast_to(jnp.arange(n_rows), (n_slots, n_rows))
        return cand, jnp.broadcast_to(jnp.eye(n_rows, dtype=arrays.price.dtype),
                                      (n_slots, n_rows, n_rows))
    own = arrays.event_cluster[arrays.event]
    book = jnp.full_like(own, n_rows - 1)
    cand = jnp.concatenate([own[:, None], book[:, None], arrays.cluster[arrays.touch_parlay]],
                           axis=1)  # (C, T)
    t = cand.shape[1]
    earlier = jnp.tril(jnp.ones((t, t), bool), k=-1)  # [t, t']: t' < t
    repeat = jnp.any((cand[:, :, None] == cand[:, None, :]) & earlier[None], axis=2)
    to_rows = jax.nn.one_hot(cand, n_rows, dtype=arrays.price.dtype)
    return cand, jnp.where(repeat[..., None], 0.0, to_rows)


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
    # A cut moves at most its event's cluster row, the book row and its parlays'
    # rows: the scenario work runs on those T candidates only (scattered back to the
    # R rows after the scenario sums).
    cand, to_rows = touched_rows(fixed)  # (C, T), (C, T, R)
    rows_np = jnp.einsum("jr,jtr->jt", rows_np, to_rows)
    w_par = jnp.einsum("jpr,jtr->jpt", w_par, to_rows)
    chol = jnp.linalg.cholesky(correlation_matrix(fixed.rho, fixed.lca))
    cl_j = fixed.event_cluster[ev_j]  # cluster of each cut's event
    a_j = fixed.loading[cl_j]
    s_j = jnp.sqrt(1 - a_j * a_j)
    width = par.shape[1]
    side_par = {s: jnp.prod(jnp.where(on_event, side_leg[s], 1.0), -1) for s in (True, False)}
    chunk, sub = aggregate_chunk(fixed, scenarios)
    count = -(-scenarios // chunk)
    # Each chunk's tail masses are one contiguous slice (padded past the run).
    take = jnp.pad(take, ((0, 0), (0, max(0, count * chunk - take.shape[1]))))
    scale = scenarios * (1 - confidence)

    # Scenarios on the minor axis throughout (see _simulation.latent_rows): every
    # gather moves whole rows and every product is a well-shaped matrix product.
    def fn(noise, index, log_w):
        yes = outcome_rows(latent_rows(noise, fixed), fixed)  # (C, n)
        n = yes.shape[1]
        losses = outcome_losses(fixed, yes)  # (R, n)
        # Each event's non-parlay YES quantity (an exact 0/1 matrix product over the
        # E events), each touched parlay's YES and the NO count of its legs off the
        # event (a parlay stays YES across the cut iff none of those is NO): row
        # gathers, linear in the slots (as 0/1 products over the C slots they were
        # quadratic: 2 x 2,048^2 per draw on a 2,000-contract book, 2/3 of its call).
        ev_now = jnp.matmul(q_event.T, yes, precision=HIGHEST)[ev_j]  # (C, n)
        par_now = yes[par]  # (C, P, n)
        no = 1 - jnp.concatenate([yes, jnp.ones((1, n), dtype)])  # row C: "always YES"
        off_no = jnp.sum(jnp.where(on_event[..., None], 0.0, no[legs]), axis=2)  # (C, P, n)
        rest = (off_no == 0).astype(dtype)

        def delta(left):
            d_np = ev_now - side_np[left][:, None]
            # Written out over the (few) parlay slots p: a product batched over the
            # cuts with a contraction of length P lowers to a loop of tiny products
            # on a CPU (it took 60 % of the pass and half its compile).
            change = par_now - rest * side_par[left][:, :, None]  # -1, 0, 1: exact
            d_par = sum(w_par[:, p, :, None] * change[:, p, None, :] for p in range(width))
            return d_np[:, None, :] * rows_np[:, :, None] + d_par  # (C, T, n)

        # A row gather: an infinite VaR (a row no draw reaches) must not meet a 0
        # in a product.
        base = (losses - var[:, None])[cand]  # (C, T, n)
        jump = jnp.maximum(base + delta(True), 0.0) - jnp.maximum(base + delta(False), 0.0)
        factors = jnp.matmul(chol, noise.factors.T, precision=HIGHEST)  # (K, n)
        eta = (cut[:, None] - a_j[:, None] * factors[cl_j]) / s_j[:, None]  # (C, n)
        live = index < scenarios
        w = jnp.where(live, jnp.exp(log_w), 0.0)
        coef = jnp.where(valid[:, None], w[None, :] * norm.pdf(eta), 0.0)[:, None, :] * jump
        coef = (coef / scale).reshape(n_slots, cand.shape[1], sub, n // sub)  # (C, T, b, m)
        t = lax.dynamic_slice_in_dim(take, index[0], n, axis=1)
        t = jnp.where(live[None, :], t, 0.0).reshape(-1, sub, n // sub)  # (R, b, m)
        z = noise.factors.T.reshape(-1, sub, n // sub)  # (K, b, m)
        s0 = jnp.einsum("jtb,jtr->bjr", jnp.sum(coef, axis=-1), to_rows, precision=HIGHEST)
        s1 = jnp.einsum("bjtk,jtr->bjrk",
                        jnp.einsum("jtbm,kbm->bjtk", coef, z, precision=HIGHEST), to_rows,
                        precision=HIGHEST)
        tau = jnp.sum(t, axis=-1).T
        y = jnp.einsum("rbm,cbm->brc", t, yes.reshape(n_slots, sub, n // sub),
                       precision=HIGHEST)
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
    # As contractions over the cuts j (not a product summed over axis 1): their
    # transposes, vmapped over batches and figures by the Jacobian, are matrix
    # products, not a broadcast product reduced over the R rows (2.7 + 1.0 s of a
    # 2,000-contract book's call at 32,768 scenarios).
    return (jnp.einsum("bjr,j->br", agg.s0, cut / s_j, precision=HIGHEST)
            - jnp.einsum("bjr,j->br", lz, a_j / s_j, precision=HIGHEST))


def pooled_yes(agg: Aggregates) -> Float[Array, "R C"]:
    """The tail mean of YES per row over every batch: what a batch whose tail holds
    no draw (tau = 0) uses in [`tail_surrogate`][]."""
    return jnp.sum(agg.yes, 0) / jnp.maximum(jnp.sum(agg.tau, 0), 1e-30)[:, None]


def tail_surrogate(arrays: BookArrays, agg: Aggregates,
                   pooled: Float[Array, "R C"] | None = None) -> Float[Array, "B R"]:
    """Per batch b and row r: sum_i [i in r] q_i (p_i - Y_bi / tau_b), the batch's
    estimate of the tail mean of the row loss with outcomes held fixed (its
    gradient in quantities is E[p_i - YES_i | tail]). Prices enter with a stopped
    gradient: their mark effect, q_i exactly, is added without noise by the caller.
    A batch with an empty tail takes `pooled` (default: [`pooled_yes`][] of `agg`;
    pass the whole run's when `agg` holds some of its batches only)."""
    qm = arrays.quantity[:, None] * row_membership(arrays)  # (C, R)
    tau = agg.tau[..., None]
    pooled = pooled_yes(agg) if pooled is None else pooled
    mean_yes = jnp.where(tau > 0, agg.yes / jnp.where(tau > 0, tau, 1.0), pooled)
    price = lax.stop_gradient(arrays.price)
    return jnp.einsum("c,cr->r", price, qm)[None] - jnp.einsum("brc,cr->br", mean_yes, qm,
                                                                precision=HIGHEST)


def mark_surrogate(arrays: BookArrays) -> Float[Array, " R"]:
    """sum_i [i in r] q_i p_i: the marks' (exact) share of d ES_r / d p_i = q_i, as
    the whole tail holds mass 1 - alpha."""
    return jnp.einsum("c,cr->r", arrays.price * lax.stop_gradient(arrays.quantity),
                      row_membership(arrays))

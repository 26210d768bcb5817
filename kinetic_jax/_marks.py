"""Marks at the liquidation horizon (SPEC-horizon.md §6.2, §6.5).

With a horizon h each event's latent at resolution splits into what is revealed
by h and what is not:

    X_e = sqrt(tau_e) Z_e + sqrt(1 - tau_e) W_e,     tau_e = min(1, h / T_e),

where Z (the revealed state) has exactly v1's factor law and is what the engine
simulates, and W is an independent copy of it. A contract's loss over h is
q (p - m_h) with m_h = P(YES | Z), in closed form:

    m_h = Phi((hi - sqrt(tau) Z) / sqrt(1 - tau)) - Phi((lo - sqrt(tau) Z) / sqrt(1 - tau))

for tau < 1, and the v1 indicator 1{lo < Z <= hi} when the event resolves by h
(tau = 1). Outcome marks of one event partition 1 with the remainder, as the
intervals do.

A parlay's mark is P(all legs YES | Z). Legs on one event intersect their
intervals; resolved legs contribute their indicator. Live legs are conditionally
independent given Z *and* the post-horizon factors F^W, with

    X_e | Z_e, F^W ~ N(sqrt(tau) Z_e + sqrt(1 - tau) a_c F^W_c, (1 - tau)(1 - a_c^2)),

so the mark is the product of leg marks when no two of the parlay's legs sit in
correlated loaded clusters (a_c a_d R_cd = 0, e.g. independent games), and
otherwise a Gauss–Hermite integral over the (at most three) loaded factors of
its legs, 64 to 256 nodes per dimension by the largest loading (the integrand
steepens as a -> 1), on a product grid (never one inner draw).
With F^W = chol(R_sub) U, U ~ N(0, I), the last coordinate of U moves only the
last cluster's factor; where that cluster holds one live event of the parlay,
the expectation over it is exact in closed form (the leg's interval probability
with that term's variance added), so the grid spans one dimension fewer: 64
nodes, not 4,096, for a parlay on two clusters loaded 0.9.
Which parlays need the integral, and over which clusters, is fixed when the book
is laid out (from the hierarchy's values and the legs live at the book's horizon):
a horizon that makes a leg live or resolved changes these shapes (one more
program); any other change of the horizon does not. Sweeps over the horizon lay
the book out at the axis's shortest horizon.

Without a horizon (``BookArrays.dynamic`` False) none of this runs: outcomes are
the v1 indicators, through v1's code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import ndtr
from jaxtyping import Array, Float

from ._hierarchy import correlation_matrix

NODES = 32
"""The fewest Gauss–Hermite nodes per factor dimension (SPEC-horizon.md §6.5); a
book uses ``BookArrays.quad_nodes`` (64 to 256 by its largest loading)."""
_QUAD_ELEMENTS = 1 << 22  # (scenario, parlay, node, leg) entries per quadrature step


def gauss_hermite(dims: int, nodes: int = NODES) -> tuple[np.ndarray, np.ndarray]:
    """A product grid for E[f(U)], U ~ N(0, I_dims): ``(points (G, dims), weights (G,))``
    with G = nodes ** dims and weights summing to 1."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    x, w = x * np.sqrt(2.0), w / np.sqrt(np.pi)
    grids = np.meshgrid(*([x] * dims), indexing="ij")
    weights = np.meshgrid(*([w] * dims), indexing="ij")
    points = np.stack([g.reshape(-1) for g in grids], axis=-1)
    return points, np.prod(np.stack([g.reshape(-1) for g in weights]), axis=0)


def event_tau(arrays) -> Float[Array, " C"]:
    """tau = min(1, h / T) per slot (1 where the event resolves by the horizon;
    padding and parlay slots, undated, get 0 and are never used as such)."""
    t, h = arrays.maturity, arrays.horizon
    done = t <= h
    return jnp.where(done, 1.0, h / jnp.where(done, 1.0, t)).astype(arrays.price.dtype)


def interval_probability(mean, sd, lo, hi):
    """P(lo < mean + sd * eps <= hi), eps ~ N(0, 1), sd > 0; lo, hi may be
    infinite. Written with the upper tail where that is the smaller side (two
    Phi evaluations either way), so a small probability keeps its digits; no NaN
    in values or gradients."""
    lo_ok, hi_ok = jnp.isfinite(lo), jnp.isfinite(hi)
    a = (jnp.where(lo_ok, lo, 0.0) - mean) / sd
    b = (jnp.where(hi_ok, hi, 0.0) - mean) / sd
    a = jnp.where(lo_ok, a, -jnp.inf)
    b = jnp.where(hi_ok, b, jnp.inf)
    # a > 0: Phi(-a) - Phi(-b); else Phi(b) - Phi(a); both are |Phi(s b) - Phi(s a)|.
    flip = jnp.where(a > 0, -1.0, 1.0).astype(mean.dtype)
    return jnp.abs(ndtr(flip * b) - ndtr(flip * a))


def safe_sqrt(x):
    """sqrt(x) for x >= 0 with a finite (zero) gradient at 0."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def indicator(x, lo, hi, temperature=None):
    """1{lo < x <= hi}, or its v1 sigmoid smoothing at `temperature`."""
    if temperature is None:
        return ((x > lo) & (x <= hi)).astype(lo.dtype)
    return jnp.exp(jax.nn.log_sigmoid((x - lo) / temperature)
                   + jax.nn.log_sigmoid((hi - x) / temperature))


def atom_marks(z, tau, lo, hi, temperature=None):
    """The mark P(lo < X <= hi | Z = z) of an interval on an event with revealed
    fraction `tau` (broadcasting): the indicator (smoothed at `temperature` if
    given) where tau = 1, the closed form of the module doc elsewhere."""
    resolved = tau >= 1
    sd = jnp.sqrt(jnp.where(resolved, 1.0, 1.0 - tau))
    live = interval_probability(safe_sqrt(tau) * z, sd, lo, hi)
    return jnp.where(resolved, indicator(z, lo, hi, temperature), live)


def path_values(latents: Float[Array, "E N"], arrays
                ) -> tuple[Float[Array, "C N"], Float[Array, "C N"]]:
    """Contracts on underlyings (SPEC-horizon.md §6.3-6.5), from the event
    latents (one row per event, scenarios on the last axis): each slot's latent —
    Z_u for a binary expiring after h, X = B_u(T) / sqrt(T) on the Brownian bridge
    for one expiring by h — and each linear slot's value change per unit,
    (F0 / S0)(S_t - S0) at t = min(T, h) with S_t = S0 exp(sigma B_u(t) - sigma^2 t / 2);
    one row per slot.

    The bridge: with W an independent Brownian motion sampled at the underlying's
    sorted expiries (increments from the points' raw noise) and at h,
    B_u(T) = (T / h) B_u(h) + W(T) - (T / h) W(h) for T <= h, B_u(h) = sqrt(h) Z_u.
    """
    h = arrays.horizon
    col = lambda v: v[:, None]  # noqa: E731 - a per-group or per-slot value, every scenario
    z_u = latents[arrays.under_latent]  # (U, N)
    b_h = jnp.sqrt(h) * z_u
    t = arrays.group_time
    xi = latents[arrays.group_event]  # (G, N)
    incr = col(safe_sqrt(jnp.maximum(t - arrays.group_prev, 0.0))) * xi
    w = jnp.matmul(arrays.group_chain, incr, precision=lax.Precision.HIGHEST)  # W(T_g)
    # W(h) = W(T_m) + sqrt(h - T_m) xi_h, T_m the last expiry at or before h. A
    # padding group (time 1, no chain of its own) is no expiry: at h = 1 year it
    # would count as one.
    real = jnp.diagonal(arrays.group_chain) > 0
    last = (real & (t <= h) & (arrays.group_next > h)).astype(w.dtype)
    n_u = arrays.spot.shape[0]
    seg = lambda v: jax.ops.segment_sum(v, arrays.group_under, num_segments=n_u)  # noqa: E731
    w_m = seg(w * col(last))
    t_m = seg(t * last)
    w_h = w_m + col(safe_sqrt(jnp.maximum(h - t_m, 0.0))) * latents[arrays.under_hnoise]
    frac = col(jnp.where(t <= h, t / h, 0.0))
    b_t = frac * b_h[arrays.group_under] + w - frac * w_h[arrays.group_under]  # (G, N)
    x_t = b_t / col(jnp.sqrt(t))
    g = arrays.slot_group
    slot_t = arrays.maturity
    bridged = col(arrays.on_path & (slot_t <= h))
    x = jnp.where(bridged, x_t[g], latents[arrays.event])
    # Linear instruments: the path at min(T, h).
    when = col(jnp.minimum(slot_t, h))
    b = jnp.where(bridged, b_t[g], b_h[arrays.under])
    sigma = col(arrays.vol[arrays.under])
    s0 = col(arrays.spot[arrays.under])
    value = col(arrays.ratio) * s0 * jnp.expm1(sigma * b - 0.5 * sigma * sigma * when)
    return x, value


def _merged_legs(arrays, lo, hi, legs):
    """For each row of leg indices `legs` (null index C = always YES): each leg's
    interval intersected with the other legs' on the same event, and whether it
    is the first leg of its event in the row (the one that carries the mark)."""
    c = arrays.quantity.shape[0]
    valid = legs < c
    safe = jnp.where(valid, legs, 0)
    width = legs.shape[-1]
    ev = jnp.where(valid, arrays.event[safe], (-1 - jnp.arange(width)).astype(arrays.event.dtype))
    same = ev[..., :, None] == ev[..., None, :]
    lo_m = jnp.max(jnp.where(same, lo[safe][..., None, :], -jnp.inf), axis=-1)
    hi_m = jnp.min(jnp.where(same, hi[safe][..., None, :], jnp.inf), axis=-1)
    earlier = jnp.tril(jnp.ones((width, width), bool), k=-1)
    first = valid & ~jnp.any(same & earlier, axis=-1)
    return safe, lo_m, hi_m, first


def horizon_mark_rows(
    latents: Float[Array, "E N"],
    arrays,
    lo: Float[Array, " C"],
    hi: Float[Array, " C"],
    temperature=None,
) -> Float[Array, "C N"]:
    """Every slot's mark at the horizon given the revealed event latents Z
    (module doc; one row per event, scenarios on the last axis, the layout of
    `_simulation.outcome_rows`); resolved atoms smoothed at `temperature` if given.

    The marks of binaries are computed in this layout, not transposed from
    (N, C): where the marks are kept (a what-if session's outcome matrix), a
    transposed (N, C) result is written element by element across rows, and a
    session of 2,000 dated binaries x 32,768 scenarios took 8x as long to
    simulate as their margin (15 against 2 s on the 2-core machine). Parlays
    (their own, fewer columns) are computed per scenario row and transposed."""
    tau = event_tau(arrays)
    if arrays.spot.shape[0]:
        x, value = path_values(latents, arrays)
    else:
        x = latents[arrays.event]  # (C, N)
    yes = atom_marks(x, tau[:, None], lo[:, None], hi[:, None], temperature)
    if arrays.spot.shape[0]:
        yes = jnp.where(arrays.linear[:, None], value, yes)
    if arrays.parlays.shape[0] == 0:
        return yes
    # Parlays: the product over their (merged) legs...
    by_row = latents.T  # (N, E)
    legs = arrays.legs[arrays.parlays]  # (P, L)
    safe, lo_m, hi_m, first = _merged_legs(arrays, lo, hi, legs)
    z = by_row[:, arrays.event[safe]]  # (N, P, L)
    leg = atom_marks(z, tau[safe], lo_m, hi_m, temperature)
    par = jnp.prod(jnp.where(first, leg, 1.0), axis=-1)
    yes = yes.at[arrays.parlays].set(par.T)
    if arrays.quad_parlay.shape[0] == 0:
        return yes
    # ... except where live legs share loaded factors after h: the integral.
    quad = _quadrature_marks(by_row, arrays, lo, hi, tau, temperature)
    return yes.at[arrays.quad_parlay].set(quad.T)


def _quadrature_marks(latents, arrays, lo, hi, tau, temperature):
    """Marks of the parlays in ``arrays.quad_parlay`` (N, Q): resolved legs'
    indicators times the Gauss–Hermite integral over F^W of the live legs'
    conditional probabilities (module doc)."""
    dtype = arrays.price.dtype
    legs = arrays.legs[arrays.quad_parlay][:, : arrays.quad_width]  # (Q, L)
    safe, lo_m, hi_m, first = _merged_legs(arrays, lo, hi, legs)
    tau_l = tau[safe]
    resolved = tau_l >= 1
    z = latents[:, arrays.event[safe]]  # (N, Q, L)
    outside = jnp.prod(jnp.where(first & resolved, indicator(z, lo_m, hi_m, temperature), 1.0),
                       axis=-1)
    live = first & ~resolved  # (Q, L)
    # F^W on the parlay's loaded clusters: points U (G, D) -> F = U chol(R_sub)^T.
    dims = arrays.quad_cluster.shape[1]
    # With `quad_closed` the last dimension carries at most one live event per
    # parlay: E over it of that leg's probability is the same interval probability
    # with the variance of its term added, so the grid spans the others only.
    closed = arrays.quad_closed
    points, weights = gauss_hermite(dims - 1 if closed else dims, arrays.quad_nodes)
    if closed:
        points = np.concatenate([points, np.zeros((points.shape[0], 1))], axis=1)
    corr = correlation_matrix(arrays.rho, arrays.lca)
    qc, qv = arrays.quad_cluster, arrays.quad_valid
    both = qv[:, :, None] & qv[:, None, :]
    sub = jnp.where(both, corr[qc[:, :, None], qc[:, None, :]], jnp.eye(dims, dtype=dtype))
    chol = jnp.linalg.cholesky(sub)  # (Q, D, D)
    cl = arrays.cluster[safe]  # (Q, L)
    pick = ((cl[:, :, None] == qc[:, None, :]) & qv[:, None, :]).astype(dtype)  # (Q, L, D)
    # The factor each leg loads on, as a linear map of the node U: F_leg = U . coef.
    coef = jnp.einsum("qld,qde->qle", pick, chol)  # (Q, L, D)
    a = arrays.loading[cl]
    t = jnp.where(live, tau_l, 0.0)
    mean_z = safe_sqrt(t) * z  # (N, Q, L)
    scale = safe_sqrt(1.0 - t) * a  # (Q, L)
    var = (1.0 - t) * (1.0 - a * a)
    if closed:
        var = var + (scale * coef[..., -1]) ** 2
    sd = jnp.sqrt(jnp.where(live, var, 1.0))
    n, q, width = z.shape
    g = points.shape[0]
    step = max(1, min(g, _QUAD_ELEMENTS // max(1, n * q * width)))
    while g % step:
        step -= 1
    pts = jnp.asarray(points, dtype).reshape(g // step, step, dims)
    wts = jnp.asarray(weights, dtype).reshape(g // step, step)

    if arrays.quad_one_sided:
        # Every leg is one-sided (above / below): one Phi per leg and node,
        # P(X > c) = Phi((mean - c) / sd), P(X <= c) = Phi((c - mean) / sd).
        up = jnp.isfinite(lo_m)
        cut = jnp.where(up, lo_m, jnp.where(jnp.isfinite(hi_m), hi_m, 0.0))
        sign = jnp.where(up, 1.0, -1.0).astype(dtype)

    def body(total, block):
        u, w = block  # (S, D), (S,)
        f = jnp.einsum("sd,qld->sql", u, coef)  # (S, Q, L)
        mean = mean_z[:, None] + (scale * f)[None]  # (N, S, Q, L)
        if arrays.quad_one_sided:
            p = ndtr(sign * (mean - cut) / sd)
        else:
            p = interval_probability(mean, sd, lo_m, hi_m)
        prod = jnp.prod(jnp.where(live, p, 1.0), axis=-1)  # (N, S, Q)
        return total + jnp.einsum("nsq,s->nq", prod, w), None

    integral, _ = lax.scan(body, jnp.zeros((n, q), dtype), (pts, wts))
    any_live = jnp.any(live, axis=-1)
    return outside * jnp.where(any_live, integral, 1.0)

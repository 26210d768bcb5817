"""Expected shortfall (Acerbi–Tasche) of simulated losses, with its standard error.

With N equally likely draws and k = N (1 - alpha), the tail mean of the
empirical distribution is exactly

    ES = (1 / k) * sum_j w_j L_(j),   w_j = clip(k - j, 0, 1),

over the losses sorted in decreasing order L_(0) >= L_(1) >= ...: the floor(k)
largest losses in full and the boundary draw with the fractional weight
k - floor(k). This is the Acerbi–Tasche integral of the empirical quantile
function, exact when the loss distribution has atoms. VaR is L_(floor(k)).

Standard error (Chen 2008; the estimator is the Rockafellar–Uryasev objective at
its minimiser, so its variance is that of the objective):

    SE = sqrt(Var[(L - VaR)^+] / N) / (1 - alpha).

Only the tail is needed, so the `top` largest losses are taken with
``lax.top_k`` (no full sort); `top` is a static bucket >= floor(k) + 1, and alpha
may change at run time within it without recompiling.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax, ops
from jaxtyping import Array, Bool, Float, Int


def tail_size(scenarios: int, confidence: float) -> int:
    """Static number of largest losses kept for ES at `confidence`: at least
    floor(N (1 - alpha)) + 2, rounded up to a multiple of 64, at most N."""
    need = math.floor(scenarios * (1 - confidence)) + 2
    return min(scenarios, -(-need // 64) * 64)


def var_position(k: Float[Array, "*batch"], scenarios: int) -> Int[Array, "*batch"]:
    """The VaR's position in the decreasing tail, floor(k) for k = N (1 - alpha),
    except that a k within N eps of an integer is that integer (eps of k's dtype).

    At an integer k the VaR is the draw with exactly k draws above it. Computed
    from a rounded alpha (0.99 is 0.9900000095 in float32, 0.98999999999999999
    in float64), k lands a hair below or above the integer, and floor(k) would take
    the draw above or the one intended depending on the precision: the rounding
    of alpha moves k by at most N eps / 2. The ES does not depend on it (its
    boundary draw's weight is 0 or 1 to rounding); the VaR and the standard error
    do. [`weighted_tail_statistics`][] and [`sortfree_tail_statistics`][] apply
    the same rule to their cumulated masses (a mass within eps of 1 - alpha is
    1 - alpha), so every estimator picks the same draw on every backend, as long
    as the rounding of their cumulated masses stays within eps (tested to 5,000
    draws; a float32 sum of some 10^4 tail masses can round by about eps)."""
    k = jnp.asarray(k)
    r = jnp.round(k)
    at_integer = jnp.abs(k - r) <= scenarios * jnp.finfo(k.dtype).eps
    return jnp.where(at_integer, r, jnp.floor(k)).astype(jnp.int32)


def _safe_sqrt(x):
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


# Losses this many units in the last place of a row's largest loss apart are
# tied (see tie_tolerance).
TIE_ULPS = 16


def tie_tolerance(
    losses: Float[Array, "*batch T"], live: Bool[Array, "*batch T"] | None = None
) -> Float[Array, "*batch 1"]:
    """How far apart two of a row's losses may lie and be one tie: ``TIE_ULPS``
    units in the last place of the row's largest finite `live` loss (in size;
    every draw is live by default).

    Losses that are equal in exact arithmetic often differ in the last bits: a
    draw's loss is a sum of the contracts' terms, and two outcome patterns with
    the same terms in other slots (X NO / Y YES against X YES / Y NO on a
    symmetric pair) are summed in another order, with fused multiply-adds on
    some processors and not on others. Which of them lies above the other is
    then an artefact of the arithmetic, and the derivatives that depend on it
    (which draw is the VaR, which ones are in the tail) would differ from one
    machine to the next."""
    fixed = lax.stop_gradient(losses)
    finite = jnp.isfinite(fixed) if live is None else live & jnp.isfinite(fixed)
    scale = jnp.max(jnp.where(finite, jnp.abs(fixed), 0.0), axis=-1, keepdims=True)
    return TIE_ULPS * jnp.finfo(fixed.dtype).eps * scale


def tied_with_var(
    losses: Float[Array, "*batch T"],
    var: Float[Array, "*batch"],
    live: Bool[Array, "*batch T"] | None = None,
    tolerance: Float[Array, "*batch 1"] | None = None,
) -> Bool[Array, "*batch T"]:
    """The (`live`) draws tied with their row's VaR: within `tolerance` of it
    ([`tie_tolerance`][] of `losses` by default)."""
    if tolerance is None:
        tolerance = tie_tolerance(losses, live)
    fixed = lax.stop_gradient(losses)
    tied = jnp.abs(fixed - lax.stop_gradient(var)[..., None]) <= tolerance  # never at inf
    return tied if live is None else live & tied


def average_ties(
    losses: Float[Array, "*batch T"], var: Float[Array, "*batch"], mass: Float[Array, "*batch T"]
) -> Float[Array, "*batch T"]:
    """`losses` unchanged in value; the draws tied with the VaR
    ([`tied_with_var`][]) share one derivative, their mass-weighted mean (Hong
    2009: dVaR = E[dL | L = VaR]).

    Binary books have discrete losses, so several draws often sit exactly at the
    VaR. Which of them the sort puts at the VaR, or inside the tail, is arbitrary,
    and so was the derivative of ES and of the standard error through them. With
    the tied draws' derivatives averaged, both derivatives are the mean over every
    ordering of the ties (random tie-breaking by an infinitesimal jitter): the
    same whatever the sort did. Draws of mass 0 (padding) are never tied."""
    fixed = lax.stop_gradient(losses)
    tied = tied_with_var(losses, var, mass > 0)
    weight = jnp.where(tied, lax.stop_gradient(mass), 0.0)
    total = jnp.sum(weight, axis=-1, keepdims=True)
    mean = jnp.sum(weight * jnp.where(tied, losses, 0.0), axis=-1, keepdims=True) / jnp.where(
        total > 0, total, 1.0)
    # Value: exactly the tied loss (mean - mean == 0); derivative: the mean's.
    return jnp.where(tied, fixed + (mean - lax.stop_gradient(mean)), losses)


def expected_shortfall(
    losses: Float[Array, "*batch N"], confidence: Float[Array, ""], top: int
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"], Float[Array, "*batch"]]:
    """ES, its standard error and VaR of each row of `losses` (dollars).

    **Arguments:**

    - `losses`: simulated losses, scenarios on the last axis.
    - `confidence`: alpha in (0, 1) (an array; changing it does not recompile).
    - `top`: static tail size from [`tail_size`][].

    **Returns:** ``(es, standard_error, var)``, each with the leading shape.
    """
    tail, _ = lax.top_k(losses, top)
    return tail_statistics(tail, losses.shape[-1], confidence)


def tail_statistics(
    tail: Float[Array, "*batch T"], scenarios: int, confidence: Float[Array, ""]
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"], Float[Array, "*batch"]]:
    """``(es, standard_error, var)`` from the T largest of `scenarios` losses,
    sorted in decreasing order (T >= floor(N (1 - alpha)) + 1).

    Values are [`ordered_tail_statistics`][]'; so is the derivative, with the
    draws tied with the VaR (to rounding) sharing one derivative
    ([`average_ties`][]): linear
    in the losses' derivatives, and the same whatever order the sort left the
    ties in. The one-sided derivatives at ties (a trade that reorders them) are
    [`ordered_tail_statistics`][]' with the ties reordered by
    [`order_ties`][]."""
    n = scenarios
    top = tail.shape[-1]
    m = jnp.clip(var_position(n * (1 - confidence), n), 0, top - 1)
    index = jnp.broadcast_to(m, tail.shape[:-1])[..., None]
    tail = average_ties(tail, jnp.take_along_axis(tail, index, axis=-1)[..., 0],
                        jnp.ones_like(tail))
    return ordered_tail_statistics(tail, scenarios, confidence)


def ordered_tail_statistics(
    tail: Float[Array, "*batch T"], scenarios: int, confidence: Float[Array, ""]
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"], Float[Array, "*batch"]]:
    """[`tail_statistics`][] with its derivative taken in the order given: the
    draw at position floor(k) (an integer k to rounding: [`var_position`][]) is
    the VaR, those before it are above it (their excess over the VaR counts in
    full, ties included). With the ties at the VaR
    ordered by decreasing (increasing) derivative, the derivative is the right
    (left) one of the statistics of the sample."""
    n = scenarios
    top = tail.shape[-1]
    k = n * (1 - confidence)
    # The kept tail must reach the VaR's draw (var_position) and the boundary
    # draw L_(floor(k)); otherwise ES and VaR would silently drop losses (a
    # confidence below the one `top` was sized for). Checked without a host
    # callback (programs with callbacks are never written to the persistent
    # compilation cache): the figures become NaN, which the host layer reports as
    # an engine error.
    position = var_position(k, n)
    bad = (k >= top) | (position >= top)
    k = jnp.where(bad, jnp.nan, k)
    j = jnp.arange(top, dtype=tail.dtype)
    w = jnp.clip(k - j, 0.0, 1.0)
    es = jnp.sum(w * tail, axis=-1) / k
    m = jnp.clip(position, 0, top - 1)
    var = jnp.take_along_axis(tail, jnp.broadcast_to(m, tail.shape[:-1])[..., None], axis=-1)
    # (L - VaR)^+ by position: the same values (the tail is sorted), but a tie
    # placed above the VaR counts its excess's derivative in full.
    above = jnp.arange(top, dtype=m.dtype) < m[..., None]
    excess = jnp.where(above, tail - var, 0.0)
    m1 = jnp.sum(excess, axis=-1) / n
    m2 = jnp.sum(excess * excess, axis=-1) / n
    se = _safe_sqrt((m2 - m1 * m1) / n) / (1 - confidence)
    return es, jnp.where(bad, jnp.nan, se), jnp.where(bad, jnp.nan, var[..., 0])


def order_ties(
    tail: Float[Array, "*batch T"], tangents: Float[Array, "*batch T D"], sign: int
) -> Float[Array, "*batch T D"]:
    """`tangents` (each tail draw's derivative in D directions) reordered, in each
    direction, within each run of equal losses of the decreasing `tail`: by
    decreasing derivative for ``sign = 1`` (the order the draws take when the
    direction's variable increases a little), increasing for -1 (when it
    decreases). Draws of different losses keep their places."""
    t = jnp.moveaxis(tangents, -1, -2)
    # + 0.0 makes -0.0 equal to 0.0, as the tail's ties are (==).
    keys = jnp.broadcast_to((0.0 - tail)[..., None, :] + 0.0, t.shape)
    _, ordered = lax.sort((keys, -sign * t), dimension=-1, num_keys=2)
    return jnp.moveaxis(-sign * ordered, -2, -1)


def exact_expected_shortfall(values, probabilities, confidence: float) -> float:
    """ES_alpha of a discrete loss distribution (float64 NumPy; reference for
    tests and docs): (1 / (1 - alpha)) * integral_alpha^1 VaR_u du."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-v)
    v, p = v[order], p[order]
    budget = 1 - confidence
    taken = np.minimum(p, np.maximum(budget - (np.cumsum(p) - p), 0.0))
    return float(np.sum(taken * v) / budget)


def weighted_tail(
    losses: Float[Array, "R Np"],
    weights: Float[Array, " Np"],
    top: int,
    scenarios: int,
) -> tuple[Float[Array, "R T"], Float[Array, "R T"], Int[Array, "R T"]]:
    """The `top` largest losses of each row, their probability masses ``w / N``
    (N = `scenarios`, the real draws) and their scenario indices, in decreasing
    order of loss.

    `weights` are likelihood ratios (1 for plain Monte Carlo, 0 for padding
    scenarios beyond N, which must carry a loss of -inf so that they sort last).
    """
    n = losses.shape[-1]
    if top >= n:
        order = jnp.argsort(-losses, axis=-1)
        tail = jnp.take_along_axis(losses, order, axis=-1)
    else:
        tail, order = lax.top_k(losses, top)
    return tail, weights[order] / scenarios, order


def weighted_tail_statistics(
    tail: Float[Array, "*batch T"],
    mass: Float[Array, "*batch T"],
    confidence: Float[Array, ""],
    scenarios: int,
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"], Float[Array, "*batch"],
           Float[Array, "*batch T"]]:
    """``(es, standard_error, var, take)`` of a weighted sample from its largest
    losses `tail` (decreasing) and their probability masses `mass` (``w / N``).

    The Acerbi–Tasche estimator of the weighted empirical distribution: each draw
    holds probability mass w/N; the tail of mass 1 - alpha is taken from the top,
    the boundary draw fractionally (`take` is the mass each kept draw contributes):

        ES  = sum_j take_j L_(j) / (1 - alpha),  take_j = clip(1 - alpha - M_j, 0, m_j)

    with M_j the mass above draw j; VaR is the first draw whose cumulated mass
    exceeds 1 - alpha. With w = 1 this is exactly
    [`tail_statistics`][]. The standard error is the delta-method (Chen) one of
    the Rockafellar–Uryasev form, sqrt(Var[w (L - VaR)^+] / N) / (1 - alpha), which
    for importance sampling is the weighted estimator's own standard error.
    A row whose kept draws hold less than 1 - alpha of probability mass comes
    out NaN (raise `top`).
    """
    budget = 1 - confidence
    before = jnp.cumsum(mass, axis=-1) - mass
    kept = jnp.sum(mass, axis=-1)
    # Too short a kept tail poisons the row with NaN (no host callback: see
    # tail_statistics); the host layer reports it as an engine error.
    short = kept < budget * (1 - 1e-6)
    take = jnp.clip(budget - before, 0.0, mass)
    # VaR: the first draw at which the cumulated mass reaches 1 - alpha; where
    # rounding leaves every cumulated mass at or below it (1 - alpha rounding to
    # 1 at a confidence near 0), the last draw that holds any mass.
    # (A cumulated mass within eps of 1 - alpha is 1 - alpha: see var_position.)
    crossed = before + mass > budget + jnp.finfo(mass.dtype).eps
    last = tail.shape[-1] - 1 - jnp.argmax(jnp.flip(mass > 0, -1), axis=-1)
    m = jnp.where(jnp.any(crossed, axis=-1), jnp.argmax(crossed, axis=-1), last)
    tail = average_ties(tail, jnp.take_along_axis(tail, m[..., None], axis=-1)[..., 0], mass)
    es = jnp.sum(take * jnp.where(take > 0, tail, 0.0), axis=-1) / budget
    var = jnp.take_along_axis(tail, m[..., None], axis=-1)
    excess = jnp.where(mass > 0, jnp.maximum(tail - var, 0.0), 0.0)
    n = scenarios
    h = excess * mass * n  # w (L - VaR)^+, zero outside the tail
    m1 = jnp.sum(h, axis=-1) / n
    m2 = jnp.sum(h * h, axis=-1) / n
    se = _safe_sqrt((m2 - m1 * m1) / n) / (1 - confidence)
    return jnp.where(short, jnp.nan, es), jnp.where(short, jnp.nan, se), var[..., 0], take


def order_keys(x: Float[Array, "*shape"]) -> Int[Array, "*shape"]:
    """Integers in the order of the floats `x` (IEEE bits, negatives' magnitude
    bits flipped; -0.0 counts as +0.0), the width of x's dtype."""
    bits = jnp.finfo(x.dtype).bits
    signed = jnp.int32 if bits == 32 else jnp.int64
    i = lax.bitcast_convert_type(x + jnp.zeros((), x.dtype), signed)
    return jnp.where(i < 0, i ^ jnp.iinfo(signed).max, i)


def radix_levels(bits: int) -> tuple[int, ...]:
    """Histogram widths, most significant first, of [`selected_var_key`][]'s passes:
    11 + 11 + 10 bits for float32 keys (2,048 buckets a pass), 4 x 16 for float64."""
    return (11, 11, 10) if bits == 32 else (16,) * (bits // 16)


def selected_var_key(
    keys: Int[Array, "R Np"], mass: Float[Array, "*rows Np"], budget: Float[Array, ""]
) -> Int[Array, " R"]:
    """The smallest key k of each row with mass(keys > k) <= `budget`: the VaR's
    order key (see [`sortfree_tail_statistics`][]), found exactly by radix select.

    Each pass histograms the masses of the draws still in play by the next bits of
    their (unsigned) keys (`segment_sum`), takes the lowest bucket whose mass above,
    plus the mass already known to lie above the bucket chosen so far, is within
    the budget, and keeps only that bucket's draws: three passes over the draws in
    float32 where bisection takes one per bit (32): the same key, about 1.4x faster
    on a CPU for the importance sampler's 9 x 131,072 losses (docs/benchmarks.md)."""
    rows = keys.shape[0]
    bits = jnp.iinfo(keys.dtype).bits
    unsigned = jnp.uint32 if bits == 32 else jnp.uint64
    # Flipping the sign bit orders the signed keys as unsigned integers.
    u = lax.bitcast_convert_type(keys, unsigned) ^ unsigned(1 << (bits - 1))
    mass = jnp.broadcast_to(mass, keys.shape)
    chosen = jnp.zeros(rows, unsigned)  # the key's bits fixed so far
    above = jnp.zeros(rows, mass.dtype)  # mass above the chosen bucket
    inside = jnp.ones(keys.shape, bool)  # draws in the chosen bucket
    shift = bits
    for width in radix_levels(bits):
        shift -= width
        buckets = 1 << width
        b = ((u >> shift) & unsigned(buckets - 1)).astype(jnp.int32)
        segment = jnp.arange(rows, dtype=jnp.int32)[:, None] * buckets + b
        hist = ops.segment_sum(jnp.where(inside, mass, 0.0).reshape(-1), segment.reshape(-1),
                               num_segments=rows * buckets).reshape(rows, buckets)
        # Mass strictly above each bucket: a reversed cumulative sum, shifted by one
        # (monotone in the bucket, so the lowest bucket within budget is well defined;
        # the top one always is, as `above` is within budget).
        at_or_above = jnp.flip(jnp.cumsum(jnp.flip(hist, 1), axis=1), 1)
        over = above[:, None] + jnp.concatenate(
            [at_or_above[:, 1:], jnp.zeros((rows, 1), mass.dtype)], axis=1)
        pick = jnp.argmax(over <= budget, axis=1).astype(jnp.int32)
        above = jnp.take_along_axis(over, pick[:, None], axis=1)[:, 0]
        chosen = chosen | (pick.astype(unsigned) << shift)
        inside = inside & (b == pick[:, None])
    return lax.bitcast_convert_type(chosen ^ unsigned(1 << (bits - 1)), keys.dtype)


def sortfree_tail_statistics(
    losses: Float[Array, "R Np"],
    weights: Float[Array, " Np"],
    confidence: Float[Array, ""],
    scenarios: int,
) -> tuple[Float[Array, " R"], Float[Array, " R"], Float[Array, " R"], Float[Array, "R Np"]]:
    """``(es, standard_error, var, take)`` of weighted draws without sorting.

    The same weighted Acerbi–Tasche estimator as [`weighted_tail_statistics`][]
    (masses w / N, N = `scenarios`), for samplers whose tail holds an unknown,
    large share of the draws (importance sampling), where a sort would dominate
    the call. VaR, the smallest draw v with P_w(L > v) <= 1 - alpha, is selected
    exactly on the losses' order keys (see [`order_keys`][] and
    [`selected_var_key`][]: three histogram passes over the draws in float32);
    then

        ES = v + sum_n w_n (L_n - v)^+ / (N (1 - alpha)),

    which equals the tail mean with the boundary atom taken fractionally. `take`
    is each draw's tail mass (ties at VaR share the remainder in proportion to
    their weights). Padding draws carry weight 0 (and any loss).
    """
    budget = 1 - confidence
    mass = weights / scenarios
    live = mass > 0
    keys = order_keys(jnp.where(live, losses, jnp.inf))
    # (A mass within eps of 1 - alpha is 1 - alpha: see var_position.)
    hi = selected_var_key(keys, mass, budget + jnp.finfo(mass.dtype).eps)
    # The VaR is the smallest live draw at or above key hi (the smallest key within
    # budget belongs to a live draw).
    above = live & (keys >= hi[:, None])
    var = jnp.min(jnp.where(above, losses, jnp.inf), axis=-1)
    losses = average_ties(losses, var, mass)
    var = jnp.min(jnp.where(above, losses, jnp.inf), axis=-1)
    excess = jnp.where(live, jnp.maximum(losses - var[:, None], 0.0), 0.0)
    es = var + jnp.sum(mass * excess, axis=-1) / budget
    tail_mass = jnp.sum(jnp.where(losses > var[:, None], mass, 0.0), axis=-1)
    at_var = live & (losses == var[:, None])
    tied = jnp.sum(jnp.where(at_var, mass, 0.0), axis=-1)
    # (Clipped: the mass above the VaR may exceed the budget by the eps above.)
    share = jnp.where(tied > 0, jnp.maximum(budget - tail_mass, 0.0)
                      / jnp.where(tied > 0, tied, 1.0), 0.0)
    take = jnp.where(losses > var[:, None], mass, jnp.where(at_var, mass * share[:, None], 0.0))
    h = weights * excess  # w (L - VaR)^+
    m1 = jnp.sum(h, axis=-1) / scenarios
    m2 = jnp.sum(h * h, axis=-1) / scenarios
    se = _safe_sqrt((m2 - m1 * m1) / scenarios) / (1 - confidence)
    return es, se, var, jnp.where(live, take, 0.0)

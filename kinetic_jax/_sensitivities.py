"""Sensitivities of the margin (SPEC.md §2.6) by reverse-mode differentiation.

The reported margin uses hard 0/1 outcomes. Its derivative in quantities is
exact on the simulated scenarios (the tail-conditional expectation of
``p_i - YES_i``): no smoothing is needed. Where scenarios of different
outcomes tie at a VaR, the margin is kinked in a quantity: the reported
derivative is then the mean of the one-sided ones, and the Euler allocation uses
the additive derivative ([`quantity_jacobian`][]). Prices (through their cuts), rho and
loadings act on the outcomes only through indicators, whose pathwise derivative
is zero; for them each atom's indicator is smoothed,

    1{lo < X <= hi}  ->  sigmoid((X - lo) / t) * sigmoid((hi - X) / t),

at temperature t (latent standard deviations), which converges to the indicator
as t -> 0. Estimators:

- ``"conditional"`` (default to resolution): quantities from the hard margin,
  prices, rho and loadings unbiased, without smoothing, by integrating each
  event's own noise at its cuts (kinetic_jax._conditional), on the estimator's
  own run ([`JumpRun`][]: by default 8x the draws, importance-sampled).
- ``"hybrid"`` (default under a liquidation horizon): quantities from the hard
  margin (exact on the scenarios; at ties at a VaR the mean of the one-sided
  derivatives, and the Euler allocation from the additive derivative, which sums
  to the reported margin: [`quantity_jacobian`][]), prices,
  rho and loadings from the smoothed margin (tail selected on the smoothed losses).
- ``"smooth"``: everything from the smoothed margin (a differentiable surrogate).
- ``"straight_through"``: hard value; smoothed outcomes differentiated on the
  *hard* tail only. Kept for comparison: it misses the scenarios that enter the
  tail as a cut moves and is biased by 30-60% on price sensitivities.
- ``"hard"``: no smoothing: prices act through their marks only.

experiments/smoothing_study.py measures bias and variance against common-random-
number finite differences of the hard margin; docs/methodology.md records the
numbers behind the default t = 0.05. All derivatives come from one forward pass
and reverse passes over it (``jax.vjp``), never from finite differences.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from ._allocation import allocate
from ._arrays import PAD, BookArrays, row_membership, without_padding
from ._book import MAX_SCENARIOS, SAMPLERS, Book, check_book
from ._checks import check_size, is_number
from ._conditional import (
    aggregate_chunk as agg_chunk,
    aggregates,
    jump_surrogate,
    mark_surrogate,
    pooled_yes,
    tail_surrogate,
)
from ._dates import DAYS_PER_YEAR
from ._errors import BookError, EngineError
from ._margin import (
    BINDING,
    MarginParams,
    MarginResult,
    margin_from_statistics,
    static_top,
)
from ._portfolio import margin_inputs
from ._programs import program
from ._sampler import outcome_losses, padded_scenarios, simulate
from ._shortfall import (
    order_ties,
    ordered_tail_statistics,
    sortfree_tail_statistics,
    tail_size,
    tail_statistics,
    tie_tolerance,
    tied_with_var,
    weighted_tail,
    weighted_tail_statistics,
)
from ._simulation import (
    HIGHEST,
    contract_outcomes,
    draw_noise,
    latent_rows,
    latents_from_noise,
    outcome_rows,
)

DEFAULT_TEMPERATURE = 0.05
ESTIMATORS = ("conditional", "hybrid", "smooth", "straight_through", "hard")
_SINGLE = ("smooth", "straight_through", "hard")
# The conditional estimator's own run ("jump run": prices, rho, loadings): by
# default importance-sampled, with JUMP_FACTOR times the margin's scenarios
# (docs/methodology.md, "Sensitivities"; measured in experiments/variance_study.py).
JUMP_SAMPLER = "importance"
JUMP_FACTOR = 8


class JumpRun(NamedTuple):
    """The conditional estimator's run: its draws, the plain sampler's tail size
    for them (`tail_size`) and its sampler (all static)."""

    scenarios: int
    top: int
    sampler: str


def jump_run(settings, scenarios: int | None = None, sampler: str | None = None) -> JumpRun:
    """The jump run of a book with these `settings`: `scenarios` draws (default
    JUMP_FACTOR x the book's, at most the engine's limit), `sampler` (default
    JUMP_SAMPLER)."""
    if scenarios is None:
        scenarios = min(JUMP_FACTOR * settings.scenarios, MAX_SCENARIOS)
    else:
        check_size("jump_scenarios", scenarios)
    if isinstance(scenarios, bool) or not isinstance(scenarios, int) or not (
            1 <= scenarios <= MAX_SCENARIOS):
        raise BookError("jump_scenarios", f"{scenarios!r} is not an integer in "
                                          f"[1, {MAX_SCENARIOS}]")
    if scenarios * (1 - settings.confidence) < 1:
        raise BookError("jump_scenarios", f"{scenarios!r} leaves no draw in the "
                                          f"{1 - settings.confidence:g} tail")
    sampler = JUMP_SAMPLER if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise BookError("sampler", f"{sampler!r} is not one of {', '.join(SAMPLERS)}")
    if sampler == "exact_block":  # its exact law is one book's, not the perturbed books'
        raise BookError("sampler", "'exact_block' margins one book per call (its exact law "
                                   "is that book's positions'); the jump run takes 'plain' "
                                   "or 'importance'")
    return JumpRun(scenarios, tail_size(scenarios, settings.confidence), sampler)


class MarginVars(eqx.Module):
    """The differentiable inputs of a margin call. `horizon` is the liquidation
    horizon in years (inf in resolution mode, where nothing depends on it);
    `spot` and `vol` are the underlyings' (empty without)."""

    quantity: Float[Array, " C"]
    price: Float[Array, " C"]
    rho: Float[Array, " M"]
    loading: Float[Array, " K"]
    horizon: Float[Array, ""]
    spot: Float[Array, " U"]
    vol: Float[Array, " U"]

    @classmethod
    def of(cls, arrays: BookArrays) -> MarginVars:
        return cls(arrays.quantity, arrays.price, arrays.rho, arrays.loading, arrays.horizon,
                   arrays.spot, arrays.vol)

    def into(self, arrays: BookArrays) -> BookArrays:
        """`arrays` holding these values (padding slots' quantities held at 0:
        their derivatives are exactly 0, see [`without_padding`][])."""
        return without_padding(eqx.tree_at(
            lambda a: (a.quantity, a.price, a.rho, a.loading, a.horizon, a.spot, a.vol),
            arrays,
            (self.quantity, self.price, self.rho, self.loading, self.horizon, self.spot,
             self.vol),
        ))


def differentiable_margin(
    variables: MarginVars,
    arrays: BookArrays,
    params: MarginParams,
    key: PRNGKeyArray,
    scenarios: int,
    top: int,
    temperature: Float[Array, ""],
    estimator: str = "smooth",
) -> MarginResult:
    """The margin as a differentiable function of `variables` (see module doc).

    `scenarios`, `top` and `estimator` are static; `temperature` is an array.
    With the same key the scenarios are those of the hard margin.

    A tail mean depends on the losses only through the scenarios it selects, so
    the scenarios are selected on a pass without gradients and only the
    selected rows ((K + 1) x top of them) are recomputed differentiably: the
    gradient is the same as through the full (N, C) matrix, at a fraction of the
    cost. Forward values are those of the selection pass.
    """
    arrays, tail, _, _ = _selected_tail(variables, arrays, key, scenarios, top, temperature,
                                        estimator)
    es, se, var = tail_statistics(tail, scenarios, params.confidence)
    return margin_from_statistics(arrays, params, es, se, var)


def _selected_tail(variables, arrays, key, scenarios, top, temperature, estimator):
    """`arrays` holding `variables`, the `top` largest losses of each loss row
    (decreasing; differentiable in `variables`, see [`differentiable_margin`][]),
    their outcomes, ``yes[k, t, c]`` of contract slot c in row k's t-th, and
    (without gradients) every draw's: the loss rows (K + 1, N) and the outcome
    rows (C, N)."""
    if estimator not in _SINGLE:
        raise ValueError(f"estimator: {estimator!r} is not one of {_SINGLE}")
    arrays = variables.into(arrays)
    smooth_only = estimator == "smooth"
    noise = draw_noise(key, arrays, scenarios)
    fixed = lax.stop_gradient(arrays)
    # The loss rows as the margin call computes them (scenarios on the minor axis,
    # see _simulation.latent_rows): the same tail, bit for bit.
    yes = outcome_rows(latent_rows(noise, fixed), fixed, temperature if smooth_only else None)
    stacked = outcome_losses(fixed, yes)  # (K + 1, N)
    tail, rows = lax.top_k(stacked, top)  # (K + 1, top)
    columns = stacked.shape[0]
    # Differentiable recomputation on the selected rows only.
    picked = jax.tree.map(lambda x: x[rows.reshape(-1)], noise)
    latents = latents_from_noise(picked, arrays)
    if smooth_only:
        yes_rows = contract_outcomes(latents, arrays, temperature)
    elif estimator == "hard":
        yes_rows = contract_outcomes(latents, arrays)
    else:
        smooth = contract_outcomes(latents, arrays, temperature)
        yes_rows = contract_outcomes(latents, arrays) + (smooth - lax.stop_gradient(smooth))
    weights = row_membership(arrays) * arrays.quantity[:, None]  # (C, K + 1)
    yes_rows = yes_rows.reshape(columns, top, -1)
    recomputed = jnp.einsum("ktc,ck->kt", arrays.price - yes_rows, weights, precision=HIGHEST)
    tail = lax.stop_gradient(tail) + (recomputed - lax.stop_gradient(recomputed))
    return arrays, tail, yes_rows, (stacked, yes)


def _figures(result: MarginResult) -> Float[Array, " F"]:
    """margin, base, floor, then each cluster's ES."""
    return jnp.concatenate([jnp.stack([result.margin, result.base, result.floor]),
                            result.cluster_es])


class SensitivityResult(eqx.Module):
    """Hard figures and the Jacobian of (margin, base, floor, cluster ES...) in
    the variables: each leaf of `jacobian` has a leading axis of length 3 + K;
    its quantities' are the mean of the one-sided derivatives at ties
    ([`quantity_jacobian`][]), `one_sided` the right (buying) and left (selling)
    ones. `additive` is the quantities' Jacobian with the
    ties at each VaR sharing one derivative (linear, so q . d = figure for the
    homogeneous figures: the Euler allocation's); the two differ only at ties.
    `standard_error` (conditional estimator only, else None) is the Monte-Carlo
    standard error of each entry, from the spread over scenario batches."""

    result: MarginResult
    jacobian: MarginVars
    additive: Float[Array, "F C"]
    one_sided: Float[Array, "2 F C"]
    standard_error: MarginVars | None = None


def _jacobian(arrays, params, key, scenarios, top, temperature, estimator):
    """The figures and their Jacobian in every [`MarginVars`][] leaf, by reverse
    mode (the quantities' at ties: [`tail_statistics`][]; the reports take them
    from [`quantity_jacobian`][])."""
    variables = MarginVars.of(arrays)

    def figures(v):
        res = differentiable_margin(v, arrays, params, key, scenarios, top, temperature,
                                    estimator)
        return _figures(res), res

    out, vjp, result = jax.vjp(figures, variables, has_aux=True)
    rows = jnp.eye(out.shape[0], dtype=out.dtype)
    (jac,) = lax.map(vjp, rows)
    return result, jac


def quantity_jacobian(arrays, params, key, scenarios, top, temperature, estimator="hard"):
    """The figures and their derivatives in each contract slot's quantity, (3 + K, C).

    A loss is linear in the quantities, so on the simulated scenarios the figures
    are piecewise linear in each one, with kinks where a change reorders draws
    tied at a VaR (discrete losses tie often: an atom of the loss distribution
    straddling the quantile). Each derivative is the mean of the right and left
    ones, each exact on the scenarios: the tail statistics' derivatives with the
    ties (equal to rounding: [`tie_tolerance`][]; with 0/1 outcomes the whole
    run, counted over every draw, not only the kept tail) reordered as the
    trade reorders them ([`order_ties`][]), pushed through
    the margin formula (linear in the direction, given that order: one
    contraction of every slot's slopes). It is what a
    central finite difference on the same draws converges to; where the margin
    is differentiable it is the derivative.

    **Returns:** ``(result, one_sided, additive)``: the hard figures, the right
    and left Jacobians (``one_sided[0]``, ``one_sided[1]``; `jacobian` is their
    mean), and the additive one (ties at each VaR sharing their mean
    derivative, [`tail_statistics`][]: linear in the direction, so q . d =
    figure where the figure is homogeneous; all three agree away from ties)."""
    variables = lax.stop_gradient(MarginVars.of(arrays))
    arrays, tail, yes_rows, (losses, yes) = _selected_tail(variables, arrays, key, scenarios,
                                                           top, temperature, estimator)
    conf = params.confidence
    es, se, var = ordered_tail_statistics(tail, scenarios, conf)
    result = margin_from_statistics(arrays, params, es, se, var)
    # d loss[k, t] / d q_c: the slot's p - YES where it counts in row k, 0 on padding.
    live = (arrays.kind != PAD).astype(tail.dtype)
    member = (row_membership(arrays) * live[:, None]).T  # (K + 1, C)
    slope = (arrays.price - yes_rows) * member[:, None, :]

    def figures(q, es, se, var):
        a = without_padding(eqx.tree_at(lambda x: x.quantity, arrays, q))
        return _figures(margin_from_statistics(a, params, es, se, var))

    # Everything downstream of the tail is linear in the direction (given the
    # order of the ties): the margin formula's Jacobians (a few reverse passes)
    # and each statistic's weight on each tail position.
    by_q, *by_stats = jax.jacrev(figures, argnums=(0, 1, 2, 3))(arrays.quantity, es, se, var)

    def weights(statistics):
        # Each statistic of row k depends on row k only.
        return [jax.grad(lambda x, i=i: jnp.sum(statistics(x, scenarios, conf)[i]))(tail)
                for i in range(3)]

    def linear(weights, slope):
        return by_q + sum(jnp.einsum("fk,kt,ktc->fc", j, w, slope, precision=HIGHEST)
                          for j, w in zip(by_stats, weights))

    ordered = weights(ordered_tail_statistics)

    def one_sided(order):
        return jnp.stack([linear(ordered, order(1)), linear(ordered, order(-1))])

    # The draws tied with each row's VaR (to rounding: tie_tolerance), a run of
    # the sorted tail.
    tolerance = tie_tolerance(tail)
    run = tied_with_var(tail, var, tolerance=tolerance)
    if estimator != "smooth" and not arrays.dynamic:
        # Hard 0/1 outcomes (no marks): each slot's slope on a draw is its NO
        # slope or its YES slope, so the run's order is its NO draws then its YES
        # draws (or the reverse), without a sort over every slot's slopes (most of
        # the cost on large books). The run is counted over every draw: it may go
        # on past the kept tail (which draws of a tie top_k keeps is arbitrary).
        band = tied_with_var(losses, var, tolerance=tolerance)
        tied = jnp.sum(band, axis=-1, dtype=tail.dtype)[:, None]  # (K + 1, 1)
        tied_yes = jnp.matmul(band.astype(tail.dtype), yes.T, precision=HIGHEST)  # (K + 1, C)
        no_slope, yes_slope = arrays.price * member, (arrays.price - 1) * member
        sides = one_sided(lambda sign: _order_binary_ties(
            run, tied - tied_yes if sign > 0 else tied_yes,
            *((no_slope, yes_slope) if sign > 0 else (yes_slope, no_slope)), slope))
        # Additive: each tied draw's slope is the run's mean, p - (share of YES).
        mean = (arrays.price - tied_yes / tied) * member
        return result, sides, linear(ordered, jnp.where(run[..., None], mean[:, None, :], slope))
    snapped = jnp.where(run, var[:, None], tail)
    sides = one_sided(lambda sign: order_ties(snapped, slope, sign))
    return result, sides, linear(weights(tail_statistics), slope)


def _order_binary_ties(run, first, lead, rest, slope):
    """The slopes of the run of ties at each row's VaR (`run`, (K + 1, T):
    contiguous, as the tail is sorted) in the order a trade in each slot puts
    them, when a draw's slope in slot c is one of two values (its NO or its YES
    slope): the run's `first` (K + 1, C) draws take slope `lead` (K + 1, C), the
    rest `rest`. Buying (``first`` = the run's NO draws, ``lead`` the NO slope,
    the larger: a loss's slope in quantity is p - YES) is [`order_ties`][] with
    sign 1, selling (YES first) with -1. Draws outside the run keep their slopes
    (only its order counts, see [`quantity_jacobian`][])."""
    position = (jnp.arange(run.shape[-1]) - jnp.argmax(run, axis=-1)[:, None]).astype(slope.dtype)
    ordered = jnp.where(position[..., None] < first[:, None, :], lead[:, None, :],
                        rest[:, None, :])
    return jnp.where(run[..., None], ordered, slope)


def _conditional_jacobian(arrays, params, key, scenarios, top, sampler="plain"):
    """The conditional estimator (kinetic_jax._conditional): jumps for prices,
    rho and loadings; the tail mean for quantities and marks. Returns the hard
    result, the per-batch Jacobians' mean and their standard error."""
    conf = params.confidence
    losses, weights, proposal = simulate(arrays, conf, key, scenarios, sampler)
    if static_top(sampler, scenarios, losses.shape[1], top) >= losses.shape[1]:
        # Every draw may be in the tail (importance sampling): no sort.
        es, se, var, take_full = sortfree_tail_statistics(losses, weights, conf, scenarios)
    else:
        tail, mass, order = weighted_tail(losses, weights, top, scenarios)
        es, se, var, take = weighted_tail_statistics(tail, mass, conf, scenarios)
        rows = jnp.arange(losses.shape[0])[:, None]
        take_full = jnp.zeros_like(weights, shape=losses.shape).at[rows, order].set(take)
    agg = aggregates(arrays, key, scenarios, proposal, var, take_full, conf)
    agg = lax.stop_gradient(agg)
    es, se, var = lax.stop_gradient((es, se, var))
    result = margin_from_statistics(arrays, params, es, se, var)
    sg = lax.stop_gradient

    batches = agg.s0.shape[0]
    # Each batch's share of the real scenarios (the last ones may hold padding).
    size = padded_scenarios(arrays, scenarios, agg_chunk(arrays, scenarios)[0]) // batches
    share = jnp.clip(scenarios - jnp.arange(batches) * size, 0, size) / scenarios

    pooled = pooled_yes(agg)

    def figures(v, b):
        # Batch b's aggregates only: the surrogates of the other batches would make
        # the Jacobians' work and memory quadratic in the batches (a 2^20-draw run
        # in 2,048-draw chunks asked for 27 GB).
        one = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, b), agg)
        a = v.into(arrays)
        jump = jump_surrogate(a, one)[0] / share[b]
        lin = tail_surrogate(a, one, pooled)[0]
        mark = mark_surrogate(a)
        es_b = es + (jump - sg(jump)) + (lin - sg(lin)) + (mark - sg(mark))
        return _figures(margin_from_statistics(a, params, es_b, se, var))

    jac = jax.vmap(lambda b: jax.jacrev(figures)(MarginVars.of(arrays), b))(
        jnp.arange(batches))
    # Batch means, weighted by each batch's share of the scenarios.
    mean = jax.tree.map(lambda x: jnp.tensordot(share, x, axes=1), jac)
    err = jax.tree.map(
        lambda x, m: jnp.sqrt(jnp.tensordot(share, (x - m) ** 2, axes=1) / (batches - 1)),
        jac, mean)
    return result, mean, err


def sensitivity_arrays(
    arrays: BookArrays,
    params: MarginParams,
    key: PRNGKeyArray,
    scenarios: int,
    top: int,
    temperature: Float[Array, ""],
    estimator: str = "conditional",
    jumps: JumpRun | None = None,
) -> SensitivityResult:
    """Figures and their Jacobian: one forward pass per estimator involved, then
    one reverse pass per reported figure (lax.map over the cotangents, so memory
    stays that of a single pass). `result` always holds the hard figures, on
    `scenarios` draws, and so do the quantity derivatives (from
    [`quantity_jacobian`][]: both one-sided derivatives at ties, and the
    additive one); the conditional estimator's prices, rho and loadings come
    from its own run `jumps` (default: `scenarios` draws, importance-sampled)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: {estimator!r} is not one of {ESTIMATORS}")
    # Quantities: exact on the scenarios, the MC-error add-on's standard error
    # included; from the hard margin except for the smoothed one.
    result, sides, additive = quantity_jacobian(arrays, params, key, scenarios, top,
                                                temperature)
    if estimator == "smooth":
        _, sides, additive = quantity_jacobian(arrays, params, key, scenarios, top,
                                               temperature, "smooth")
    err = None
    if estimator == "conditional":
        # The rest from the conditional estimator, with batch standard errors for
        # every entry.
        jumps = JumpRun(scenarios, top, JUMP_SAMPLER) if jumps is None else jumps
        _, jac, err = _conditional_jacobian(arrays, params, key, *jumps)
    else:
        pathwise = "smooth" if estimator == "hybrid" else estimator
        _, jac = _jacobian(arrays, params, key, scenarios, top, temperature, pathwise)
    return SensitivityResult(result, eqx.tree_at(lambda j: j.quantity, jac,
                                                 jnp.mean(sides, axis=0)),
                             additive, sides, err)


sensitivity_jit = program(sensitivity_arrays)


@dataclasses.dataclass(frozen=True)
class SensitivityReport:
    """Sensitivities of one book's margin, in dollars per unit (see module doc).

    - `positions`: held contracts: quantity, price, d_quantity (dM/dq),
      d_quantity_buy / d_quantity_sell (its right and left derivatives, M's
      slope for a purchase and a sale: M(q + h) = M + h d_buy and M(q - h) =
      M - h d_sell for small h; they differ from d_quantity only where ties at
      a VaR kink the margin), d_price (dM/dp), euler (q dM/dq, with the
      additive derivative: it too differs from d_quantity only there, see
      [`quantity_jacobian`][]).
    - `candidates`: contracts in the book not held: d_quantity is the margin
      change per unit bought (negative: buying frees margin), d_price.
    - `rho` / `loading`: dM/d rho per hierarchy node, dM/d loading per cluster.
    - `clusters`: Euler allocation of the margin to clusters (dollars).
    - `euler_residual`: margin - sum of Euler allocations (0 where the margin is
      homogeneous of degree 1 in quantities; the liquidity add-on breaks it).
    - ``allocation`` in each position: its share of the margin by the rule of
      kinetic_jax._allocation (Euler allocation of max(base, floor), each add-on
      to the positions that cause it, the worst outcome's loss when the cap
      binds); `allocation_total` is their sum, the margin, and
      `allocation_parts` the same split by part (``base`` or ``floor``,
      ``mc_error``, ``liquidity``, ``stress``, ``worst_case``: part -> id ->
      dollars).
    - `horizon_days`: dM / d horizon_days, dollars per calendar day of
      liquidation horizon (None in resolution mode).
    - `spot`, `vol`: dM / d spot and dM / d vol per underlying (dollars per
      dollar of spot, per unit of annualised vol; SPEC-horizon.md §6.6).
    - `base` and `cluster_es`: the same derivatives for the base and for each
      cluster's ES.
    - `rho_standard_error`, `loading_standard_error` (and ``d_quantity_se``,
      ``d_price_se`` in each position): the Monte-Carlo standard error of each
      derivative (conditional estimator; empty or absent for the others).
    - `jump_scenarios`, `jump_sampler`: the conditional estimator's run (its
      draws and sampler; None for the other estimators).
    """

    margin: float
    base: float
    binding: str
    temperature: float
    estimator: str
    positions: dict[str, dict[str, float]]
    candidates: dict[str, dict[str, float]]
    rho: dict[str, float]
    loading: dict[str, float]
    clusters: dict[str, float]
    euler_total: float
    euler_residual: float
    base_sensitivities: dict
    cluster_es: dict[str, dict]
    rho_standard_error: dict[str, float] = dataclasses.field(default_factory=dict)
    loading_standard_error: dict[str, float] = dataclasses.field(default_factory=dict)
    allocation_total: float = 0.0
    allocation_parts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    horizon_days: float | None = None
    spot: dict[str, float] = dataclasses.field(default_factory=dict)
    vol: dict[str, float] = dataclasses.field(default_factory=dict)
    jump_scenarios: int | None = None
    jump_sampler: str | None = None

    def to_dict(self) -> dict:
        return {
            "margin": self.margin,
            "base": self.base,
            "binding": self.binding,
            "temperature": self.temperature,
            "estimator": self.estimator,
            "positions": self.positions,
            "candidates": self.candidates,
            "rho": self.rho,
            "loading": self.loading,
            "clusters": self.clusters,
            "euler_total": self.euler_total,
            "euler_residual": self.euler_residual,
            "base_sensitivities": self.base_sensitivities,
            "cluster_es": self.cluster_es,
            "rho_standard_error": self.rho_standard_error,
            "loading_standard_error": self.loading_standard_error,
            "allocation_total": self.allocation_total,
            "allocation_parts": self.allocation_parts,
            "horizon_days": self.horizon_days,
            "spot": self.spot,
            "vol": self.vol,
            "jump_scenarios": self.jump_scenarios,
            "jump_sampler": self.jump_sampler,
        }


def default_estimator(book: Book) -> str:
    """``"conditional"`` to resolution; ``"hybrid"`` under a liquidation horizon
    (SPEC-horizon.md §6.6: live marks are smooth, so differentiated pathwise;
    only the atoms resolved by the horizon are smoothed)."""
    return "conditional" if book.model_horizon_years is None else "hybrid"


def sensitivities(
    book: Book,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    estimator: str | None = None,
    scenarios: int | None = None,
    seed: int | None = None,
    jump_scenarios: int | None = None,
    sampler: str | None = None,
    dtype=None,
) -> SensitivityReport:
    """Sensitivities of `book`'s margin to every position, price, rho and
    loading, with the Euler allocation (see [`SensitivityReport`][]).

    **Arguments:**

    - `book`: a validated [`Book`][].
    - `temperature`: smoothing temperature t > 0 in latent standard deviations
      (smoothed estimators only).
    - `estimator`: ``"conditional"``, ``"hybrid"``, ``"smooth"``,
      ``"straight_through"`` or ``"hard"`` (module doc); default
      [`default_estimator`][] (conditional, or hybrid under a horizon, where
      the conditional estimator does not apply).
    - `scenarios`, `seed`: override the book's settings (the margin, its
      figures and the quantity derivatives are those of `portfolio_margin`
      with plain sampling, whatever ``[model] sampler`` says).
    - `jump_scenarios`, `sampler`: the conditional estimator's own run, for
      prices, rho and loadings (default JUMP_FACTOR = 8 x `scenarios`,
      importance-sampled: see [`jump_run`][]); ignored by the other estimators.
    """
    check_size("temperature", temperature)
    if not is_number(temperature) or not (math.isfinite(temperature) and 0 < temperature <= 1):
        raise BookError("temperature", f"{temperature!r} is outside (0, 1]")
    book = check_book(book).with_overrides(scenarios=scenarios, seed=seed)
    estimator = default_estimator(book) if estimator is None else estimator
    if estimator not in ESTIMATORS:
        raise BookError("estimator", f"{estimator!r} is not one of {', '.join(ESTIMATORS)}")
    if estimator == "conditional" and book.model_horizon_years is not None:
        raise BookError("estimator", "'conditional' integrates out each event's jump at "
                                     "resolution; with a liquidation horizon (or "
                                     "underlyings) the marks are smooth: use 'hybrid' (the "
                                     "default there)")
    s = book.settings
    jumps = jump_run(s, jump_scenarios, sampler) if estimator == "conditional" else None
    arrays, layout, params = margin_inputs(book, dtype=dtype)
    sens = sensitivity_jit(arrays, params, jax.random.key(s.seed), s.scenarios,
                           tail_size(s.scenarios, s.confidence),
                           jnp.asarray(temperature, arrays.price.dtype), estimator, jumps)
    return _report(book, layout, sens, temperature, estimator, jumps)


def _report(book, layout, sens: SensitivityResult, temperature, estimator,
            jumps: JumpRun | None = None):
    res = jax.tree.map(lambda x: np.asarray(x, np.float64), sens.result)
    jac = jax.tree.map(lambda x: np.asarray(x, np.float64), sens.jacobian)
    additive = np.asarray(sens.additive, np.float64)
    buy, sell = np.asarray(sens.one_sided, np.float64)[:, 0]
    err = (None if sens.standard_error is None
           else jax.tree.map(lambda x: np.asarray(x, np.float64), sens.standard_error))
    if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves((jac, additive, buy, sell,
                                                                   err))):
        raise EngineError("a sensitivity came out non-finite; please report this book")
    n = layout.n_contracts
    qty = book.net_quantities()
    ids = layout.contract_ids
    nodes, clusters = layout.node_names, layout.cluster_names

    def block(row: int) -> dict:
        return {
            "d_quantity": {cid: float(jac.quantity[row, i]) for i, cid in enumerate(ids)
                           if qty[cid] != 0},
            "rho": {name: float(jac.rho[row, j]) for j, name in enumerate(nodes)},
            "loading": {name: float(jac.loading[row, j]) for j, name in enumerate(clusters)},
        }

    positions, candidates = {}, {}
    cluster_euler = {name: 0.0 for name in clusters}
    for i, cid in enumerate(ids[:n]):
        c = book.contracts[i]
        entry = {"quantity": qty[cid], "price": c.price,
                 "d_quantity": float(jac.quantity[0, i]),
                 "d_quantity_buy": float(buy[i]), "d_quantity_sell": float(sell[i]),
                 "d_price": float(jac.price[0, i])}
        if c.is_linear:  # no probability price: d_price has no meaning (spot, vol do)
            entry["price"] = entry["d_price"] = None
        if err is not None:
            entry["d_quantity_se"] = float(err.quantity[0, i])
            entry["d_price_se"] = float(err.price[0, i])
        if qty[cid] != 0:
            entry["euler"] = qty[cid] * float(additive[0, i])
            cluster_euler[c.cluster] += entry["euler"]
            positions[cid] = entry
        else:
            candidates[cid] = entry
    alloc = allocate(book, layout.table, res, additive[1], additive[2])
    for i, cid in enumerate(ids[:n]):
        if cid in positions:
            positions[cid]["allocation"] = float(alloc["allocation"][i])
    allocation_parts = {part: {cid: float(v[i]) for i, cid in enumerate(ids[:n])
                               if cid in positions}
                        for part, v in alloc.items() if part != "allocation"}
    euler_total = sum(p["euler"] for p in positions.values())
    margin = float(res.margin)
    return SensitivityReport(
        margin=margin,
        base=float(res.base),
        binding=BINDING[int(res.binding)],
        temperature=float(temperature),
        estimator=estimator,
        positions=positions,
        candidates=candidates,
        rho={name: float(jac.rho[0, j]) for j, name in enumerate(nodes)},
        loading={name: float(jac.loading[0, j]) for j, name in enumerate(clusters)},
        clusters=cluster_euler,
        euler_total=euler_total,
        euler_residual=margin - euler_total,
        allocation_total=float(np.sum(alloc["allocation"])),
        allocation_parts=allocation_parts,
        base_sensitivities=block(1),
        cluster_es={name: {"es": float(res.cluster_es[k]), **block(3 + k)}
                    for k, name in enumerate(clusters)},
        horizon_days=(None if book.settings.horizon_days is None
                      else float(jac.horizon[0]) / DAYS_PER_YEAR),
        spot={u.id: float(jac.spot[0, k]) for k, u in enumerate(book.underlyings)},
        vol={u.id: float(jac.vol[0, k]) for k, u in enumerate(book.underlyings)},
        jump_scenarios=None if jumps is None else jumps.scenarios,
        jump_sampler=None if jumps is None else jumps.sampler,
        rho_standard_error=({} if err is None else
                            {name: float(err.rho[0, j]) for j, name in enumerate(nodes)}),
        loading_standard_error=({} if err is None else
                                {name: float(err.loading[0, j])
                                 for j, name in enumerate(clusters)}),
    )

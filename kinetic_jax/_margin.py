"""Portfolio margin (SPEC.md §2.3–2.5) as a pure function of arrays.

    loss_s        = sum_i q_i (p_i - YES_si)                      per scenario s
    cluster ES_c  = ES_alpha(loss restricted to cluster c)
    base          = ES_alpha(loss of the whole book), one joint simulation
    floor         = largest + second-largest cluster ES
    add-ons       = mc_error (z * SE of the binding stressed loss) + liquidity
                    + stress (worst stress-scenario loss above max(base, floor))
    margin        = max(0, min(worst case, max(base, floor) + add-ons))

All figures come from the same (N, C) outcome matrix, so they share common
random numbers; losses are matmuls of that matrix with the quantities, run at the
highest matmul precision (TF32 on GPUs would cost ~3 significant digits).
"""

from __future__ import annotations

import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._arrays import BookArrays, row_membership, without_padding
from ._block import BlockLaw, block_statistics, check_law, freeze, held_fixed
from ._errors import BookError
from ._hierarchy import correlation_matrix
from ._programs import program
from ._sampler import check_sampler, fit_proposal, simulate
from ._sharding import gathered_losses, gathered_tail, replicated_map
from ._shortfall import (
    expected_shortfall,
    sortfree_tail_statistics,
    weighted_tail,
    weighted_tail_statistics,
)
from ._simulation import HIGHEST
from ._stress import scenario_losses
from ._worst_case import table_worst_case

ADDONS = ("mc_error", "liquidity", "stress")
BINDING = ("worst_case", "base", "floor")


class MarginParams(eqx.Module):
    """Run-time settings as arrays (changing them does not recompile).

    - `confidence`: ES level alpha.
    - `mc_error`, `liquidity`: 1.0 to apply the add-on, 0.0 to switch it off.
    - `mc_error_z`: multiple of the standard error in the MC buffer.
    - `liquidity_threshold`, `liquidity_rate`: see [`Settings`][].
    - `stress`: 1.0 to apply the stress add-on (SPEC.md §5.2), 0.0 for none.
    """

    confidence: Float[Array, ""]
    mc_error: Float[Array, ""]
    mc_error_z: Float[Array, ""]
    liquidity: Float[Array, ""]
    liquidity_threshold: Float[Array, ""]
    liquidity_rate: Float[Array, ""]
    stress: Float[Array, ""]

    @classmethod
    def from_settings(cls, settings, dtype=jnp.float32) -> MarginParams:
        f = lambda x: jnp.asarray(float(x), dtype)  # noqa: E731
        return cls(
            confidence=f(settings.confidence),
            mc_error=f(settings.mc_error),
            mc_error_z=f(settings.mc_error_z),
            liquidity=f(settings.liquidity),
            liquidity_threshold=f(settings.liquidity_threshold),
            liquidity_rate=f(settings.liquidity_rate),
            stress=f(settings.stress_addon),
        )


class MarginResult(eqx.Module):
    """Every figure of one margin call, in dollars (arrays; see module doc).

    Shapes: scalars, except K-vectors for clusters and the (K, K) correlation.
    `binding` is 0 (worst_case), 1 (base) or 2 (floor), indexing `BINDING`.
    """

    margin: Float[Array, ""]
    full_collateral: Float[Array, ""]
    worst_case_loss: Float[Array, ""]
    base: Float[Array, ""]
    base_se: Float[Array, ""]
    var: Float[Array, ""]
    floor: Float[Array, ""]
    floor_se: Float[Array, ""]
    addons: Float[Array, " addons"]
    binding: Int[Array, ""]
    capital_released: Float[Array, ""]
    aggregate: Float[Array, ""]  # diagnostic sqrt(ES^T R ES)
    cluster_es: Float[Array, " K"]
    cluster_se: Float[Array, " K"]
    cluster_var: Float[Array, " K"]
    cluster_gross: Float[Array, " K"]
    correlation: Float[Array, "K K"]


def gross(quantity: Float[Array, " C"], price: Float[Array, " C"]) -> Float[Array, " C"]:
    """Full collateral per position: q p for longs, |q| (1 - p) for shorts."""
    return jnp.maximum(quantity * price, -quantity * (1 - price))


def book_gross(arrays: BookArrays) -> Float[Array, " C"]:
    """[`gross`][] per slot; a linear instrument's is its notional |q| F0
    (SPEC-horizon.md §6.6)."""
    g = gross(arrays.quantity, arrays.price)
    if arrays.spot.shape[0]:
        notional = jnp.abs(arrays.quantity) * arrays.ratio * arrays.spot[arrays.under]
        g = jnp.where(arrays.linear, notional, g)
    return g


def linear_worst_case(arrays: BookArrays) -> Float[Array, ""]:
    """The linear instruments' part of the cap. Positions on one underlying that
    settle at one time (its spot at the horizon h, or on its Brownian bridge at
    an expiry T <= h) net: with e = sum q F0 / S0 over each such group, the cap
    is sum e S0 when every e >= 0 (prices cannot go below 0), and +inf — no cap
    — when any group is net short. Netting per underlying alone (SPEC-horizon
    §6.6) would cap a perp against a future expiring before h at 0, though
    S_T - S_h is unbounded."""
    if not arrays.spot.shape[0]:
        return jnp.zeros((), arrays.price.dtype)
    n_u, n_g = arrays.spot.shape[0], arrays.group_time.shape[0]
    bridged = arrays.on_path & (arrays.maturity <= arrays.horizon)  # as in path_values
    settles = jnp.where(bridged, arrays.slot_group, n_g + arrays.under)
    units = jnp.where(arrays.linear, arrays.quantity * arrays.ratio, 0.0)
    e = jax.ops.segment_sum(units, settles, num_segments=n_g + n_u)
    return jnp.where(jnp.any(e < 0), jnp.inf, jnp.sum(units * arrays.spot[arrays.under]))


def cluster_losses(
    arrays: BookArrays, yes: Float[Array, "N C"], quantity: Float[Array, " C"] | None = None
) -> Float[Array, "N K"]:
    """Loss of each cluster in each scenario: sum over its contracts of q (p - YES)."""
    q = arrays.quantity if quantity is None else quantity
    weights = row_membership(arrays)[:, :-1] * q[:, None]
    return jnp.matmul(arrays.price[None, :] - yes, weights, precision=HIGHEST)


def margin_from_outcomes(
    arrays: BookArrays, params: MarginParams, yes: Float[Array, "N C"], top: int
) -> MarginResult:
    """The margin of `arrays`' quantities given simulated outcomes `yes` (N, C).

    Many books (accounts) can share one simulation: call this once per book with
    the same `yes`, or `vmap` it over quantities.
    """
    return margin_from_losses(arrays, params, cluster_losses(arrays, yes), top)


def margin_from_losses(
    arrays: BookArrays, params: MarginParams, per_cluster: Float[Array, "N K"], top: int
) -> MarginResult:
    """The margin given each cluster's simulated loss (N, K) for `arrays.quantity`.
    The worst case, full collateral and add-ons are taken from `arrays`."""
    total = jnp.sum(per_cluster, axis=1, keepdims=True)
    stacked = jnp.concatenate([per_cluster, total], axis=1).T
    es, se, var = expected_shortfall(stacked, params.confidence, top)
    return margin_from_statistics(arrays, params, es, se, var)


def margin_from_statistics(
    arrays: BookArrays,
    params: MarginParams,
    es: Float[Array, " K+1"],
    se: Float[Array, " K+1"],
    var: Float[Array, " K+1"],
) -> MarginResult:
    """The margin from each cluster's and (last) the whole book's ES, standard
    error and VaR; worst case, full collateral and add-ons from `arrays`."""
    cluster_es, base = es[:-1], es[-1]
    k = cluster_es.shape[0]
    top2, which = lax.top_k(cluster_es, min(2, k))
    floor = jnp.sum(top2)
    floor_se = jnp.sum(se[:-1][which])
    stressed = jnp.maximum(base, floor)
    gross_c = book_gross(arrays)
    mc = params.mc_error * params.mc_error_z * jnp.where(base >= floor, se[-1], floor_se)
    given = arrays.open_interest > 0
    ratio = jnp.abs(arrays.quantity) / jnp.where(given, arrays.open_interest, 1.0)
    liq_each = jnp.minimum(
        gross_c,
        params.liquidity_rate * gross_c * jnp.maximum(ratio - params.liquidity_threshold, 0),
    )
    liquidity = params.liquidity * jnp.sum(jnp.where(given, liq_each, 0.0))
    # Stress add-on: the worst stress-scenario loss above max(base, floor).
    scenario = jnp.sum(scenario_losses(arrays.quantity, arrays.price, arrays.cluster,
                                       arrays.stress_yes, k), axis=1)
    worst_scenario = jnp.max(jnp.where(arrays.stress_valid, scenario, -jnp.inf))
    stress = params.stress * jnp.where(jnp.any(arrays.stress_valid),
                                       jnp.maximum(worst_scenario - stressed, 0.0), 0.0)
    addons = jnp.stack([mc, liquidity, stress])
    uncapped = stressed + jnp.sum(addons)
    worst = table_worst_case(
        arrays.quantity, arrays.price, arrays.wc_component, arrays.wc_index, arrays.wc_yes
    ) + linear_worst_case(arrays)
    margin = jnp.maximum(0.0, jnp.minimum(worst, uncapped))
    binding = jnp.where(worst <= uncapped, 0, jnp.where(base >= floor, 1, 2))
    full = jnp.sum(gross_c)
    released = jnp.where(full > 0, 1 - margin / jnp.where(full > 0, full, 1.0), 0.0)
    corr = correlation_matrix(arrays.rho, arrays.lca)
    agg_sq = jnp.dot(jnp.dot(cluster_es, corr, precision=HIGHEST), cluster_es, precision=HIGHEST)
    aggregate = jnp.where(agg_sq > 0, jnp.sqrt(jnp.where(agg_sq > 0, agg_sq, 1.0)), 0.0)
    cluster_gross = jax.ops.segment_sum(gross_c, arrays.cluster, num_segments=k)
    return MarginResult(
        margin=margin,
        full_collateral=full,
        worst_case_loss=worst,
        base=base,
        base_se=se[-1],
        var=var[-1],
        floor=floor,
        floor_se=floor_se,
        addons=addons,
        binding=binding.astype(jnp.int32),
        capital_released=released,
        aggregate=aggregate,
        cluster_es=cluster_es,
        cluster_se=se[:-1],
        cluster_var=var[:-1],
        cluster_gross=cluster_gross,
        correlation=corr,
    )


def margin_from_weighted_losses(
    arrays: BookArrays,
    params: MarginParams,
    losses: Float[Array, "K+1 N"],
    weights: Float[Array, " N"],
    top: int,
    scenarios: int,
) -> MarginResult:
    """The margin from streamed row losses (each cluster's, then the book's; padding
    scenarios at -inf) and likelihood-ratio weights (weighted Acerbi–Tasche ES)."""
    es, se, var = row_statistics(losses, weights, params.confidence, top, scenarios)
    return margin_from_statistics(arrays, params, es, se, var)


def row_statistics(
    losses: Float[Array, "R N"],
    weights: Float[Array, " N"],
    confidence: Float[Array, ""],
    top: int,
    scenarios: int,
) -> tuple[Float[Array, " R"], Float[Array, " R"], Float[Array, " R"]]:
    """``(es, se, var)`` of weighted loss rows: the `top` largest per row, or, when
    every draw may be in the tail (``top`` >= the row length: importance
    sampling), the sort-free estimator."""
    if top >= losses.shape[-1]:
        es, se, var, _ = sortfree_tail_statistics(losses, weights, confidence, scenarios)
    else:
        tail, mass, _ = weighted_tail(losses, weights, top, scenarios)
        es, se, var, _ = weighted_tail_statistics(tail, mass, confidence, scenarios)
    return es, se, var


def sampled_statistics(
    arrays: BookArrays,
    params: MarginParams,
    losses: Float[Array, "R Np"],
    weights: Float[Array, " Np"],
    top: int,
    scenarios: int,
    law: BlockLaw | None,
) -> MarginResult:
    """The margin from [`simulate`][]'s rows: [`margin_from_weighted_losses`][],
    or with the exact-block sampler's `law` [`block_statistics`][]."""
    if law is None:
        return margin_from_weighted_losses(arrays, params, losses, weights, top, scenarios)
    es, se, var = block_statistics(losses, weights, law, params.confidence, scenarios)
    return margin_from_statistics(arrays, params, es, se, var)


def static_top(sampler: str, scenarios: int, padded: int, top: int) -> int:
    """Rows kept from each loss row: `top` for plain sampling; every scenario for
    importance sampling, whose tail holds an unknown number of draws."""
    return top if sampler == "plain" else padded


def margin_arrays(
    arrays: BookArrays,
    params: MarginParams,
    key: PRNGKeyArray,
    scenarios: int,
    top: int,
    sampler: str = "plain",
    chunk: int | None = None,
    mesh: Mesh | None = None,
    law: BlockLaw | None = None,
) -> MarginResult:
    """Simulates `scenarios` joint outcomes with `key` and margins the book.
    Pure and jit-able (`scenarios`, `top`, `sampler`, `chunk` and `mesh` static);
    see [`portfolio_margin`][] for the host-level entry point.

    `law`: with ``sampler="exact_block"``, the book's independent block
    ([`sampler_law`][], computed on the host for these quantities and prices; the
    base and the block's clusters use it). Without one that sampler is
    ``"importance"`` (a different program: margin calls pass the empty law
    instead). With one, derivatives with respect to quantities, prices,
    probabilities or loadings raise (see [`held_fixed`][]).

    Scenarios are streamed in chunks of `chunk` (default: see
    [`chunk_size`][]); the result does not depend on it. With a `mesh` of several
    devices ([`scenario_mesh`][]) the chunks are spread over its devices and only
    tail candidates are gathered (see ``_sharding.py``): the tail is exactly the
    one-device tail, and the figures agree with one device to float32 rounding
    (XLA may round the standard errors' sums differently in a program compiled
    for several devices; [`portfolio_margin`][] computes them on one device and
    is bit-identical). The result is replicated on the mesh.

    `top` is the number of largest losses kept: at least
    [`tail_size`][]`(scenarios, confidence)` (what the host entry points pass).
    Below that the figures are NaN (the confidence is traced, so this is not
    checked when tracing; the host layer reports a NaN as an [`EngineError`][]);
    `scenarios` and `top` outside ``1 <= top <= scenarios`` raise a BookError.
    """
    if not (isinstance(scenarios, numbers.Integral) and scenarios >= 1):
        raise BookError("scenarios", f"{scenarios!r} is not a positive integer")
    if not (isinstance(top, numbers.Integral) and 1 <= top <= scenarios):
        raise BookError("top", f"{top!r} is not an integer in [1, scenarios = {scenarios}] "
                               f"(see tail_size)")
    arrays = held_fixed(without_padding(arrays), law)
    if mesh is not None and mesh.size > 1:
        return _sharded_margin(arrays, params, key, scenarios, top, sampler, chunk, mesh, law)
    losses, weights, _ = simulate(arrays, params.confidence, key, scenarios, sampler, chunk, law)
    top = static_top(sampler, scenarios, losses.shape[1], top)
    return sampled_statistics(arrays, params, losses, weights, top, scenarios, law)


def _sharded_margin(arrays, params, key, scenarios, top, sampler, chunk, mesh, law):
    rows, weights = sharded_rows(arrays, params, key, scenarios, top, sampler, chunk, mesh, law)
    return margin_from_rows(arrays, params, rows, weights, scenarios, sampler, law)


def sharded_rows(
    arrays: BookArrays,
    params: MarginParams,
    key: PRNGKeyArray,
    scenarios: int,
    top: int,
    sampler: str,
    chunk: int | None,
    mesh: Mesh,
    law: BlockLaw | None = None,
) -> tuple[Float[Array, "K+1 T"], Float[Array, "*rows T"]]:
    """The scenarios spread over `mesh` (see ``_sharding.py``), gathered into
    what the figures need, replicated on the mesh: plain sampling, each row's
    `top` largest losses and their masses (see [`weighted_tail`][]); importance
    sampling, the loss rows and weights (see [`scenario_losses`][]; with the
    exact-block sampler's `law`, the rest's row too)."""
    check_sampler(sampler)
    check_law(law, sampler)

    def body(arrays, params, key, law):
        if sampler == "plain":
            return gathered_tail(arrays, key, scenarios, top, chunk, mesh.size)
        proposal = freeze(fit_proposal(lax.stop_gradient(arrays), params.confidence, key,
                                       scenarios, chunk, law), law)
        rest = None if law is None else law.rest
        return gathered_losses(arrays, key, scenarios, chunk, proposal, mesh.size, rest)

    return replicated_map(body, mesh, arrays, params, key, law)


def margin_from_rows(
    arrays: BookArrays,
    params: MarginParams,
    rows: Float[Array, "K+1 T"],
    weights: Float[Array, "*rows T"],
    scenarios: int,
    sampler: str,
    law: BlockLaw | None = None,
) -> MarginResult:
    """The margin from [`sharded_rows`][]'s output, as one device computes it."""
    if sampler == "plain":
        es, se, var, _ = weighted_tail_statistics(rows, weights, params.confidence, scenarios)
        return margin_from_statistics(arrays, params, es, se, var)
    return sampled_statistics(arrays, params, rows, weights, rows.shape[1], scenarios, law)


margin_jit = program(margin_arrays)
sharded_rows_jit = eqx.filter_jit(sharded_rows)  # meshes: never stored
rows_margin_jit = program(margin_from_rows)

"""Margin-minimising hedges with optax.

Given instruments (contracts of the book, held or not), find trade quantities
x in [-Q, Q]^n minimising

    margin(q0 + S x) + cost * sum_j |x_j|

on one fixed simulation (common random numbers). Outcomes do not depend on
quantities, so the scenarios' losses are affine in x: the per-cluster losses of
the current book (N, K) plus (N, n) instrument columns p_j - YES_j; every step
is a matrix-vector product, a top-k and the margin formula (ES, floor, add-ons,
the exact worst-case cap from the outcome table). The step — gradient, optax
update, projection onto the box — is jitted whole and looped with ``lax.scan``.

The base ES is convex in x (ES is coherent), so is the floor (a maximum of sums
of ES) and the worst case (a sum of maxima of affine functions); the objective
is piecewise linear, so Adam runs on a step size decaying geometrically from
Q/10 to Q/10^5 and the best iterate is kept; the schedule then restarts from
the best point until a restart no longer improves it, which takes the
optimiser along valleys that run across the coordinates. Its minimum of the
base ES is certified against the exact linear programme in ``kinetic_jax.lp``.

Trades are whole lots by default: the continuous optimum is rounded to the lot
and a local search moves one lot up or down on the largest trades (and tries no
trade at all) while the hard objective on the same scenarios falls. The margin
reported after the hedge is [`portfolio_margin`][] of the traded book, the
figure `kinetic-jax margin` prints for it; the continuous optimum is reported
beside it. Bounds, cost and the candidate trades reach the compiled programs as
arrays, so changing them does not recompile.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._arrays import BookArrays, bucket
from ._book import MAX_AMOUNT, Book, check_book
from ._checks import check_size, is_number
from ._errors import BookError, EngineError
from ._margin import MarginParams, MarginResult, cluster_losses, margin_from_losses
from ._portfolio import margin_inputs, portfolio_margin
from ._programs import program
from ._shortfall import expected_shortfall, tail_size
from ._simulation import HIGHEST, outcomes

OBJECTIVES = ("margin", "base")


class HedgeProblem(eqx.Module):
    """The data of a hedge: current cluster losses, instrument loss columns."""

    arrays: BookArrays
    params: MarginParams
    base_losses: Float[Array, "N K"]
    columns: Float[Array, "N n"]  # p_j - YES_j per instrument
    slots: Int[Array, " n"]  # contract slot of each instrument
    active: Float[Array, " n"]  # 1 for a real instrument, 0 for padding
    bound: Float[Array, ""]
    cost: Float[Array, ""]


def hedge_problem(
    arrays: BookArrays, params: MarginParams, key: PRNGKeyArray, scenarios: int,
    slots: Int[Array, " n"], active: Float[Array, " n"], bound, cost,
) -> HedgeProblem:
    """The [`HedgeProblem`][] of `arrays` on `scenarios` draws of `key`: the current
    cluster losses and, per instrument slot (`slots`, `active` 1.0 or 0.0 for
    padding), its loss column per unit; `bound` and `cost` as arrays (changing
    them never recompiles)."""
    yes = outcomes(key, arrays, scenarios)
    dtype = arrays.price.dtype
    return HedgeProblem(
        arrays=arrays,
        params=params,
        base_losses=cluster_losses(arrays, yes),
        columns=(arrays.price[slots] - yes[:, slots]) * active,
        slots=slots,
        active=active,
        bound=jnp.asarray(bound, dtype),
        cost=jnp.asarray(cost, dtype),
    )


def hedge_objective(
    x: Float[Array, " n"], problem: HedgeProblem, top: int, objective: str = "margin"
) -> tuple[Float[Array, ""], MarginResult]:
    """margin (or base) of the hedged book plus the trading cost; with the
    hedged book's full result as auxiliary output."""
    p = problem
    x = x * p.active
    k = p.base_losses.shape[1]
    weights = jax.nn.one_hot(p.arrays.cluster[p.slots], k, dtype=x.dtype) * x[:, None]
    losses = p.base_losses + jnp.matmul(p.columns, weights, precision=HIGHEST)
    arrays = eqx.tree_at(lambda a: a.quantity, p.arrays, p.arrays.quantity.at[p.slots].add(x))
    result = margin_from_losses(arrays, p.params, losses, top)
    value = result.margin if objective == "margin" else result.base
    return value + p.cost * jnp.sum(jnp.abs(x)), result


def base_es_of(x, problem: HedgeProblem, top: int):
    """Base ES only (for certificates): ES of the total hedged loss."""
    total = problem.base_losses.sum(axis=1) + jnp.matmul(problem.columns, x * problem.active,
                                                         precision=HIGHEST)
    es, _, _ = expected_shortfall(total, problem.params.confidence, top)
    return es


@program
def solve_hedge(problem: HedgeProblem, top: int, steps: int, objective: str,
                x0: Float[Array, " n"] | None = None, length: Int[Array, ""] | None = None):
    """The continuous optimiser behind [`optimise_hedge`][]: Adam steps on
    `objective` (``"margin"`` or ``"base"``) projected onto the box, the whole step
    jitted inside ``lax.scan``, from `x0` (default: no trade); returns
    ``(best_x, trace)`` (the best iterate and the objective at every step). `top`
    and `steps` (the scan's length) are static; `length` (default `steps`, at
    most `steps`) is the schedule's, an array, so schedules of any length up to
    `steps` share one compiled program: the steps from `length` on are skipped
    (``lax.cond``) and their trace entries hold the best objective."""
    bound = problem.bound
    dtype = problem.active.dtype
    length = jnp.asarray(steps if length is None else length, jnp.int32)

    def learning_rate(count):  # geometric decay from Q/10 to Q/10^5 over the schedule
        frac = count.astype(dtype) / length.astype(dtype)
        return bound * jnp.asarray(0.1, dtype) * jnp.asarray(1e-4, dtype) ** frac

    optimiser = optax.adam(learning_rate=learning_rate)
    x0 = (jnp.zeros_like(problem.active) if x0 is None
          else jnp.clip(x0, -bound, bound) * problem.active)
    grad = jax.value_and_grad(hedge_objective, has_aux=True)

    def run(carry):
        x, state, best_x, best_f = carry
        (f, _), g = grad(x, problem, top, objective)
        better = f < best_f
        best_x = jnp.where(better, x, best_x)
        best_f = jnp.where(better, f, best_f)
        updates, state = optimiser.update(g, state, x)
        x = jnp.clip(optax.apply_updates(x, updates), -bound, bound) * problem.active
        return (x, state, best_x, best_f), f

    def step(carry, i):
        return lax.cond(i < length, run, lambda c: (c, c[3]), carry)

    init = (x0, optimiser.init(x0), x0, jnp.asarray(jnp.inf, x0.dtype))
    # optax's bias correction mixes Python floats with int32 counts, which the
    # strict promotion mode (used in our tests) rejects; its promotions are safe.
    with jax.numpy_dtype_promotion("standard"):
        (x, _, best_x, best_f), trace = lax.scan(step, init, jnp.arange(steps))
    f_last, _ = hedge_objective(x, problem, top, objective)
    best_x = jnp.where(f_last < best_f, x, best_x)
    return best_x, trace


@dataclasses.dataclass(frozen=True)
class HedgeResult:
    """A hedge found by [`optimise_hedge`][]. Amounts in dollars; quantities in
    contracts (the trade, added to the current positions).

    - `quantities`: the trade, in whole lots (multiples of `lot`) unless `lot`
      is None; `positions_after`: the book's net positions after it.
    - `margin_before`, `margin_after`, `base_before`, `base_after`,
      `binding_after`: [`portfolio_margin`][] of the book and of the traded
      book under the plain sampler, same seed (the figures `kinetic-jax margin
      --sampler plain` prints for them; the search runs on plain draws).
    - `search_margin`: the margin at the traded quantities on the optimiser's
      own scenarios (equal to `margin_after` to float32 rounding).
    - `continuous_quantities`, `continuous_margin`, `continuous_base`: the
      optimiser's continuous optimum and its margin and base ES on its
      scenarios, before rounding to lots.
    - `search_moves`: accepted one-lot moves of the local search after rounding.
    - `iterations`: optimiser steps run (the schedule and its warm restarts);
      `converged`: the last restart improved the objective by at most 1e-5
      (relative); `trace`: the objective at every step.
    - `trading_cost`: `cost` times the traded contracts; `capital_freed`:
      margin before minus margin after.
    """

    instruments: tuple[str, ...]
    quantities: dict[str, float]
    positions_after: dict[str, float]
    objective: str
    margin_before: float
    margin_after: float
    base_before: float
    base_after: float
    trading_cost: float
    capital_freed: float
    iterations: int
    converged: bool
    max_quantity: float
    cost: float
    binding_after: str
    lot: float | None
    search_margin: float
    search_moves: int
    continuous_quantities: dict[str, float]
    continuous_margin: float
    continuous_base: float
    trace: tuple[float, ...]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["instruments"] = list(self.instruments)
        d.pop("trace")
        d["objective_trace_every_50"] = list(self.trace[::50])
        return d


def _finite(name: str, value) -> float:
    check_size(name, value)
    if not is_number(value) or not math.isfinite(value):
        raise BookError(name, f"{value!r} is not a finite number")
    return float(value)


def optimise_hedge(
    book: Book,
    instruments: list[str] | tuple[str, ...],
    *,
    max_quantity: float | None = None,
    cost: float = 0.0,
    objective: str = "margin",
    steps: int = 1000,
    lot: float | None = 1.0,
    scenarios: int | None = None,
    seed: int | None = None,
    dtype=None,
) -> HedgeResult:
    """Finds the trade in `instruments` that minimises the margin (or the base
    ES) plus ``cost * sum |trade|``, within ``|trade_j| <= max_quantity``, in
    whole lots.

    **Arguments:**

    - `book`: the current book; instruments must be contracts of it.
    - `max_quantity`: box bound Q (default: the largest |position| of the book,
      or 1000 for an empty book).
    - `cost`: linear trading cost, dollars per contract traded (>= 0).
    - `objective`: ``"margin"`` or ``"base"``.
    - `steps`: optimiser iterations of one schedule (one jitted ``lax.scan``);
      warm restarts from the best point follow (the first a quarter as long)
      until one improves the objective by at most 1e-5 (relative), at most 10.
    - `lot`: trade size unit (default 1: whole contracts); None keeps the
      continuous optimum. The continuous optimum is rounded to lots, then a
      local search moves one lot up or down on the largest trades while that
      lowers the objective (hard margin, the optimiser's scenarios).

    Bounds, cost and lot are passed to the compiled programs as arrays:
    changing only them does not recompile.

    **Returns:** a [`HedgeResult`][]: the margin before and after from
    [`portfolio_margin`][] of the book and of the traded book under the plain
    sampler (the search's own draws; same seed), and the continuous optimum
    beside them.
    """
    check_book(book)
    if isinstance(instruments, str):  # would be read one character at a time
        raise BookError("instrument", f"{instruments!r:.80} is one string: give a list of "
                                      f"contract ids, e.g. [{instruments!r:.60}]")
    if not instruments:
        raise BookError("instrument", "give at least one instrument")
    ids = book.contract_ids
    for j, cid in enumerate(instruments):
        if cid not in ids:
            raise BookError(f"instrument[{j}]", f"unknown contract {cid!r}")
        if cid in instruments[:j]:
            raise BookError(f"instrument[{j}]", f"{cid!r} is given twice")
    if objective not in OBJECTIVES:
        raise BookError("objective", f"{objective!r} is not one of {', '.join(OBJECTIVES)}")
    check_size("steps", steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100_000:
        raise BookError("steps", f"{steps!r} is outside [1, 100000]")
    qty = book.net_quantities()
    if max_quantity is None:
        max_quantity = _default_bound(book, instruments, qty)
    max_quantity, cost = _finite("max_quantity", max_quantity), _finite("cost", cost)
    if not 0 < max_quantity <= MAX_AMOUNT:
        raise BookError("max_quantity", f"{max_quantity!r} is outside (0, {MAX_AMOUNT:g}] "
                                        f"(positions' own limit)")
    if cost < 0:
        raise BookError("cost", f"{cost!r} must be non-negative")
    if lot is not None:
        lot = _finite("lot", lot)
        if lot <= 0:
            raise BookError("lot", f"{lot!r} must be positive")
        if lot > max_quantity:
            raise BookError("lot", f"{lot!r} is larger than max_quantity {max_quantity!r}: "
                                   f"no whole lot fits the bound")
    # The search runs on plain draws (a differentiable loss table: the exact-block
    # law is data of the quantities); the margins before and after are plain too,
    # so the trade found is the best by the margins reported.
    book = book.with_overrides(scenarios=scenarios, seed=seed).with_settings(sampler="plain")
    n = len(instruments)
    problem, top = build_hedge_problem(book, instruments, max_quantity, cost, dtype=dtype)
    best_x, trace, converged = _restarted(problem, top, steps, objective)
    x_cont = np.asarray(best_x, np.float64)
    _, at_cont = _objective_jit(best_x, problem, top, objective)
    if lot is None:
        x, moves = x_cont, 0
    else:
        x, moves = whole_lots(problem, top, objective, x_cont, n, lot, max_quantity)
    _, at_x = _objective_jit(jnp.asarray(x, problem.active.dtype), problem, top, objective)
    traded = {cid: float(v) for cid, v in zip(instruments, x[:n])}
    after_pos = dict(qty)
    for cid, v in traded.items():
        after_pos[cid] = after_pos[cid] + v
    after_pos = {k: v for k, v in after_pos.items() if v != 0}
    before = portfolio_margin(book, dtype=dtype)
    after = portfolio_margin(book.with_positions(after_pos), dtype=dtype)
    return HedgeResult(
        instruments=tuple(instruments),
        quantities=traded,
        positions_after=after_pos,
        objective=objective,
        margin_before=before.margin,
        margin_after=after.margin,
        base_before=before.base,
        base_after=after.base,
        trading_cost=cost * float(np.abs(x[:n]).sum()),
        capital_freed=before.margin - after.margin,
        iterations=len(trace),
        converged=converged,
        max_quantity=max_quantity,
        cost=cost,
        binding_after=after.binding,
        lot=lot,
        search_margin=float(at_x.margin),
        search_moves=moves,
        continuous_quantities={cid: float(v) for cid, v in zip(instruments, x_cont[:n])},
        continuous_margin=float(at_cont.margin),
        continuous_base=float(at_cont.base),
        trace=tuple(float(v) for v in trace),
    )


RESTARTS = 10  # warm restarts of the schedule at most (see _restarted)
RESTART_TOLERANCE = 1e-5  # relative improvement of a restart under which it has converged


def _restarted(problem: HedgeProblem, top: int, steps: int, objective: str
               ) -> tuple[Array, np.ndarray, bool]:
    """``(best_x, trace, converged)``: the schedule of `steps` steps from no
    trade, then warm restarts from the best point so far (the first a quarter
    as long, the others whole), until a restart improves the objective by at
    most `RESTART_TOLERANCE` (relative; `converged`) or `RESTARTS` of them have
    run. Every run is one compiled program (``solve_hedge``'s `length`).

    One schedule can stall in a valley of the piecewise-linear objective that
    runs across the coordinates: Adam's steps are per coordinate, and along
    (+1, -1) on a contract and a parlay with it as a leg (priced above the
    leg: a sure gain), each coordinate alone raises the objective. On 24 random
    three-instrument problems one schedule of 1,000 steps stopped 0.44 % above
    the exact LP optimum once; with the restarts every one is within 4.9e-7,
    and 23 of 24 stop after the first, short restart (a quarter more steps).
    Restarts a quarter as long throughout travelled too little along a long
    valley (38 % of the way after 8)."""
    x0 = jnp.zeros_like(problem.active)  # one compiled program for every run
    best_x, trace = solve_hedge(problem, top, steps, objective, x0)
    traces = [np.asarray(trace, np.float64)]
    best = float(np.min(traces[0]))
    converged = False
    for r in range(RESTARTS):
        length = max(steps // 4, 1) if r == 0 else steps
        x, trace = solve_hedge(problem, top, steps, objective, best_x,
                               jnp.asarray(length, jnp.int32))
        traces.append(np.asarray(trace, np.float64)[:length])
        f = float(np.min(traces[-1]))
        if not np.isfinite(f):
            break
        gain = best - f
        if f < best:
            best_x, best = x, f
        if gain <= RESTART_TOLERANCE * max(abs(best), 1.0):
            converged = True
            break
    trace = np.concatenate(traces)
    if not (np.all(np.isfinite(np.asarray(best_x))) and np.all(np.isfinite(trace))):
        raise EngineError("the optimiser diverged; please report this book")
    return best_x, trace, converged


SEARCHED = 8  # instruments (the largest trades) the local search moves
MAX_MOVES = 200


def _objectives(xs: Float[Array, "B n"], problem: HedgeProblem, top: int, objective: str):
    return jax.vmap(lambda x: hedge_objective(x, problem, top, objective)[0])(xs)


_objectives_jit = program(_objectives)


def whole_lots(
    problem: HedgeProblem, top: int, objective: str, x: np.ndarray, n: int, lot: float,
    max_quantity: float,
) -> tuple[np.ndarray, int]:
    """Rounds the continuous trade `x` to multiples of `lot` within the bound,
    then moves one lot at a time: each round evaluates (one batched, compiled
    call, on the problem's scenarios) one lot up and one lot down on each of the
    largest trades, and no trade at all, and takes the best while it lowers the
    objective. **Returns:** ``(trade, accepted moves)``."""
    width = problem.active.shape[0]
    limit = math.floor(max_quantity / lot + 1e-9) * lot
    x = np.where(np.arange(width) < n, np.clip(np.round(x / lot) * lot, -limit, limit), 0.0)
    searched = np.argsort(-np.abs(x[:n]), kind="stable")[: min(n, SEARCHED)]
    rows = 2 * min(width, SEARCHED) + 2
    dtype = problem.active.dtype
    moves = 0
    while True:
        cand = np.tile(x, (rows, 1))
        for r, j in enumerate(searched):
            cand[1 + 2 * r, j] += lot
            cand[2 + 2 * r, j] -= lot
        cand[-1] = 0.0
        # A copy: in float64 np.asarray would be a read-only view of the device array.
        values = np.array(_objectives_jit(jnp.asarray(cand, dtype), problem, top, objective),
                          np.float64)
        values[np.any(np.abs(cand) > limit * (1 + 1e-12), axis=1)] = np.inf
        best = int(np.argmin(values))
        if not values[best] < values[0] - 1e-7 * max(1.0, abs(values[0])) or moves >= MAX_MOVES:
            return x, moves
        x = cand[best]
        moves += 1


_problem_jit = program(hedge_problem)


def _default_bound(book: Book, instruments, qty: dict) -> float:
    """The default box: the largest |position| (contracts); when every instrument
    is a perp or future, in units of the underlying: the notional that matches the
    book's full collateral at the smallest F0, and at least twice the largest
    linear position."""
    if instruments and all(book.contract(cid).is_linear for cid in instruments):
        full = sum(abs(q) * (book.forward_price(c) if c.is_linear else max(c.price, 1 - c.price))
                   for c in book.contracts for q in [qty[c.id]])
        f0 = min(book.forward_price(book.contract(cid)) for cid in instruments)
        largest = max([abs(qty[c.id]) for c in book.contracts if c.is_linear], default=0.0)
        return max(full / f0, 2 * largest) or 1.0
    return max([abs(v) for v in qty.values()], default=0.0) or 1000.0


def build_hedge_problem(
    book: Book, instruments, max_quantity: float, cost: float = 0.0, *, dtype=None
) -> tuple[HedgeProblem, int]:
    """``(problem, top)`` for `book`'s own scenarios (settings' seed and count);
    instruments are padded to a power-of-two bucket with inactive slots."""
    s = book.settings
    arrays, _, params = margin_inputs(book, dtype=dtype)
    ids = book.contract_ids
    n = len(instruments)
    width = bucket(n, 1)
    slots = np.full(width, arrays.quantity.shape[0] - 1, np.int32)  # padding slot
    slots[:n] = [ids.index(c) for c in instruments]
    active = np.zeros(width)
    active[:n] = 1
    dtype = arrays.price.dtype
    problem = _problem_jit(arrays, params, jax.random.key(s.seed), s.scenarios,
                           jnp.asarray(slots), jnp.asarray(active, dtype),
                           jnp.asarray(max_quantity, dtype), jnp.asarray(cost, dtype))
    return problem, tail_size(s.scenarios, s.confidence)
_objective_jit = program(hedge_objective)

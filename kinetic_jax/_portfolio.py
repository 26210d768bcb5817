"""Host-level entry point: margin a [`Book`][] and get a plain-Python report."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from ._arrays import BookArrays, book_arrays
from ._block import BlockLaw, sampler_law
from ._book import Book, check_book
from ._errors import EngineError
from ._horizon import ContractHorizon, contract_horizon
from ._margin import (
    ADDONS,
    BINDING,
    MarginParams,
    MarginResult,
    margin_jit,
    rows_margin_jit,
    sampled_statistics,
    sharded_rows_jit,
    static_top,
)
from ._programs import program
from ._sampler import simulate
from ._sharding import replicate, scenario_mesh
from ._shortfall import tail_size
from ._stress import StressResult, stress_losses
from ._underlyings import UnderlyingReport, underlying_reports


@dataclasses.dataclass(frozen=True)
class ClusterReport:
    name: str
    gross: float
    es: float
    standard_error: float
    var: float
    positions: int


@dataclasses.dataclass(frozen=True)
class MarginReport:
    """One margin call, in dollars. See docs/methodology.md for every figure.

    `binding` is ``worst_case``, ``base`` or ``floor`` (SPEC.md §2.5);
    `standard_error` is the Monte-Carlo standard error of the binding stressed
    loss (base, or the floor's two cluster ES added).
    """

    full_collateral: float
    worst_case_loss: float | None  # None: no cap (net short an underlying)
    worst_case_exact: bool
    margin: float
    base: float
    floor: float
    addons: dict[str, float]
    binding: str
    capital_released: float
    standard_error: float
    base_standard_error: float
    floor_standard_error: float
    var: float
    aggregate_diagnostic: float
    confidence: float
    scenarios: int
    seed: int
    clusters: tuple[ClusterReport, ...]
    correlation_clusters: tuple[str, ...]
    correlation: tuple[tuple[float, ...], ...]
    stress: tuple[StressResult, ...] = ()  # exact stress-scenario losses (SPEC.md §5.2)
    devices: int = 1  # devices the scenarios were spread over (all processes together)
    horizon_days: float | None = None  # liquidation horizon (None: to resolution)
    as_of: str | None = None
    contracts: tuple[ContractHorizon, ...] = ()  # per contract: tau, stressed marks, ...
    capped: bool = True  # False when net short an underlying (SPEC-horizon.md §6.6)
    linear_notional: float = 0.0  # sum |q| F0 of perps and futures
    underlyings: tuple[UnderlyingReport, ...] = ()
    sampler: str = "plain"  # the [model] sampler the figures were estimated with
    exact_positions: int = 0  # positions margined by their exact law ("exact_block")

    @property
    def horizon_covers_all(self) -> bool:
        """True when every contract resolves within the horizon (tau = 1
        everywhere: the margin is the resolution margin)."""
        return all(c.resolved_by_horizon for c in self.contracts)

    @property
    def stressed_loss(self) -> float:
        return max(self.base, self.floor)

    def waterfall(self) -> list[dict]:
        """The build-up of the margin: base and floor, the larger of them, each
        add-on, the cap at the worst case (and at 0), the margin.

        The cap's amount is what it takes off where it binds (the worst case, or
        0 under a negative sum), else 0: the engine sums in the book's dtype, and
        the gap between its margin and these float64 running totals is rounding
        (about $0.001 on the reference book), not a cap. A book with no worst case
        (net short an underlying, SPEC-horizon.md §6.6) has no cap step unless the
        0 floor binds."""
        steps = [
            {"step": "base", "amount": self.base, "total": self.base},
            {"step": "floor", "amount": self.floor, "total": self.floor},
            {"step": "stressed loss", "amount": self.stressed_loss, "total": self.stressed_loss},
        ]
        total = self.stressed_loss
        for name, amount in self.addons.items():
            total += amount
            steps.append({"step": f"add-on: {name}", "amount": amount, "total": total})
        floored = self.margin == 0.0 and total < 0.0  # max(0, .) raises it
        if self.binding == "worst_case" or floored:
            steps.append({"step": "cap", "amount": self.margin - total, "total": self.margin})
        elif self.worst_case_loss is not None:
            steps.append({"step": "cap", "amount": 0.0, "total": self.margin})
        steps.append({"step": "margin", "amount": self.margin, "total": self.margin})
        return steps

    def to_dict(self) -> dict:
        """The SPEC.md §4 JSON object (and more)."""
        return {
            "full_collateral": self.full_collateral,
            "worst_case_loss": self.worst_case_loss,
            "worst_case_exact": self.worst_case_exact,
            "margin": self.margin,
            "base": self.base,
            "floor": self.floor,
            "addons": dict(self.addons),
            "binding": self.binding,
            "capital_released": self.capital_released,
            "standard_error": self.standard_error,
            "base_standard_error": self.base_standard_error,
            "floor_standard_error": self.floor_standard_error,
            "var": self.var,
            "aggregate_diagnostic": self.aggregate_diagnostic,
            "confidence": self.confidence,
            "scenarios": self.scenarios,
            "seed": self.seed,
            "clusters": [dataclasses.asdict(c) for c in self.clusters],
            "correlation": {
                "clusters": list(self.correlation_clusters),
                "matrix": [list(r) for r in self.correlation],
            },
            "waterfall": self.waterfall(),
            "stress": [x.to_dict() for x in self.stress],
            "devices": self.devices,
            "horizon_days": self.horizon_days,
            "as_of": self.as_of,
            "contracts": [c.to_dict() for c in self.contracts],
            "capped": self.capped,
            "linear_notional": self.linear_notional,
            "underlyings": [u.to_dict() for u in self.underlyings],
            "sampler": self.sampler,
            "exact_positions": self.exact_positions,
        }


def margin_inputs(book: Book, *, dtype=None):
    """``(arrays, layout, params)`` for the jitted core, from a book."""
    arrays, layout = book_arrays(book, dtype)
    params = MarginParams.from_settings(book.settings, arrays.price.dtype)
    return arrays, layout, params


def portfolio_margin(
    book: Book,
    *,
    scenarios: int | None = None,
    seed: int | None = None,
    confidence: float | None = None,
    sampler: str | None = None,
    dtype=None,
    key=None,
    devices=None,
) -> MarginReport:
    """Margins `book` (SPEC.md §2.5) with one joint simulation.

    **Arguments:**

    - `book`: a validated [`Book`][].
    - `scenarios`, `seed`, `confidence`, `sampler`: override the book's ``[model]``
      values (`sampler`: ``"plain"``, ``"importance"`` or ``"exact_block"``;
      unset: ``"exact_block"``, see [`resolved_sampler`][]).
    - `dtype`: float32 (default) or float64 (needs ``jax_enable_x64``).
    - `key`: a PRNG key to use instead of ``jax.random.key(seed)`` (another
      stream, or another PRNG implementation).
    - `devices`: the devices to spread the scenarios over (see
      [`scenario_mesh`][]): None for every device of the job (``jax.devices()``,
      every process's in a multi-process job), an int n for the first n, a
      sequence of devices, or a mesh. Plain-sampler figures are bit-identical
      whatever the count.

    **Returns:** a [`MarginReport`][]. Raises [`BookError`][] for bad overrides.
    """
    book, arrays, layout, params, key, top, (law, exact) = _prepare(
        book, scenarios, seed, confidence, sampler, dtype, key)
    s = book.settings
    mesh = scenario_mesh(devices)
    if mesh.size == 1:
        result = margin_jit(arrays, params, key, s.scenarios, top, s.sampler, law=law)
    else:
        # The tail over every device, then the figures from it on this process's
        # first device, in the program one device uses: bit-identical to one device
        # (a program compiled for several devices may round sums differently).
        placed, placed_law = replicate(((arrays, params, key), law), mesh)
        rows = sharded_rows_jit(*placed, s.scenarios, top, s.sampler, None, mesh, placed_law)
        local = [np.asarray(x.addressable_data(0)) for x in rows]
        result = rows_margin_jit(arrays, params, *local, s.scenarios, s.sampler, law)
    return dataclasses.replace(_report(book, layout, result, exact), devices=mesh.size)


def _prepare(book: Book, scenarios, seed, confidence, sampler, dtype, key):
    """The book with its overrides, its arrays, layout and run-time parameters, the
    PRNG key (``jax.random.key(seed)`` unless given), the static tail size and,
    for the exact-block sampler, ``(law, positions)`` of [`sampler_law`][] (else
    ``(None, 0)``)."""
    book = check_book(book).with_overrides(scenarios=scenarios, seed=seed, confidence=confidence,
                               sampler=sampler).with_sampler_for("margin")
    s = book.settings
    arrays, layout, params = margin_inputs(book, dtype=dtype)
    key = jax.random.key(s.seed) if key is None else key
    block = sampler_law(arrays) if s.sampler == "exact_block" else (None, 0)
    return book, arrays, layout, params, key, tail_size(s.scenarios, s.confidence), block


def margin_with_losses(
    book: Book,
    *,
    scenarios: int | None = None,
    seed: int | None = None,
    confidence: float | None = None,
    sampler: str | None = None,
    dtype=None,
    key=None,
    with_weights: bool = False,
):
    """[`portfolio_margin`][] and the whole book's simulated loss in each scenario
    (dollars), from one simulation (for loss histograms: VaR and ES of the
    report are those of these losses; under ``"exact_block"`` the report's base
    and VaR are those of R + S with S's exact law, and these are the simulated
    book's losses, an unbiased sample of the same distribution).

    Under importance sampling the scenarios are not equally likely: pass
    ``with_weights=True`` to get ``(report, losses, weights)``, each scenario's
    likelihood ratio (its probability is weight / scenarios).
    """
    book, arrays, layout, params, key, top, (law, exact) = _prepare(
        book, scenarios, seed, confidence, sampler, dtype, key)
    s = book.settings
    result, losses, weights = _margin_losses_jit(arrays, params, key, s.scenarios, top,
                                                 s.sampler, law)
    report = _report(book, layout, result, exact)
    losses = np.asarray(losses, np.float64)
    if with_weights:
        return report, losses, np.asarray(weights, np.float64)
    return report, losses


def _report(book: Book, layout, result: MarginResult, exact: int = 0) -> MarginReport:
    r = jax.tree.map(lambda x: np.asarray(x, dtype=np.float64), result)
    capped = not np.isposinf(r.worst_case_loss)
    values = [r.margin, r.base, r.floor, *r.cluster_es] + ([r.worst_case_loss] if capped else [])
    if not all(math.isfinite(float(v)) for v in values):
        raise EngineError("the engine produced a non-finite figure; please report this book")
    s = book.settings
    qty = book.net_quantities()
    held = {name: 0 for name in layout.cluster_names}
    for c in book.contracts:
        if qty[c.id] != 0:
            held[c.cluster] += 1
    binding = BINDING[int(r.binding)]
    return MarginReport(
        full_collateral=float(r.full_collateral),
        worst_case_loss=float(r.worst_case_loss) if capped else None,
        worst_case_exact=layout.table.exact_at_book,
        margin=float(r.margin),
        base=float(r.base),
        floor=float(r.floor),
        addons={name: float(v) for name, v in zip(ADDONS, r.addons)},
        binding=binding,
        capital_released=float(r.capital_released),
        standard_error=float(r.base_se if r.base >= r.floor else r.floor_se),
        base_standard_error=float(r.base_se),
        floor_standard_error=float(r.floor_se),
        var=float(r.var),
        aggregate_diagnostic=float(r.aggregate),
        confidence=s.confidence,
        scenarios=s.scenarios,
        seed=s.seed,
        clusters=tuple(
            ClusterReport(name, float(g), float(e), float(se), float(v), held[name])
            for name, g, e, se, v in zip(layout.cluster_names, r.cluster_gross, r.cluster_es,
                                         r.cluster_se, r.cluster_var)
        ),
        correlation_clusters=layout.cluster_names,
        correlation=tuple(tuple(float(x) for x in row) for row in r.correlation),
        stress=stress_losses(book),
        horizon_days=s.horizon_days,
        as_of=s.as_of,
        contracts=contract_horizon(book),
        capped=capped,
        linear_notional=sum(abs(qty[c.id]) * book.forward_price(c) for c in book.contracts
                            if c.is_linear),
        underlyings=underlying_reports(book),
        sampler=s.sampler,
        exact_positions=exact,
    )


def _margin_and_losses(arrays: BookArrays, params: MarginParams, key, scenarios: int, top: int,
                       sampler: str, law: BlockLaw | None = None):
    losses, weights, _ = simulate(arrays, params.confidence, key, scenarios, sampler, None, law)
    result = sampled_statistics(arrays, params, losses, weights,
                                static_top(sampler, scenarios, losses.shape[1], top),
                                scenarios, law)
    k = arrays.loading.shape[0]  # the book's row (the rest's follows it for "exact_block")
    return result, losses[k, :scenarios], weights[:scenarios]


_margin_losses_jit = program(_margin_and_losses)


def book_losses(book: Book, *, dtype=None) -> np.ndarray:
    """The simulated loss of the whole book in each scenario (dollars), from the
    same draws as [`portfolio_margin`][] with the book's settings (plain sampler:
    equally likely scenarios; see [`margin_with_losses`][] for the weights)."""
    return margin_with_losses(book, dtype=dtype)[1]

"""kinetic_jax: a differentiable portfolio-margin engine for binary prediction-market
contracts (see docs/methodology.md and docs/api.md)."""

import importlib.metadata

from ._arrays import BookArrays as BookArrays, BookLayout as BookLayout, book_arrays as book_arrays
from ._batch import (
    AccountMargin as AccountMargin,
    BatchResult as BatchResult,
    margin_accounts as margin_accounts,
    read_accounts as read_accounts,
)
from ._block import BlockLaw as BlockLaw, block_law as block_law, sampler_law as sampler_law
from ._book import (
    DEFAULT_SAMPLERS as DEFAULT_SAMPLERS,
    SAMPLERS as SAMPLERS,
    Book as Book,
    Contract as Contract,
    Position as Position,
    Settings as Settings,
    Stress as Stress,
    resolved_sampler as resolved_sampler,
)
from ._book_file import (
    book_to_dict as book_to_dict,
    check_unicode as check_unicode,
    load_book as load_book,
    loads_book as loads_book,
    loads_json as loads_json,
    parse_book as parse_book,
    read_book_file as read_book_file,
)
from ._cache import enable_compilation_cache as enable_compilation_cache
from ._compile import (
    CompileCounter as CompileCounter,
    clear_caches as clear_caches,
    memory_maps as memory_maps,
    near_map_limit as near_map_limit,
)
from ._errors import BookError as BookError, EngineError as EngineError
from ._format import format_margin_report as format_margin_report
from ._hedge import (
    HedgeProblem as HedgeProblem,
    HedgeResult as HedgeResult,
    build_hedge_problem as build_hedge_problem,
    hedge_objective as hedge_objective,
    hedge_problem as hedge_problem,
    optimise_hedge as optimise_hedge,
    solve_hedge as solve_hedge,
)
from ._hierarchy import (
    Cluster as Cluster,
    Hierarchy as Hierarchy,
    Node as Node,
    correlation_matrix as correlation_matrix,
    correlation_of as correlation_of,
    default_hierarchy as default_hierarchy,
)
from ._horizon import ContractHorizon as ContractHorizon, contract_horizon as contract_horizon
from ._lp import LPSolution as LPSolution, certify_hedge as certify_hedge
from ._margin import (
    ADDONS as ADDONS,
    BINDING as BINDING,
    MarginParams as MarginParams,
    MarginResult as MarginResult,
    margin_arrays as margin_arrays,
    margin_from_outcomes as margin_from_outcomes,
    margin_jit as margin_jit,
)
from ._portfolio import (
    ClusterReport as ClusterReport,
    MarginReport as MarginReport,
    book_losses as book_losses,
    margin_inputs as margin_inputs,
    margin_with_losses as margin_with_losses,
    portfolio_margin as portfolio_margin,
)
from ._sensitivities import (
    DEFAULT_TEMPERATURE as DEFAULT_TEMPERATURE,
    ESTIMATORS as ESTIMATORS,
    JUMP_FACTOR as JUMP_FACTOR,
    JUMP_SAMPLER as JUMP_SAMPLER,
    JumpRun as JumpRun,
    MarginVars as MarginVars,
    SensitivityReport as SensitivityReport,
    SensitivityResult as SensitivityResult,
    default_estimator as default_estimator,
    differentiable_margin as differentiable_margin,
    jump_run as jump_run,
    sensitivities as sensitivities,
    sensitivity_arrays as sensitivity_arrays,
    sensitivity_jit as sensitivity_jit,
)
from ._sharding import (
    initialize_distributed as initialize_distributed,
    replicate as replicate,
    scenario_mesh as scenario_mesh,
)
from ._shortfall import (
    exact_expected_shortfall as exact_expected_shortfall,
    expected_shortfall as expected_shortfall,
    tail_size as tail_size,
)
from ._simulation import (
    atom_cuts as atom_cuts,
    contract_outcomes as contract_outcomes,
    event_latents as event_latents,
    outcomes as outcomes,
)
from ._stress import (
    StressResult as StressResult,
    scenario_losses as scenario_losses,
    stress_factors as stress_factors,
    stress_losses as stress_losses,
    stress_matrix as stress_matrix,
)
from ._sweep import (
    Axis as Axis,
    SweepResult as SweepResult,
    parse_axes as parse_axes,
    parse_axis as parse_axis,
    plot_sweep as plot_sweep,
    sweep as sweep,
)
from ._synthetic import ladder_book as ladder_book, random_book as random_book
from ._threefry import threefry_normal as threefry_normal
from ._underlyings import (
    DEFAULT_PNL_POINTS as DEFAULT_PNL_POINTS,
    DEFAULT_PNL_RANGE as DEFAULT_PNL_RANGE,
    Underlying as Underlying,
    UnderlyingReport as UnderlyingReport,
    effective_strike as effective_strike,
    mark_at_spot as mark_at_spot,
    model_probability as model_probability,
    underlying_reports as underlying_reports,
)
from ._whatif import (
    MarginSession as MarginSession,
    WhatIfReport as WhatIfReport,
    margin_session as margin_session,
)
from ._worst_case import OutcomeTable as OutcomeTable, build_outcome_table as build_outcome_table

try:
    __version__ = importlib.metadata.version("kinetic-jax")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0+unknown"

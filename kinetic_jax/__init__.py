"""kinetic_jax: a differentiable portfolio-margin engine for binary prediction-market
contracts (see docs/methodology.md)."""

import importlib.metadata

from ._arrays import BookArrays as BookArrays
from ._arrays import BookLayout as BookLayout
from ._arrays import book_arrays as book_arrays
from ._book import Book as Book
from ._book import Contract as Contract
from ._book import Position as Position
from ._book import Settings as Settings
from ._book import Stress as Stress
from ._book_file import (
    book_to_dict as book_to_dict,
)
from ._book_file import (
    load_book as load_book,
)
from ._book_file import (
    loads_book as loads_book,
)
from ._book_file import (
    parse_book as parse_book,
)
from ._cache import enable_compilation_cache as enable_compilation_cache
from ._errors import BookError as BookError
from ._errors import EngineError as EngineError
from ._hierarchy import (
    Cluster as Cluster,
)
from ._hierarchy import (
    Hierarchy as Hierarchy,
)
from ._hierarchy import (
    Node as Node,
)
from ._hierarchy import (
    correlation_matrix as correlation_matrix,
)
from ._hierarchy import (
    correlation_of as correlation_of,
)
from ._hierarchy import (
    default_hierarchy as default_hierarchy,
)
from ._margin import (
    ADDONS as ADDONS,
)
from ._margin import (
    BINDING as BINDING,
)
from ._margin import (
    MarginParams as MarginParams,
)
from ._margin import (
    MarginResult as MarginResult,
)
from ._margin import (
    margin_arrays as margin_arrays,
)
from ._margin import (
    margin_from_outcomes as margin_from_outcomes,
)
from ._portfolio import (
    ClusterReport as ClusterReport,
)
from ._portfolio import (
    MarginReport as MarginReport,
)
from ._portfolio import (
    book_losses as book_losses,
)
from ._portfolio import (
    margin_inputs as margin_inputs,
)
from ._portfolio import (
    margin_with_losses as margin_with_losses,
)
from ._portfolio import (
    portfolio_margin as portfolio_margin,
)
from ._shortfall import (
    exact_expected_shortfall as exact_expected_shortfall,
)
from ._shortfall import (
    expected_shortfall as expected_shortfall,
)
from ._shortfall import (
    tail_size as tail_size,
)
from ._simulation import atom_cuts as atom_cuts
from ._simulation import event_latents as event_latents
from ._simulation import outcomes as outcomes
from ._worst_case import OutcomeTable as OutcomeTable
from ._worst_case import build_outcome_table as build_outcome_table

try:
    __version__ = importlib.metadata.version("kinetic-jax")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0+unknown"
from ._batch import AccountMargin as AccountMargin  # noqa: E402
from ._batch import BatchResult as BatchResult  # noqa: E402
from ._batch import margin_accounts as margin_accounts  # noqa: E402
from ._batch import read_accounts as read_accounts  # noqa: E402
from ._hedge import (  # noqa: E402
    HedgeProblem as HedgeProblem,
)
from ._hedge import (
    HedgeResult as HedgeResult,
)
from ._hedge import (
    hedge_objective as hedge_objective,
)
from ._hedge import (
    hedge_problem as hedge_problem,
)
from ._hedge import (
    optimise_hedge as optimise_hedge,
)
from ._sensitivities import (  # noqa: E402
    DEFAULT_TEMPERATURE as DEFAULT_TEMPERATURE,
)
from ._sensitivities import (
    MarginVars as MarginVars,
)
from ._sensitivities import (
    SensitivityReport as SensitivityReport,
)
from ._sensitivities import (
    differentiable_margin as differentiable_margin,
)
from ._sensitivities import (
    sensitivities as sensitivities,
)
from ._sensitivities import (
    sensitivity_arrays as sensitivity_arrays,
)
from ._sharding import scenario_mesh as scenario_mesh  # noqa: E402
from ._stress import StressResult as StressResult  # noqa: E402
from ._stress import scenario_losses as scenario_losses  # noqa: E402
from ._stress import stress_factors as stress_factors  # noqa: E402
from ._stress import stress_losses as stress_losses  # noqa: E402
from ._stress import stress_matrix as stress_matrix  # noqa: E402
from ._sweep import Axis as Axis  # noqa: E402
from ._sweep import SweepResult as SweepResult  # noqa: E402
from ._sweep import plot_sweep as plot_sweep  # noqa: E402
from ._sweep import sweep as sweep  # noqa: E402
from ._synthetic import ladder_book as ladder_book  # noqa: E402
from ._synthetic import random_book as random_book  # noqa: E402
from ._whatif import MarginSession as MarginSession  # noqa: E402
from ._whatif import WhatIfReport as WhatIfReport  # noqa: E402
from ._whatif import margin_session as margin_session  # noqa: E402

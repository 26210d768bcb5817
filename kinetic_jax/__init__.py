"""kinetic_jax: a differentiable portfolio-margin engine for binary prediction-market
contracts (see docs/methodology.md)."""

import importlib.metadata

from ._arrays import BookArrays as BookArrays, BookLayout as BookLayout, book_arrays as book_arrays
from ._book import Book as Book, Contract as Contract, Position as Position, Settings as Settings
from ._book_file import (
    book_to_dict as book_to_dict,
    load_book as load_book,
    loads_book as loads_book,
    parse_book as parse_book,
)
from ._errors import BookError as BookError
from ._hierarchy import (
    Cluster as Cluster,
    Hierarchy as Hierarchy,
    Node as Node,
    correlation_matrix as correlation_matrix,
    correlation_of as correlation_of,
    default_hierarchy as default_hierarchy,
)
from ._margin import (
    ADDONS as ADDONS,
    BINDING as BINDING,
    MarginParams as MarginParams,
    MarginResult as MarginResult,
    margin_arrays as margin_arrays,
    margin_from_outcomes as margin_from_outcomes,
)
from ._portfolio import (
    ClusterReport as ClusterReport,
    MarginReport as MarginReport,
    book_losses as book_losses,
    margin_inputs as margin_inputs,
    portfolio_margin as portfolio_margin,
)
from ._shortfall import (
    exact_expected_shortfall as exact_expected_shortfall,
    expected_shortfall as expected_shortfall,
    tail_size as tail_size,
)
from ._simulation import atom_cuts as atom_cuts, event_latents as event_latents, outcomes as outcomes
from ._worst_case import OutcomeTable as OutcomeTable, build_outcome_table as build_outcome_table

try:
    __version__ = importlib.metadata.version("kinetic-jax")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0+unknown"
from ._sensitivities import (  # noqa: E402
    DEFAULT_TEMPERATURE as DEFAULT_TEMPERATURE,
    MarginVars as MarginVars,
    SensitivityReport as SensitivityReport,
    differentiable_margin as differentiable_margin,
    sensitivities as sensitivities,
    sensitivity_arrays as sensitivity_arrays,
)
from ._hedge import (  # noqa: E402
    HedgeProblem as HedgeProblem,
    HedgeResult as HedgeResult,
    hedge_objective as hedge_objective,
    hedge_problem as hedge_problem,
    optimise_hedge as optimise_hedge,
)
from ._synthetic import random_book as random_book  # noqa: E402

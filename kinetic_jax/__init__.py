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

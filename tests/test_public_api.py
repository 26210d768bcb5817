"""The edges (command line, dashboard, experiments, notebooks) live on the public
API: none of them imports a private module of the numerical core."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import kinetic_jax as kj

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kinetic_jax"
# The edges' own modules, which they may import from one another.
EDGE_MODULES = {"_cli", "_cli_grid", "dashboard"}


def _edge_sources():
    for path in (PACKAGE / "_cli.py", PACKAGE / "_cli_grid.py"):
        yield path, path.read_text(), "kinetic_jax"
    for path in sorted((PACKAGE / "dashboard").glob("*.py")):
        yield path, path.read_text(), "kinetic_jax.dashboard"
    for path in sorted((ROOT / "experiments").glob("*.py")):
        yield path, path.read_text(), None
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield path, "\n".join(line for line in code.splitlines()
                              if not line.lstrip().startswith(("%", "!"))), None


def _private_imports(source: str, package: str | None) -> list[str]:
    """Imported modules that are private modules of the core (kinetic_jax._x)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = (package or "").split(".")
                base = base[: len(base) - node.level + 1]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kinetic_jax" and len(parts) > 1 and parts[1].startswith("_") \
                    and parts[1] not in EDGE_MODULES:
                bad.append(name)
    return bad


@pytest.mark.parametrize("path, source, package",
                         [pytest.param(*s, id=str(s[0].relative_to(ROOT)))
                          for s in _edge_sources()])
def test_edges_import_only_the_public_api(path, source, package):
    assert _private_imports(source, package) == []


def test_the_checker_catches_private_imports():
    assert _private_imports("from kinetic_jax._margin import margin_jit", None) == [
        "kinetic_jax._margin"]
    assert _private_imports("import kinetic_jax._hedge as h", None) == ["kinetic_jax._hedge"]
    assert _private_imports("from ._portfolio import portfolio_margin", "kinetic_jax") == [
        "kinetic_jax._portfolio"]
    assert _private_imports("from .._sweep import sweep", "kinetic_jax.dashboard") == [
        "kinetic_jax._sweep"]
    assert _private_imports("from . import portfolio_margin\nfrom ._cli_grid import x",
                            "kinetic_jax") == []
    assert _private_imports("from ._app import run", "kinetic_jax.dashboard") == []


def test_what_the_edges_need_is_exported():
    for name in ("margin_jit", "sensitivity_jit", "solve_hedge", "build_hedge_problem",
                 "certify_hedge", "SensitivityResult", "format_margin_report", "EngineError",
                 "scenario_mesh", "replicate", "initialize_distributed", "SAMPLERS"):
        assert hasattr(kj, name), name
    assert issubclass(kj.EngineError, RuntimeError) and not issubclass(kj.EngineError,
                                                                       kj.BookError)

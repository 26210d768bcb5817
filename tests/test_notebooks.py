"""Every notebook under notebooks/ executes without an error.

Each ``notebooks/*.ipynb`` is run top to bottom with nbclient in a fresh kernel of
the interpreter running the tests (so a fresh ``.venv`` built from the ``test``
extra is enough: no kernelspec needs to be installed), from the notebook's own
directory, with a time limit per cell. A cell that raises fails the test with the
cell's traceback. New notebooks are picked up by the glob.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL = "python3"


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory) -> list[str]:
    """A kernelspec directory whose ``python3`` kernel is this interpreter (absolute
    path), so the notebooks run with exactly the packages under test, whatever
    kernelspecs the machine has installed elsewhere."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {sys.version_info.major} (kinetic-jax tests)",
        "language": "python",
    }))
    return [str(root)]


def run_notebook(nb, cwd: Path, kernel_dirs: list[str]):
    """Executes `nb` in place from directory `cwd`; raises CellExecutionError."""
    km = KernelManager(kernel_name=KERNEL,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"  # never a GUI, even if a notebook forgets to choose
    # The checkout first, so the notebooks exercise this tree's kinetic_jax.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    client.execute(env=env)
    return nb


def test_kernel_is_this_interpreter(kernel_dirs, tmp_path):
    """The kernel the notebooks run in is this interpreter, importing this tree."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, kinetic_jax\nprint(sys.executable)\nprint(kinetic_jax.__file__)"
    )])
    run_notebook(nb, tmp_path, kernel_dirs)
    executable, package = nb.cells[0].outputs[0]["text"].splitlines()
    assert Path(executable) == Path(sys.executable)
    assert Path(package).resolve().is_relative_to(ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, kernel_dirs):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    try:
        run_notebook(nb, path.parent, kernel_dirs)
    except CellExecutionError as e:
        pytest.fail(f"{path.relative_to(ROOT)}: a cell raised\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"

"""Every notebook under notebooks/ executes without an error.

Each ``notebooks/*.ipynb`` is run top to bottom with nbclient in a kernel of the
interpreter running the tests (so a fresh ``.venv`` built from the ``test`` extra
is enough: no kernelspec needs to be installed), from the notebook's own
directory, with a time limit per cell. A cell that raises fails the test with the
cell's traceback. New notebooks are picked up by the glob.

One kernel serves the test process (`kernel`): starting one and importing JAX,
kinetic_jax and matplotlib in it cost seconds per notebook. Before each notebook
the kernel is brought back to a fresh kernel's state as far as a notebook can
see it: the user namespace is emptied (``%reset -f``, so a notebook cannot use a
name another one defined, imports included), the working directory is the
notebook's, and open figures are closed; a notebook that changed process-wide
settings (JAX's configuration, matplotlib's rcParams) gets the kernel restarted
after it, so the next notebook never runs under them.
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
USER_XLA_FLAGS = "KINETIC_JAX_TEST_USER_XLA_FLAGS"  # set by conftest.py

# All slow (not in `make test-fast`): the kernel's start and resets alone take 7 s.
pytestmark = pytest.mark.slow

# Run in the kernel (no history) before each notebook: empty the user namespace,
# go to the notebook's directory, close stray figures, and print a fingerprint of
# the process-wide settings a notebook could change (kinetic_jax imported first,
# so that what importing it sets is part of the fresh state).
RESET = """\
get_ipython().run_line_magic("reset", "-f")
__import__("os").chdir({cwd!r})
__import__("kinetic_jax")
__import__("matplotlib.pyplot").pyplot.close("all")
print(repr((
    sorted((k, repr(v)) for k, v in __import__("jax").config.values.items()),
    sorted((k, repr(v)) for k, v in __import__("matplotlib").rcParams.items()
           if k != "backend"),
)))
"""


def kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    # XLA's flags as they were before conftest.py set the session's (the default
    # code generation unless the caller chose one): notebooks run as users run them.
    # The dtype promotion stays the session's strict one (conftest.py): stricter than
    # a user's standard default, and a cell that passes under it computes the same.
    if USER_XLA_FLAGS in env:
        env["XLA_FLAGS"] = env.pop(USER_XLA_FLAGS)
    env["MPLBACKEND"] = "Agg"  # never a GUI, even if a notebook forgets to choose
    # The checkout first, so the notebooks exercise this tree's kinetic_jax.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
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


class Kernel:
    """One kernel (`kernel_dirs`' python3), reset before each notebook (module doc)."""

    def __init__(self, kernel_dirs: list[str]):
        self.km = KernelManager(kernel_name=KERNEL,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
        self.km.start_kernel(env=kernel_env(), cwd=str(ROOT))
        self.fresh = self._reset(ROOT)  # the settings of a kernel nothing has run in
        self.restarts = 0

    def _reset(self, cwd: Path) -> str:
        kc = self.km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            out: list[str] = []
            reply = kc.execute_interactive(
                RESET.format(cwd=str(cwd)), store_history=False, timeout=120,
                output_hook=lambda m: out.append(m["content"].get("text", "")
                                                 if m["msg_type"] == "stream" else ""))
        finally:
            kc.stop_channels()
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(out)

    def run(self, nb, cwd: Path):
        """Executes `nb` in place from directory `cwd`; raises CellExecutionError."""
        if self._reset(cwd) != self.fresh:  # the last notebook changed the settings
            self.km.restart_kernel(now=True)
            self.restarts += 1
            assert self._reset(cwd) == self.fresh
        client = NotebookClient(nb, km=self.km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                                resources={"metadata": {"path": str(cwd)}})
        try:
            client.execute()
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
        return nb

    def shutdown(self) -> None:
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="session")
def kernel(kernel_dirs):
    k = Kernel(kernel_dirs)
    yield k
    k.shutdown()


def run_notebook(nb, cwd: Path, kernel: Kernel):
    """Executes `nb` in place from directory `cwd`; raises CellExecutionError."""
    return kernel.run(nb, cwd)


def test_kernel_is_this_interpreter(kernel, tmp_path):
    """The kernel the notebooks run in is this interpreter, importing this tree,
    with XLA's flags as they were before the session set its own (conftest.py)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, sys, kinetic_jax\nprint(sys.executable)\nprint(kinetic_jax.__file__)\n"
        "print(repr(os.environ.get('XLA_FLAGS')))"
    )])
    run_notebook(nb, tmp_path, kernel)
    executable, package, flags = nb.cells[0].outputs[0]["text"].splitlines()
    assert Path(executable) == Path(sys.executable)
    assert Path(package).resolve().is_relative_to(ROOT)
    before = os.environ.get(USER_XLA_FLAGS, os.environ.get("XLA_FLAGS"))
    assert flags == repr(before)


def test_kernel_is_reset_between_notebooks(kernel, tmp_path):
    """A notebook sees a fresh kernel's state: no name another notebook defined
    (an import included), the notebook's directory, and JAX's settings as a new
    kernel has them (a notebook that changed them gets the kernel restarted)."""
    first = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import jax\nimport numpy as np\nleft_over = 1\n"
        "jax.config.update('jax_enable_x64', True)")])
    run_notebook(first, ROOT, kernel)
    restarts = kernel.restarts
    second = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nimport jax\n"
        "print(sorted(n for n in ('left_over', 'np') if n in globals()))\n"
        "print(os.getcwd())\nprint(jax.config.jax_enable_x64)")])
    run_notebook(second, tmp_path, kernel)
    names, cwd, x64 = second.cells[0].outputs[0]["text"].splitlines()
    assert names == "[]"
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert x64 == "False" and kernel.restarts == restarts + 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, kernel):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    try:
        run_notebook(nb, path.parent, kernel)
    except CellExecutionError as e:
        pytest.fail(f"{path.relative_to(ROOT)}: a cell raised\n{e}", pytrace=False)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs {errors}"

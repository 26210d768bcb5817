"""Shared test configuration.

- Every process of the session runs under strict dtype promotion
  (``JAX_NUMPY_DTYPE_PROMOTION=strict`` in the environment: the xdist workers and
  the threads of the in-process dashboard, the CLI subprocesses, the dashboard
  server of the browser tests, the notebook kernels), so an accidental
  float32/float64 or bool/float mix anywhere fails loudly. It is one mode for the
  whole session: JAX keys its traces on the mode, and the in-process dashboard
  tests, whose server threads did not see the per-test context manager used
  before, traced every engine program a second time under standard promotion.
  A test that needs JAX's standard promotion opts out with
  ``@pytest.mark.standard_promotion`` (a context manager around the test).
- The `x64` fixture runs one test with ``jax_enable_x64`` switched on and restores
  the previous setting afterwards (a context manager, so nothing leaks into other
  tests even when the test fails). Nothing enables x64 globally.
- One persistent JAX compilation cache serves the whole session: the xdist
  workers, the CLI subprocesses, the notebook kernels and the dashboard server
  all find it through the environment (``KINETIC_JAX_CACHE_DIR`` for
  `kinetic_jax.enable_compilation_cache`, ``JAX_COMPILATION_CACHE_DIR`` and
  ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`` for any other JAX process), so
  each program compiles once per session. The directory is a fresh temporary one,
  removed at the end, unless ``KINETIC_JAX_TEST_CACHE_DIR`` names one to keep
  across runs: `make test` and `make test-fast` keep theirs in
  ``.pytest_cache/jax-compilation`` (a clean clone, as on CI, starts cold; the
  README gives the cold and warm times).
  The same directory holds the engine's exported programs (``programs/``, set by
  `kinetic_jax.enable_compilation_cache`; kinetic_jax/_programs.py), so a warm
  run reads them instead of tracing and lowering them: the warm suite went from
  218-223 s to 158-172 s (README).
  Each change of the engine adds the programs it changed and nothing removes
  the old ones, so a kept directory over `KEPT_CACHE_LIMIT` bytes is emptied at
  the start of a session (`trim_cache`).
- XLA generates machine code at optimisation level 1, with its older loop
  emitters (``--xla_cpu_use_fusion_emitters=false``), for the session (exported in
  ``XLA_FLAGS``, so subprocesses and kernels too). The level trades XLA's compile
  (paid once per program while the persistent cache below is cold) against the
  programs' run (paid in every run). Whole suite on the 2-core machine, jax 0.10.2,
  2026-12-05, pytest's time:

  | XLA flags                                  | cold cache    | warm cache    |
  |--------------------------------------------|---------------|---------------|
  | level 0, older emitters, no const. folding | 427-548 s (8) | 265-289 s (7) |
  | level 1, the same (the session's)          | 527-528 s (2) | 224-232 s (5) |
  | level 3, the same                          | 614 s (1)     | 219 s (1)     |
  | XLA's defaults (level 3, newer, folding)   | 840 s (1)     | 222 s (1)     |

  (in brackets the number of runs; the cold level-0 runs are clean-clone runs
  of `.ci/run`; the other cold runs reused this checkout's `.venv`; clean-clone
  runs at level 1 took 536-595 s (seven).)

  Level 1's programs run about 3.4x faster than level 0's (a pair book's
  conditional sensitivities, 0.051 against 0.174 s a call; level 3: 0.045 s) and
  compile 1.7-1.8x slower. XLA's compile, one process, cold cache, for the
  reference book's margin at 8,192 scenarios (five programs) / its sensitivities
  at 4,096 (one program): 1.3 / 3.1 s at level 0, 2.3 / 5.2 s at level 1,
  2.6 / 5.3 s at level 3 (older emitters each time); 3.1 / 7.0 s at level 1 with
  the newer emitters. (Level 1 was tried once before, when the suite ran most
  tests at large scenario counts: 1,060 s cold against 749 s at level 0, and
  level 0 was chosen then. Since then tests moved to small counts and the
  persistent cache came, so compiling weighs less and running more.)
  The programs are the same (XLA's graph passes do not depend on the level or
  the emitters; results agree to float32 rounding).
  ``KINETIC_JAX_TEST_XLA_LEVEL`` (0, 1, 2 or 3) picks another level with the
  same other flags (`session_xla_flags`): level 0 for a run that compiles most
  programs anew, after a change to the engine, where its cold run is the
  fastest. To test the default code generation, give any
  ``--xla_backend_optimization_level`` in ``XLA_FLAGS``: the session then
  leaves the flags alone. Where a GPU or TPU plugin is installed (and
  ``JAX_PLATFORMS`` is not ``cpu``) the session leaves them alone too: they are
  for XLA's CPU compiler, and on an H200 the test workers crashed at their first
  compile with them.
  Warm, before the program store above, the suite was bound by JAX's
  per-program work, not XLA's: in a warm run at level 1 without the notebooks
  and the browser tests (2026-12-05, the command in
  `experiments/suite_profile.py`), the tests' 285 worker-s held 76 tracing, 55
  lowering and 41 loading programs from the cache (60 %); the store takes the
  first two off the engine's programs. (The table's figures predate the store.)
- The same flags switch off XLA's constant folding
  (``--xla_disable_hlo_passes=constant_folding``). A test that closes a jitted
  function over a book's arrays makes them constants, and XLA then evaluates
  their reductions at compile time in its interpreter: the 48-key vmapped
  exact-block margin of tests/test_block.py compiled in 24.6 s with folding and
  7.2 s without (6.3 s with the arrays passed as arguments); in a whole run of
  the suite (notebooks and browser tests aside) test_block.py went from 243 to
  125 s. The engine's own entry points take the arrays as arguments, so their
  programs do not change (the reference margin compiles in the same time
  either way).
- The notebook kernels are the exception: they run with the flags as they were
  before the session set them (by default XLA's level 3, what users run), so one
  part of the suite exercises the default code generation, and the notebooks,
  whose calls run 2^17 draws, run faster: notebook 02 (five sensitivity calls)
  alone took 111 s at the session's flags and 62 s at level 3; in a full suite the
  five notebooks took 268 s with the kernel at level 3 against 304 s in the run
  before, at the session's flags (two runs, not back to back).
- Before each test module a worker that holds more than half the memory maps
  the kernel allows one process clears JAX's caches
  (`release_programs_near_map_limit`): every compiled program holds maps of
  its own, and a process at the limit dies with a segmentation fault.
- Each test's fixture set-up and call run from one frame that reserves 512 KiB
  of CPython's frame stack (`in_a_deep_frame`), a workaround for CPython
  issue 142183 (Python before 3.14): JAX's tracing otherwise maps and unmaps a
  16 KiB chunk of that stack at every crossing of a chunk's edge, 650,000 times
  in five test files run on two workers (``strace -f -c``; 32,000 with the
  frame).
- Tests marked ``slow`` are collected first, so that xdist starts them first;
  each module's tests run on one worker (`pytest_collection_modifyitems`). The
  Makefile passes ``--no-loadscope-reorder``: xdist would otherwise hand out the
  groups with the most tests first, and the notebooks and the browser tests,
  the longest groups but not the most numerous, would start last (a clean-clone
  run took 24 minutes that way, pytest 22).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping

# Before JAX creates its backend (XLA reads the flags once): see the module doc.
# The flags as they were, for the notebook kernels (tests/test_notebooks.py).
USER_XLA_FLAGS = "KINETIC_JAX_TEST_USER_XLA_FLAGS"


def _accelerator_plugin() -> bool:
    """Whether JAX may start a GPU or TPU backend: a CUDA, ROCm or TPU plugin is
    installed and ``JAX_PLATFORMS`` does not restrict JAX to the CPU. The flags
    below are for XLA's CPU compiler: on an H200 (jax 0.11.2, CUDA plugin) the
    test workers crashed at their first compile with them ("node down"), and
    passed without."""
    platforms = {p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()}
    if platforms and platforms <= {"cpu"}:
        return False
    import pkgutil
    import re

    names = {m.name for m in pkgutil.iter_modules()}
    try:
        import jax_plugins  # the namespace of jax's PJRT plugins (xla_cuda12, ...)

        names |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
    except ImportError:
        pass
    return any(re.fullmatch(r"(jax_)?(xla_)?(cuda|rocm)\d+(_plugin|_pjrt)?|libtpu", n)
               for n in names)


# The session's XLA optimisation level (module doc), unless the environment sets it.
XLA_LEVEL = "KINETIC_JAX_TEST_XLA_LEVEL"
DEFAULT_XLA_LEVEL = "1"


def session_xla_flags(environ: Mapping[str, str],
                      accelerator: Callable[[], bool]) -> str | None:
    """The ``XLA_FLAGS`` the session runs under, or None where it leaves them as
    they are: a level given in them, or an accelerator plugin (`accelerator()`;
    module doc). The level is ``KINETIC_JAX_TEST_XLA_LEVEL`` (0, 1, 2 or 3; unset
    or empty: 1); any other value raises ValueError naming the variable and the
    value."""
    flags = environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags or accelerator():
        return None
    level = environ.get(XLA_LEVEL, "").strip() or DEFAULT_XLA_LEVEL
    if level not in ("0", "1", "2", "3"):
        raise ValueError(f"{XLA_LEVEL}: {environ[XLA_LEVEL]!r} is not one of 0, 1, 2, 3")
    return " ".join(filter(None, [flags, f"--xla_backend_optimization_level={level}",
                                  "--xla_cpu_use_fusion_emitters=false",
                                  "--xla_disable_hlo_passes=constant_folding"]))


_session_flags = session_xla_flags(os.environ, _accelerator_plugin)
if _session_flags is not None:
    os.environ[USER_XLA_FLAGS] = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = _session_flags

# Strict dtype promotion for every process of the session (module doc).
os.environ["JAX_NUMPY_DTYPE_PROMOTION"] = "strict"

import jax  # noqa: E402
import pytest  # noqa: E402

import kinetic_jax as kj  # noqa: E402

CACHE_ENV = {"KINETIC_JAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR",
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
KEPT_CACHE_LIMIT = 1 << 30  # bytes: a whole cold run writes about 80 MB
_created_cache_dir: str | None = None  # removed at the end by the process that made it
_saved_env: dict[str, str | None] = {}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "standard_promotion: run without strict dtype promotion"
    )
    global _created_cache_dir
    if not hasattr(config, "workerinput"):  # the main process (xdist workers inherit it)
        directory = os.environ.get("KINETIC_JAX_TEST_CACHE_DIR")
        if directory:  # absolute: subprocesses run from other directories
            directory = os.path.abspath(directory)
            trim_cache(directory, KEPT_CACHE_LIMIT)
        else:
            directory = _created_cache_dir = tempfile.mkdtemp(prefix="kinetic-jax-test-jax-")
        _saved_env.update({k: os.environ.get(k) for k in CACHE_ENV})
        os.environ["KINETIC_JAX_CACHE_DIR"] = directory
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    if kj.enable_compilation_cache(os.environ["KINETIC_JAX_CACHE_DIR"]) is None:
        raise pytest.UsageError(
            f"cannot use the test compilation cache {os.environ['KINETIC_JAX_CACHE_DIR']!r}")


def trim_cache(directory: str, limit: int) -> bool:
    """Empties `directory` when its files take more than `limit` bytes; returns
    whether it did. JAX writes an entry once and never touches it on a hit (no
    eviction is configured), so no date tells the programs still in use from
    those of code long changed: the next run starts cold and refills it. The
    files of its subdirectories count too (the engine's stored programs, in
    ``programs/``). A missing directory is empty."""
    if not os.path.isdir(directory):
        return False
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except FileNotFoundError:  # another session's write, replaced under us
                pass
    if total <= limit:
        return False
    shutil.rmtree(directory, ignore_errors=True)  # another session may be removing it too
    return True


def pytest_unconfigure(config):
    global _created_cache_dir
    if hasattr(config, "workerinput"):
        return
    for k, v in _saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _saved_env.clear()
    if _created_cache_dir is not None:
        shutil.rmtree(_created_cache_dir, ignore_errors=True)
        _created_cache_dir = None


@pytest.hookimpl(tryfirst=True)  # before xdist names the groups
def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests (browser, notebooks, the longest engine checks) first,
    each group in its collection order: xdist hands tests out in this order, so
    the longest ones start at once instead of leaving one worker busy at the end.

    A test without an ``xdist_group`` joins its module's group, so that one
    worker runs a whole module (``--dist loadgroup``): a module's tests share
    books and scenario counts, hence compiled programs, and a program is traced,
    lowered and (unless the other worker has already written it to the
    persistent cache) compiled in each process that runs it. Three whole runs
    of the suite on the 2-core machine, not back to back (its load drifts), the
    sum of the tests' times with the notebooks and browser tests aside: 1,491 s
    (test-module mixing, constant folding on), 1,742 s (mixing, folding off) and
    1,378 s (module groups, folding off). The clearest single difference is
    tests/test_conditional.py: 63 and 90 s mixed, 33 s in one worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        if isinstance(item, pytest.Function):  # its fixtures' set-up and its call
            for name in ("setup", "runtest"):
                setattr(item, name, functools.partial(in_a_deep_frame, getattr(item, name)))


def _deep_frame(call: Callable[[], object]):
    return call()


# Its code object reserves `DEEP_FRAME_SLOTS` local variables that it never uses.
DEEP_FRAME_SLOTS = 1 << 16
_deep_frame.__code__ = _deep_frame.__code__.replace(
    co_varnames=_deep_frame.__code__.co_varnames
    + tuple(f"_slot{i}" for i in range(DEEP_FRAME_SLOTS)),
    co_nlocals=_deep_frame.__code__.co_nlocals + DEEP_FRAME_SLOTS)


def in_a_deep_frame(call: Callable[..., object], *args, **kwargs):
    """``call(*args, **kwargs)`` from a frame 512 KiB deep, the workaround for a
    CPython slowdown (python/cpython#142183: fixed in 3.14, backported to 3.13
    in March 2026; this machine runs 3.11). CPython keeps each thread's frames
    on a stack of 16 KiB chunks and gives a chunk back to the kernel
    (``munmap``) as soon as the call that opened it returns, so code whose call
    depth goes back and forth across a chunk's edge maps and unmaps one at every
    crossing. JAX's tracing and lowering do this all the time:
    tests/test_block.py alone made 179,000 ``mmap`` and 178,000 ``munmap``
    calls (``strace -f -c``), and with tests/test_hedge.py spent 4.0 of its 44
    CPU-seconds in the kernel. A first frame this large gets a chunk of its own
    of 1 MiB with 512 KiB free above it, deeper than the tests' calls go: 7,500
    and 6,500 calls, 1.8 s in the kernel. Each test's fixture set-up and call
    run in one (`pytest_collection_modifyitems`)."""
    return _deep_frame(functools.partial(call, *args, **kwargs))


def release_programs_near_map_limit() -> bool:
    """Clears the engine's in-memory caches (`kj.clear_caches`) when this process
    holds more than half the memory maps the kernel allows one process
    (`kj.near_map_limit`); returns whether it did. Each XLA program holds maps
    of its own (hundreds for a margin call: docs/scaling.md) until JAX drops it,
    and JAX keeps every program a worker compiles or loads: at XLA's default
    optimisation level a worker reached the limit (65,530) two thirds of the way
    through its share of the suite and died with a segmentation fault while
    loading a program from the persistent cache; at level 0 the busier worker
    peaked at 29,121 and 37,138 maps in two whole runs, at the session's level 1
    at 31,809 and 32,126 (2026-12-05). Between modules nothing is running, so
    clearing is safe; the programs a later module shares are traced and loaded
    again."""
    if kj.near_map_limit():
        kj.clear_caches()
        return True
    return False


@pytest.fixture(autouse=True, scope="module")
def _programs_within_the_map_limit():
    """Before each module (see `release_programs_near_map_limit`)."""
    release_programs_near_map_limit()
    yield


@pytest.fixture(autouse=True)
def _standard_dtype_promotion(request):
    """The opt-out of the session's strict promotion (see the module doc)."""
    if request.node.get_closest_marker("standard_promotion") is None:
        yield
        return
    with jax.numpy_dtype_promotion("standard"):
        yield


@pytest.fixture(autouse=True, scope="session")
def _in_process_dashboards_wait():
    """In-process dashboards (`create_app` in a test) wait for the engine as long
    as it takes: on a cold cache, as on CI, a first request compiles for longer
    than the served limit (`ANSWER_WITHIN_S`), and the tests check answers, not
    retries. Session-scoped, so that it comes before the module fixtures that
    make an app (the limit is read when the app is made). The tests of that limit
    pass ``answer_within_s`` themselves; the browser tests' server (the
    ``dashboard`` command) runs with the real one."""
    try:
        from kinetic_jax.dashboard import _app as app
    except ImportError:  # no dashboard extra installed: no app to patch
        app = None
    with pytest.MonkeyPatch.context() as patch:
        if app is not None:
            patch.setattr(app, "ANSWER_WITHIN_S", 600.0)
        yield


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled (restored afterwards)."""
    with jax.enable_x64(True):
        yield

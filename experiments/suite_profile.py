"""Where the test suite's time goes: compile, trace and lowering per test and
per jitted function.

A pytest plugin and its report. As a plugin it listens to JAX's duration
events (`jax.monitoring`) while each test runs, and each process (every xdist
worker) writes one JSON file of per-test seconds: the test's wall time, XLA's
backend compile, tracing to a jaxpr and lowering to StableHLO; and one of the
same seconds per jitted function (the ``fun_name`` JAX passes with each
event), with its count of backend compiles. Subprocesses
(CLI runs, notebook kernels, the dashboard server) are not seen, only the
time the test waits for them.

    PYTHONPATH=experiments KINETIC_JAX_SUITE_PROFILE=/tmp/suite \\
        .venv/bin/python -m pytest -p suite_profile -n 2 --dist loadgroup \\
        --no-loadscope-reorder -m "not browser" --deselect tests/test_notebooks.py
    .venv/bin/python experiments/suite_profile.py /tmp/suite --top 30

The report gives the totals, then per test file and per test (largest wall
time first), then the costliest jitted functions. Measured on the 2-core machine, the suite
without notebooks and browser tests spent 626 of its 1,423 worker-seconds in XLA's
backend compile and 343 in tracing and lowering, before constant folding was switched
off for tests; on 2026-12-03, 452 + 251 of 1,070, with 104 compiles of `margin_arrays`
(280 s with their tracing and lowering) and 16 of `sensitivity_arrays` (114 s).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

import pytest

ENV = "KINETIC_JAX_SUITE_PROFILE"
EVENTS = {
    "backend": "/jax/core/compile/backend_compile_duration",
    "trace": "/jax/core/compile/jaxpr_trace_duration",
    "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
}

_seconds: dict[str, collections.Counter] = {}
_programs: dict[str, collections.Counter] = {}  # per jitted function's name, whole session
_current: list[str | None] = [None]


def _listener(event: str, duration: float, fun_name: str | None = None, **_) -> None:
    if _current[0] is not None:
        _seconds.setdefault(_current[0], collections.Counter())[event] += duration
    if fun_name is not None and event in EVENTS.values():
        counts = _programs.setdefault(fun_name, collections.Counter())
        counts[event] += duration
        if event == EVENTS["backend"]:
            counts["programs"] += 1


# ---------------------------------------------------------------------------
# The plugin (pytest -p suite_profile)
# ---------------------------------------------------------------------------
def pytest_configure(config):
    from jax import monitoring

    if not os.environ.get(ENV):
        raise SystemExit(f"suite_profile: set {ENV} to the directory for the per-worker files")
    monitoring.register_event_duration_secs_listener(_listener)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ARG001 - pytest's signature
    _current[0] = item.nodeid
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        _seconds.setdefault(item.nodeid, collections.Counter())["wall"] += (
            time.perf_counter() - start)
        _current[0] = None


def pytest_sessionfinish(session):  # noqa: ARG001 - pytest's signature
    directory = Path(os.environ[ENV])
    directory.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (directory / f"{worker}.json").write_text(json.dumps(_seconds))
    (directory / f"{worker}.programs").write_text(json.dumps(_programs))


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------
def _row(c: collections.Counter) -> dict[str, float]:
    return {"wall": c["wall"], **{k: c[e] for k, e in EVENTS.items()}}


def report(directory: Path, top: int) -> str:
    tests: dict[str, collections.Counter] = {}
    for path in sorted(directory.glob("*.json")):
        for nodeid, counts in json.loads(path.read_text()).items():
            tests.setdefault(nodeid, collections.Counter()).update(counts)
    if not tests:
        raise SystemExit(f"suite_profile: no per-worker files in {directory}")
    files: dict[str, collections.Counter] = {}
    for nodeid, counts in tests.items():
        files.setdefault(nodeid.split("::")[0], collections.Counter()).update(counts)
    header = f"{'wall':>8} {'backend':>8} {'trace':>7} {'lower':>7}  "
    line = lambda name, r: (f"{r['wall']:8.1f} {r['backend']:8.1f} {r['trace']:7.1f} "  # noqa: E731
                            f"{r['lower']:7.1f}  {name}")
    total = collections.Counter()
    for counts in tests.values():
        total.update(counts)
    out = [f"{len(tests)} tests, worker-seconds", header + "what", line("all", _row(total)), "",
           "per file", header + "file"]
    for name, counts in sorted(files.items(), key=lambda x: -x[1]["wall"]):
        out.append(line(name, _row(counts)))
    out += ["", f"the {top} longest tests", header + "test"]
    for name, counts in sorted(tests.items(), key=lambda x: -x[1]["wall"])[:top]:
        out.append(line(name, _row(counts)))
    programs: dict[str, collections.Counter] = {}
    for path in sorted(directory.glob("*.programs")):
        for name, counts in json.loads(path.read_text()).items():
            programs.setdefault(name, collections.Counter()).update(counts)
    if programs:
        cost = lambda c: sum(c[e] for e in EVENTS.values())  # noqa: E731
        out += ["", f"the {top} costliest jitted functions (compiles, then seconds)",
                f"{'compiles':>8} {'backend':>8} {'trace':>7} {'lower':>7}  function"]
        for name, c in sorted(programs.items(), key=lambda x: -cost(x[1]))[:top]:
            out.append(f"{c['programs']:8d} {c[EVENTS['backend']]:8.1f} "
                       f"{c[EVENTS['trace']]:7.1f} {c[EVENTS['lower']]:7.1f}  {name}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help=f"where the plugin wrote (${ENV})")
    parser.add_argument("--top", type=int, default=30, help="longest tests to list")
    args = parser.parse_args()
    print(report(args.directory, args.top))


if __name__ == "__main__":
    main()

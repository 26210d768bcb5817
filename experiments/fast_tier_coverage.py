"""How much of the suite's branch coverage `make test-fast` keeps.

Runs the suite in its own processes (the browser tests and the notebooks left out:
their code runs in subprocesses, which coverage.py does not attribute to a test)
under coverage.py with branch measurement and one context per test, then compares
the arcs that the `make test-fast` selection (``-m "not slow and not browser"``)
reaches with those that every test reaches, and lists the arcs only slow tests
reach, per module, with the tests that reach them.

    .venv/bin/python experiments/fast_tier_coverage.py            # ~5 min, 2 cores
    .venv/bin/python experiments/fast_tier_coverage.py --data D   # analyse a kept run

Measured on 2026-12-04 (HEAD aec75bd, 2-core machine): 9,532 arcs in all, the fast
selection 9,477 (99.4 %); the 55 others are in _sweep.py (spot and vol axes),
_hedge.py (a perp hedge's default bound) and _sensitivities.py (linear contracts'
rows), reached only by tests marked slow in test_underlyings*.py, test_horizon_cli.py
and test_scaling.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = "not slow and not browser"


def run(data_dir: Path) -> Path:
    """Runs the suite under coverage.py; returns the combined data file."""
    rc = data_dir / "coveragerc"
    data = data_dir / ".coverage"
    rc.write_text(f"[run]\nbranch = True\nsource = kinetic_jax\nparallel = True\n"
                  f"data_file = {data}\n")
    env = dict(os.environ, KINETIC_JAX_TEST_CACHE_DIR=str(ROOT / ".pytest_cache/jax-compilation"))
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                    "--no-loadscope-reorder", "-m", "not browser",
                    "--deselect", "tests/test_notebooks.py", "--cov=kinetic_jax",
                    f"--cov-config={rc}", "--cov-context=test", "--cov-report="],
                   cwd=ROOT, env=env, check=True)
    return data


def selected(marks: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marks],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def arcs_per_test(data: Path) -> dict[str, set]:
    """{test id: {(module, from line, to line)}} from a coverage.py data file whose
    contexts are pytest-cov's ``<node id>|run`` (setup and teardown count too)."""
    db = sqlite3.connect(data)
    contexts = dict(db.execute("select id, context from context"))
    files = dict(db.execute("select id, path from file"))
    out: dict[str, set] = collections.defaultdict(set)
    for f, c, a, b in db.execute("select file_id, context_id, fromno, tono from arc"):
        if contexts[c]:  # the empty context: imports, before any test
            test = contexts[c].rsplit("|", 1)[0].split("@")[0]  # xdist's @group suffix
            out[test].add((files[f].split("kinetic_jax/")[-1], a, b))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a coverage.py data file already made")
    args = parser.parse_args()
    data = args.data or run(Path(tempfile.mkdtemp(prefix="fast-tier-coverage-")))
    per_test = arcs_per_test(data)
    fast = selected(FAST)
    every = set().union(*per_test.values())
    kept = set().union(*(v for k, v in per_test.items() if k in fast))
    missing = every - kept
    print(f"arcs reached: {len(every):,} by every test, {len(kept):,} by `-m \"{FAST}\"` "
          f"({100 * len(kept) / len(every):.1f} %)")
    by_module = collections.defaultdict(set)
    for module, a, b in missing:
        by_module[module].update((abs(a), abs(b)))
    for module, lines in sorted(by_module.items()):
        print(f"  {module}: lines {', '.join(map(str, sorted(lines)))}")
    reach = collections.Counter({k: len(v & missing) for k, v in per_test.items()
                                 if k not in fast and v & missing})
    for test, n in reach.most_common():
        print(f"  {n:3d} of them reached by {test}")


if __name__ == "__main__":
    main()

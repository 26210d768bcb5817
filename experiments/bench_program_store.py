"""A fresh process's first engine calls, with and without the program store.

The store (kinetic_jax/_programs.py) keeps the engine's programs exported beside
JAX's persistent compilation cache, so that a new process skips tracing and
lowering them. This script times, in fresh child processes, the first
reference-book margin call (8,192 scenarios, exact-block sampler) and the first
sensitivities (4,096 scenarios) in four states:

- ``cold``: an empty cache directory (both JAX's entries and the store);
- ``warm, no store``: JAX's persistent cache warm, the store switched off
  (``enable_compilation_cache(..., store_programs=False)``), as before the
  store existed;
- ``warm, store``: both warm (what a second CLI run, notebook kernel or
  dashboard start sees);
- ``cold, no store``: an empty directory, the store off (the cold baseline).

Warm states alternate, `--repeats` times each, in one run of this script (the
machine is shared: compare within a run). Prints the medians and ranges.

    .venv/bin/python experiments/bench_program_store.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import kinetic_jax as kj
kj.enable_compilation_cache(sys.argv[1], store_programs=sys.argv[2] == "on")
book = kj.load_book(sys.argv[3])
t1 = time.perf_counter()
report = kj.portfolio_margin(book, scenarios=8192)
t2 = time.perf_counter()
sens = kj.sensitivities(book, scenarios=4096)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "margin": t2 - t1, "sensitivities": t3 - t2,
                  "value": [report.margin, float(sens.margin)]}))
"""


def child(cache: str, store: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, cache, store, str(ROOT / "examples" / "reference_book.toml")],
        capture_output=True, text=True, check=True, env={"JAX_PLATFORMS": "cpu",
                                                         "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs: list[dict], field: str) -> str:
    values = [r[field] for r in runs]
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cold_off = [child(str(Path(tmp) / f"off{i}"), "off") for i in range(2)]
        cold_on = [child(str(Path(tmp) / f"on{i}"), "on") for i in range(2)]
        warm = str(Path(tmp) / "on0")  # JAX's entries and the store, both filled
        child(warm, "off")  # and JAX's entries of the traced programs (they differ)
        warm_off, warm_on = [], []
        for _ in range(args.repeats):
            warm_off.append(child(warm, "off"))
            warm_on.append(child(warm, "on"))
    values = {json.dumps(r["value"]) for r in cold_off + cold_on + warm_off + warm_on}
    print(f"figures identical in every state: {len(values) == 1} {sorted(values)[0]}")
    print(f"{'state':<18} {'runs':>4}  {'first margin':<22} {'first sensitivities':<22}")
    for name, runs in [("cold, no store", cold_off), ("cold, store", cold_on),
                       ("warm, no store", warm_off), ("warm, store", warm_on)]:
        print(f"{name:<18} {len(runs):>4}  {summary(runs, 'margin'):<22} "
              f"{summary(runs, 'sensitivities'):<22}")
    for field in ("margin", "sensitivities"):
        ratio = (statistics.median(r[field] for r in warm_off)
                 / statistics.median(r[field] for r in warm_on))
        cold = (statistics.median(r[field] for r in cold_on)
                / statistics.median(r[field] for r in cold_off))
        print(f"{field}: warm without / with the store {ratio:.2f}x; "
              f"cold with / without {cold:.2f}x")


if __name__ == "__main__":
    main()

"""`kj.sensitivities` (default estimator: conditional, importance-sampled jump run
of 8x the scenarios) on the reference book and on `kj.random_book(N)`.

Warm: the median of `--repeats` calls on new seeds after one untimed call
(compile), reported separately. Run it on two checkouts back to back
(`PYTHONPATH` at a worktree) to compare them.

    .venv/bin/python experiments/bench_sensitivity_books.py [--contracts 2000]
        [--scenarios 8192 32768] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench_session_books import timed  # warm median over new seeds

import kinetic_jax as kj

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contracts", type=int, default=2000)
    ap.add_argument("--scenarios", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    books = [("reference", kj.load_book(REFERENCE))]
    books += [(f"random_book({args.contracts}) at {n:,}",
               kj.random_book(args.contracts, seed=0).with_settings(scenarios=n))
              for n in args.scenarios]
    for name, book in books:
        t = time.perf_counter()
        kj.sensitivities(book)
        first = time.perf_counter() - t
        warm = timed(kj.sensitivities, book, args.repeats)
        print(f"{name:32s} first {first:7.2f} s  warm {warm:7.3f} s", flush=True)


if __name__ == "__main__":
    main()

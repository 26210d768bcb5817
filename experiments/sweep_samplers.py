"""Which sampler a sweep should default to: noise in the level and in the steps.

A sweep is read for how the margin moves from point to point, so what matters
is the noise of the *differences* between neighbouring points as much as that
of each point. With the plain sampler every point uses the same draws (common
random numbers), so most of the noise cancels in a difference; the importance
and exact-block samplers fit a proposal (and, for the exact block, a law) per
point, so neighbouring points carry partly independent noise.

For each sampler, over `--seeds` seeds at `--scenarios` draws, on the reference
book along each axis (`--axes`): the seed-to-seed sd of the margin at each
point (averaged over points), the sd of the step between neighbouring points
(averaged over steps), and the seconds per sweep after the first (compiling)
one.

    .venv/bin/python experiments/sweep_samplers.py [--seeds 16] [--scenarios 32768]
        [--axes rho.crypto=0.55:0.85:7,quantity.BTC-100K-DEC=-4000:4000:9]
        [--out experiments/results/sweep_samplers.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import kinetic_jax as kj

BOOK = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"


def _run(book, axis, seeds, scenarios):
    margins, seconds = [], []
    for seed in range(seeds):
        t0 = time.perf_counter()
        res = kj.sweep(book, [axis], scenarios=scenarios, seed=seed, progress=False)
        seconds.append(time.perf_counter() - t0)
        margins.append(np.asarray(res.margin, np.float64))
    m = np.stack(margins)  # (seeds, points)
    return {
        "level_sd": float(np.mean(np.std(m, axis=0, ddof=1))),
        "step_sd": float(np.mean(np.std(np.diff(m, axis=1), axis=0, ddof=1))),
        "mean_margin": [float(v) for v in m.mean(axis=0)],
        "seconds_per_sweep": float(np.median(seconds[1:])) if seeds > 1 else seconds[0],
        "first_sweep_seconds": seconds[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--scenarios", type=int, default=32768)
    ap.add_argument("--axes", default="rho.crypto=0.55:0.85:7,quantity.BTC-100K-DEC=-4000:4000:9")
    ap.add_argument("--samplers", default=",".join(kj.SAMPLERS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = kj.load_book(BOOK)
    out = {"seeds": args.seeds, "scenarios": args.scenarios, "axes": {}}
    for axis in args.axes.split(","):
        rows = {}
        for sampler in args.samplers.split(","):
            book = base.with_overrides(sampler=sampler)
            rows[sampler] = _run(book, axis, args.seeds, args.scenarios)
        out["axes"][axis] = rows
        print(f"\n{axis}  ({args.seeds} seeds, {args.scenarios:,} draws)")
        print(f"{'sampler':<12} {'level sd':>9} {'step sd':>9} {'s / sweep':>10} {'first':>8}")
        for sampler, r in rows.items():
            print(f"{sampler:<12} {r['level_sd']:9.1f} {r['step_sd']:9.1f} "
                  f"{r['seconds_per_sweep']:10.2f} {r['first_sweep_seconds']:8.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

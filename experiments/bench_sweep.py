"""A rho x rho sweep of the reference book against a Python loop of margin calls.

    .venv/bin/python experiments/bench_sweep.py [--count 64] [--scenarios 32768]
                                                [--loop-sample 48] [--json]

The sweep: `kj.sweep` over rho.risk (rho_cross, 0 .. 0.35: equity and macro sit
under it at 0.35) x rho.crypto (rho_within, 0.35 .. 0.95), COUNT values each, every
point valid, at SCENARIOS scenarios (seed 0, plain sampler, float32). Its first call is timed
(compile included) and then a second call (compiled programs reused). The
baseline: `kj.portfolio_margin(..., sampler="plain")` (the sweep's sampler: the
default, exact_block, is other work) on the book with each point's hierarchy, timed
on LOOP_SAMPLE points spread evenly over the valid ones (after one warm-up call)
and extrapolated to every valid point (the per-call time is flat in the point:
the same shapes, the same work). Both run in the same process, so the ratio is
what to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import kinetic_jax as kj

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--scenarios", type=int, default=32768)
    parser.add_argument("--loop-sample", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    book = kj.load_book(REFERENCE)
    axes = [f"rho.risk=0:0.35:{args.count}", f"rho.crypto=0.35:0.95:{args.count}"]

    t0 = time.perf_counter()
    result = kj.sweep(book, axes, scenarios=args.scenarios, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = kj.sweep(book, axes, scenarios=args.scenarios, progress=False)
    second = time.perf_counter() - t0
    valid = np.argwhere(result.valid)

    def margin_at(i: int, j: int) -> float:
        h = book.hierarchy.replace(rho={"risk": result.axes[0].values[i],
                                        "crypto": result.axes[1].values[j]})
        # sampler="plain": the sweep samples plain; the default (exact_block) is other work
        return kj.portfolio_margin(book.with_hierarchy(h), scenarios=args.scenarios,
                                   sampler="plain").margin

    margin_at(*valid[0])  # compile
    sample = valid[np.linspace(0, len(valid) - 1, min(args.loop_sample, len(valid))).astype(int)]
    t0 = time.perf_counter()
    worst = 0.0
    for i, j in sample:
        m = margin_at(i, j)
        worst = max(worst, abs(m - result.margin[i, j]) / max(1.0, abs(m)))
    per_call = (time.perf_counter() - t0) / len(sample)
    loop = per_call * len(valid)
    out = {
        "grid": f"{args.count} x {args.count}", "points": int(result.valid.size),
        "valid_points": int(len(valid)), "scenarios": args.scenarios,
        "sweep_first_call_s": round(first, 2), "sweep_s": round(second, 2),
        "sweep_points_per_s": round(len(valid) / second, 1),
        "loop_per_call_ms": round(per_call * 1e3, 1),
        "loop_sampled_calls": int(len(sample)),
        "loop_extrapolated_s": round(loop, 1),
        "ratio_loop_over_sweep": round(loop / second, 2),
        "max_relative_difference_on_sample": float(f"{worst:.2g}"),
        "load_average": os.getloadavg()[0], "devices": result.devices,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:>36}: {v}")


if __name__ == "__main__":
    main()

"""Opening a what-if session at a liquidation horizon, against a margin call.

A what-if session (`kj.margin_session`) simulates its book once and keeps the
outcome matrix: at a horizon, every slot's mark in every scenario (float32,
slots x scenarios). The book is the largest the dashboard admits
(`max_cells` = 2,000 contracts x 32,768 scenarios): 2,000 dated binaries in one
cluster, quantities 1-3, horizon 2 days. Per sampler, the session's opening and
the margin call of the same book are timed warm, interleaved (median of
`--repeats`, each on a new seed, so nothing is reused between calls), in one
process; the first call of each (compile included) is reported separately.

The ratio opening / margin is the cost of keeping the marks. Before the marks
were computed scenarios-last (`_marks.horizon_mark_rows`), a session wrote a
transposed (scenarios, slots) result element by element and took 8x a margin.

    .venv/bin/python experiments/bench_session_horizon.py [--contracts 2000]
        [--scenarios 32768] [--repeats 5]
        [--out experiments/results/bench_session_horizon.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import jax
import numpy as np

import kinetic_jax as kj


def dated_binaries(n: int, scenarios: int, sampler: str) -> kj.Book:
    return kj.parse_book({
        "model": {"scenarios": scenarios, "seed": 0, "horizon_days": 2, "as_of": "2026-06-01",
                  "sampler": sampler},
        "contracts": [{"id": f"c{i}", "cluster": "BTC", "type": "binary", "price": 0.5,
                       "resolves": "2026-12-31"} for i in range(n)],
        "positions": [{"contract": f"c{i}", "quantity": 1 + (i % 3)} for i in range(n)],
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contracts", type=int, default=2000)
    ap.add_argument("--scenarios", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="experiments/results/bench_session_horizon.json")
    args = ap.parse_args()

    rows = []
    for sampler in ("plain", "exact_block"):
        book = dated_binaries(args.contracts, args.scenarios, sampler)
        t = time.perf_counter()
        session = kj.margin_session(book)
        first_open = time.perf_counter() - t
        t = time.perf_counter()
        report = kj.portfolio_margin(book)
        first_margin = time.perf_counter() - t
        opens, margins = [], []
        for k in range(1, args.repeats + 1):
            b = book.with_settings(seed=k)
            t = time.perf_counter()
            s = kj.margin_session(b)
            opens.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = kj.portfolio_margin(b)
            margins.append(time.perf_counter() - t)
            if sampler == "plain":  # the same draws: the same figure
                assert abs(s.margin - r.margin) <= 1e-4 * r.full_collateral, (s.margin, r.margin)
        t = time.perf_counter()
        session.what_if({"c1": 5.0})
        what_if = time.perf_counter() - t
        rows.append({
            "sampler": sampler, "session_margin": session.margin, "margin": report.margin,
            "first_open_s": first_open, "first_margin_s": first_margin,
            "open_median_s": float(np.median(opens)), "margin_median_s": float(np.median(margins)),
            "open_over_margin": float(np.median(opens) / np.median(margins)),
            "open_s": opens, "margin_s": margins, "what_if_s": what_if,
            "session_bytes": session.nbytes,
        })
        print(json.dumps(rows[-1]), flush=True)
    out = {"contracts": args.contracts, "scenarios": args.scenarios, "horizon_days": 2,
           "repeats": args.repeats, "rows": rows,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
           "load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

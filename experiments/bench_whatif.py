"""Latency of a pre-trade what-if (`kj.margin_session(book).what_if(trades)`)
against a full `kj.portfolio_margin` call on the traded book, in the same run.

A 100-position random book (`kj.random_book(102, held_fraction=1)`, 100 held: ladders on
the five risk clusters, an election, games and parlays) at 131,072 scenarios.
Each repeat draws 1 to 5 trades on random contracts of the book (held ones and
the parlays' legs) and times, interleaved:

- `what_if` (host parsing and validation of the traded book, the jitted loss
  update of the touched rows + their ES + the margin, the report);
- `portfolio_margin` of the same traded book (host layout, simulation, report).

Compile times (session opening, first what-if, first full call) are reported
separately. Every what-if is checked against its full call before it is
counted: to float32 rounding under the plain sampler; within 4 combined
standard errors under the default (exact_block: the session keeps its opening
proposal, the full call refits).

    .venv/bin/python experiments/bench_whatif.py [--repeats 15] [--scenarios 131072]
        [--sampler plain|importance|exact_block] [--out PATH]

Timings are medians of interleaved repeats (shared, noisy machines); compare the
ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

import kinetic_jax as kj


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--scenarios", type=int, default=131072)
    ap.add_argument("--positions", type=int, default=100)
    ap.add_argument("--sampler", choices=kj.SAMPLERS, default=None,
                    help="default: the engine's for what-ifs (exact_block)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_whatif.json"))
    args = ap.parse_args()

    book = kj.random_book(args.positions + 2, held_fraction=1.0, seed=3)
    book = dataclasses.replace(book, positions=book.positions[: args.positions])
    book = book.with_settings(scenarios=args.scenarios, sampler=args.sampler)
    ids = list(book.contract_ids)
    held = sum(1 for v in book.net_quantities().values() if v != 0)
    rng = np.random.default_rng(0)

    t = time.perf_counter()
    session = kj.margin_session(book)
    t_open = time.perf_counter() - t
    t = time.perf_counter()
    session.what_if({ids[0]: 1.0})
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    kj.portfolio_margin(book)
    t_full_first = time.perf_counter() - t

    what_if, full, counts, gaps = [], [], [], []
    for _ in range(args.repeats):
        n = int(rng.integers(1, 6))
        pick = rng.choice(len(ids), n, replace=False)
        trades = {ids[i]: float(rng.integers(-2000, 2000)) for i in pick}
        q = book.net_quantities()
        for k, v in trades.items():
            q[k] += v
        traded = book.with_positions(q)
        t = time.perf_counter()
        r = session.what_if(trades)
        what_if.append(time.perf_counter() - t)
        t = time.perf_counter()
        f = kj.portfolio_margin(traded)
        jax.block_until_ready(f.margin)
        full.append(time.perf_counter() - t)
        counts.append(n)
        if r.sampler == "plain":
            assert abs(r.margin - f.margin) <= 1e-5 * max(1.0, f.full_collateral), (r, f)
        else:
            assert abs(r.margin - f.margin) <= 4 * (r.standard_error + f.standard_error) + 1e-3
        gaps.append((r.margin - f.margin) / max(1e-9, r.standard_error + f.standard_error))

    med_w, med_f = float(np.median(what_if)), float(np.median(full))
    by_count = {n: 1e3 * float(np.median([w for w, c in zip(what_if, counts) if c == n]))
                for n in sorted(set(counts))}
    out = {
        "positions": held, "contracts": len(ids), "scenarios": args.scenarios,
        "sampler": session.sampler,
        "what_if_minus_full_in_combined_se": [float(np.min(gaps)), float(np.median(gaps)),
                                              float(np.max(gaps))],
        "repeats": args.repeats, "trades_per_what_if": [min(counts), max(counts)],
        "open_session_s": t_open, "first_what_if_s": t_first,
        "first_full_call_s": t_full_first,
        "what_if_median_ms": 1e3 * med_w, "what_if_max_ms": 1e3 * max(what_if),
        "what_if_median_ms_by_trades": by_count,
        "full_call_median_ms": 1e3 * med_f, "ratio_what_if_to_full": med_w / med_f,
        "devices": [str(d) for d in jax.devices()],
        "load_average": list(os.getloadavg()), "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

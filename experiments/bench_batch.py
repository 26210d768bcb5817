"""Many accounts on one universe and one simulation, against a loop of single calls.

    .venv/bin/python experiments/bench_batch.py [--accounts 10000] [--positions 100]
        [--contracts 1000] [--scenarios 32768] [--loop-sample 8] [--json]

Universe: `kj.random_book(CONTRACTS)` (strike ladders on the five risk clusters,
an election, games and two-leg parlays on the default hierarchy; its own
positions are ignored). Each account holds POSITIONS distinct contracts drawn at
random, quantities uniform in [-2000, 2000]. `kj.margin_accounts` margins all of
them on one simulation of SCENARIOS scenarios (seed 0, float32); its first call
is timed (compile included). The baseline: `kj.portfolio_margin(...,
sampler="plain")` (the batch's sampler; the default, exact_block, is other work) of the universe
holding one account's positions, timed on LOOP_SAMPLE accounts (after a warm-up
call) and extrapolated to every account (each call does the same work: the same
shapes). Both run in the same process; the ratio is what to compare on a shared
machine. The script also checks the sampled accounts' margins against the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import kinetic_jax as kj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--positions", type=int, default=100)
    parser.add_argument("--contracts", type=int, default=1000)
    parser.add_argument("--scenarios", type=int, default=32768)
    parser.add_argument("--loop-sample", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    book = kj.random_book(args.contracts, seed=0)
    ids = book.contract_ids
    rng = np.random.default_rng(0)
    accounts = {}
    for a in range(args.accounts):
        pick = rng.choice(len(ids), min(args.positions, len(ids)), replace=False)
        qty = rng.integers(-2000, 2001, len(pick)).astype(float)
        accounts[f"acct-{a:05d}"] = {ids[i]: float(v) for i, v in zip(pick, qty) if v != 0}

    t0 = time.perf_counter()
    result = kj.margin_accounts(book, accounts, scenarios=args.scenarios, progress=False)
    batch = time.perf_counter() - t0

    names = list(accounts)
    sample = [names[i] for i in np.linspace(0, len(names) - 1, args.loop_sample).astype(int)]
    by_name = {a.account: a for a in result.accounts}
    # sampler="plain": the batch samples plain; the default (exact_block) is other work
    kj.portfolio_margin(book.with_positions(accounts[sample[0]]), scenarios=args.scenarios,
                        sampler="plain")
    t0 = time.perf_counter()
    worst = 0.0
    for name in sample:
        m = kj.portfolio_margin(book.with_positions(accounts[name]),
                                scenarios=args.scenarios, sampler="plain").margin
        worst = max(worst, abs(m - by_name[name].margin) / max(1.0, abs(m)))
    per_call = (time.perf_counter() - t0) / len(sample)
    loop = per_call * len(names)
    out = {
        "accounts": len(names), "positions_per_account": args.positions,
        "contracts": len(ids), "scenarios": args.scenarios,
        "batch_s_first_call_incl_compile": round(batch, 1),
        "accounts_per_s": round(len(names) / batch, 1),
        "loop_per_call_ms": round(per_call * 1e3, 1), "loop_sampled_calls": len(sample),
        "loop_extrapolated_s": round(loop, 1), "ratio_loop_over_batch": round(loop / batch, 2),
        "max_relative_difference_on_sample": float(f"{worst:.2g}"),
        "failed_accounts": len(result.failed),
        "load_average": os.getloadavg()[0], "devices": result.devices,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:>34}: {v}")


if __name__ == "__main__":
    main()

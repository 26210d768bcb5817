"""The cost of underlyings (SPEC-horizon.md §6.3-6.4) against plain dated events.

Two books with the same contracts count, the same clusters and the same 2-day
horizon, margined in one process:

- *plain*: per risk cluster, ladders of above/below binaries on dated events
  (``resolves``), one event per expiry: marks in closed form on the event latent;
- *underlyings*: per risk cluster one underlying, the same ladders written on it
  as binaries with expiries (the same dates, one Brownian path per underlying,
  the first expiry inside the horizon on the Brownian bridge), plus a perp per
  underlying.

Reported: warm time per ``kj.portfolio_margin`` call (median of interleaved
repeats) as a ratio to the plain book, and compile (first-call) times separately.

    .venv/bin/python experiments/bench_underlyings.py [--strikes 8] [--expiries 4]
        [--scenarios 131072] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from statistics import NormalDist

import jax
import numpy as np

import kinetic_jax as kj

CLUSTERS = ("BTC", "ETH", "SOL", "SPX", "OIL")
SPOT = {"BTC": 100_000.0, "ETH": 4_000.0, "SOL": 200.0, "SPX": 6_000.0, "OIL": 75.0}
VOL = {"BTC": 0.6, "ETH": 0.7, "SOL": 0.9, "SPX": 0.18, "OIL": 0.35}
DAYS = (1, 30, 90, 180, 270, 365)


def books(strikes: int, expiries: int, scenarios: int):
    rng = np.random.default_rng(0)
    as_of = "2026-06-01"
    settings = kj.Settings(scenarios=scenarios, horizon_days=2.0, as_of=as_of)
    plain, under, positions, under_positions, underlyings = [], [], [], [], []
    for c in CLUSTERS:
        s0, vol = SPOT[c], VOL[c]
        underlyings.append(kj.Underlying(c, c, s0, vol, lot_size=0.001))
        under.append(kj.Contract(f"{c}-PERP", None, "perp", None, underlying=c))
        under_positions.append(kj.Position(f"{c}-PERP", float(rng.normal())))
        for e, days in enumerate(DAYS[:expiries]):
            t = days / 365
            date = np.datetime64(as_of) + np.timedelta64(days, "D")
            for k, m in enumerate(np.linspace(0.8, 1.2, strikes)):
                strike = float(round(s0 * m, 6))
                d2 = (math.log(1 / m) - vol * vol * t / 2) / (vol * math.sqrt(t))
                p = float(np.clip(round(NormalDist().cdf(d2), 4), 0.01, 0.99))
                cid = f"{c}-{e}-{k}"
                plain.append(kj.Contract(cid, c, "above", p, event=f"{c}-{e}",
                                         threshold=strike, resolves=str(date)))
                under.append(kj.Contract(cid, None, "above", p, underlying=c, strike=strike,
                                         expiry=str(date)))
                q = float(rng.integers(-5000, 5000))
                positions.append(kj.Position(cid, q))
                under_positions.append(kj.Position(cid, q))
    return (kj.Book(tuple(plain), tuple(positions), settings=settings),
            kj.Book(tuple(under), tuple(under_positions), settings=settings,
                    underlyings=tuple(underlyings)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strikes", type=int, default=8)
    ap.add_argument("--expiries", type=int, default=4)
    ap.add_argument("--scenarios", type=int, default=131072)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    plain, under = books(args.strikes, args.expiries, args.scenarios)
    first = {}
    for name, book in (("plain", plain), ("underlyings", under)):
        t = time.perf_counter()
        jax.block_until_ready(kj.portfolio_margin(book).margin)
        first[name] = time.perf_counter() - t
    times = {"plain": [], "underlyings": []}
    for _ in range(args.repeats):
        for name, book in (("plain", plain), ("underlyings", under)):
            t = time.perf_counter()
            kj.portfolio_margin(book)
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {
        "contracts": len(plain.contracts), "underlying_contracts": len(under.contracts),
        "scenarios": args.scenarios, "repeats": args.repeats,
        "warm_s": med, "ratio_underlyings_to_plain": med["underlyings"] / med["plain"],
        "first_call_s": first, "cpus": os.cpu_count(), "device": str(jax.devices()[0]),
        "margin": {"plain": kj.portfolio_margin(plain).margin,
                   "underlyings": kj.portfolio_margin(under).margin},
    }
    print(json.dumps(out, indent=2))
    path = Path(__file__).parent / "results" / "bench_underlyings.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

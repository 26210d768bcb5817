"""Margin calls and what-if session openings on four books of different shapes.

The books: the reference book at its 131,072 scenarios; `kj.random_book(2000)`
(ladders, games, parlays: about one event row per two slots) at 32,768; 2,000
dated binaries, each its own event, at a 2-day horizon; a BTC perp and 1,999
BTC binaries on the underlying (8 event rows for 2,048 slots) at a 2-day
horizon. Per book, the plain-sampler margin call (`kj.portfolio_margin`) and,
at a horizon, the opening of a what-if session (`kj.margin_session`, which keeps
the marks), each warm: the median of `--repeats` calls on new seeds after one
untimed call (compile). Slots and event rows are the padded shapes (C, E).

    .venv/bin/python experiments/bench_session_books.py [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from bench_session_horizon import dated_binaries  # the same 2,000-binary book

import kinetic_jax as kj

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
HORIZON = {"horizon_days": 2, "as_of": "2026-06-01", "sampler": "plain"}


def perp_and_strip(n: int, scenarios: int) -> kj.Book:
    strikes = np.linspace(80000, 130000, n)
    prices = np.round(np.clip(0.5 - 0.45 * (strikes - 105000) / 25000, 0.01, 0.99), 4)
    return kj.parse_book({
        "model": {"scenarios": scenarios, "seed": 0, **HORIZON},
        "underlyings": [{"id": "BTC", "cluster": "BTC", "spot": 100000, "vol": 0.6,
                         "lot_size": 0.001}],
        "contracts": [{"id": "BTC-PERP", "underlying": "BTC", "type": "perp"}]
        + [{"id": f"b{i}", "underlying": "BTC", "type": "above", "strike": float(k),
            "expiry": "2026-08-28", "price": float(p)}
           for i, (k, p) in enumerate(zip(strikes, prices))],
        "positions": [{"contract": "BTC-PERP", "quantity": 2.0}]
        + [{"contract": f"b{i}", "quantity": -(1 + i % 3)} for i in range(n)],
    })


def timed(fn, book: kj.Book, repeats: int) -> float:
    fn(book)
    times = []
    for k in range(1, repeats + 1):
        b = book.with_settings(seed=k)
        t = time.perf_counter()
        fn(b)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    books = {
        "reference": kj.load_book(REFERENCE),
        "random_book(2000)": kj.random_book(2000, seed=0).with_settings(scenarios=32768),
        "2,000 dated binaries": dated_binaries(2000, 32768, "plain"),
        "BTC perp + 1,999 binaries": perp_and_strip(1999, 32768),
    }
    rows = []
    for name, book in books.items():
        arrays, _ = kj.book_arrays(book)
        row = {"book": name, "slots": int(arrays.quantity.shape[0]),
               "event_rows": int(arrays.event_seed.shape[0]),
               "scenarios": book.settings.scenarios,
               "margin_s": timed(lambda b: kj.portfolio_margin(b, sampler="plain"), book,
                                 args.repeats)}
        if book.settings.horizon_days is not None:
            row["session_s"] = timed(kj.margin_session, book, args.repeats)
        rows.append(row)
        if not args.json:
            session = f"  session {row['session_s']:.3f} s" if "session_s" in row else ""
            print(f"{name:28s} C={row['slots']:5d} E={row['event_rows']:5d} "
                  f"N={row['scenarios']:7,d}  margin {row['margin_s']:.3f} s{session}",
                  flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

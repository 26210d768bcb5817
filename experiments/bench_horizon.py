"""Cost of the liquidation horizon (SPEC-horizon.md §6) against resolution mode.

For each book the same jitted margin call (`kj.margin_jit`: the engine's
program, without the host's layout and report) is timed in resolution mode (v1: 0/1 outcomes) and
with a horizon (closed-form marks at the horizon, Gauss–Hermite parlay marks
where live legs share loaded factors), in the same process, interleaved:

- the reference book (its BTC/ETH parlay has live legs in two loaded clusters:
  the Gauss–Hermite integral), and the same book with that parlay's ETH leg
  replaced by a game (NFL-KC, loading 0: a product of leg marks, same shapes);
- a larger synthetic book, `kj.random_book` with dates (ladder events 30-365
  days out, the election 890 days, games 1-7 days; its own parlays are on
  games: products) plus one parlay on a BTC ladder leg and a game (product) or
  on BTC and ETH ladder legs (the integral);
- the integral's dimension, horizon mode only, at fewer scenarios: the
  synthetic book plus a parlay on two BTC events (one factor), BTC/ETH (two)
  or BTC/ETH/SPX (three, the most §6.5 allows), each against its product twin
  (the same parlay with the legs after the first on games).

Compile time (first call) is reported separately from the warm time (median of
interleaved repeats). The warm ratio horizon / resolution is the cost of the
horizon mode; the ratio with / without the shared-factor parlay (both under the
horizon, same shapes) is the cost of the Gauss–Hermite integral.

    .venv/bin/python experiments/bench_horizon.py [--scenarios 32768] [--repeats 5]
        [--contracts 256] [--horizon 2] [--quad-scenarios 16384]
        [--out experiments/results/bench_horizon.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

import kinetic_jax as kj

YEAR = 365.0


def dated_random_book(n_contracts: int, seed: int = 0) -> kj.Book:
    """`kj.random_book` with a resolution date (in years, `resolves_in`) per event:
    ladders 30-365 days, the election 890 days, games 1-7 days."""
    book = kj.random_book(n_contracts, seed=seed)
    rng = np.random.default_rng(seed + 1)
    when: dict[str, float] = {}
    contracts = []
    for c in book.contracts:
        if c.type == "parlay":
            contracts.append(c)
            continue
        key = c.event_key
        if key not in when:
            days = (890.0 if c.cluster == "Election"
                    else float(rng.integers(1, 8)) if c.cluster == "Sports"
                    else float(rng.integers(30, 366)))
            when[key] = days / YEAR
        contracts.append(dataclasses.replace(c, resolves_in=when[key]))
    return dataclasses.replace(book, contracts=tuple(contracts))


def with_parlay(book: kj.Book, clusters: tuple[str, ...], quantity: float = -3000.0) -> kj.Book:
    """`book` plus a held parlay with one leg per entry of `clusters`: the first
    contract of the next unused event of that cluster (a cluster named twice gives
    two events of it)."""
    legs: list[kj.Contract] = []
    for cluster in clusters:
        used = {leg.event_key for leg in legs}
        legs.append(next(c for c in book.contracts if c.type != "parlay"
                         and c.cluster == cluster and c.event_key not in used))
    price = round(0.8 * float(np.prod([leg.price for leg in legs])), 4)
    parlay = kj.Contract("PARLAY-" + "-".join(leg.id for leg in legs), "Parlays", "parlay",
                         price, legs=tuple(leg.id for leg in legs))
    return dataclasses.replace(book, contracts=book.contracts + (parlay,),
                               positions=book.positions + (kj.Position(parlay.id, quantity),))


def relegged(book: kj.Book, cid: str, legs: tuple[str, ...]) -> kj.Book:
    """`book` with parlay `cid` on `legs` instead (same slot, same shapes)."""
    price = round(0.8 * float(np.prod([book.contract(leg).price for leg in legs])), 4)
    return dataclasses.replace(book, contracts=tuple(
        dataclasses.replace(c, legs=legs, price=price) if c.id == cid else c
        for c in book.contracts))


def timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def case(book: kj.Book, scenarios: int, horizon: float | None):
    """(call, compile seconds, margin, Gauss–Hermite nodes per scenario and parlay:
    0 without the integral) of one book in one mode."""
    book = book.with_settings(scenarios=scenarios, horizon_days=horizon)
    arrays, _, params = kj.margin_inputs(book)
    key = jax.random.key(book.settings.seed)
    top = kj.tail_size(scenarios, book.settings.confidence)
    call = lambda: kj.margin_jit(arrays, params, key, scenarios, top).margin  # noqa: E731
    compile_s = timed(call)
    dims = int(arrays.quad_cluster.shape[1]) - bool(getattr(arrays, "quad_closed", False))
    nodes = arrays.quad_nodes ** dims if arrays.quad_parlay.shape[0] else 0
    return call, compile_s, float(call()), nodes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--contracts", type=int, default=256)
    ap.add_argument("--horizon", type=float, default=2.0, help="horizon in days")
    ap.add_argument("--quad-scenarios", type=int, default=16384,
                    help="scenarios of the quadrature-dimension section")
    ap.add_argument("--out", default="experiments/results/bench_horizon.json")
    args = ap.parse_args()
    n, h = args.scenarios, args.horizon
    load_start = os.getloadavg()

    ref = kj.load_book("examples/reference_book.toml")
    synth = dated_random_book(args.contracts)
    books = {
        "reference": ref,
        "reference, BTC/ETH parlay on BTC/NFL-KC": relegged(ref, "PARLAY-BTC-ETH",
                                                            ("BTC-100K-DEC", "NFL-KC")),
        f"random_book({args.contracts}) + BTC/game parlay": with_parlay(synth, ("BTC", "Sports")),
        f"random_book({args.contracts}) + BTC/ETH parlay": with_parlay(synth, ("BTC", "ETH")),
    }
    rows = []
    for name, book in books.items():
        modes = {"resolution": case(book, n, None), "horizon": case(book, n, h)}
        warm = {m: [] for m in modes}
        for _ in range(args.repeats):  # interleaved: the machine is shared and noisy
            for m, (call, *_rest) in modes.items():
                warm[m].append(timed(call))
        row = {"book": name, "contracts": len(book.contracts), "scenarios": n,
               "horizon_days": h, "quadrature_nodes": modes["horizon"][3]}
        for m, (_, compile_s, margin, _) in modes.items():
            row[f"{m}_compile_s"] = compile_s
            row[f"{m}_warm_s"] = float(np.median(warm[m]))
            row[f"{m}_margin"] = margin
        row["horizon_over_resolution"] = row["horizon_warm_s"] / row["resolution_warm_s"]
        rows.append(row)
        nodes = row["quadrature_nodes"]
        print(f"{name:<40} {len(book.contracts):>4} contracts  GH nodes {nodes:>4}"
              f"  resolution {row['resolution_warm_s'] * 1e3:8.1f} ms (compile "
              f"{row['resolution_compile_s']:5.1f} s)  horizon {row['horizon_warm_s'] * 1e3:8.1f}"
              f" ms (compile {row['horizon_compile_s']:5.1f} s)  ratio "
              f"{row['horizon_over_resolution']:.2f}", flush=True)
    by = {r["book"]: r for r in rows}
    syn = f"random_book({args.contracts})"
    quad = {"reference: BTC/ETH parlay / BTC/NFL-KC parlay (horizon)":
            by["reference"]["horizon_warm_s"]
            / by["reference, BTC/ETH parlay on BTC/NFL-KC"]["horizon_warm_s"],
            f"{syn}: BTC/ETH parlay / BTC/game parlay (horizon)":
            by[f"{syn} + BTC/ETH parlay"]["horizon_warm_s"]
            / by[f"{syn} + BTC/game parlay"]["horizon_warm_s"]}
    for k, v in quad.items():
        print(f"  {k}: {v:.2f}")

    # The integral's dimension (horizon only): each shared-factor parlay against
    # its twin with the loaded legs after the first on games (a product, same shapes).
    nq = args.quad_scenarios
    dims_rows = []
    for legs in (("BTC", "BTC"), ("BTC", "ETH"), ("BTC", "ETH", "SPX")):
        twin = ("BTC",) + ("Sports",) * (len(legs) - 1)
        times, calls = {}, {}
        for name, book in (("product", with_parlay(synth, twin)),
                           ("quadrature", with_parlay(synth, legs))):
            calls[name], times[f"{name}_compile_s"], _, times[f"{name}_nodes"] = case(book, nq, h)
        warm = {name: [] for name in calls}
        for _ in range(args.repeats):  # interleaved
            for name, call in calls.items():
                warm[name].append(timed(call))
        times.update({name: float(np.median(v)) for name, v in warm.items()})
        row = {"parlay_legs": "/".join(legs), "scenarios": nq,
               "loaded_clusters": len(set(legs)), "quadrature_nodes": times["quadrature_nodes"],
               "product_warm_s": times["product"], "quadrature_warm_s": times["quadrature"],
               "quadrature_compile_s": times["quadrature_compile_s"],
               "quadrature_over_product": times["quadrature"] / times["product"]}
        assert times["product_nodes"] == 0, "the twin parlay should be a product"
        dims_rows.append(row)
        print(f"  {row['parlay_legs']:<12} GH nodes {row['quadrature_nodes']:>4}: "
              f"{row['quadrature_warm_s'] * 1e3:9.1f} ms vs product twin "
              f"{row['product_warm_s'] * 1e3:8.1f} ms at {nq} scenarios: ratio "
              f"{row['quadrature_over_product']:.2f}", flush=True)
    out = {"rows": rows, "quadrature_ratios": quad, "quadrature_dims": dims_rows,
           "repeats": args.repeats, "load_average_start": load_start,
           "load_average_end": os.getloadavg(), "devices": [str(d) for d in jax.devices()],
           "jax": jax.__version__}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

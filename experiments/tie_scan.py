"""The reported quantity derivatives against finite differences on the same draws.

For every position of the reference book (liquidity add-on off, so the margin is
piecewise linear in each quantity on the draws), `kj.sensitivities`'
``d_quantity`` is checked against the one-sided finite differences of
`kj.portfolio_margin` (plain sampling, the report's draws) with step
h = max(1, |q| / 1000):

- ``d_quantity`` must lie in the range of the right and left differences,
  widened by ``--slack`` (a kink between q - h and q + h: a tie at a VaR);
- ``d_quantity_buy`` / ``d_quantity_sell`` against the right / left difference
  (where they differ by more than `--slack`, a kink lies between q and q ± h
  other than at q itself, and the row is counted as "other kink").

Prints one line per (scenarios, seed) pair: positions outside the range, buy and
sell slopes off their differences, and the largest gap.

    .venv/bin/python experiments/tie_scan.py [--pairs 8192:1 16384:2 32768:1] [--slack 0.01]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import kinetic_jax as kj

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"


def scan(book: kj.Book, scenarios: int, seed: int, slack: float) -> dict:
    book = book.with_settings(scenarios=scenarios, seed=seed, liquidity=False)
    report = kj.sensitivities(book)
    quantities = book.net_quantities()

    def margin(cid: str, dq: float) -> float:
        moved = book.with_positions({**quantities, cid: quantities[cid] + dq})
        return kj.portfolio_margin(moved, sampler="plain").margin

    m0 = kj.portfolio_margin(book, sampler="plain").margin
    outside, buy_off, sell_off, kinks, worst = [], [], [], 0, 0.0
    for cid, entry in report.positions.items():
        h = max(1.0, abs(quantities[cid]) / 1000)
        right = (margin(cid, h) - m0) / h
        left = (m0 - margin(cid, -h)) / h
        d = entry["d_quantity"]
        lo, hi = min(left, right) - slack, max(left, right) + slack
        gap = max(lo - d, d - hi, 0.0)
        worst = max(worst, gap)
        if gap > 0:
            outside.append(cid)
        if abs(right - left) > slack:
            kinks += 1
        if abs(entry["d_quantity_buy"] - right) > slack:
            buy_off.append(cid)
        if abs(entry["d_quantity_sell"] - left) > slack:
            sell_off.append(cid)
    return {"positions": len(report.positions), "kinks": kinks, "outside": outside,
            "buy_off": buy_off, "sell_off": sell_off, "worst_gap": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["8192:1", "16384:2", "32768:1"],
                        help="scenarios:seed pairs")
    parser.add_argument("--slack", type=float, default=0.01)
    args = parser.parse_args()
    book = kj.load_book(REFERENCE)
    for pair in args.pairs:
        scenarios, seed = (int(x) for x in pair.split(":"))
        r = scan(book, scenarios, seed, args.slack)
        print(f"scenarios {scenarios:>6} seed {seed}: {r['positions']} positions, "
              f"{r['kinks']} with a kink within ±h, d_quantity outside the one-sided range: "
              f"{len(r['outside'])} {r['outside']}; buy off: {len(r['buy_off'])} "
              f"{r['buy_off']}; sell off: {len(r['sell_off'])} {r['sell_off']}; "
              f"largest gap {r['worst_gap']:.4f}", flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()

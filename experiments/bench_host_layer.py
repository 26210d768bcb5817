"""The host layer of a margin call: what `kj.portfolio_margin` does around its
jitted program, on the reference book and on `kj.random_book(N)`.

    .venv/bin/python experiments/bench_host_layer.py [--contracts 200 2000]
        [--scenarios 32768] [--repeats 7]

Per book, the medians of REPEATS calls (after one untimed call) of:
- the whole call, `kj.portfolio_margin(book, scenarios=S)`, on the same book
  and on a new book each call (one position nudged: the same shapes, laid out
  anew), in one process;
- `Book.with_settings(scenarios=S)`, the override every entry point applies,
  against the same copy made with every contract checked again
  (``dataclasses.replace``, what `with_settings` did before it knew which
  settings no book check reads): the ratio is in this one process;
- `kj.margin_inputs`: the book's arrays, its layout and the exact worst-case
  table (host NumPy work, before the program runs), for the same book (served
  by `kj.book_arrays`' cache after the first call) and for a new book each call
  (one position nudged: laid out anew), in one process.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from bench_gpu import timed  # block_until_ready, one untimed call, then the median

import kinetic_jax as kj

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"


def median_ms(fn, repeats: int) -> float:
    return timed(fn, repeats)[1] * 1e3  # (first call, median of the rest) in s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contracts", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--scenarios", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    books = [("reference", kj.load_book(REFERENCE))]
    books += [(f"random_book({n})", kj.random_book(n, seed=0)) for n in args.contracts]
    n = args.scenarios
    print(f"{'book':18s} {'call':>9s} {'new book':>9s} {'with_settings':>14s} {'re-checked':>11s} "
          f"{'inputs, same':>13s} {'inputs, new':>12s}   (ms, medians of {args.repeats})")
    for name, book in books:
        call = median_ms(lambda b=book: kj.portfolio_margin(b, scenarios=n), args.repeats)
        fast = median_ms(lambda b=book: b.with_settings(scenarios=n), args.repeats)
        full = median_ms(lambda b=book: dataclasses.replace(
            b, settings=dataclasses.replace(b.settings, scenarios=n)), args.repeats)
        inputs = median_ms(lambda b=book: kj.margin_inputs(b), args.repeats)
        held = book.net_quantities()
        first = next(cid for cid, q in held.items() if q != 0)

        def new_books():
            return iter([book.with_positions({**held, first: held[first] + k})
                         for k in range(1, args.repeats + 2)])

        fresh = new_books()
        anew = median_ms(lambda: kj.margin_inputs(next(fresh)), args.repeats)
        fresh = new_books()
        call_new = median_ms(lambda: kj.portfolio_margin(next(fresh), scenarios=n), args.repeats)
        print(f"{name:18s} {call:9.1f} {call_new:9.1f} {fast:14.3f} {full:11.1f} "
              f"{inputs:13.1f} {anew:12.1f}")


if __name__ == "__main__":
    main()

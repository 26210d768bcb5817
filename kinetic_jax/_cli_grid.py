"""The ``kinetic-jax sweep`` and ``kinetic-jax batch`` commands (SPEC.md §5.3).

Exit statuses as every command: 0 on success, 2 on an input error; ``batch``
exits 1 when some accounts failed (each listed with its error) and 2 when the
inputs as a whole are unusable. Only process 0 of a multi-process job writes
files (``--out``, ``--plot``).
"""

from __future__ import annotations

import json
import sys

TABLE_ROWS = 40


def add_parsers(sub, distributed_options) -> None:
    sw = sub.add_parser("sweep", help="margin over a grid of rho, loading, confidence, "
                                      "horizon, quantity and price values (common random "
                                      "numbers)")
    sw.add_argument("book", help="book file (.toml or .json)")
    sw.add_argument("--vary", action="append", required=True, metavar="NAME=START:STOP:COUNT",
                    help="an axis (repeatable; the grid is their product): NAME is "
                         "rho.<node>, loading.<cluster>, confidence, horizon_days, "
                         "quantity.<contract>, price.<contract>, spot.<underlying> or "
                         "vol.<underlying>; COUNT values from START "
                         "to STOP, both included")
    sw.add_argument("--scenarios", type=int, help="Monte-Carlo draws (default: the book's)")
    sw.add_argument("--seed", type=int, help="PRNG seed (default: the book's)")
    sw.add_argument("--sensitivities", action="store_true",
                    help="also each point's derivative of the margin along each axis")
    sw.add_argument("--json", action="store_true", help="print one JSON object")
    sw.add_argument("--out", metavar="FILE", help="write the grid to FILE.csv or FILE.npz")
    sw.add_argument("--plot", metavar="FILE.png",
                    help="line (one axis) or heat map (two axes) of the margin with the "
                         "binding regions (needs matplotlib: the 'plot' extra)")
    distributed_options(sw)
    b = sub.add_parser("batch", help="margin many accounts on one shared simulation")
    b.add_argument("book", help="book file: contracts, hierarchy and model (its positions "
                                "are ignored)")
    b.add_argument("accounts", help="CSV with the header account,contract,quantity (rows "
                                    "netted per account and contract)")
    b.add_argument("--scenarios", type=int, help="Monte-Carlo draws (default: the book's)")
    b.add_argument("--seed", type=int, help="PRNG seed (default: the book's)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--out", metavar="FILE.csv", help="write one CSV row per account")
    distributed_options(b)


def check_output(flag: str, path: str) -> None:
    """Raises [`BookError`][] naming `flag` and `path` when no file can be written
    there (a missing or read-only directory, a directory in its place): checked
    before anything is computed, not after."""
    import os

    from . import BookError

    if not path:
        raise BookError(flag, "the file name is empty")
    if os.path.isdir(path):
        raise BookError(flag, f"{path!r} is a directory")
    directory = os.path.dirname(path) or os.curdir
    if not os.path.exists(directory):
        raise BookError(flag, f"{path!r}: its directory {directory!r} does not exist")
    if not os.path.isdir(directory):
        raise BookError(flag, f"{path!r}: {directory!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BookError(flag, f"{path!r}: its directory {directory!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise BookError(flag, f"{path!r} exists and is not writable")


def _check_plot(path: str) -> None:
    """The --plot file: writable, matplotlib installed, an image format it writes."""
    import os

    from . import BookError

    check_output("--plot", path)
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as e:
        raise BookError("--plot", f"needs matplotlib (pip install 'kinetic-jax[plot]'): "
                                  f"{e}") from None
    ext = os.path.splitext(path)[1][1:].lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext and ext not in formats:
        raise BookError("--plot", f"{path!r}: {ext!r} is not an image format matplotlib "
                                  f"writes ({', '.join(sorted(formats))})")


def _with_overrides(book, args):
    """`book` with --scenarios and --seed, a bad value reported on its flag."""
    from . import BookError

    try:
        return book.with_overrides(scenarios=args.scenarios, seed=args.seed)
    except BookError as e:
        flag = e.field.split(".")[-1]
        if flag in ("scenarios", "seed") and getattr(args, flag) is not None:
            raise BookError(f"--{flag}", e.detail) from None
        raise


def _progress(args) -> bool:
    return not args.json and sys.stdout.isatty() and sys.stderr.isatty()


def _writer() -> bool:
    import jax

    return jax.process_index() == 0


def sweep_command(args) -> int:
    from . import BookError, load_book, parse_axes, plot_sweep, sweep

    axes = parse_axes(args.vary)  # the grid's size checked before any axis is built
    if args.out is not None and not args.out.endswith((".csv", ".npz")):
        raise BookError("--out", f"{args.out!r}: the file name must end in .csv or .npz")
    if args.plot is not None and len(axes) > 2:
        raise BookError("--plot", f"a plot needs one or two axes, got {len(axes)}")
    if (args.out is not None or args.plot is not None) and _writer():
        if args.out is not None:
            check_output("--out", args.out)
        if args.plot is not None:
            _check_plot(args.plot)
    book = _with_overrides(load_book(args.book), args)
    result = sweep(book, axes, sensitivities=args.sensitivities, progress=_progress(args))
    if _writer():
        if args.out:
            result.save(args.out)
        if args.plot:
            plot_sweep(result, args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    names = [a.name for a in result.axes]
    grid = " x ".join(f"{a.name} [{len(a.values)}]" for a in result.axes)
    print(f"kinetic-jax sweep: {args.book}  ({grid}; {result.scenarios:,} scenarios, seed "
          f"{result.seed}, common random numbers)")
    n_valid = int(result.valid.sum())
    print(f"{result.valid.size:,} points: {n_valid:,} valid, {result.valid.size - n_valid:,} "
          f"invalid")
    if n_valid:
        m = result.margin[result.valid]
        counts = {b: int((result.binding == b).sum()) for b in ("base", "floor", "worst_case")}
        print(f"margin ${m.min():,.2f} .. ${m.max():,.2f}; binding: "
              + ", ".join(f"{b} {c:,}" for b, c in counts.items() if c))
    sens = result.sensitivities or {}
    w = [max(12, len(n) + 2) for n in names]
    header = "".join(f"{n:>{k}}" for n, k in zip(names, w))
    header += f"{'margin':>14}{'± s.e.':>10}{'binding':>12}"
    dw = [len(n) + 8 for n in sens]
    header += "".join(f"{'dM/d ' + n:>{k}}" for n, k in zip(sens, dw))
    print("\n" + header)
    rows = result.rows()
    for row in rows[:TABLE_ROWS]:
        line = "".join(f"{row[n]:>{k}.6g}" for n, k in zip(names, w))
        if row["valid"]:
            line += f"{row['margin']:>14,.2f}{row['standard_error']:>10,.2f}{row['binding']:>12}"
            line += "".join(f"{row['d_' + n]:>{k},.4g}" if row["d_" + n] is not None
                            else f"{'-':>{k}}" for n, k in zip(sens, dw))
        else:
            line += f"  invalid: {row['reason']}"
        print(line)
    if len(rows) > TABLE_ROWS:
        print(f"... {len(rows) - TABLE_ROWS:,} more points (--json, or --out FILE.csv)")
    return 0


def batch_command(args) -> int:
    from . import load_book, margin_accounts, read_accounts

    if args.out is not None and _writer():
        check_output("--out", args.out)
    book = _with_overrides(load_book(args.book), args)
    accounts, errors = read_accounts(args.accounts, book.contract_ids)
    result = margin_accounts(book, accounts, errors=errors, progress=_progress(args))
    if args.out and _writer():
        result.save(args.out)
    failed = result.failed
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"kinetic-jax batch: {args.book} x {args.accounts}  ({len(result.accounts):,} "
              f"accounts, {result.scenarios:,} scenarios, seed {result.seed}, one shared "
              f"simulation)")
        print(f"\n  {'account':<20}{'margin':>14}{'full coll.':>14}{'worst case':>14}"
              f"{'released':>10}{'binding':>12}")
        for a in result.accounts[:TABLE_ROWS]:
            if a.error is not None:
                print(f"  {a.account:<20}  error: {a.error}")
            else:  # no worst case where the account is net short an underlying
                worst = ("unbounded" if a.worst_case_loss is None
                         else f"{a.worst_case_loss:,.2f}")
                print(f"  {a.account:<20}{a.margin:>14,.2f}{a.full_collateral:>14,.2f}"
                      f"{worst:>14}{a.capital_released:>10.1%}{a.binding:>12}")
        if len(result.accounts) > TABLE_ROWS:
            print(f"  ... {len(result.accounts) - TABLE_ROWS:,} more (--json, or --out "
                  f"FILE.csv)")
    for a in failed:
        print(f"kinetic-jax: error: account {a.account!r}: {a.error}", file=sys.stderr)
    return 1 if failed else 0


COMMANDS = {"sweep": sweep_command, "batch": batch_command}

"""The ``kinetic-jax`` command line (SPEC.md §4).

Exit status 0 on success, 2 on an input error (message on stderr, no traceback),
1 on an unexpected internal error (one line; set KINETIC_JAX_DEBUG=1 for the
traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ._errors import BookError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("book", help="book file (.toml or .json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--scenarios", type=int, help="Monte-Carlo draws (default: the book's)")
    p.add_argument("--seed", type=int, help="PRNG seed (default: the book's)")
    p.add_argument("--confidence", type=float, help="ES level in (0, 1) (default: the book's)")
    p.add_argument("--no-addon", action="append", default=[], metavar="NAME",
                   choices=["mc_error", "liquidity"], help="switch an add-on off (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinetic-jax",
        description="Portfolio margin for binary prediction-market contracts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("margin", help="margin report of a book")
    _common(m)
    m.add_argument("--float64", action="store_true", help="compute in float64")
    return parser


def _load(args):
    from ._book_file import load_book

    book = load_book(args.book)
    changes = {k: getattr(args, k) for k in ("scenarios", "seed", "confidence")
               if getattr(args, k) is not None}
    for name in args.no_addon:
        changes[name] = False
    try:
        return book.with_settings(**changes) if changes else book
    except BookError as e:
        flag = e.field.split(".")[-1]
        if flag in ("scenarios", "seed", "confidence"):
            raise BookError(f"--{flag}", e.detail) from None
        raise


def _margin(args) -> int:
    from ._format import format_margin_report
    from ._portfolio import portfolio_margin

    book = _load(args)
    dtype = None
    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
        dtype = "float64"
    report = portfolio_margin(book, dtype=dtype)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_margin_report(report, args.book))
    return 0


COMMANDS = {"margin": _margin}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BookError as e:
        print(f"kinetic-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback
        if os.environ.get("KINETIC_JAX_DEBUG"):
            raise
        print(f"kinetic-jax: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

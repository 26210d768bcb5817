"""The ``kinetic-jax`` command line (SPEC.md §4).

Exit status 0 on success, 2 on an input error (message on stderr, no traceback),
1 on an engine fault (EngineError) or an unexpected internal error (one line;
set KINETIC_JAX_DEBUG=1 for the traceback), 141 and no message when the reader
of the output has gone (``kinetic-jax margin BOOK | head``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import SAMPLERS, BookError, EngineError
from ._cli_grid import COMMANDS as GRID_COMMANDS, add_parsers as grid_parsers


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("book", help="book file (.toml or .json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--scenarios", type=int, help="Monte-Carlo draws (default: the book's)")
    p.add_argument("--seed", type=int, help="PRNG seed (default: the book's)")
    p.add_argument("--confidence", type=float, help="ES level in (0, 1) (default: the book's)")
    p.add_argument("--sampler", choices=list(SAMPLERS),
                   help="scenario sampler (default: the book's [model] sampler, else "
                        "exact_block for margin and what-if, plain for sweeps and batches)")
    p.add_argument("--no-addon", action="append", default=[], metavar="NAME",
                   choices=["mc_error", "liquidity", "stress"],
                   help="switch an add-on off (repeatable)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--horizon", type=float, metavar="DAYS",
                      help="liquidation horizon in calendar days, in (0, 365] "
                           "(SPEC-horizon.md §6; default: the book's model.horizon_days)")
    when.add_argument("--resolution", action="store_true",
                      help="margin to resolution (v1), ignoring the book's horizon")
    p.add_argument("--as-of", metavar="DATE", dest="as_of",
                   help="the date (YYYY-MM-DD) contract dates count from (default: the book's)")
    p.add_argument("--pnl-range", nargs=2, type=float, metavar=("LO", "HI"), dest="pnl_range",
                   help="spots of each underlying's PnL curve, as multiples of spot "
                        "(default 0.5 1.5)")
    p.add_argument("--pnl-points", type=int, metavar="N", dest="pnl_points",
                   help="points of each underlying's PnL curve (default 101)")


def distributed_options(p: argparse.ArgumentParser) -> None:
    """The multi-process flags shared by margin, sweep and batch (docs/scaling.md):
    one job as one JAX multi-controller computation over every process's devices.
    Call [`start_distributed`][] with the parsed arguments before computing."""
    g = p.add_argument_group("many hosts (docs/scaling.md)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0 for a multi-process job ('auto': let "
                        "jax.distributed.initialize() detect SLURM or a TPU slice); also "
                        "$KINETIC_JAX_COORDINATOR")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help="processes in the job (also $KINETIC_JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I",
                   help="this process's index in [0, N) (also $KINETIC_JAX_PROCESS_ID)")
    g.add_argument("--init-timeout", type=int, default=None, metavar="S",
                   help="seconds to wait for every process to join (JAX's default: 300)")
    g.add_argument("--heartbeat-timeout", type=int, default=None, metavar="S",
                   help="seconds without a heartbeat before a lost process aborts the job "
                        "(JAX's default: 100)")


def start_distributed(args) -> bool:
    """Starts the multi-process runtime when the flags or environment ask for it
    (a no-op otherwise, and for commands without the flags). Raises BookError
    naming a bad flag."""
    from . import initialize_distributed as initialize

    if not hasattr(args, "coordinator"):
        return False
    for flag in ("init_timeout", "heartbeat_timeout"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise BookError(f"--{flag.replace('_', '-')}", f"{value} is not a positive number "
                                                            f"of seconds")
    try:
        started = initialize(args.coordinator, args.num_processes, args.process_id,
                             initialization_timeout=args.init_timeout,
                             heartbeat_timeout=args.heartbeat_timeout)
    except ValueError as e:
        raise BookError("", str(e)) from None
    if started:
        # The collectives library (Gloo on CPU) writes progress lines to file
        # descriptor 1: send native writes to stderr and keep Python's stdout on the
        # real one, so that --json output stays one JSON object.
        sys.stdout.flush()
        real = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = os.fdopen(real, "w", buffering=1)
    return started


def writes_files() -> bool:
    """Whether this process writes output files: in a multi-process job only
    process 0 does (every process prints the same figures)."""
    import jax

    return jax.process_index() == 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinetic-jax",
        description="Portfolio margin for binary prediction-market contracts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("margin", help="margin report of a book")
    _common(m)
    m.add_argument("--float64", action="store_true", help="compute in float64")
    distributed_options(m)
    sens = sub.add_parser("sensitivities", help="dM/dq, dM/dp, dM/drho, dM/dloading, Euler "
                                                "allocation")
    _common(sens)
    sens.add_argument("--temperature", type=float, default=None,
                      help="smoothing temperature in latent standard deviations "
                           "(default: %(prog)s's documented default)")
    sens.add_argument("--estimator",
                      choices=["conditional", "hybrid", "smooth", "straight_through", "hard"],
                      default=None,
                      help="sensitivity estimator (default conditional: unbiased, with standard "
                           "errors; hybrid: exact in quantities, smoothed in prices, rho and "
                           "loadings; under a horizon the default is hybrid, live marks "
                           "differentiated pathwise)")
    sens.add_argument("--jump-scenarios", type=int, default=None,
                      help="draws of the conditional estimator's own run (prices, rho, "
                           "loadings; default 8x the margin's scenarios)")
    sens.add_argument("--jump-sampler", choices=["importance", "plain"], default=None,
                      help="sampler of the conditional estimator's run (default importance)")
    sens.add_argument("--top", type=int, default=25, help="rows of the ranked table")
    hedge = sub.add_parser("hedge", help="margin-minimising trade in given instruments (optax)")
    _common(hedge)
    hedge.add_argument("--instrument", action="append", required=True, metavar="ID",
                       help="contract to trade (repeatable; held or not)")
    hedge.add_argument("--max-quantity", type=float, default=None,
                       help="bound on |trade| per instrument (default: the largest |position|)")
    hedge.add_argument("--cost", type=float, default=0.0,
                       help="linear trading cost, dollars per contract traded")
    hedge.add_argument("--objective", choices=["margin", "base"], default="margin")
    hedge.add_argument("--steps", type=int, default=1000, help="optimiser iterations")
    hedge.add_argument("--lot", type=float, default=1.0,
                       help="trade in whole lots of this many contracts (default 1)")
    _what_if_parser(sub)
    grid_parsers(sub, distributed_options)  # sweep, batch
    _dashboard_parser(sub)
    return parser


def _load(args):
    from . import load_book

    book = load_book(args.book)
    changes = {k: getattr(args, k, None) for k in ("scenarios", "seed", "confidence", "sampler",
                                                   "as_of", "pnl_range", "pnl_points")}
    changes["horizon_days"] = getattr(args, "horizon", None)
    for name in args.no_addon:
        changes["stress_addon" if name == "stress" else name] = False
    changes = {k: v for k, v in changes.items() if v is not None}
    try:
        if getattr(args, "resolution", False):
            book = book.with_settings(horizon_days=None)
        return book.with_overrides(**changes)
    except BookError as e:
        flag = e.field.split(".")[-1]
        flags = {"model.horizon_days": "--horizon", "model.as_of": "--as-of",
                 "model.pnl_range": "--pnl-range", "model.pnl_range[0]": "--pnl-range",
                 "model.pnl_range[1]": "--pnl-range", "model.pnl_points": "--pnl-points"}
        if e.field in flags and e.field.split(".")[-1].split("[")[0] in changes:
            raise BookError(flags[e.field], e.detail) from None
        if flag in ("scenarios", "seed", "confidence"):
            # Name the flag given: "--confidence 0.9999" can leave the book's
            # scenario count without a tail, which is reported on model.scenarios.
            given = [k for k in ("scenarios", "seed", "confidence") if k in changes]
            flags = [flag] if flag in changes else given
            raise BookError(", ".join(f"--{f}" for f in flags), e.detail) from None
        raise


def _margin(args) -> int:
    from . import format_margin_report, portfolio_margin

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


def _sensitivities(args) -> int:
    from . import DEFAULT_TEMPERATURE, sensitivities

    if args.top < 0:
        raise BookError("--top", f"{args.top} is negative (rows of the ranked table: 0 or "
                                 f"more)")
    book = _load(args)
    t = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
    try:
        report = sensitivities(book, temperature=t, estimator=args.estimator,
                               jump_scenarios=args.jump_scenarios, sampler=args.jump_sampler)
    except BookError as e:
        if e.field == "jump_scenarios":
            raise BookError("--jump-scenarios", e.detail) from None
        raise
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"kinetic-jax sensitivities: {args.book}")
    smoothed = report.estimator != "conditional"
    # The figures differentiate the plain estimator's margin (methodology.md,
    # "Which sampler, where"); `margin` prints the book's sampler's.
    print(f"margin ${report.margin:,.2f} (binding: {report.binding}; plain sampling, the "
          f"margin these figures differentiate); estimator "
          f"{report.estimator}" + (f", temperature {report.temperature:g}" if smoothed else
                                   "; ± is one Monte-Carlo standard error"))
    if report.jump_scenarios is not None:
        print(f"prices, rho and loadings: {report.jump_scenarios:,} draws, "
              f"{report.jump_sampler} sampling")
    print("\nPositions, largest Euler contribution first (dM/dq: the mean of the slopes "
          "for a purchase, buy, and a sale, sell; they differ where scenarios tie at a VaR)")
    print(f"  {'contract':<22}{'quantity':>11}{'price':>7}{'dM/dq':>10}{'buy':>9}{'sell':>9}"
          f"{'dM/dp':>12}{'± s.e.':>9}{'Euler $':>12}{'Alloc $':>12}")
    ranked = sorted(report.positions.items(), key=lambda kv: -abs(kv[1]["euler"]))
    for cid, p in ranked[: args.top]:
        se = f"{p['d_price_se']:>9,.1f}" if "d_price_se" in p else f"{'':>9}"
        qty = p["quantity"]
        qty = f"{qty:,.0f}" if qty == round(qty) else f"{qty:,.4f}"  # perps: fractional
        price = "-" if p["price"] is None else f"{p['price']:.2f}"
        d_price = "-" if p["d_price"] is None else f"{p['d_price']:,.1f}"
        print(f"  {cid:<22}{qty:>11}{price:>7}{p['d_quantity']:>10,.4f}"
              f"{p['d_quantity_buy']:>9,.4f}{p['d_quantity_sell']:>9,.4f}"
              f"{d_price:>12}{se}{p['euler']:>12,.2f}{p['allocation']:>12,.2f}")
    if len(ranked) > args.top:
        print(f"  ... {len(ranked) - args.top} more (--top N, or --json)")
    print(f"  {'sum of Euler allocations':<50}{report.euler_total:>12,.2f}")
    print(f"  {'residual (margin - sum; add-ons/cap)':<50}{report.euler_residual:>12,.2f}")
    print(f"  {'sum of allocations (Alloc $: adds up to the margin)':<62}"
          f"{report.allocation_total:>12,.2f}")
    if report.horizon_days is not None:
        print(f"  {'dM / d horizon_days ($ per day)':<50}{report.horizon_days:>12,.2f}")
    for uid in report.spot:
        print(f"  {f'dM / d spot [{uid}] ($ per $)':<50}{report.spot[uid]:>12,.4f}")
        print(f"  {f'dM / d vol [{uid}] ($ per unit vol)':<50}{report.vol[uid]:>12,.2f}")
    print("\nClusters (Euler allocation)")
    for name, v in sorted(report.clusters.items(), key=lambda kv: -abs(kv[1])):
        print(f"  {name:<22}{v:>12,.2f}")
    for title, values, errors in (
            ("Correlation parameters: dM/drho per hierarchy node", report.rho,
             report.rho_standard_error),
            ("Loadings: dM/dloading per cluster", report.loading,
             report.loading_standard_error)):
        print(f"\n{title}")
        for name, v in sorted(values.items(), key=lambda kv: -abs(kv[1])):
            se = f"  ± {errors[name]:,.2f}" if name in errors else ""
            print(f"  {name:<22}{v:>12,.2f}{se}")
    # A purchase changes the margin by d_buy per unit, a short sale by -d_sell.
    best = sorted(((cid, side, sign * p[f"d_quantity_{side}"])
                   for cid, p in report.candidates.items()
                   for side, sign in (("buy", 1), ("sell", -1))), key=lambda x: x[2])[:5]
    if best:
        print("\nContracts not held, most margin-reducing trades (margin change per unit)")
        for cid, side, change in best:
            print(f"  {cid:<22}{'bought' if side == 'buy' else 'sold short':<12}"
                  f"{change:>12.4f}")
    return 0


def _hedge(args) -> int:
    from . import optimise_hedge

    book = _load(args)
    try:
        result = optimise_hedge(book, args.instrument, max_quantity=args.max_quantity,
                                cost=args.cost, objective=args.objective, steps=args.steps,
                                lot=args.lot)
    except BookError as e:  # name the flag given, not the keyword argument
        flags = {"steps": "--steps", "lot": "--lot", "cost": "--cost",
                 "max_quantity": "--max-quantity"}
        if e.field in flags:
            raise BookError(flags[e.field], e.detail) from None
        raise
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"kinetic-jax hedge: {args.book}  (objective: {result.objective}, "
          f"|trade| <= {result.max_quantity:,.0f}, cost ${result.cost:g}/contract, "
          f"lot {result.lot:g})")
    print(f"\n  {'instrument':<22}{'trade':>12}{'position after':>16}{'continuous':>14}")
    d = 0 if float(result.lot).is_integer() else 4  # whole contracts print as integers
    for cid, q in result.quantities.items():
        print(f"  {cid:<22}{q:>12,.{d}f}{result.positions_after.get(cid, 0.0):>16,.{d}f}"
              f"{result.continuous_quantities[cid]:>14,.1f}")
    print(f"\n  {'margin before':<22}{result.margin_before:>14,.2f}")
    print(f"  {'margin after':<22}{result.margin_after:>14,.2f}   binding: {result.binding_after}"
          f"   (the traded book's margin report)")
    print(f"  {'continuous optimum':<22}{result.continuous_margin:>14,.2f}   "
          f"(before rounding to lots; {result.search_moves} one-lot search moves)")
    print(f"  {'capital freed':<22}{result.capital_freed:>14,.2f}")
    print(f"  {'trading cost':<22}{result.trading_cost:>14,.2f}")
    print(f"  {result.iterations} iterations, "
          f"{'converged' if result.converged else 'NOT converged (raise --steps)'}")
    return 0


# ---- what-if (kinetic_jax._whatif) ----------------------------------------------------
def _what_if_parser(sub) -> None:
    w = sub.add_parser("what-if", help="margin of the book after trades (pre-trade check)",
                       description="Margins BOOK once, then the book after the trades "
                                   "(added to its positions) on the same scenarios: margin "
                                   "before and after, the incremental margin, the binding "
                                   "component and the change per cluster.")
    _common(w)
    w.add_argument("--trade", action="append", required=True, metavar="ID=QTY",
                   help="signed quantity of a contract of the book to trade (repeatable; "
                        "one contract given twice trades the sum)")


def _parse_trades(book, raw: list[str]) -> dict[str, float]:
    import math

    ids = set(book.contract_ids)
    trades: dict[str, float] = {}
    for item in raw:
        cid, sep, qty = item.rpartition("=")
        field = f"--trade {item}"
        if not sep or not cid:
            raise BookError(field, "expected ID=QTY (a contract id of the book, a signed "
                                   "quantity)")
        if cid not in ids:
            raise BookError(field, f"unknown contract {cid!r}")
        try:
            q = float(qty)
        except ValueError:
            raise BookError(field, f"{qty!r} is not a number") from None
        if not math.isfinite(q):
            raise BookError(field, f"{qty!r} is not finite")
        trades[cid] = trades.get(cid, 0.0) + q
    return trades


def _what_if(args) -> int:
    from . import margin_session

    book = _load(args)
    trades = _parse_trades(book, args.trade)
    report = margin_session(book).what_if(trades)
    summary = report.summary()
    if args.json:
        print(json.dumps({**summary, "report": report.to_dict()}, indent=2))
        return 0
    print(f"kinetic-jax what-if: {args.book}")
    print("  trades: " + ", ".join(f"{cid} {q:+,g}" for cid, q in trades.items()))
    print(f"\n  {'':<22}{'before':>14}{'after':>14}{'change':>14}")
    print(f"  {'margin':<22}{report.margin_before:>14,.2f}{report.margin:>14,.2f}"
          f"{report.incremental:>+14,.2f}")
    print(f"  {'binding':<22}{report.binding_before:>14}{report.binding:>14}")
    print("\n  Clusters: stressed loss (ES)")
    for c in summary["clusters"]:
        if c["es_before"] or c["es_after"]:
            print(f"  {c['name']:<22}{c['es_before']:>14,.2f}{c['es_after']:>14,.2f}"
                  f"{c['es_change']:>+14,.2f}")
    return 0


# ---- dashboard (kinetic_jax/dashboard; needs the `dashboard` extra) -------------
def _dashboard_parser(sub) -> None:
    d = sub.add_parser("dashboard", help="interactive margin dashboard and JSON margin service",
                       description="Starts a local web server with the margin dashboard and "
                                   "its JSON API (OpenAPI docs at /docs) and prints the URL.")
    d.add_argument("book", nargs="?", help="book file to open (default: the saved state, "
                                           "else the reference book)")
    d.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    d.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; the server has no "
                        "authentication, keep it on loopback)")
    d.add_argument("--state", metavar="PATH",
                   help="state file (default ~/.kinetic_jax/dashboard.json, or "
                        "$KINETIC_JAX_STATE)")
    d.add_argument("--open", action="store_true", help="open the page in a web browser")


def _dashboard(args) -> int:
    import socket

    try:
        from .dashboard import run
    except ImportError as e:
        print(f"kinetic-jax: error: the dashboard needs the 'dashboard' extra "
              f"(pip install 'kinetic-jax[dashboard]'): {e}", file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        raise BookError("--port", f"{args.port} is outside [1, 65535]")
    try:  # fail early, with one line, if the port is taken
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as e:
        raise BookError(f"--host {args.host} --port {args.port}",
                        f"cannot listen there: {e.strerror or e}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"kinetic-jax: warning: listening on {args.host}; the dashboard has no "
              f"authentication", file=sys.stderr)
    run(args.book, args.state, host=args.host, port=args.port, open_browser=args.open)
    return 0


COMMANDS = {"margin": _margin, "sensitivities": _sensitivities, "hedge": _hedge,
            "what-if": _what_if, "dashboard": _dashboard}
COMMANDS.update(GRID_COMMANDS)  # sweep, batch (kinetic_jax._cli_grid)


def _silence_stdout() -> None:
    """Points stdout's descriptor at /dev/null, so that the interpreter's final
    flush of what is still buffered does not fail a second time."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (e.g. captured in a test)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import enable_compilation_cache

    enable_compilation_cache()  # compile once per machine ($KINETIC_JAX_CACHE_DIR=off: never)
    try:
        start_distributed(args)
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers below
        return status
    except BookError as e:
        print(f"kinetic-jax: error: {e}", file=sys.stderr)
        return 2
    except EngineError as e:
        print(f"kinetic-jax: engine error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        _silence_stdout()
        return 141  # 128 + SIGPIPE, the status a shell reports for a closed pipe
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback
        if os.environ.get("KINETIC_JAX_DEBUG"):
            raise
        print(f"kinetic-jax: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

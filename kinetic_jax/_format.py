"""Readable text reports for the command line."""

from __future__ import annotations

from ._portfolio import MarginReport


def money(x: float) -> str:
    return f"${x:,.2f}"


def horizon_line(r: MarginReport) -> str:
    """The report header's horizon: days and as-of date, or resolution."""
    as_of = f" | as of {r.as_of}" if r.as_of else ""
    if r.horizon_days is None:
        return f"horizon: to resolution (v1){as_of}"
    note = ("; every contract resolves within it: the resolution margin"
            if r.horizon_covers_all else "")
    return f"horizon: {r.horizon_days:g} days{as_of}{note}"


def format_margin_report(report: MarginReport, title: str = "") -> str:
    """The margin report as aligned text: totals, build-up, clusters, correlation."""
    r = report
    lines = []
    if title:
        lines += [f"kinetic-jax margin report: {title}"]
    lines += [
        f"scenarios {r.scenarios:,} | seed {r.seed} | confidence {r.confidence:g}",
        horizon_line(r),
        *([f"sampler exact_block: {r.exact_positions} positions no factor touches are margined "
           f"by their exact law"] if r.exact_positions else []),
        "",
        f"  {'Full collateral':<24}{money(r.full_collateral):>16}",
        (f"  {'Worst-case loss':<24}{'unbounded':>16}   (net short an underlying: no cap)"
         if r.worst_case_loss is None else
         f"  {'Worst-case loss':<24}{money(r.worst_case_loss):>16}"
         + ("" if r.worst_case_exact else "   (upper bound: book too large to solve exactly)")),
        f"  {'Portfolio margin':<24}{money(r.margin):>16}   binding: {r.binding}",
        f"  {'Capital released':<24}{r.capital_released:>16.1%}",
        "",
        "Margin build-up",
    ]
    for step in r.waterfall():
        name = step["step"]
        extra = ""
        if name == "base":
            name, extra = "base (joint ES)", f"  +/- {r.base_standard_error:,.2f} (1 s.e.)"
        elif name == "floor":
            name = "floor (top-2 clusters)"
        elif name == "stressed loss":
            name = "max(base, floor)"
        elif name == "cap":
            name = "cap (worst case, 0)"
        lines.append(f"  {name:<24}{step['amount']:>16,.2f}{extra}")
    lines.append(f"  {'sqrt(ES^T R ES)':<24}{r.aggregate_diagnostic:>16,.2f}  (diagnostic)")
    lines += ["", "Clusters"]
    lines.append(f"  {'cluster':<12}{'positions':>10}{'gross':>14}{'ES':>14}{'s.e.':>10}"
                 f"{'ES/gross':>10}")
    for c in r.clusters:
        ratio = f"{c.es / c.gross:.0%}" if c.gross > 0 else "-"
        lines.append(f"  {c.name:<12}{c.positions:>10}{c.gross:>14,.2f}{c.es:>14,.2f}"
                     f"{c.standard_error:>10,.2f}{ratio:>10}")
    if r.stress:
        lines += ["", "Stress scenarios (exact loss given the scenario; largest cluster losses)"]
        lines.append(f"  {'scenario':<24}{'loss':>14}   clusters")
        for x in r.stress:
            worst = sorted(((v, k) for k, v in x.clusters.items() if abs(v) >= 0.005),
                           reverse=True)[:3]
            detail = ", ".join(f"{k} {v:,.0f}" for v, k in worst)
            lines.append(f"  {x.name[:23]:<24}{x.loss:>14,.2f}   {detail}")
    if r.horizon_days is not None:
        lines += ["", "Contracts at the horizon (tau = h / T revealed; marks at the latent's "
                      "1% and 99% quantiles)"]
        lines.append(f"  {'contract':<24}{'price':>8}{'tau':>10}  {'stressed marks':<16}")
        for c in r.contracts:
            marks = ("-" if c.stressed_marks is None
                     else f"{c.stressed_marks[0]:.3f} .. {c.stressed_marks[1]:.3f}")
            if c.tau is None:  # a perp or future
                continue
            tau = "resolved" if c.resolved_by_horizon else f"{c.tau:.4f}"
            lines.append(f"  {c.id[:23]:<24}{c.implied_probability:>8.3f}{tau:>10}  {marks}")
    if r.underlyings:
        lines += ["", "Underlyings (net delta in units; hedge: perp lots that flatten it)"]
        lines.append(f"  {'underlying':<12}{'spot':>14}{'vol':>7}{'net delta':>14}"
                     f"{'hedge qty':>14}{'hedge lots':>12}{'PnL lo..hi spot':>28}")
        for u in r.underlyings:
            span = f"{u.pnl[0]:,.0f} .. {u.pnl[-1]:,.0f}"
            lines.append(f"  {u.id:<12}{u.spot:>14,.2f}{u.vol:>7.2f}{u.net_delta:>14,.4f}"
                         f"{u.hedge_quantity:>14,.4f}{u.hedge_lots_rounded:>12,d}{span:>28}")
        binaries = [c for c in r.contracts if c.effective_strike is not None]
        if binaries:
            lines += ["", "Binaries on underlyings (price-implied against model probability)"]
            lines.append(f"  {'contract':<24}{'implied':>9}{'model':>9}{'eff. strike':>16}")
            for c in binaries:
                lines.append(f"  {c.id[:23]:<24}{c.implied_probability:>9.3f}"
                             f"{c.model_probability:>9.3f}{c.effective_strike:>16,.2f}")
    lines += ["", "Inter-cluster factor correlation (LCA rule)"]
    names = r.correlation_clusters
    width = max(8, max(len(n) for n in names) + 1)
    lines.append("  " + " " * width + "".join(f"{n[:7]:>8}" for n in names))
    for n, row in zip(names, r.correlation):
        lines.append(f"  {n:<{width}}" + "".join(f"{x:>8.2f}" for x in row))
    return "\n".join(lines)

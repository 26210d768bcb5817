"""Underlyings, binaries written on them and perps/futures (SPEC-horizon.md §6.3-6.7,
§6.10, §6.11).

Every reference is float64 NumPy/SciPy written from the spec alone:

- S_h = S0 exp(sigma sqrt(h) Z_u - sigma^2 h / 2), Z_u standard normal (two
  underlyings correlated a_c a_d R_cd);
- a binary on u with expiry T > h is marked at h by Black's digital with the
  effective strike K* = S0 exp(sigma sqrt(T) Phi^-1(1 - p) - sigma^2 T / 2)
  (below: Phi^-1(p)); one with T <= h is YES on the Brownian bridge,
  X | Z_u ~ N(sqrt(T/h) Z_u, 1 - T/h);
- a perp or future loses -q (F0 / S0)(S_h - S0).

ES references are exact quadratures: a fine grid of Z_u with exact normal cell
masses (one latent), a product grid for two, each cell split into the regions of
the bridge latent X with their exact conditional probabilities. Monte-Carlo
comparisons allow 3 standard errors (4 for martingale means) at a fixed seed, so
the tests are deterministic. All books share the contracts of
examples/perps_and_strip.toml (positions differ), so they share one compiled
margin program.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import es_of, z_grid
from scipy import stats

import kinetic_jax as kj
from kinetic_jax import Book, Contract, Position, Settings
from kinetic_jax._arrays import book_arrays
from kinetic_jax._simulation import contract_outcomes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "perps_and_strip.toml"
REFERENCE = ROOT / "examples" / "reference_book.toml"
SCENARIOS = 65536
N = stats.norm

# The example's contracts with its positions; other books below change positions only.
BOOK = kj.load_book(EXAMPLE).with_settings(scenarios=SCENARIOS)
BTC_ONLY = {"BTC-PERP": 1.5, "BTC>105K-Aug26": -20000, "BTC>110K-Aug26": -20000,
            "BTC>120K-Aug26": -15000, "BTC<90K-Aug26": -15000, "BTC>101K-Jun02": 5000}


def book_with(quantities: dict, **settings) -> Book:
    book = BOOK.with_positions(quantities)
    return book.with_settings(**settings) if settings else book


# ---------------------------------------------------------------------------
# float64 references (from the spec)
# ---------------------------------------------------------------------------


def years_of(book: Book) -> dict[str, float | None]:
    return dict(zip(book.contract_ids, book.maturities()))


def k_star(kind: str, p: float, s0: float, vol: float, t: float) -> float:
    """The effective strike: YES iff S_T > K* (above) has probability p."""
    z = N.ppf(1 - p) if kind == "above" else N.ppf(p)
    return s0 * math.exp(vol * math.sqrt(t) * z - vol * vol * t / 2)


def digital(kind: str, s, k: float, vol: float, remaining: float):
    """Black's digital P(S_T > K | S) (above) or P(S_T <= K | S) (below), zero drift."""
    d = (np.log(np.asarray(s, np.float64) / k) - vol * vol * remaining / 2) / (
        vol * math.sqrt(remaining))
    return N.cdf(d) if kind == "above" else N.cdf(-d)


def spot_at(z, s0: float, vol: float, h: float):
    return s0 * np.exp(vol * math.sqrt(h) * np.asarray(z, np.float64) - vol * vol * h / 2)


def cut_of(c: Contract) -> tuple[float, float]:
    """(lo, hi] of the latent X = B(T)/sqrt(T) where the binary is YES."""
    return (N.ppf(1 - c.price), math.inf) if c.type == "above" else (-math.inf, N.ppf(c.price))


def bridge_mark(c: Contract, z, t: float, h: float):
    """P(YES | Z_u = z) of a binary expiring at t <= h (Brownian bridge)."""
    lo, hi = cut_of(c)
    mean, sd = math.sqrt(t / h) * np.asarray(z, np.float64), math.sqrt(1 - t / h)
    return N.cdf((hi - mean) / sd) - N.cdf((lo - mean) / sd)


def live_mark(book: Book, c: Contract, z, h: float):
    """The §6.3 mark at h of a binary expiring after h, as Black's digital at S_h."""
    u = book.underlying(c.underlying)
    t = years_of(book)[c.id]
    k = k_star(c.type, c.price, u.spot, u.vol, t)
    return digital(c.type, spot_at(z, u.spot, u.vol, h), k, u.vol, t - h)


def reference_losses(book: Book, z: dict[str, np.ndarray], mass: np.ndarray):
    """``(losses, masses)`` of the book's loss over h on the grid `z` (underlying id ->
    its Z_u at each grid point) with grid masses `mass`: every point split into the
    regions of the bridge latent of the (single) expiry inside the horizon, each with
    its exact conditional probability."""
    h = book.horizon_years
    qty = book.net_quantities()
    times = years_of(book)
    size = len(mass)
    base = np.zeros(size)
    bridged: dict[tuple[str, float], list[Contract]] = {}
    for c in book.contracts:
        q = qty[c.id]
        if q == 0:
            continue
        u = book.underlying(c.underlying)
        zu = z[u.id]
        if c.is_linear:
            f0 = u.spot if c.price is None else c.price
            assert c.type == "perp" or times[c.id] > h
            base += -q * (f0 / u.spot) * (spot_at(zu, u.spot, u.vol, h) - u.spot)
        elif times[c.id] > h:
            base += q * (c.price - live_mark(book, c, zu, h))
        else:
            bridged.setdefault((u.id, times[c.id]), []).append(c)
    if not bridged:
        return base, mass
    assert len(bridged) == 1, "one bridge expiry at most"
    ((uid, t), held), = bridged.items()
    cuts = sorted({x for c in held for x in cut_of(c) if math.isfinite(x)})
    edges = [-math.inf, *cuts, math.inf]
    mean, sd = math.sqrt(t / h) * z[uid], math.sqrt(1 - t / h)
    losses, masses = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        x = b - 1 if a == -math.inf else a + 1 if b == math.inf else (a + b) / 2
        loss = base.copy()
        for c in held:
            lo, hi = cut_of(c)
            loss += qty[c.id] * (c.price - float(lo < x <= hi))
        losses.append(loss)
        masses.append(mass * (N.cdf((b - mean) / sd) - N.cdf((a - mean) / sd)))
    return np.concatenate(losses), np.concatenate(masses)






def one_latent_es(book: Book, uid: str = "BTC") -> float:
    z, mass = z_grid(40001)
    return es_of(*reference_losses(book, {uid: z, "SPX": z}, mass), book.settings.confidence)


def assert_within_se(report: kj.MarginReport, want: float, k: float = 3.0):
    se = report.base_standard_error
    assert se < 0.05 * abs(want), (se, want)  # a meaningful comparison
    # (se = 0: every tail scenario has the same loss, e.g. one binary's worst case)
    assert abs(report.base - want) <= k * se + 1e-6 * abs(want), (report.base, want, se)


# ---------------------------------------------------------------------------
# 1. A single binary on an underlying: ES, marks, martingale
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("positions", [
    {"BTC>105K-Aug26": -20000},  # T > h: live mark (Black's digital at S_h)
    {"BTC<90K-Aug26": 20000},  # a long below
    {"BTC>101K-Jun02": -20000},  # T <= h: on the Brownian bridge
    {"BTC>105K-Aug26": -20000, "BTC>101K-Jun02": 8000},  # both on one path
], ids=["above-live", "below-live", "bridge", "live+bridge"])
def test_binary_es_against_quadrature(positions):
    book = book_with(positions)
    report = kj.portfolio_margin(book)
    assert_within_se(report, one_latent_es(book))
    assert report.clusters[book.hierarchy.cluster_names.index("BTC")].es == pytest.approx(
        report.base, rel=1e-6)


_outcomes_jit = eqx.filter_jit(kj.outcomes)
_marks_jit = eqx.filter_jit(contract_outcomes)
ROWS = 100_000  # latent rows given to the marks (one compiled program for both tests)


def test_marks_are_blacks_digital_with_the_effective_strike(x64):
    book = BOOK
    h = book.horizon_years
    arrays, layout = book_arrays(book, jnp.float64)
    z = np.linspace(-5.0, 5.0, ROWS)
    under = {u.id: int(arrays.under_latent[k]) for k, u in enumerate(book.underlyings)}
    latents = np.zeros((ROWS, arrays.event_cluster.shape[0]))
    latents[:, under["BTC"]] = z
    latents[:, under["SPX"]] = -0.7 * z
    marks = np.asarray(_marks_jit(jnp.asarray(latents), arrays))
    zs = {"BTC": z, "SPX": -0.7 * z}
    checked = 0
    for i, c in enumerate(book.contracts):
        u = book.underlying(c.underlying)
        if c.is_linear:  # value change per unit: (F0 / S0)(S_h - S0)
            f0 = u.spot if c.price is None else c.price
            want = f0 / u.spot * (spot_at(zs[u.id], u.spot, u.vol, h) - u.spot)
            np.testing.assert_allclose(marks[:, i], want, rtol=1e-9, atol=1e-9 * u.spot)
            checked += 1
        elif years_of(book)[c.id] > h:
            np.testing.assert_allclose(marks[:, i], live_mark(book, c, zs[u.id], h),
                                       rtol=1e-9, atol=1e-12, err_msg=c.id)
            checked += 1
    assert checked == 7


def test_bridge_mark_has_the_conditional_law(x64):
    """A binary expiring inside the horizon: given Z_u, its YES has probability
    P(X in cut | Z_u), X | Z_u ~ N(sqrt(T/h) Z_u, 1 - T/h) (mean over the bridge noise)."""
    book = BOOK
    h = book.horizon_years
    c = book.contract("BTC>101K-Jun02")
    t = years_of(book)[c.id]
    assert t < h
    arrays, _ = book_arrays(book, jnp.float64)
    i = book.contract_ids.index(c.id)
    col = int(arrays.under_latent[0])
    rng = np.random.default_rng(7)
    for z in (-1.5, 0.0, 0.8, 2.0):
        latents = rng.standard_normal((ROWS, arrays.event_cluster.shape[0]))
        latents[:, col] = z
        yes = np.asarray(_marks_jit(jnp.asarray(latents), arrays))[:, i]
        assert set(np.unique(yes)) <= {0.0, 1.0}
        want = float(bridge_mark(c, z, t, h))
        se = math.sqrt(want * (1 - want) / ROWS)
        assert abs(yes.mean() - want) <= 4 * se + 1e-12, (z, yes.mean(), want)


def test_marks_are_martingales():
    """The mean simulated mark of every binary is its price, a perp's or future's
    mean value change is 0 (within 4 standard errors); a horizon -> 0 marks every
    contract at its price (no loss)."""
    arrays, _ = book_arrays(BOOK)
    marks = np.asarray(_outcomes_jit(jax.random.key(3), arrays, SCENARIOS), np.float64)
    for i, c in enumerate(BOOK.contracts):
        col = marks[:, i]
        se = col.std() / math.sqrt(len(col))
        want = 0.0 if c.is_linear else c.price
        assert se > 0
        assert abs(col.mean() - want) <= 4 * se, (c.id, col.mean(), want, se)
    tiny = BOOK.with_settings(horizon_days=1e-8)
    arrays, _ = book_arrays(tiny)
    marks = np.asarray(_outcomes_jit(jax.random.key(3), arrays, SCENARIOS), np.float64)
    for i, c in enumerate(tiny.contracts):
        if c.is_linear:
            assert np.max(np.abs(marks[:, i])) < 1e-4 * tiny.underlying(c.underlying).spot
        else:
            np.testing.assert_allclose(marks[:, i], c.price, atol=2e-3, err_msg=c.id)
    report = kj.portfolio_margin(tiny.with_positions(BTC_ONLY))
    assert report.base < 1e-3 * report.full_collateral


# ---------------------------------------------------------------------------
# 2. A perp alone: the lognormal closed form; collateral; cap
# ---------------------------------------------------------------------------


def perp_es(q: float, s0: float, vol: float, h: float, alpha: float) -> float:
    """ES_alpha of L = -q (S_h - S0), S_h lognormal with zero drift (closed form)."""
    s = vol * math.sqrt(h)
    if q > 0:  # the tail is Z < Phi^-1(1 - alpha)
        return q * s0 * (1 - N.cdf(N.ppf(1 - alpha) - s) / (1 - alpha))
    return -q * s0 * (N.cdf(s - N.ppf(alpha)) / (1 - alpha) - 1)


@pytest.mark.parametrize("q", [1.5, -1.5])
def test_perp_es_closed_form(q):
    book = book_with({"BTC-PERP": q})
    u = book.underlying("BTC")
    report = kj.portfolio_margin(book)
    want = perp_es(q, u.spot, u.vol, book.horizon_years, book.settings.confidence)
    assert want == pytest.approx(one_latent_es(book), rel=1e-4)  # the quadrature agrees
    assert_within_se(report, want)
    assert report.full_collateral == pytest.approx(abs(q) * u.spot, rel=1e-6)
    assert report.linear_notional == pytest.approx(abs(q) * u.spot, rel=1e-12)
    d = report.to_dict()
    if q < 0:  # net short: no cap
        assert not report.capped and report.worst_case_loss is None
        assert d["capped"] is False and d["worst_case_loss"] is None
        assert report.binding in ("base", "floor")
    else:
        assert report.capped and report.worst_case_loss == pytest.approx(q * u.spot, rel=1e-6)
        assert d["capped"] is True


def test_cap_of_a_long_perp_with_binaries():
    """Cap = q S0 + each binary's v1 worst case at resolution, each (underlying,
    expiry) its own event: short above |q|(1 - p), long above q p."""
    book = book_with({"BTC-PERP": 2.0, "BTC>105K-Aug26": -1000, "BTC>101K-Jun02": 500})
    r = kj.portfolio_margin(book)
    want = 2.0 * 100_000 + 1000 * (1 - 0.38) + 500 * 0.30
    assert r.capped and r.worst_case_loss == pytest.approx(want, rel=1e-6)
    # A short future on another underlying makes the book net short there: no cap.
    short = book_with({"BTC-PERP": 2.0, "BTC>105K-Aug26": -1000, "SPX-FUT-Sep26": -1})
    r = kj.portfolio_margin(short)
    assert not r.capped and r.worst_case_loss is None and r.binding != "worst_case"
    assert r.full_collateral == pytest.approx(2.0 * 100_000 + 1000 * 0.62 + 6030, rel=1e-6)


def test_binding_is_never_worst_case_without_a_cap():
    """A short binary expiring inside the horizon loses its worst case |q|(1 - p) in
    30% of scenarios, so ES = the cap and the worst case binds; beside a tiny short
    perp there is no cap and the stressed loss binds."""
    binary = {"BTC>101K-Jun02": -20000}
    r = kj.portfolio_margin(book_with(binary))
    assert r.capped and r.worst_case_loss == pytest.approx(14000.0, rel=1e-6)
    assert r.binding == "worst_case" and r.margin == pytest.approx(14000.0, rel=1e-6)
    r_short = kj.portfolio_margin(book_with({**binary, "BTC-PERP": -1e-6}))
    assert not r_short.capped and r_short.worst_case_loss is None
    assert r_short.binding in ("base", "floor")
    assert r_short.margin == pytest.approx(max(r_short.base, r_short.floor)
                                           + sum(r_short.addons.values()), rel=1e-6)
    assert r_short.margin >= 14000.0 * (1 - 1e-6)


# ---------------------------------------------------------------------------
# 3. A ladder + perp book, and two underlyings (product grid)
# ---------------------------------------------------------------------------


def test_ladder_and_perp_against_quadrature():
    book = book_with(BTC_ONLY)
    report = kj.portfolio_margin(book)
    assert_within_se(report, one_latent_es(book))


def test_two_underlyings_against_product_grid():
    """BTC and SPX latents correlate a_BTC a_SPX R (0.9 * 0.9 * 0.35); the book's
    ES by a product grid over (Z_BTC, the independent part of Z_SPX), each
    cluster's by one-dimensional quadrature."""
    book = BOOK
    h = book.hierarchy
    names = list(h.cluster_names)
    load = dict(zip(names, h.loadings))
    rho = load["BTC"] * load["SPX"] * kj.correlation_of(h)[names.index("BTC"),
                                                            names.index("SPX")]
    assert rho == pytest.approx(0.81 * 0.35)
    z1, m1 = z_grid(1200, 7.0)
    e, m2 = z_grid(1200, 7.0)
    zb = np.repeat(z1, len(e))
    zs = rho * zb + math.sqrt(1 - rho * rho) * np.tile(e, len(z1))
    mass = np.outer(m1, m2).ravel()
    want = es_of(*reference_losses(book, {"BTC": zb, "SPX": zs}, mass),
                 book.settings.confidence)
    report = kj.portfolio_margin(book)
    assert_within_se(report, want)
    for name in ("BTC", "SPX"):
        cluster = next(c for c in report.clusters if c.name == name)
        part = book.with_positions({c.id: q for c, q in zip(
            book.contracts, book.net_quantities().values()) if c.cluster == name and q})
        ref = one_latent_es(part)
        assert abs(cluster.es - ref) <= 3 * cluster.standard_error, (name, cluster.es, ref)
    # The correlation matters: independent latents would give a different ES.
    indep = es_of(*reference_losses(book, {"BTC": zb, "SPX": np.tile(e, len(z1))}, mass),
                  book.settings.confidence)
    assert abs(indep - want) > 3 * report.base_standard_error


# ---------------------------------------------------------------------------
# 4-6. Net delta, PnL curve, effective strike (host-side figures)
# ---------------------------------------------------------------------------


def pv(book: Book, uid: str, s: float) -> float:
    """Value at t = 0 of the positions on `uid` at spot `s` (K* fixed): binaries'
    Black digitals, linear positions q F0/S0 (s - S0)."""
    u = book.underlying(uid)
    qty, times = book.net_quantities(), years_of(book)
    total = 0.0
    for c in book.contracts:
        if c.underlying != uid or qty[c.id] == 0:
            continue
        if c.is_linear:
            f0 = u.spot if c.price is None else c.price
            total += qty[c.id] * f0 / u.spot * (s - u.spot)
        else:
            t = times[c.id]
            k = k_star(c.type, c.price, u.spot, u.vol, t)
            total += qty[c.id] * float(digital(c.type, s, k, u.vol, t))
    return total


@pytest.mark.parametrize("positions", [None, {"BTC>101K-Jun02": 5000, "BTC<90K-Aug26": 300,
                                               "SPX-FUT-Sep26": 2, "BTC-PERP": -0.25}])
def test_net_delta_against_a_bump_of_spot(positions):
    book = BOOK if positions is None else book_with(positions)
    reports = {u.id: u for u in kj.underlying_reports(book)}
    assert set(reports) == {"BTC", "SPX"}
    for u in book.underlyings:
        r = reports[u.id]
        eps = 1e-5 * u.spot
        want = (pv(book, u.id, u.spot + eps) - pv(book, u.id, u.spot - eps)) / (2 * eps)
        assert r.net_delta == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert r.hedge_quantity == -r.net_delta
        assert r.hedge_lots == pytest.approx(r.hedge_quantity / u.lot_size, rel=1e-12)
        assert r.hedge_lots_rounded == round(r.hedge_quantity / u.lot_size)
        assert abs(r.hedge_lots_rounded - r.hedge_lots) <= 0.5
    if positions is None:  # the example: long BTC delta, hedged by selling ~1,601 lots
        assert reports["BTC"].hedge_lots_rounded == round(-reports["BTC"].net_delta / 0.001)
        assert reports["BTC"].net_delta > 0 and reports["SPX"].net_delta > 0


def pnl_reference(book: Book, uid: str, s: np.ndarray, h: float) -> np.ndarray:
    """§6.7: sum over binaries on u of q (m_h(S) - p) + e_u (S - S0), the mark at
    Z_u = (ln(S/S0) + sigma^2 h/2) / (sigma sqrt h); h = 0: Black's digital now."""
    u = book.underlying(uid)
    qty, times = book.net_quantities(), years_of(book)
    out = np.zeros(len(s))
    for c in book.contracts:
        q = qty[c.id]
        if c.underlying != uid or q == 0:
            continue
        if c.is_linear:
            f0 = u.spot if c.price is None else c.price
            out += q * f0 / u.spot * (s - u.spot)
            continue
        t = times[c.id]
        k = k_star(c.type, c.price, u.spot, u.vol, t)
        if h == 0:
            mark = digital(c.type, s, k, u.vol, t)
        elif t > h:
            mark = digital(c.type, s, k, u.vol, t - h)  # at S_h = s
        else:
            z = (np.log(s / u.spot) + u.vol ** 2 * h / 2) / (u.vol * math.sqrt(h))
            mark = bridge_mark(c, z, t, h)
        out += q * (mark - c.price)
    return out


def test_pnl_curve_against_revaluation():
    book = BOOK.with_settings(pnl_range=(0.7, 1.3), pnl_points=13)
    h = book.horizon_years
    for r in kj.underlying_reports(book):
        u = book.underlying(r.id)
        s = np.asarray(r.pnl_spot)
        np.testing.assert_allclose(s, np.linspace(0.7 * u.spot, 1.3 * u.spot, 13), rtol=1e-12)
        want = pnl_reference(book, r.id, s, h)
        np.testing.assert_allclose(r.pnl, want, rtol=1e-7, atol=1e-6 * np.max(np.abs(want)))
        # Binaries' marks drift between 0 and h: pnl at S0 is not 0.
        assert abs(r.pnl[6]) > 1.0
        assert r.pnl[6] == pytest.approx(want[6], rel=1e-7)
    # Linear positions only: nothing drifts, pnl(S0) = 0, the curve is e_u (S - S0).
    lin = kj.underlying_reports(book_with({"BTC-PERP": 1.5, "SPX-FUT-Sep26": -5},
                                          pnl_range=(0.7, 1.3), pnl_points=13))
    for r in lin:
        assert r.pnl_spot[6] == pytest.approx(r.spot, rel=1e-12)
        assert abs(r.pnl[6]) <= 1e-9 * abs(r.linear_exposure) * r.spot
        assert r.pnl[0] == pytest.approx(r.linear_exposure * (r.pnl_spot[0] - r.spot))
    assert lin[1].linear_exposure == pytest.approx(-5 * 6030 / 6000)


def test_pnl_curve_without_a_horizon_is_instant_revaluation():
    """Without a horizon, h = 0: instant revaluation with K* (Black's digital with
    the time to expiry T), so pnl(S0) = 0 exactly."""
    binaries = {c.id: q for c, q in zip(BOOK.contracts, BOOK.net_quantities().values())
                if not c.is_linear and q}
    res = book_with(binaries, horizon_days=None, pnl_range=(0.7, 1.3), pnl_points=13)
    for r in kj.underlying_reports(res):
        want = pnl_reference(res, r.id, np.asarray(r.pnl_spot), 0.0)
        np.testing.assert_allclose(r.pnl, want, rtol=1e-7, atol=1e-6 * np.max(np.abs(want)))
        assert abs(r.pnl[6]) < 1e-9 * max(abs(x) for x in r.pnl)


def test_effective_strike_and_model_probability():
    contracts = {c.id: c for c in kj.contract_horizon(BOOK)}
    times = years_of(BOOK)
    seen = 0
    for c in BOOK.contracts:
        if c.is_linear:
            assert contracts[c.id].effective_strike is None
            continue
        u = BOOK.underlying(c.underlying)
        got = contracts[c.id]
        t = times[c.id]
        # YES iff S_T > K* (below: S_T <= K*) has model probability = price.
        assert float(digital(c.type, u.spot, got.effective_strike, u.vol, t)) == pytest.approx(
            c.price, abs=1e-12)
        assert got.effective_strike == pytest.approx(k_star(c.type, c.price, u.spot, u.vol, t),
                                                     rel=1e-12)
        d2 = (math.log(u.spot / c.strike) - u.vol ** 2 * t / 2) / (u.vol * math.sqrt(t))
        want = N.cdf(d2) if c.type == "above" else N.cdf(-d2)
        assert got.model_probability == pytest.approx(want, abs=1e-12)
        assert got.implied_probability == c.price
        seen += 1
    assert seen == 6


# ---------------------------------------------------------------------------
# 7. v1 books unchanged
# ---------------------------------------------------------------------------


def test_v1_book_has_no_underlying_path():
    book = kj.load_book(REFERENCE).with_settings(scenarios=8192)
    arrays, _ = book_arrays(book)
    assert not arrays.dynamic
    assert book.model_horizon_years is None
    for leaf in (arrays.spot, arrays.vol, arrays.under_latent, arrays.under_hnoise):
        assert leaf.shape == (0,)
    assert arrays.group_time.shape == (0,) and not bool(np.any(arrays.on_path))
    again = kj.parse_book(kj.book_to_dict(book))
    a, b = kj.portfolio_margin(book), kj.portfolio_margin(again)
    assert a.to_dict() == b.to_dict()
    assert a.underlyings == () and a.capped and a.linear_notional == 0.0


@pytest.mark.slow
def test_v1_clusters_unchanged_beside_an_underlying():
    """The reference book (its parlays left out) plus a binary
    on a new underlying, in resolution mode (the marks at the book's latest date are
    indicators): every cluster's ES and VaR but the underlying's are v1's, draw for
    draw (the plain sampler: the default's proposal and block depend on the book)."""
    ref = kj.load_book(REFERENCE).with_settings(scenarios=8192, sampler="plain")
    keep = tuple(c for c in ref.contracts if c.type != "parlay")
    ids = {c.id for c in keep}
    v1 = dataclasses.replace(ref, contracts=keep,
                             positions=tuple(p for p in ref.positions if p.contract in ids))
    u = kj.Underlying("SOLU", "SOL", 150.0, 0.8)
    extra = Contract("SOL>160", None, "above", 0.4, underlying="SOLU", strike=160.0,
                     expiry="2026-09-30")
    book = dataclasses.replace(v1, contracts=(*v1.contracts, extra),
                               positions=(*v1.positions, Position("SOL>160", -5000.0)),
                               underlyings=(u,))
    assert book.model_horizon_years is not None and book_arrays(book)[0].dynamic
    a, b = kj.portfolio_margin(v1), kj.portfolio_margin(book)
    for ca, cb in zip(a.clusters, b.clusters):
        if ca.name != "SOL":
            assert cb.es == pytest.approx(ca.es, rel=1e-6, abs=1e-6), ca.name
            assert cb.var == pytest.approx(ca.var, rel=1e-6, abs=1e-6), ca.name
    sol = next(c for c in b.clusters if c.name == "SOL")
    assert sol.es > next(c for c in a.clusters if c.name == "SOL").es


RESOLUTION = dataclasses.replace(BOOK.settings, horizon_days=None)


def test_undated_plain_contract_keeps_v1_law_beside_an_underlying():
    """A long game (q 1000 at 0.4) has ES_99 = 400 exactly (it loses 400 w.p. 0.6)."""
    game = Contract("G", "Sports", "binary", 0.4)
    book = dataclasses.replace(BOOK, contracts=(*BOOK.contracts, game), settings=RESOLUTION,
                               positions=(Position("G", 1000.0),
                                          Position("BTC>105K-Aug26", -100.0)))
    report = kj.portfolio_margin(book)
    btc = next(c for c in report.clusters if c.name == "BTC")
    assert btc.es == pytest.approx(100 * (1 - 0.38), rel=1e-6)  # resolution: the indicator
    sports = next(c for c in report.clusters if c.name == "Sports")
    assert sports.es == pytest.approx(400.0, rel=1e-6)


def test_parlay_beside_an_underlying_in_resolution_mode():
    """Two independent games (resolution: indicators) in a short parlay (q -1000 at
    0.2, YES w.p. 0.4 * 0.5): ES_99 = 800 exactly."""
    g1 = Contract("G1", "Sports", "binary", 0.4, resolves="2026-06-10")
    g2 = Contract("G2", "Sports", "binary", 0.5, resolves="2026-06-11")
    par = Contract("P", "Parlays", "parlay", 0.2, legs=("G1", "G2"))
    book = dataclasses.replace(BOOK, contracts=(*BOOK.contracts, g1, g2, par),
                               settings=RESOLUTION,
                               positions=(Position("P", -1000.0),
                                          Position("BTC>105K-Aug26", -100.0)))
    report = kj.portfolio_margin(book)
    parlays = next(c for c in report.clusters if c.name == "Parlays")
    assert parlays.es == pytest.approx(800.0, rel=1e-6)


# ---------------------------------------------------------------------------
# 8. Input errors (SPEC-horizon.md §6.10)
# ---------------------------------------------------------------------------

BTC = kj.Underlying("BTC", "BTC", 100_000.0, 0.6)
PERP = Contract("PERP", None, "perp", None, underlying="BTC")
UP = Contract("UP", None, "above", 0.4, underlying="BTC", strike=105_000.0, expiry_in=0.25)
H2 = Settings(horizon_days=2)


def make(contracts=(UP,), positions=(), underlyings=(BTC,), settings=H2) -> Book:
    return Book(tuple(contracts), tuple(positions), settings=settings,
                underlyings=tuple(underlyings))


def raises(field: str, *words: str):
    """Checks a BookError whose field is `field` and whose message names `words`."""
    class _Check:
        def __enter__(self):
            self.cm = pytest.raises(kj.BookError)
            self.info = self.cm.__enter__()
            return self

        def __exit__(self, *exc):
            out = self.cm.__exit__(*exc)
            err = self.info.value
            assert err.field == field, (err.field, str(err))
            for w in words:
                assert w in str(err), (w, str(err))
            return out
    return _Check()


U = kj.Underlying
ERRORS = [
    # underlyings
    ("dup-id", lambda: make(underlyings=(BTC, U("BTC", "SPX", 1.0, 0.2))),
     "underlyings[1].id", ("'BTC'", "duplicate")),
    ("unknown-cluster", lambda: make((), underlyings=(U("X", "Nowhere", 1.0, 0.2),)),
     "underlyings[0] (id 'X').cluster", ("'Nowhere'",)),
    ("spot-zero", lambda: make((), underlyings=(U("X", "BTC", 0.0, 0.2),)),
     "underlyings[0] (id 'X').spot", ("0.0",)),
    ("spot-negative", lambda: make((), underlyings=(U("X", "BTC", -5.0, 0.2),)),
     "underlyings[0] (id 'X').spot", ("-5.0",)),
    ("spot-missing", lambda: make((), underlyings=(U("X", "BTC", None, 0.2),)),
     "underlyings[0] (id 'X').spot", ("None",)),
    ("vol-zero", lambda: make((), underlyings=(U("X", "BTC", 1.0, 0.0),)),
     "underlyings[0] (id 'X').vol", ("0.0",)),
    ("vol-missing", lambda: make((), underlyings=(U("X", "BTC", 1.0, None),)),
     "underlyings[0] (id 'X').vol", ("None",)),
    ("vol-over-5", lambda: make((), underlyings=(U("X", "BTC", 1.0, 5.5),)),
     "underlyings[0] (id 'X').vol", ("5.5",)),
    ("lot-size", lambda: make((), underlyings=(U("X", "BTC", 1.0, 0.2, 0.0),)),
     "underlyings[0] (id 'X').lot_size", ("0.0",)),
    ("lot-size-negative", lambda: make((), underlyings=(U("X", "BTC", 1.0, 0.2, -1.0),)),
     "underlyings[0] (id 'X').lot_size", ("-1.0",)),
    # positive, but so small that deltas and lots leave float64 (they overflowed)
    ("spot-tiny", lambda: make((), underlyings=(U("X", "BTC", 1e-310, 0.2),)),
     "underlyings[0] (id 'X').spot", ("1e-310", "[1e-08, 1e+12]")),
    ("vol-tiny", lambda: make((), underlyings=(U("X", "BTC", 1.0, 1e-310),)),
     "underlyings[0] (id 'X').vol", ("1e-310", "[0.0001, 5]")),
    ("lot-size-tiny", lambda: make((), underlyings=(U("X", "BTC", 1.0, 0.2, 1e-310),)),
     "underlyings[0] (id 'X').lot_size", ("1e-310", "[1e-08, 1e+12]")),
    # keys of the wrong kind
    ("underlying-on-binary",
     lambda: make((Contract("G", "Sports", "binary", 0.5, underlying="BTC"),)),
     "contracts[0] (id 'G').underlying", ("'BTC'", "'binary'")),
    ("underlying-on-outcome",
     lambda: make((Contract("O", "Election", "outcome", 0.5, event="E", outcome="a",
                            underlying="BTC"),)),
     "contracts[0] (id 'O').underlying", ("'BTC'", "'outcome'")),
    ("strike-on-plain-above",
     lambda: make((Contract("A", "BTC", "above", 0.5, event="E", threshold=1.0,
                            strike=2.0),)),
     "contracts[0] (id 'A').strike", ("2.0",)),
    ("expiry-on-plain-binary",
     lambda: make((Contract("G", "Sports", "binary", 0.5, expiry_in=0.1),)),
     "contracts[0] (id 'G').expiry_in", ("0.1",)),
    ("event-on-underlying",
     lambda: make((dataclasses.replace(UP, event="E"),)),
     "contracts[0] (id 'UP').event", ("'E'",)),
    ("threshold-on-underlying",
     lambda: make((dataclasses.replace(UP, threshold=3.0),)),
     "contracts[0] (id 'UP').threshold", ("3.0",)),
    ("resolves-on-underlying",
     lambda: make((dataclasses.replace(UP, resolves_in=0.1),)),
     "contracts[0] (id 'UP').resolves_in", ("0.1",)),
    ("cluster-contradicts",
     lambda: make((dataclasses.replace(UP, cluster="SPX"),)),
     "contracts[0] (id 'UP').cluster", ("'SPX'", "'BTC'")),
    # linear instruments
    ("perp-unknown-underlying",
     lambda: make((Contract("P", None, "perp", None, underlying="ETHX"),)),
     "contracts[0] (id 'P').underlying", ("'ETHX'",)),
    ("perp-without-underlying", lambda: make((Contract("P", None, "perp", None),)),
     "contracts[0] (id 'P').underlying", ("missing",)),
    ("future-without-underlying",
     lambda: make((Contract("F", None, "future", 100.0, expiry_in=0.5),)),
     "contracts[0] (id 'F').underlying", ("missing",)),
    ("linear-without-horizon",
     lambda: make((PERP,), (Position("PERP", 1.0),), settings=Settings()),
     "positions[0] (contract 'PERP')", ("horizon",)),
    ("future-without-expiry",
     lambda: make((Contract("F", None, "future", None, underlying="BTC"),)),
     "contracts[0] (id 'F').expiry", ("missing",)),
    ("future-price-zero",
     lambda: make((Contract("F", None, "future", 0.0, underlying="BTC", expiry_in=0.5),)),
     "contracts[0] (id 'F').price", ("0.0",)),
    ("future-price-negative",
     lambda: make((Contract("F", None, "future", -3.0, underlying="BTC", expiry_in=0.5),)),
     "contracts[0] (id 'F').price", ("-3.0",)),
    ("price-on-perp", lambda: make((dataclasses.replace(PERP, price=100.0),)),
     "contracts[0] (id 'PERP').price", ("100.0",)),
    # binaries on an underlying
    ("binary-without-strike", lambda: make((dataclasses.replace(UP, strike=None),)),
     "contracts[0] (id 'UP').strike", ("missing",)),
    ("binary-strike-zero", lambda: make((dataclasses.replace(UP, strike=0.0),)),
     "contracts[0] (id 'UP').strike", ("0.0",)),
    ("binary-strike-negative", lambda: make((dataclasses.replace(UP, strike=-1.0),)),
     "contracts[0] (id 'UP').strike", ("-1.0",)),
    ("binary-without-expiry", lambda: make((dataclasses.replace(UP, expiry_in=None),)),
     "contracts[0] (id 'UP').expiry", ("missing",)),
    ("ladder-violation",
     lambda: make((UP, Contract("UP2", None, "above", 0.5, underlying="BTC",
                                strike=110_000.0, expiry_in=0.25))),
     "contracts (event 'BTC@0.25y')", ("'UP'", "'UP2'", "ladder")),
    ("parlay-leg-on-underlying",
     lambda: make((UP, Contract("G", "Sports", "binary", 0.5),
                   Contract("P", "Parlays", "parlay", 0.2, legs=("G", "UP")))),
     "contracts[2] (id 'P').legs[1]", ("'UP'",)),
    ("parlay-leg-on-perp",
     lambda: make((PERP, Contract("G", "Sports", "binary", 0.5),
                   Contract("P", "Parlays", "parlay", 0.2, legs=("G", "PERP")))),
     "contracts[2] (id 'P').legs[1]", ("'PERP'",)),
    # PnL curve settings
    ("pnl-range-lo-zero", lambda: Settings(pnl_range=(0.0, 1.5)), "model.pnl_range", ("0.0",)),
    ("pnl-range-reversed", lambda: Settings(pnl_range=(1.5, 0.5)), "model.pnl_range",
     ("1.5", "0.5")),
    ("pnl-range-equal", lambda: Settings(pnl_range=(1.0, 1.0)), "model.pnl_range", ("1.0",)),
    ("pnl-range-huge", lambda: Settings(pnl_range=(0.5, 1e308)), "model.pnl_range",
     ("1e+308", "hi <= 1000")),
    ("pnl-points-1", lambda: Settings(pnl_points=1), "model.pnl_points", ("1",)),
    ("pnl-points-10002", lambda: Settings(pnl_points=10002), "model.pnl_points", ("10002",)),
]


@pytest.mark.parametrize("build, field, words", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_input_errors(build, field, words):
    with raises(field, *words):
        build()


def test_valid_edges_are_accepted():
    """The limits themselves are valid: vol 5, pnl_points 2 and 10001, and a ladder
    on one (underlying, expiry) that nests."""
    make((), underlyings=(U("X", "BTC", 1.0, 5.0, 0.5),))
    make((), underlyings=(U("X", "BTC", 1e-8, 1e-4, 1e-8),))
    Settings(pnl_range=(0.01, 1000.0), pnl_points=2)
    Settings(pnl_points=10001)
    make((UP, Contract("UP2", None, "above", 0.3, underlying="BTC", strike=110_000.0,
                       expiry_in=0.25), dataclasses.replace(UP, id="UP3", expiry_in=0.5,
                                                            price=0.9)))


def test_input_errors_from_a_book_file():
    """Keys missing in ``[[underlyings]]`` tables and plain keys on an underlying
    contract, through the file parser."""
    head = '[model]\nhorizon_days = 2\n[[underlyings]]\nid = "BTC"\ncluster = "BTC"\n'
    with raises("underlyings[0].vol", "missing"):
        kj.loads_book(head + "spot = 100000\n")
    with raises("underlyings[0].spot", "missing"):
        kj.loads_book(head + "vol = 0.5\n")
    good = head + "spot = 100000\nvol = 0.6\n"
    contract = ('[[contracts]]\nid = "UP"\nunderlying = "BTC"\ntype = "above"\n'
                'strike = 105000\nexpiry_in = 0.25\nprice = 0.4\n')
    kj.loads_book(good + contract)
    with raises("contracts[0] (id 'UP').event", "'E'"):
        kj.loads_book(good + contract + 'event = "E"\n')
    with raises("contracts[0] (id 'UP').resolves", "2026-09-01"):
        kj.loads_book(good.replace("[model]\n", '[model]\nas_of = "2026-06-01"\n')
                      + contract + 'resolves = "2026-09-01"\n')


# ---------------------------------------------------------------------------
# 9. Hedging with the perp
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_optimise_hedge_with_the_perp_against_a_grid():
    book = book_with(BTC_ONLY, scenarios=8192)
    result = kj.optimise_hedge(book, ["BTC-PERP"], lot=None, steps=400)
    assert result.converged and result.margin_after < 0.5 * result.margin_before
    x = result.continuous_quantities["BTC-PERP"]
    # The margin over a grid of perp positions, on the same scenarios.
    step = 0.05
    grid = np.arange(0.0, 2.0 + step / 2, step)
    margins = [kj.portfolio_margin(book.with_positions({**BTC_ONLY, "BTC-PERP": q})).margin
               for q in grid]
    best = grid[int(np.argmin(margins))]
    assert grid[0] < best < grid[-1]  # an interior minimum
    assert abs((1.5 + x) - best) <= step + 1e-9, (1.5 + x, best)
    assert result.margin_after <= min(margins) * (1 + 1e-3)


@pytest.mark.parametrize("q", [1000.0, -1000.0])
def test_a_perp_alone_on_its_underlying_has_the_lognormal_shortfall(q):
    """No dated contract on the underlying, so no point on its Brownian bridge:
    the layout had no group to gather from and the margin call crashed. Over
    h = 10 days the perp's loss is q S0 (1 - exp(s Z - s^2 / 2)), s = sigma sqrt(h):
    long, ES = q S0 (1 - Phi(-z - s) / (1 - alpha)); short, ES = |q| S0
    (Phi(s - z) / (1 - alpha) - 1), z = Phi^-1(alpha)."""
    book = make((PERP,), (Position("PERP", q),),
                settings=Settings(horizon_days=10, scenarios=16384))
    r = kj.portfolio_margin(book)
    s, a = 0.6 * math.sqrt(10 / 365), 0.99
    z = stats.norm.ppf(a)
    exact = (q * 1e5 * (1 - stats.norm.cdf(-z - s) / (1 - a)) if q > 0
             else -q * 1e5 * (stats.norm.cdf(s - z) / (1 - a) - 1))
    assert abs(r.base - exact) < 4 * r.base_standard_error
    assert r.base_standard_error < 0.01 * exact


def test_a_future_settling_on_the_bridge_at_a_one_year_horizon():
    """Three futures on one underlying give three bridge points, padded to four
    groups. At h = 365 days = 1 year the padding group (time 1) counted as the
    last expiry before h and W(h) lost its last increment: the future expiring
    at T = 0.5 then had Var B(T) = 0.4375 instead of T. Its loss is q S0 (1 -
    exp(s Z - s^2 / 2)) with s = sigma sqrt(T)."""
    futures = [Contract(f"F{t}", None, "future", 1e5, underlying="BTC", expiry_in=t)
               for t in (0.25, 0.5, 0.75)]
    book = make(futures, (Position("F0.5", 1000.0),),
                settings=Settings(horizon_days=365, scenarios=16384))
    r = kj.portfolio_margin(book)
    s, a = 0.6 * math.sqrt(0.5), 0.99
    exact = 1000 * 1e5 * (1 - stats.norm.cdf(-stats.norm.ppf(a) - s) / (1 - a))
    assert abs(r.base - exact) < 4 * r.base_standard_error
    assert r.base_standard_error < 0.01 * exact


def test_the_cap_nets_linear_positions_only_where_they_settle_together():
    """Long a perp (valued at S_h) and short a future at F0 = S0: expiring after
    the 10-day horizon it is valued at S_h too, the two cancel and the cap is 0;
    expiring in 2 days it settles at S_T on the bridge, the loss S_T - S_h is
    unbounded and there is no cap (netting per underlying alone capped it at 0,
    with an ES of about $21,500 beyond it). Both long: the cap is 2 S0."""
    settings = Settings(horizon_days=10, scenarios=4096)

    def cap(expiry_in, q_future):
        future = Contract("F", None, "future", 1e5, underlying="BTC", expiry_in=expiry_in)
        book = make((PERP, future), (Position("PERP", 1.0), Position("F", q_future)),
                    settings=settings)
        return kj.portfolio_margin(book)

    assert cap(0.5, -1.0).worst_case_loss == 0.0  # both at S_h: no loss at all
    calendar = cap(2 / 365, -1.0)
    assert calendar.worst_case_loss is None and not calendar.capped
    assert calendar.base > 20_000 and calendar.binding == "base"
    assert cap(2 / 365, 1.0).worst_case_loss == pytest.approx(2e5)

"""The liquidation horizon for v1 contract types (SPEC-horizon.md §6.0–6.2, 6.5–6.6,
6.10, 6.11).

Every reference is float64 NumPy/SciPy written from the spec alone: the model
probability of a parlay is a multivariate-normal rectangle under the terminal law
of §6.2 item 4 (Cov(X_e, X_f) = a_c a_d R_cd kappa_ef); the ES of a one-event book
is a fine grid over its one revealed latent, of a two-game book a product grid
over two; parlay marks given the revealed state are one-dimensional quadratures
of the bivariate normal (or nested simulation of the post-horizon draws). The
Monte-Carlo comparisons allow 3-4 standard errors at a fixed seed, so the tests
are deterministic.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    above,
    below,
    binary,
    es_of,
    exact_es,
    make_book,
    outcome,
    parlay,
    z_grid,
)
from scipy import integrate, stats

import kinetic_jax as kj
from kinetic_jax import Book, Cluster, Hierarchy, Node, Settings
from kinetic_jax._arrays import book_arrays
from kinetic_jax._marks import horizon_mark_rows
from kinetic_jax._simulation import atom_cuts_jit, outcomes

AS_OF = "2026-06-01"
REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
SIGMAS = 4.0


def day(n: int) -> str:
    """The ISO date `n` days after AS_OF."""
    return (datetime.date.fromisoformat(AS_OF) + datetime.timedelta(days=n)).isoformat()


def figures(r: kj.MarginReport) -> dict:
    """Every dollar figure of a margin report (and binding), by name."""
    out = {"margin": r.margin, "base": r.base, "floor": r.floor, "var": r.var,
           "base_se": r.base_standard_error, "floor_se": r.floor_standard_error,
           "worst_case": r.worst_case_loss, "full_collateral": r.full_collateral,
           "diagnostic": r.aggregate_diagnostic, "binding": r.binding}
    out.update({f"addon {k}": v for k, v in r.addons.items()})
    for c in r.clusters:
        out.update({f"es {c.name}": c.es, f"se {c.name}": c.standard_error,
                    f"var {c.name}": c.var})
    return out


def assert_same_figures(got: dict, want: dict, rel: float = 1e-6):
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, str):
            assert got[k] == v, k
        else:
            assert got[k] == pytest.approx(v, rel=rel, abs=1e-6), k






def mark(z, tau: float, lo: float, hi: float):
    """P(lo < X <= hi | Z = z), X = sqrt(tau) Z + sqrt(1 - tau) W (§6.2), float64."""
    if tau >= 1:
        return ((z > lo) & (z <= hi)).astype(np.float64)
    s, r = math.sqrt(tau), math.sqrt(1 - tau)
    return stats.norm.cdf((hi - s * z) / r) - stats.norm.cdf((lo - s * z) / r)


def cut_interval(c: kj.Contract, p: float, before: float = 0.0) -> tuple[float, float]:
    """SPEC.md §2.2: a contract's YES interval of its event latent, from its
    probability (outcomes: `before` is the probability listed before it)."""
    if c.type in ("above", "binary"):
        return stats.norm.ppf(1 - p), math.inf
    if c.type == "below":
        return -math.inf, stats.norm.ppf(p)
    return stats.norm.ppf(before), stats.norm.ppf(min(1.0, before + p))


def terminal_parlay_probability(book: Book, pid: str) -> float:
    """The model's P(parlay YES) under the terminal law of §6.2 item 4: the legs'
    event latents are jointly normal with Cov(X_e, X_f) = a_c a_d R_cd kappa_ef,
    kappa_ef = sqrt(tau_e tau_f) + sqrt((1 - tau_e)(1 - tau_f)); legs on one event
    intersect their intervals. (For ladder / binary legs; not outcomes.)"""
    h = book.hierarchy
    names = list(h.cluster_names)
    corr = kj.correlation_of(h)
    load = dict(zip(names, h.loadings))
    taus = dict(zip(book.contract_ids, book.taus()))
    events: dict[str, list] = {}
    for leg in book.contract(pid).legs:
        c = book.contract(leg)
        lo, hi = cut_interval(c, c.price)
        key = c.event_key
        if key in events:
            events[key][0] = max(events[key][0], lo)
            events[key][1] = min(events[key][1], hi)
        else:
            events[key] = [lo, hi, c.cluster, taus[leg]]
    rows = list(events.values())
    n = len(rows)
    cov = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            (_, _, ci, ti), (_, _, cj, tj) = rows[i], rows[j]
            kappa = math.sqrt(ti * tj) + math.sqrt((1 - ti) * (1 - tj))
            cov[i, j] = cov[j, i] = (load[ci] * load[cj] * kappa
                                     * (1.0 if ci == cj else corr[names.index(ci),
                                                                  names.index(cj)]))
    lo = np.array([max(r[0], -12.0) for r in rows])
    hi = np.array([min(r[1], 12.0) for r in rows])
    mvn = stats.multivariate_normal(np.zeros(n), cov)
    return float(mvn.cdf(hi, lower_limit=lo))


# --- 1. the v1 limit ---------------------------------------------------------------


def _undated(book: Book) -> Book:
    contracts = tuple(dataclasses.replace(c, resolves=None, resolves_in=None)
                      for c in book.contracts)
    return dataclasses.replace(book, contracts=contracts,
                               settings=dataclasses.replace(book.settings, as_of=None))


@pytest.mark.slow
def test_v1_limit_reference_book():
    """The reference book with its 2028 election moved to exactly 365 days out: a
    365-day horizon covers every date (one exactly at the horizon), tau = 1 for
    every contract, and every figure is v1's. Without a horizon, the dates change
    nothing at all (bit for bit). The plain sampler: a horizon book has no exact
    block (its marks are not 0/1), so only plain draws are the same in both."""
    book = kj.load_book(REFERENCE).with_settings(scenarios=8192, sampler="plain")
    v1 = kj.portfolio_margin(book)
    assert figures(kj.portfolio_margin(_undated(book))) == figures(v1)
    assert v1.horizon_days is None and v1.as_of == AS_OF
    moved = dataclasses.replace(book, contracts=tuple(
        dataclasses.replace(c, resolves=day(365)) if c.resolves == "2028-11-07" else c
        for c in book.contracts))
    assert figures(kj.portfolio_margin(moved)) == figures(v1)
    at = kj.portfolio_margin(moved.with_settings(horizon_days=365))
    assert at.horizon_days == 365 and at.horizon_covers_all
    assert all(c.tau == 1.0 and c.resolved_by_horizon for c in at.contracts)
    assert_same_figures(figures(at), figures(v1))


def _outcome_parlay_book(**settings) -> Book:
    """Games, a BTC ladder, an ETH binary, an outcome event with an unlisted
    remainder and parlays (sports, cross-asset with shared factors, two legs on
    one event), dated 1..30 days out."""
    contracts = [
        binary("G0", 0.62, resolves=day(1)), binary("G1", 0.55, resolves=day(3)),
        binary("G2", 0.48, resolves=day(30)),
        above("BTC-100K", "BTC-M", 100_000, 0.55, "BTC", resolves=day(30)),
        above("BTC-110K", "BTC-M", 110_000, 0.33, "BTC", resolves=day(30)),
        binary("ETH-UP", 0.5, "ETH", resolves=day(14)),
        outcome("V-A", "VOTE", "a", 0.5, "SPX", resolves=day(20)),
        outcome("V-B", "VOTE", "b", 0.3, "SPX", resolves=day(20)),
        parlay("P01", ["G0", "G1"], 0.36),
        parlay("PBE", ["BTC-110K", "ETH-UP"], 0.2),
        parlay("PBB", ["BTC-100K", "BTC-110K", "G2"], 0.15),
        parlay("PVG", ["V-A", "G1"], 0.3),
    ]
    qty = {"G0": 400, "G2": -300, "BTC-110K": 500, "ETH-UP": -700, "V-A": 600, "V-B": -900,
           "P01": -1000, "PBE": 1500, "PBB": -800, "PVG": 700}
    return make_book(contracts, qty, as_of=AS_OF, **settings)


def test_v1_limit_outcomes_and_parlays():
    """A horizon at the latest date (30 days: G2 and the ladder resolve exactly at
    it) or beyond gives v1's figures on a book with outcomes and parlays."""
    book = _outcome_parlay_book(scenarios=8192)
    v1 = figures(kj.portfolio_margin(book))
    assert figures(kj.portfolio_margin(_undated(book))) == v1
    for h in (30, 365):
        r = kj.portfolio_margin(book.with_settings(horizon_days=h))
        assert r.horizon_covers_all
        assert_same_figures(figures(r), v1)


# --- 2. martingale marks -----------------------------------------------------------


def _martingale_book() -> Book:
    """A ladder (7 days), a one-year ETH event, a SOL binary resolving before the
    5-day horizon, a loaded outcome event, games and parlays whose legs are
    conditionally independent given the revealed state (no quadrature)."""
    contracts = [
        above("BTC-100K", "BTC-W", 100_000, 0.55, "BTC", resolves=day(7)),
        above("BTC-110K", "BTC-W", 110_000, 0.30, "BTC", resolves=day(7)),
        below("BTC-90K", "BTC-W", 90_000, 0.20, "BTC", resolves=day(7)),
        above("ETH-5K", "ETH-Y", 5_000, 0.40, "ETH", resolves=day(365)),
        binary("SOL-D", 0.5, "SOL", resolves=day(2)),
        outcome("OPEC-CUT", "OPEC", "cut", 0.5, "OIL", resolves=day(92)),
        outcome("OPEC-HOLD", "OPEC", "hold", 0.3, "OIL", resolves=day(92)),
        outcome("OPEC-RAISE", "OPEC", "raise", 0.2, "OIL", resolves=day(92)),
        binary("G1", 0.6, resolves=day(1)),
        binary("G2", 0.45, resolves=day(19)),
        parlay("PS", ["G1", "G2"], 0.25),
        parlay("PR", ["SOL-D", "ETH-5K"], 0.2),  # resolved leg x live leg
        parlay("PG", ["G2", "BTC-110K"], 0.1),  # loading 0 x loaded
    ]
    return make_book(contracts, {"PS": 1.0}, as_of=AS_OF, horizon_days=5)


def _quadrature_book() -> Book:
    """Parlays whose live legs share loaded factors after h, with legs of
    different tau: BTC 7 days (tau 5/7), ETH one year (tau 5/365)."""
    contracts = [
        above("BTC-100K", "BTC-W", 100_000, 0.55, "BTC", resolves=day(7)),
        below("BTC-120K", "BTC-W", 120_000, 0.85, "BTC", resolves=day(7)),
        above("ETH-5K", "ETH-Y", 5_000, 0.40, "ETH", resolves=day(365)),
        parlay("PX", ["BTC-100K", "ETH-5K"], 0.2),
        parlay("PW", ["BTC-100K", "BTC-120K", "ETH-5K"], 0.2),  # a range on BTC
    ]
    return make_book(contracts, {"PX": 1.0}, as_of=AS_OF, horizon_days=5)


def _simulated_marks(book: Book, scenarios: int) -> np.ndarray:
    arrays, _ = book_arrays(book)
    assert arrays.dynamic
    marks = jax.jit(outcomes, static_argnums=2)(jax.random.key(7), arrays, scenarios)
    return np.asarray(marks, np.float64)[:, : len(book.contracts)]


def _assert_martingale(book: Book, marks: np.ndarray, expected: np.ndarray):
    mean = marks.mean(axis=0)
    se = marks.std(axis=0) / math.sqrt(marks.shape[0])
    for cid, m, s, p in zip(book.contract_ids, mean, se, expected):
        assert abs(m - p) <= SIGMAS * s + 1e-6, (cid, m, p, s)


def test_marks_are_martingales():
    """E[m_h] = P(YES): the price for single contracts (the outcome event's marks
    also partition 1 in every scenario); for parlays the model probability, the
    product of the legs' prices where the legs are independent events (PS, PG),
    and for PR (SOL resolved by h, ETH live) the correlation a^2 R sqrt(tau_ETH)."""
    book = _martingale_book()
    marks = _simulated_marks(book, 65536)
    probs = np.array(book.simulation_probabilities())
    ids = {cid: i for i, cid in enumerate(book.contract_ids)}
    for pid in ("PS", "PG"):
        probs[ids[pid]] = math.prod(book.contract(leg).price for leg in book.contract(pid).legs)
        assert terminal_parlay_probability(book, pid) == pytest.approx(probs[ids[pid]],
                                                                       abs=1e-6)
    probs[ids["PR"]] = terminal_parlay_probability(book, "PR")
    assert probs[ids["PR"]] - 0.5 * 0.4 > 0.005
    _assert_martingale(book, marks, probs)
    opec = [ids[k] for k in ("OPEC-CUT", "OPEC-HOLD", "OPEC-RAISE")]
    np.testing.assert_allclose(marks[:, opec].sum(axis=1), 1.0, atol=1e-6)
    # Resolved by h (SOL-D, G1: tau = 1): indicators; live marks strictly inside (0, 1).
    for cid in ("SOL-D", "G1"):
        assert set(np.unique(marks[:, ids[cid]])) == {0.0, 1.0}
    assert 0 < marks[:, ids["ETH-5K"]].min() < marks[:, ids["ETH-5K"]].max() < 1
    # The spread of a live mark: Var(m_h) = P(X in I, X' in I) - p^2 with X, X'
    # two resolutions sharing the revealed Z (correlation tau).
    for cid in ("BTC-100K", "ETH-5K", "G2"):
        c, tau = book.contract(cid), book.taus()[ids[cid]]
        cut = stats.norm.ppf(1 - c.price)
        both = stats.multivariate_normal([0, 0], [[1, tau], [tau, 1]]).cdf([-cut, -cut])
        assert marks[:, ids[cid]].std() == pytest.approx(math.sqrt(both - c.price**2),
                                                         rel=0.02), cid


def test_parlay_marks_with_shared_factors_are_martingales_of_the_terminal_law():
    """E[m_h] of a parlay whose live legs share loaded factors equals the model
    probability of §6.2 item 4 (correlation a^2 R kappa, kappa < 1 for legs of
    different tau), computed by a multivariate-normal integral, and not v1's
    (kappa = 1), which is many standard errors away."""
    book = _quadrature_book()
    arrays, _ = book_arrays(book)
    assert arrays.quad_parlay.shape[0] >= 2  # both parlays take the quadrature path
    marks = _simulated_marks(book, 8192)
    probs = np.array(book.simulation_probabilities())
    model = {pid: terminal_parlay_probability(book, pid) for pid in ("PX", "PW")}
    probs[3], probs[4] = model["PX"], model["PW"]
    _assert_martingale(book, marks, probs)
    v1 = terminal_parlay_probability(book.with_settings(horizon_days=None), "PX")
    se = marks[:, 3].std() / math.sqrt(marks.shape[0])
    assert abs(v1 - model["PX"]) > 8 * se, (v1, model["PX"], se)


def test_zero_length_horizon_gives_no_loss():
    """h -> 0 (1e-4 day): every mark moves O(sqrt(h)), so base and each cluster's
    ES vanish like sqrt(h) (4x the horizon: 2x the ES) and are a small fraction
    of the resolution figures."""
    book = _martingale_book().with_settings(horizon_days=None, scenarios=8192)
    # Parlays priced at their model probability: a parlay priced off the model
    # has a deterministic drift q (price - P(YES)) at any horizon (no move needed).
    book = dataclasses.replace(book, contracts=tuple(
        dataclasses.replace(c, price=terminal_parlay_probability(book, c.id))
        if c.type == "parlay" else c for c in book.contracts))
    book = book.with_positions(
        {"BTC-100K": 1000, "BTC-110K": -2000, "ETH-5K": 1500, "SOL-D": -800, "OPEC-CUT": 900,
         "OPEC-RAISE": -600, "G1": 700, "G2": -500, "PS": -1200, "PR": 900, "PG": 400})
    full = kj.portfolio_margin(book)
    tiny = kj.portfolio_margin(book.with_settings(horizon_days=1e-4))
    small = kj.portfolio_margin(book.with_settings(horizon_days=4e-4))
    assert 0 < tiny.base < 0.03 * full.base
    assert small.base / tiny.base == pytest.approx(2.0, rel=0.08)
    for t, f in zip(tiny.clusters, full.clusters):
        assert t.es <= 0.03 * f.es + 1e-9, t.name
    assert all(c.tau <= 1e-4 and not c.resolved_by_horizon
               for c in tiny.contracts if c.stressed_marks is not None)


# --- 3. exactness: one and two revealed latents --------------------------------------


def _ladder_book(**settings) -> Book:
    """One BTC event (loaded cluster) 30 days out: a below and two aboves, mixed
    signs, so the loss is not monotone in the latent."""
    d = day(30)
    contracts = [below("B80", "BTC-M", 80, 0.15, "BTC", resolves=d),
                 above("A90", "BTC-M", 90, 0.70, "BTC", resolves=d),
                 above("A100", "BTC-M", 100, 0.45, "BTC", resolves=d)]
    qty = {"B80": 800.0, "A90": 1000.0, "A100": -2500.0}
    return make_book(contracts, qty, as_of=AS_OF, **settings)


def test_one_event_es_against_quadrature():
    """ES_99 of sum_i q_i (p_i - m_i(Z)) over Z ~ N(0, 1) (tau = 2/30) on a fine
    grid vs the engine's base (= the BTC cluster's ES) within 3 standard errors."""
    book = _ladder_book(horizon_days=2, scenarios=65536)
    r = kj.portfolio_margin(book)
    tau = 2 / 30
    assert [c.tau for c in r.contracts] == pytest.approx([tau] * 3, rel=1e-12)
    z, w = z_grid(400_000, width=9.0)
    loss = np.zeros_like(z)
    for c, (pid, q) in zip(book.contracts, book.net_quantities().items()):
        loss += q * (c.price - mark(z, tau, *cut_interval(c, c.price)))
    exact = es_of(loss, w, 0.99)
    assert r.base == pytest.approx(r.clusters[0].es, rel=1e-6)
    assert abs(r.base - exact) <= 3 * r.base_standard_error, (r.base, exact,
                                                               r.base_standard_error)
    # The horizon ES is well below the resolution ES (exact by enumeration).
    assert exact < 0.5 * exact_es(book)


def test_two_game_parlay_es_against_a_product_grid():
    """Two independent games (3 and 10 days out: tau 2/3 and 1/5 at a 2-day
    horizon) and a parlay on both (mark = product of the leg marks): ES_99 over a
    product grid of the two latents vs the engine's base within 3 s.e."""
    contracts = [binary("G1", 0.6, resolves=day(3)), binary("G2", 0.35, resolves=day(10)),
                 parlay("P12", ["G1", "G2"], 0.25)]
    qty = {"G1": 1000.0, "G2": -1500.0, "P12": 4000.0}
    book = make_book(contracts, qty, as_of=AS_OF, horizon_days=2, scenarios=65536)
    r = kj.portfolio_margin(book)
    z, w = z_grid(2000, width=8.0)
    m1 = mark(z, 2 / 3, stats.norm.ppf(0.4), math.inf)[:, None]
    m2 = mark(z, 1 / 5, stats.norm.ppf(0.65), math.inf)[None, :]
    loss = 1000 * (0.6 - m1) - 1500 * (0.35 - m2) + 4000 * (0.25 - m1 * m2)
    exact = es_of(loss, w[:, None] * w[None, :], 0.99)
    assert abs(r.base - exact) <= 3 * r.base_standard_error, (r.base, exact,
                                                               r.base_standard_error)


# --- 4. parlay marks given the revealed state ----------------------------------------


def _marks_book() -> Book:
    """h = 2 days. BTC 30 days, ETH 200 days, SPX 60 days, a SOL binary resolving
    in 1 day (by h), two independent games."""
    contracts = [
        above("BTC-100K", "BTC-M", 100_000, 0.55, "BTC", resolves=day(30)),
        below("BTC-120K", "BTC-M", 120_000, 0.85, "BTC", resolves=day(30)),
        above("ETH-5K", "ETH-Y", 5_000, 0.30, "ETH", resolves=day(200)),
        above("SPX-6K", "SPX-Q", 6_000, 0.60, "SPX", resolves=day(60)),
        binary("SOL-D", 0.5, "SOL", resolves=day(1)),
        binary("G1", 0.6, resolves=day(5)),
        binary("G2", 0.45, resolves=day(9)),
        above("BTC-WK", "BTC-WK", 105_000, 0.4, "BTC", resolves=day(7)),
        parlay("PX", ["BTC-100K", "ETH-5K"], 0.2),  # shared factors: 2-D integral
        parlay("PW", ["BTC-100K", "BTC-120K", "ETH-5K"], 0.2),  # range on one event
        parlay("P3", ["BTC-100K", "ETH-5K", "SPX-6K"], 0.1),  # 3-D integral
        parlay("PD", ["SOL-D", "BTC-100K", "ETH-5K"], 0.1),  # resolved leg x integral
        parlay("PS", ["G1", "G2"], 0.3),  # conditionally independent: product
        parlay("PB", ["G1", "BTC-100K"], 0.3),  # loading 0 x loaded: product
        parlay("PBB", ["BTC-100K", "BTC-WK"], 0.2),  # two events in one cluster
    ]
    return make_book(contracts, {"PX": 1.0}, as_of=AS_OF, horizon_days=2)


# Revealed event latents Z, one row per test point, one column per event of EVENTS.
EVENTS = ("BTC-M", "ETH-Y", "SPX-Q", "SOL-D", "G1", "G2", "BTC-WK")
Z_ROWS = np.array([[0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0],
                   [1.5, -1.0, 0.7, -0.5, 0.3, -2.0, 1.1],
                   [-2.3, 2.1, -1.2, 1.0, 1.0, 1.0, -0.8],
                   [0.4, 0.9, 2.5, 0.2, -1.4, 0.6, 2.2]])


def _engine_marks(book: Book) -> dict[str, np.ndarray]:
    """horizon_mark_rows in float64 at the revealed latents Z_ROWS, by contract id."""
    arrays, layout = book_arrays(book, jnp.float64)
    latents = np.zeros((len(Z_ROWS), arrays.event_cluster.shape[0]))
    for j, name in enumerate(EVENTS):
        latents[:, layout.event_names.index(name)] = Z_ROWS[:, j]
    lo, hi = atom_cuts_jit(arrays)
    m = jax.jit(horizon_mark_rows)(jnp.asarray(latents.T), arrays, lo, hi)
    return {cid: np.asarray(m[i]) for i, cid in enumerate(book.contract_ids)}


def _live_legs(book: Book, pid: str, row: int):
    """The parlay's live legs given Z_ROWS[row]: per event, the interval of
    W_e = (X_e - sqrt(tau) z_e) / sqrt(1 - tau) (legs on one event intersected),
    its cluster; and the product of the resolved legs' indicators."""
    col = {name: j for j, name in enumerate(EVENTS)}
    taus = dict(zip(book.contract_ids, book.taus()))
    events: dict[str, list] = {}
    resolved = 1.0
    for leg in book.contract(pid).legs:
        c = book.contract(leg)
        lo, hi = cut_interval(c, c.price)
        z = Z_ROWS[row, col[c.event_key]]
        tau = taus[leg]
        if tau >= 1:
            resolved *= float(lo < z <= hi)
            continue
        s, r = math.sqrt(tau), math.sqrt(1 - tau)
        lo, hi = (lo - s * z) / r, (hi - s * z) / r
        if c.event_key in events:
            e = events[c.event_key]
            e[0], e[1] = max(e[0], lo), min(e[1], hi)
        else:
            events[c.event_key] = [lo, hi, c.cluster]
    return list(events.values()), resolved


def _w_correlation(book: Book, ci: str, cj: str) -> float:
    """Corr(W_e, W_f) after h for events in clusters ci != cj: a_c a_d R_cd."""
    h = book.hierarchy
    names = list(h.cluster_names)
    load = dict(zip(names, h.loadings))
    return load[ci] * load[cj] * kj.correlation_of(h)[names.index(ci), names.index(cj)]


def _reference_two_legs(book: Book, legs) -> float:
    """P(W1 in I1, W2 in I2), corr rho: one-dimensional adaptive quadrature."""
    (a1, b1, c1), (a2, b2, c2) = legs
    rho = _w_correlation(book, c1, c2)
    s = math.sqrt(1 - rho * rho)

    def f(w):
        return stats.norm.pdf(w) * (stats.norm.cdf((b2 - rho * w) / s)
                                    - stats.norm.cdf((a2 - rho * w) / s))
    return integrate.quad(f, max(a1, -12.0), min(b1, 12.0), epsabs=1e-13, epsrel=1e-12,
                          limit=200)[0]


def _reference_three_legs(book: Book, legs) -> float:
    """P(W in the box), three correlated legs: quadrature over W1 of the exact
    bivariate conditional probability of (W2, W3) given W1 (scipy's bivariate
    normal CDF, error ~1e-10 at this size)."""
    (a1, b1, c1), *rest = legs
    cov = np.array([[1.0 if i == j else _w_correlation(book, legs[i][2], legs[j][2])
                     for j in range(3)] for i in range(3)])
    beta = cov[1:, 0]
    cond = cov[1:, 1:] - np.outer(beta, beta)
    sd = np.sqrt(np.diag(cond))
    corr = cond[0, 1] / (sd[0] * sd[1])
    mvn = stats.multivariate_normal([0.0, 0.0], [[1.0, corr], [corr, 1.0]])

    def f(w):
        lo = np.array([(max(x[0], -12.0) - b * w) / s for x, b, s in zip(rest, beta, sd)])
        hi = np.array([(min(x[1], 12.0) - b * w) / s for x, b, s in zip(rest, beta, sd)])
        return stats.norm.pdf(w) * mvn.cdf(hi, lower_limit=lo)
    return integrate.quad(f, max(a1, -12.0), min(b1, 12.0), epsabs=1e-10, epsrel=1e-9,
                          limit=100)[0]


def _nested_simulation(book: Book, pid: str, row: int, draws: int = 500_000):
    """Nested simulation of the terminal model given the revealed state: draw F^W
    on the default hierarchy's correlation and eta^W per event, form X_e =
    sqrt(tau) z + sqrt(1 - tau) (a F^W_c + s eta^W_e), count all legs YES.
    Returns (estimate, standard error)."""
    rng = np.random.default_rng(row)
    h = book.hierarchy
    load = dict(zip(h.cluster_names, h.loadings))
    names = sorted({book.contract(leg).cluster for leg in book.contract(pid).legs})
    every = list(h.cluster_names)
    pick = [every.index(n) for n in names]
    chol = np.linalg.cholesky(kj.correlation_of(h)[np.ix_(pick, pick)])
    factors = rng.standard_normal((draws, len(names))) @ chol.T
    col = {name: j for j, name in enumerate(EVENTS)}
    taus = dict(zip(book.contract_ids, book.taus()))
    yes = np.ones(draws, bool)
    eta: dict[str, np.ndarray] = {}
    for leg in book.contract(pid).legs:
        c = book.contract(leg)
        key = c.event_key
        if key not in eta:
            eta[key] = rng.standard_normal(draws)
        a, tau, z = load[c.cluster], taus[leg], Z_ROWS[row, col[key]]
        w = a * factors[:, names.index(c.cluster)] + math.sqrt(1 - a * a) * eta[key]
        x = math.sqrt(tau) * z + math.sqrt(1 - tau) * w
        lo, hi = cut_interval(c, c.price)
        yes &= (x > lo) & (x <= hi)
    p = yes.mean()
    return p, math.sqrt(p * (1 - p) / draws)


@pytest.fixture(scope="module")
def engine_marks():
    with jax.enable_x64(True):
        book = _marks_book()
        return book, _engine_marks(book)


@pytest.mark.parametrize("pid", ["PX", "PW", "P3", "PD", "PBB"])
def test_shared_factor_parlay_marks_against_quadrature(engine_marks, pid):
    """P(all legs | Z) with legs in BTC/ETH/SPX (loading 0.9; crypto rho 0.68,
    risk 0.35; two BTC events: correlation a^2) vs an independent float64
    quadrature of the post-horizon normal law (2 or 3 legs; legs on one event
    intersected; resolved legs: indicators), to 1e-6, and 2e-5 for two events in
    one cluster, where the integrand is the product of two steep Phi's of F (the
    tight bound is test_gauss_hermite_error_meets_the_spec)."""
    book, marks = engine_marks
    tol = 2e-5 if pid == "PBB" else 1e-6
    for row in range(len(Z_ROWS)):
        legs, resolved = _live_legs(book, pid, row)
        ref = (_reference_two_legs(book, legs) if len(legs) == 2
               else _reference_three_legs(book, legs))
        assert marks[pid][row] == pytest.approx(resolved * ref, abs=tol), (row, ref)


@pytest.mark.parametrize("pid", ["PX", "PD", "PBB"])
def test_shared_factor_parlay_marks_against_nested_simulation(engine_marks, pid):
    """The same marks against 500,000 draws of the terminal model's post-horizon
    randomness (F^W, eta^W), within 4 standard errors; and they are not the
    product of the leg marks (the shared factor correlates the legs)."""
    book, marks = engine_marks
    for row in range(len(Z_ROWS)):
        p, se = _nested_simulation(book, pid, row)
        assert abs(marks[pid][row] - p) <= SIGMAS * se, (row, marks[pid][row], p, se)
        product = math.prod(marks[leg][row] for leg in book.contract(pid).legs)
        if marks[pid][row] > 0:
            assert marks[pid][row] - product > 0.01, (row, marks[pid][row], product)


@pytest.mark.parametrize("pid", ["PS", "PB"])
def test_conditionally_independent_parlay_mark_is_the_product(engine_marks, pid):
    """Legs with no shared loaded factor (Sports games; a game and a BTC leg): the
    mark is exactly the product of the leg marks."""
    book, marks = engine_marks
    product = np.prod([marks[leg] for leg in book.contract(pid).legs], axis=0)
    np.testing.assert_array_equal(marks[pid], product)
    assert np.all((product > 0) & (product < 1))


@pytest.mark.parametrize("pid", ["PX", "PW", "PBB"])
def test_gauss_hermite_error_meets_the_spec(engine_marks, pid):
    """SPEC-horizon §6.5: abs. error < 1e-8 (64 nodes at loading 0.9; 32 erred by
    2.4e-7 for BTC x ETH and 8.5e-6 for two BTC events)."""
    book, marks = engine_marks
    for row in range(len(Z_ROWS)):
        legs, resolved = _live_legs(book, pid, row)
        assert marks[pid][row] == pytest.approx(
            resolved * _reference_two_legs(book, legs), abs=1e-8), (pid, row)


def _high_loading() -> Hierarchy:
    """The default hierarchy with loading 0.97 on BTC and ETH."""
    h = kj.default_hierarchy()
    return Hierarchy(h.nodes, tuple(dataclasses.replace(c, loading=0.97)
                                    if c.name in ("BTC", "ETH") else c for c in h.clusters))


def test_parlay_marks_at_a_high_loading():
    """Loading 0.97 (valid: loadings are in [0, 1)): the same 2-D marks to 1e-6 (the
    layout picks 128 Gauss–Hermite nodes for it; 32 erred by ~6e-4). The book keeps
    every event but only the parlay checked, PX: the 3-leg parlays would put the
    grid in 3 dimensions (128^2 points; 30 s of compiling) for marks not checked."""
    book = _marks_book()
    book = dataclasses.replace(
        book, hierarchy=_high_loading(),
        contracts=tuple(c for c in book.contracts if c.type != "parlay" or c.id == "PX"))
    with jax.enable_x64(True):
        arrays, _ = book_arrays(book, jnp.float64)
        assert arrays.quad_nodes == 128
        marks = _engine_marks(book)
    for row in range(len(Z_ROWS)):
        legs, resolved = _live_legs(book, "PX", row)
        assert marks["PX"][row] == pytest.approx(
            resolved * _reference_two_legs(book, legs), abs=1e-6), row


# --- 5. convex order ---------------------------------------------------------------


def test_horizon_es_is_below_resolution_es():
    """Binaries only, every loaded event resolving on one date (60 days): loss_h =
    E[loss_T | revealed], so ES at any horizon h <= ES at resolution, for the base
    and each cluster, and ES grows with h (the information is nested); at h = T it
    is the resolution ES. Slack: 2 Monte-Carlo standard errors."""
    d = day(60)
    contracts = [binary("BTC-A", 0.6, "BTC", resolves=d), binary("BTC-B", 0.3, "BTC", resolves=d),
                 binary("ETH-A", 0.45, "ETH", resolves=d), binary("SOL-A", 0.7, "SOL", resolves=d),
                 binary("SPX-A", 0.55, "SPX", resolves=d), binary("OIL-A", 0.2, "OIL", resolves=d),
                 binary("G1", 0.5, resolves=day(3)), binary("G2", 0.65, resolves=day(11))]
    qty = {"BTC-A": 3000, "BTC-B": -2000, "ETH-A": 2500, "SOL-A": -1500, "SPX-A": 2000,
           "OIL-A": -2500, "G1": 800, "G2": -900}
    # The plain sampler, so that h = T and resolution use the same draws (at
    # resolution the games form an exact block; at a horizon they do not).
    book = make_book(contracts, qty, as_of=AS_OF, scenarios=16384, sampler="plain")
    resolution = kj.portfolio_margin(book)
    prev = None
    for h in (1, 7, 30, 59, 60):
        r = kj.portfolio_margin(book.with_settings(horizon_days=h))
        slack = 2 * r.base_standard_error + 2 * resolution.base_standard_error
        assert r.base <= resolution.base + slack, h
        for c, full in zip(r.clusters, resolution.clusters):
            assert c.es <= full.es + 2 * (c.standard_error + full.standard_error), (h, c.name)
        if prev is not None:
            assert prev.base <= r.base + 2 * (r.base_standard_error + prev.base_standard_error)
        prev = r
    first = kj.portfolio_margin(book.with_settings(horizon_days=1))
    assert first.base < 0.5 * resolution.base
    assert_same_figures(figures(prev), figures(resolution))


# --- 6. input errors (§6.10, v1 types) -----------------------------------------------


def _hierarchy_4() -> Hierarchy:
    """Four loaded, correlated clusters (and an unloaded Parlays cluster)."""
    return Hierarchy(
        nodes=(Node("root", None, 0.0), Node("risk", "root", 0.5)),
        clusters=(*(Cluster(n, "risk", 0.8) for n in "ABCD"), Cluster("Parlays", "root", 0.0)),
    )


def _four_cluster_parlay(horizon_days, d_date=day(30)):
    contracts = [binary("a", 0.5, "A", resolves=day(30)), binary("b", 0.5, "B", resolves=day(30)),
                 binary("c", 0.5, "C", resolves=day(30)), binary("d", 0.5, "D", resolves=d_date),
                 parlay("P4", ["a", "b", "c", "d"], 0.1)]
    return make_book(contracts, {"P4": 1.0}, hierarchy=_hierarchy_4(), as_of=AS_OF,
                     horizon_days=horizon_days)


def _game(**kw):
    return binary("G", 0.5, **kw)


ERRORS = {
    "horizon nan": (lambda: Settings(horizon_days=math.nan), "model.horizon_days", "nan"),
    "horizon inf": (lambda: Settings(horizon_days=math.inf), "model.horizon_days", "inf"),
    "horizon 0": (lambda: Settings(horizon_days=0), "model.horizon_days", "0"),
    "horizon < 0": (lambda: Settings(horizon_days=-2.5), "model.horizon_days", "-2.5"),
    "horizon > 365": (lambda: Settings(horizon_days=365.5), "model.horizon_days", "365.5"),
    "horizon text": (lambda: Settings(horizon_days="2"), "model.horizon_days", "'2'"),
    "as_of not ISO": (lambda: Settings(as_of="2026/06/01"), "model.as_of", "2026/06/01"),
    "as_of no day": (lambda: Settings(as_of="2026-02-30"), "model.as_of", "2026-02-30"),
    "date not ISO": (lambda: make_book([_game(resolves="June 5")], as_of=AS_OF),
                     "contracts[0] (id 'G').resolves", "June 5"),
    "date-time": (lambda: make_book([_game(resolves=datetime.datetime(2026, 7, 1))],
                                    as_of=AS_OF),
                  "contracts[0] (id 'G').resolves", "2026-07-01T00:00:00"),
    "date without as_of": (lambda: make_book([_game(resolves=day(5))]),
                           "contracts[0] (id 'G').resolves", day(5)),
    "resolves and resolves_in": (
        lambda: make_book([_game(resolves=day(5), resolves_in=0.1)], as_of=AS_OF),
        "contracts[0] (id 'G').resolves", "0.1"),
    "on as_of": (lambda: make_book([_game(resolves=AS_OF)], as_of=AS_OF),
                 "contracts[0] (id 'G').resolves", AS_OF),
    "before as_of": (lambda: make_book([_game(resolves="2026-05-31")], as_of=AS_OF),
                     "contracts[0] (id 'G').resolves", "2026-05-31"),
    "two dates on one event": (
        lambda: make_book([above("A1", "E", 1, 0.6, resolves=day(30)),
                           above("A2", "E", 2, 0.4, resolves=day(31))], as_of=AS_OF),
        "contracts[1] (id 'A2').resolves", day(31)),
    "dated and undated on one event": (
        lambda: make_book([above("A1", "E", 1, 0.6, resolves=day(30)),
                           above("A2", "E", 2, 0.4)], as_of=AS_OF),
        "contracts[1] (id 'A2').resolves", day(30)),
    "resolves_in 0": (lambda: make_book([_game(resolves_in=0.0)]),
                      "contracts[0] (id 'G').resolves_in", "0"),
    "resolves_in < 0": (lambda: make_book([_game(resolves_in=-0.25)]),
                        "contracts[0] (id 'G').resolves_in", "-0.25"),
    "resolves_in nan": (lambda: make_book([_game(resolves_in=math.nan)]),
                        "contracts[0] (id 'G').resolves_in", "nan"),
    "horizon with an undated binary": (
        lambda: make_book([binary("H", 0.5, resolves=day(3)), _game()], as_of=AS_OF,
                          horizon_days=2),
        "contracts[1] (id 'G').resolves", "horizon_days = 2"),
    "parlay with a date": (
        lambda: make_book([binary("H", 0.5, resolves=day(3)), _game(resolves=day(4)),
                           parlay("P", ["H", "G"], 0.2, resolves=day(4))], as_of=AS_OF),
        "contracts[2] (id 'P').resolves", day(4)),
    "parlay with resolves_in": (
        lambda: make_book([binary("H", 0.5, resolves_in=0.01), _game(resolves_in=0.02),
                           parlay("P", ["H", "G"], 0.2, resolves_in=0.02)]),
        "contracts[2] (id 'P').resolves_in", "0.02"),
    "parlay over 4 loaded clusters": (lambda: _four_cluster_parlay(2),
                                      "contracts[4] (id 'P4').legs", "A, B, C, D"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_input_errors_name_the_field_and_value(name):
    build, field, value = ERRORS[name]
    with pytest.raises(kj.BookError) as e:
        build()
    assert e.value.field == field
    assert value in e.value.detail, e.value.detail


def test_input_errors_from_a_book_file():
    """The same errors through the TOML reader (bare TOML dates are accepted)."""
    game = '[[contracts]]\nid = "G"\ncluster = "Sports"\ntype = "binary"\nprice = 0.5\n'
    ok = kj.loads_book(f'[model]\nas_of = 2026-06-01\nhorizon_days = 2\n{game}'
                       'resolves = 2026-06-11\n')
    assert ok.settings.as_of == AS_OF and ok.contracts[0].resolves == day(10)
    assert ok.taus() == pytest.approx((0.2,))
    cases = [
        (f'[model]\nhorizon_days = 0\n{game}resolves_in = 0.1\n', "model.horizon_days", "0"),
        (f'[model]\nhorizon_days = "two"\n{game}resolves_in = 0.1\n', "model.horizon_days",
         "'two'"),
        (f'[model]\nas_of = "1 June"\n{game}', "model.as_of", "1 June"),
        (f'{game}resolves = "2026-06-11"\n', "contracts[0] (id 'G').resolves", "2026-06-11"),
        (f'[model]\nas_of = "{AS_OF}"\n{game}resolves = "2026-6-11"\n',
         "contracts[0] (id 'G').resolves", "2026-6-11"),
        (f'[model]\nhorizon_days = 2\n{game}', "contracts[0] (id 'G').resolves",
         "horizon_days = 2"),
    ]
    for text, field, value in cases:
        with pytest.raises(kj.BookError) as e:
            kj.loads_book(text)
        assert (e.value.field, value in e.value.detail) == (field, True), (text, e.value)


def test_parlay_cluster_limit_counts_live_loaded_legs_only():
    """Four loaded clusters are refused only when all four legs are live at the
    horizon: with one leg resolving by h, or without a horizon, the book is valid
    (and the resolved leg leaves a 3-D integral)."""
    _four_cluster_parlay(2, d_date=day(1))
    _four_cluster_parlay(None)
    arrays, _ = book_arrays(_four_cluster_parlay(2, d_date=day(1)))
    assert arrays.quad_cluster.shape[1] == 3

"""Margins of small books against exact references (SPEC.md §2.3–2.5).

Every expected figure is a closed form or an exact enumeration of the joint
outcomes. Where the 99% tail of the loss is a single atom (its probability exceeds
1%), the simulated ES is exact whatever the draws and is compared to rounding
only; elsewhere the Monte-Carlo ES is compared within 4 of the engine's reported
standard errors (a false alarm about 1 time in 16,000 per comparison), with the
draws fixed by the seed, so the tests are deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import (
    above,
    below,
    binary,
    brute_worst_case,
    exact_es,
    full_collateral,
    make_book,
    outcome,
    parlay_book,
)
from scipy import integrate, stats

import kinetic_jax as kj

SIGMAS = 4.0  # Monte-Carlo tolerance, in reported standard errors
REL = 2e-6  # float32 rounding of dollar figures (a few ulps)


def assert_mc(value: float, exact: float, se: float, scale: float):
    """|value - exact| within SIGMAS reported standard errors plus float32 rounding."""
    assert abs(value - exact) <= SIGMAS * se + REL * scale, (value, exact, se)


def cluster_es(report, name: str) -> float:
    return next(c.es for c in report.clusters if c.name == name)


def cluster_se(report, name: str) -> float:
    return next(c.standard_error for c in report.clusters if c.name == name)


# --- 1. a single contract ----------------------------------------------------------


SINGLE = {
    "above": lambda p: above("X", "EV", 100, p, "BTC"),
    "below": lambda p: below("X", "EV", 1.0, p, "SPX"),
    "binary": lambda p: binary("X", p),
    "outcome": lambda p: outcome("X", "EV", "A", p),
}


@pytest.mark.parametrize("kind", list(SINGLE))
@pytest.mark.parametrize("q", [1000.0, -1000.0])
def test_single_contract_with_an_atomic_tail(kind, q):
    """Long q at p = 0.3 loses q p = 300 with probability 0.7; short loses
    |q| (1 - p) = 700 with probability 0.3. Both exceed 1%, so ES_99 is the atom:
    ES = base = floor = worst case = full collateral = margin, with no MC error."""
    c = SINGLE[kind](0.3)
    r = kj.portfolio_margin(make_book([c], {"X": q}))
    loss = 300.0 if q > 0 else 700.0
    for figure in (r.base, r.floor, r.worst_case_loss, r.full_collateral, r.margin,
                   cluster_es(r, c.cluster)):
        assert figure == pytest.approx(loss, rel=REL)
    assert r.worst_case_exact
    assert r.base_standard_error == 0.0 and r.addons["mc_error"] == 0.0
    assert r.capital_released == pytest.approx(0.0, abs=1e-6)
    assert all(cl.es == 0.0 for cl in r.clusters if cl.name != c.cluster)
    assert r.var == pytest.approx(loss, rel=REL)


@pytest.mark.parametrize("kind", ["above", "outcome"])
@pytest.mark.parametrize("p, q", [(0.995, 1000.0), (0.004, -1000.0)])
def test_single_contract_with_a_thin_tail(kind, p, q):
    """Long 1000 at 0.995 loses 995 w.p. 0.005 and gains 5 otherwise:
    ES_99 = (0.005 * 995 - 0.005 * 5) / 0.01 = 495. Short 1000 at 0.004 loses 996
    w.p. 0.004: ES_99 = (0.004 * 996 - 0.006 * 4) / 0.01 = 396. The number of
    losing draws is binomial, so the ES estimate has s.e.
    1000 sqrt(pi (1 - pi) / N) / 0.01 (pi the losing probability): the engine's
    reported s.e. must match it within 10% (it is estimated from ~600 hits)."""
    c = SINGLE[kind](p)
    book = make_book([c], {"X": q})
    r = kj.portfolio_margin(book, sampler="plain")  # the binomial s.e. is plain sampling's
    lose = 1 - p if q > 0 else p
    big = q * p if q > 0 else -q * (1 - p)
    exact = kj.exact_expected_shortfall([big, big - abs(q)], [lose, 1 - lose], 0.99)
    assert exact == pytest.approx(495.0 if q > 0 else 396.0)
    binomial_se = abs(q) * math.sqrt(lose * (1 - lose) / r.scenarios) / 0.01
    assert r.base_standard_error == pytest.approx(binomial_se, rel=0.1)
    assert_mc(r.base, exact, r.base_standard_error, big)
    assert r.worst_case_loss == pytest.approx(big, rel=REL)
    assert r.full_collateral == pytest.approx(big, rel=REL)
    # One cluster: the floor is that cluster's ES, the same number as the base, so
    # base binds (base >= floor) and the margin is base + 2 s.e.
    assert r.floor == r.base == cluster_es(r, c.cluster)
    assert r.binding == "base"
    assert r.addons["mc_error"] == pytest.approx(2 * r.base_standard_error, rel=1e-6)
    assert r.margin == pytest.approx(r.base + r.addons["mc_error"], rel=REL)
    # The default sampler: an outcome (Election, loading 0) is exact (s.e. 0); a
    # strike on a loaded cluster is importance-sampled (a smaller s.e.).
    d = kj.portfolio_margin(book)
    assert d.sampler == "exact_block" and d.exact_positions == (kind == "outcome")
    assert_mc(d.base, exact, d.base_standard_error, big)
    assert (d.base_standard_error == 0) == (kind == "outcome")
    assert d.base_standard_error < r.base_standard_error


def test_separately_given_probability_drives_the_simulation():
    """Price 0.5 (the mark: losses are q (0.5 - YES)) but probability 0.995: long
    1000 loses 500 w.p. 0.005 and gains 500 otherwise, so ES_99 =
    (0.005 * 500 - 0.005 * 500) / 0.01 = 0 (binomial s.e. as above), while the
    worst case and full collateral (which ignore probabilities) are 500."""
    c = binary("X", 0.5, probability=0.995)
    r = kj.portfolio_margin(make_book([c], {"X": 1000.0}), sampler="plain")
    assert exact_es(make_book([c], {"X": 1000.0})) == pytest.approx(0.0, abs=1e-9)
    binomial_se = 1000 * math.sqrt(0.005 * 0.995 / r.scenarios) / 0.01
    assert r.base_standard_error == pytest.approx(binomial_se, rel=0.1)
    assert_mc(r.base, 0.0, r.base_standard_error, 500)
    assert r.worst_case_loss == pytest.approx(500.0, rel=REL)
    assert r.full_collateral == pytest.approx(500.0, rel=REL)
    # The default sampler: a game (Sports, loading 0) is margined by its exact law.
    d = kj.portfolio_margin(make_book([c], {"X": 1000.0}))
    assert d.exact_positions == 1 and d.base_standard_error == 0
    assert d.base == pytest.approx(0.0, abs=1e-3)


# --- 2. long X / short Y on two co-moving assets ------------------------------------


RHO_EVENTS = 0.9 * 0.9 * 0.68  # a_BTC a_ETH rho_crypto


def upper_orthant(c1: float, c2: float, r: float) -> float:
    """P(X1 > c1, X2 > c2) for standard bivariate normals with correlation r:
    integral over x > c1 of phi(x) P(X2 > c2 | X1 = x)."""
    s = math.sqrt(1 - r * r)
    value, _ = integrate.quad(lambda x: stats.norm.pdf(x) * stats.norm.sf((c2 - r * x) / s),
                              c1, np.inf, epsabs=1e-14, epsrel=1e-12)
    return value


def paper_hedge(p_x: float, p_y: float, q: float = 1000.0, **settings):
    book = make_book(
        [above("BTC-100K", "BTC-DEC", 100_000, p_x, "BTC"),
         above("ETH-5K", "ETH-DEC", 5_000, p_y, "ETH")],
        {"BTC-100K": q, "ETH-5K": -q},
        **settings,
    )
    c1, c2 = stats.norm.ppf(1 - p_x), stats.norm.ppf(1 - p_y)
    yy = upper_orthant(c1, c2, RHO_EVENTS)
    # Cross-check the orthant probability against scipy's Genz integration.
    genz = stats.multivariate_normal([0, 0], [[1, RHO_EVENTS], [RHO_EVENTS, 1]]).cdf([-c1, -c2])
    assert yy == pytest.approx(genz, abs=1e-5)
    probs = {"YY": yy, "YN": p_x - yy, "NY": p_y - yy, "NN": 1 - p_x - p_y + yy}
    loss = {
        k: q * (p_x - (k[0] == "Y")) - q * (p_y - (k[1] == "Y")) for k in probs
    }
    return book, probs, loss


def test_paper_hedge_offset_is_zero_at_99():
    """Long 1000 BTC>100k at 0.55, short 1000 ETH>5k at 0.38 (the reference
    book's paper hedge). The bad joint outcome (BTC NO, ETH YES: lose 550 + 620)
    has probability ~0.1, far above 1%, so ES_99 = 1170 = the sum of the legs'
    stand-alone ES: the hedge offsets nothing at 99%."""
    book, probs, loss = paper_hedge(0.55, 0.38)
    assert probs["NY"] > 0.05 and sum(probs.values()) == pytest.approx(1.0)
    exact = kj.exact_expected_shortfall(list(loss.values()), list(probs.values()), 0.99)
    assert exact == pytest.approx(1170.0)
    r = kj.portfolio_margin(book)
    legs = cluster_es(r, "BTC") + cluster_es(r, "ETH")
    assert cluster_es(r, "BTC") == pytest.approx(550.0, rel=REL)
    assert cluster_es(r, "ETH") == pytest.approx(620.0, rel=REL)
    assert r.base == pytest.approx(exact, rel=REL)
    assert 1 - r.base / legs == pytest.approx(0.0, abs=1e-6)
    assert r.floor == pytest.approx(1170.0, rel=REL)
    assert r.worst_case_loss == pytest.approx(1170.0, rel=REL)
    assert r.full_collateral == pytest.approx(1170.0, rel=REL)
    # Diagnostic sqrt(ES^T R ES) with R[BTC, ETH] = 0.68.
    agg = math.sqrt(550**2 + 620**2 + 2 * 0.68 * 550 * 620)
    assert r.aggregate_diagnostic == pytest.approx(agg, rel=1e-5)


def test_paper_hedge_offset_appears_at_lower_confidence():
    """At 90% the tail (10%) is wider than the bad joint outcome (~8.5%), so ES
    mixes in the next-worst outcomes and the hedge offsets a part: exact ES from
    the four orthant probabilities, compared within 4 s.e."""
    book, probs, loss = paper_hedge(0.55, 0.38)
    exact = kj.exact_expected_shortfall(list(loss.values()), list(probs.values()), 0.90)
    assert probs["NY"] < 0.10
    r = kj.portfolio_margin(book, confidence=0.90)
    assert_mc(r.base, exact, r.base_standard_error, 1170)
    offset = 1 - exact / (cluster_es(r, "BTC") + cluster_es(r, "ETH"))
    assert offset > 0.05
    assert r.base_standard_error > 0


def test_paper_hedge_with_a_rare_bad_outcome():
    """Long 1000 BTC>x at 0.8, short 1000 ETH>y at 0.2: each leg alone loses 800
    w.p. 0.2 (ES_99 = 800, an atom), but both lose together (1600) only w.p.
    ~0.63%, so the joint ES_99 mixes 1600 and 600 (one leg loses, the other
    gains 200) from the orthant probabilities: the hedge does offset a part."""
    book, probs, loss = paper_hedge(0.8, 0.2)
    assert 0.001 < probs["NY"] < 0.01
    exact = kj.exact_expected_shortfall(list(loss.values()), list(probs.values()), 0.99)
    assert exact == pytest.approx(600 + 1000 * probs["NY"] / 0.01)
    r = kj.portfolio_margin(book)
    assert_mc(r.base, exact, r.base_standard_error, 1600)
    assert r.base_standard_error > 0
    assert cluster_es(r, "BTC") == pytest.approx(800.0, rel=REL)
    assert cluster_es(r, "ETH") == pytest.approx(800.0, rel=REL)
    assert r.floor == pytest.approx(1600.0, rel=REL)
    assert r.worst_case_loss == pytest.approx(1600.0, rel=REL)
    # The floor (both clusters' stand-alone ES) keeps the margin at the worst case.
    assert r.margin == pytest.approx(1600.0, rel=REL)


def test_paper_hedge_in_a_custom_hierarchy():
    """A book's own hierarchy (three clusters, so R is 3 x 3): clusters X and Y
    under a node with rho 0.5, loadings 0.8 and 0.6, so the event latents
    correlate with 0.8 * 0.6 * 0.5 = 0.24. Long 1000 X>x at 0.9, short 1000 Y>y
    at 0.1: both lose (1800) w.p. ~0.4% (it would be 1% if independent, and
    ES_99 would be 1800), so ES_99 = 800 + 1000 P(NY) / 0.01 ~ 1204, from the
    orthant probability, within 4 s.e."""
    h = kj.Hierarchy(
        (kj.Node("root", None, 0.0), kj.Node("pair", "root", 0.5)),
        (kj.Cluster("X", "pair", 0.8), kj.Cluster("Y", "pair", 0.6),
         kj.Cluster("Z", "root", 0.0)),
    )
    book = make_book([above("X1", "EX", 1, 0.9, "X"), above("Y1", "EY", 1, 0.1, "Y")],
                     {"X1": 1000, "Y1": -1000}, hierarchy=h)
    c1, c2 = stats.norm.ppf(0.1), stats.norm.ppf(0.9)
    yy = upper_orthant(c1, c2, 0.24)
    probs = [yy, 0.9 - yy, 0.1 - yy, 1 - 0.9 - 0.1 + yy]  # YY, YN, NY, NN
    loss = [-100 + 900, -100 - 100, 900 + 900, 900 - 100]
    exact = kj.exact_expected_shortfall(loss, probs, 0.99)
    assert exact == pytest.approx(800 + 1000 * probs[2] / 0.01)
    assert 1150 < exact < 1250
    r = kj.portfolio_margin(book)
    assert r.correlation_clusters == ("X", "Y", "Z")
    np.testing.assert_allclose(r.correlation, [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]], rtol=1e-7)
    assert_mc(r.base, exact, r.base_standard_error, 1800)
    assert r.base_standard_error > 0
    assert r.floor == pytest.approx(1800.0, rel=REL)


def test_empty_books_need_no_margin():
    for book in (make_book([binary("G", 0.4)]), make_book([])):
        r = kj.portfolio_margin(book, scenarios=4096)
        assert (r.margin, r.base, r.floor, r.worst_case_loss, r.full_collateral) == (0, 0, 0, 0, 0)
        assert r.capital_released == 0.0 and r.binding == "worst_case"


def test_addons_exact_and_switchable():
    """Long 1000 at 0.995 (thin tail, ES_99 = 495 +- s.e.): the MC buffer is
    z = 2 (or 3) standard errors of the base; a position of 1000 against an open
    interest of 2000 is 0.5 of it, 0.4 over the 0.1 threshold, so the liquidity
    add-on is rate * gross * 0.4 = 995 * 0.4 = 398 (at most the gross). Switched
    off, each is 0 and the margin is the base alone."""
    c = binary("X", 0.995, open_interest=2000.0)
    on = kj.portfolio_margin(make_book([c], {"X": 1000.0}))
    assert on.addons["liquidity"] == pytest.approx(398.0, rel=1e-6)
    assert on.addons["mc_error"] == pytest.approx(2 * on.base_standard_error, rel=1e-6)
    assert on.margin == pytest.approx(on.base + on.addons["mc_error"] + 398.0, rel=REL)
    z3 = kj.portfolio_margin(make_book([c], {"X": 1000.0}, mc_error_z=3.0, liquidity_rate=5.0))
    assert z3.addons["mc_error"] == pytest.approx(3 * on.base_standard_error, rel=1e-6)
    assert z3.addons["liquidity"] == pytest.approx(995.0, rel=1e-6)  # capped at the gross
    assert z3.margin == pytest.approx(995.0, rel=REL) and z3.binding == "worst_case"
    off = kj.portfolio_margin(make_book([c], {"X": 1000.0}, mc_error=False, liquidity=False))
    assert off.addons == dict.fromkeys(on.addons, 0.0)  # every add-on (others default off)
    assert {"mc_error", "liquidity"} <= set(off.addons)
    assert off.margin == off.base == on.base


# --- 3. a call spread on one event (nested strikes) -----------------------------------


def call_spread(p_lo: float, p_hi: float, q_long: float, q_short: float):
    return make_book(
        [above("BTC-100K", "BTC-DEC", 100_000, p_lo, "BTC"),
         above("BTC-110K", "BTC-DEC", 110_000, p_hi, "BTC")],
        {"BTC-100K": q_long, "BTC-110K": -q_short},
    )


def call_spread_regions(p_lo, p_hi, q_long, q_short):
    """Three regions of u = Phi(X): below both cuts, between them, above both."""
    probs = [1 - p_lo, p_lo - p_hi, p_hi]
    yes = [(0, 0), (1, 0), (1, 1)]
    loss = [q_long * (p_lo - a) - q_short * (p_hi - b) for a, b in yes]
    return probs, loss


def test_call_spread_worst_case_nets_exactly():
    """Long 1000 >100k at 0.55, short 1000 >110k at 0.33: the ladder is nested,
    so the worst outcome loses only 220 (both NO or both YES), against 1220 of
    full collateral. ES_99 = 220 (an atom of probability 0.78)."""
    r = kj.portfolio_margin(call_spread(0.55, 0.33, 1000, 1000))
    probs, loss = call_spread_regions(0.55, 0.33, 1000, 1000)
    assert max(loss) == pytest.approx(220.0)
    assert r.worst_case_loss == pytest.approx(220.0, rel=REL)
    assert r.full_collateral == pytest.approx(1220.0, rel=REL)
    assert r.base == pytest.approx(kj.exact_expected_shortfall(loss, probs, 0.99), rel=REL)
    assert r.margin == pytest.approx(220.0, rel=REL)
    assert r.capital_released == pytest.approx(1 - 220 / 1220, rel=1e-6)


def test_ratio_spread_es_from_three_regions():
    """Long 1000 >100k at 0.30, short 1500 >110k at 0.005: losses 292.5 (both
    NO, 0.70), -707.5 (between, 0.295), 792.5 (both YES, 0.005):
    ES_99 = (0.005 * 792.5 + 0.005 * 292.5) / 0.01 = 542.5."""
    probs, loss = call_spread_regions(0.30, 0.005, 1000, 1500)
    exact = kj.exact_expected_shortfall(loss, probs, 0.99)
    assert exact == pytest.approx(542.5)
    r = kj.portfolio_margin(call_spread(0.30, 0.005, 1000, 1500))
    assert_mc(r.base, exact, r.base_standard_error, 792.5)
    assert r.worst_case_loss == pytest.approx(792.5, rel=REL)
    assert r.full_collateral == pytest.approx(1792.5, rel=REL)
    assert r.base_standard_error > 0


# --- 4. mutually exclusive outcomes -----------------------------------------------------


def test_two_shorts_on_exclusive_outcomes():
    """Short 1000 of A at 0.40 and 1000 of B at 0.30 (SPEC.md §2.3): whichever
    wins, the book loses 600 - 300 or 700 - 400 = 300; if neither, it gains 700.
    Worst case 300 against 1300 of full collateral; ES_99 = 300 (an atom)."""
    book = make_book([outcome("A", "PRES", "A", 0.40), outcome("B", "PRES", "B", 0.30)],
                     {"A": -1000, "B": -1000})
    assert brute_worst_case(book) == pytest.approx(300.0)
    assert exact_es(book) == pytest.approx(300.0)
    r = kj.portfolio_margin(book)
    assert r.worst_case_loss == pytest.approx(300.0, rel=REL)
    assert r.full_collateral == pytest.approx(1300.0, rel=REL)
    assert r.base == pytest.approx(300.0, rel=REL)
    assert r.margin == pytest.approx(300.0, rel=REL)


def test_short_longshots_on_exclusive_outcomes():
    """Short 1000 each of two longshots at 0.006 and 0.003: a winner costs
    994 - 3 = 997 - 6 = 991 (probability 0.009); neither, the book gains 9.
    ES_99 = (0.009 * 991 - 0.001 * 9) / 0.01 = 891."""
    book = make_book([outcome("A", "PRES", "A", 0.006), outcome("B", "PRES", "B", 0.003)],
                     {"A": -1000, "B": -1000})
    exact = exact_es(book)
    assert exact == pytest.approx(891.0)
    r = kj.portfolio_margin(book)
    assert_mc(r.base, exact, r.base_standard_error, 991)
    assert r.worst_case_loss == pytest.approx(991.0, rel=REL)
    assert r.full_collateral == pytest.approx(1991.0, rel=REL)


def test_exclusive_outcomes_with_an_unheld_outcome_and_remainder():
    """Three listed outcomes (0.5, 0.3, 0.15) and an unlisted 5%: long 1000 A,
    short 2000 B. The enumeration gives each winner's loss; worst case and ES exact."""
    book = make_book(
        [outcome("A", "PRES", "A", 0.5), outcome("B", "PRES", "B", 0.3),
         outcome("C", "PRES", "C", 0.15)],
        {"A": 1000, "B": -2000},
    )
    # A wins: -500 - 600; B wins: 500 + 1400; C or unlisted (0.2): 500 - 600.
    assert brute_worst_case(book) == pytest.approx(1900.0)
    assert exact_es(book) == pytest.approx(1900.0)
    r = kj.portfolio_margin(book)
    assert r.worst_case_loss == pytest.approx(1900.0, rel=REL)
    assert r.base == pytest.approx(1900.0, rel=REL)
    assert r.full_collateral == pytest.approx(500 + 1400, rel=REL)


# --- 5. an independent sports book against 2^n outcomes -----------------------------------


def sports_book(n: int = 10, seed: int = 0, **settings):
    rng = np.random.default_rng(seed)
    prices = np.round(rng.uniform(0.15, 0.85, n), 3)
    qty = np.round(rng.uniform(100, 1000, n)) * rng.choice([-1, 1], n)
    games = [binary(f"G{i}", float(p)) for i, p in enumerate(prices)]
    return make_book(games, {f"G{i}": float(q) for i, q in enumerate(qty)}, **settings)


@pytest.mark.parametrize("sampler", ["plain", None])
def test_independent_sports_book_against_enumeration(sampler):
    """Ten independent games (Sports loading 0) against the 1024 joint outcomes:
    worst case exact; base, the Sports cluster ES and (one cluster) the floor
    within 4 s.e. of the exact ES (plain), or equal to it (the default,
    exact_block: every game is in the block, s.e. 0)."""
    book = sports_book()
    exact = exact_es(book)
    r = kj.portfolio_margin(book, sampler=sampler)
    assert r.worst_case_loss == pytest.approx(brute_worst_case(book), rel=REL)
    assert r.full_collateral == pytest.approx(full_collateral(book), rel=REL)
    assert_mc(r.base, exact, r.base_standard_error, r.full_collateral)
    assert_mc(cluster_es(r, "Sports"), exact, cluster_se(r, "Sports"), r.full_collateral)
    assert r.floor == cluster_es(r, "Sports")
    assert (r.base_standard_error > 0) == (sampler == "plain")
    # The tail is not an atom here: the exact ES is well below the worst case.
    assert exact < 0.9 * brute_worst_case(book)


# --- 6. parlays sharing legs ---------------------------------------------------------------


def test_parlays_sharing_legs_against_enumeration():
    """Parlay YES iff all legs YES, in the same scenarios as the legs. The legs'
    events are independent (Sports and Parlays load 0; one BTC event), so the
    enumeration of 2^5 x 3 joint outcomes gives the exact distribution: worst
    case exact, base and each cluster's ES within 4 s.e., the floor the top two."""
    book = parlay_book()
    r = kj.portfolio_margin(book)
    assert r.worst_case_exact
    assert r.worst_case_loss == pytest.approx(brute_worst_case(book), rel=REL)
    assert r.full_collateral == pytest.approx(full_collateral(book), rel=REL)
    assert r.worst_case_loss < r.full_collateral - 500  # shared legs net exactly
    assert_mc(r.base, exact_es(book), r.base_standard_error, r.full_collateral)
    for name in ("Sports", "Parlays", "BTC"):
        exact = exact_es(book, cluster=name)
        assert_mc(cluster_es(r, name), exact, cluster_se(r, name), r.full_collateral)
    top2 = sorted((c.es for c in r.clusters), reverse=True)[:2]
    assert r.floor == pytest.approx(sum(top2), rel=1e-6)


# --- 9. determinism ----------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["plain", None])
def test_same_seed_same_report_other_seed_within_error(sampler):
    book = sports_book()
    a = kj.portfolio_margin(book, sampler=sampler).to_dict()
    b = kj.portfolio_margin(book, sampler=sampler).to_dict()
    assert a == b
    c = kj.portfolio_margin(book, seed=1, sampler=sampler).to_dict()
    # Plain draws move with the seed; the default margins this all-block book
    # by its exact law, which no seed moves.
    assert c["seed"] == 1 and (c["base"] != a["base"]) == (sampler == "plain")
    if sampler == "plain":
        spread = math.hypot(a["base_standard_error"], c["base_standard_error"])
        assert abs(c["base"] - a["base"]) < SIGMAS * spread
    else:  # to the bit, with no standard error
        assert c["base_standard_error"] == a["base_standard_error"] == 0.0
    # The exact parts do not depend on the draws.
    for key in ("worst_case_loss", "full_collateral", "correlation"):
        assert c[key] == a[key]


# --- 10. homogeneity ---------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_scaling_quantities_scales_every_amount(lam):
    """Same draws, quantities times lambda: every ES (a positively homogeneous
    function of the losses, and the losses are linear in q), the worst case and
    the full collateral scale by lambda; so does the margin (no open interest,
    so no liquidity add-on). float32 rounding: rel 1e-5."""
    base = kj.portfolio_margin(parlay_book())
    scaled = kj.portfolio_margin(parlay_book(lam))
    for field in ("base", "floor", "worst_case_loss", "full_collateral", "margin",
                  "base_standard_error", "aggregate_diagnostic"):
        assert getattr(scaled, field) == pytest.approx(lam * getattr(base, field), rel=1e-5)
    for c0, c1 in zip(base.clusters, scaled.clusters):
        assert c1.es == pytest.approx(lam * c0.es, rel=1e-5, abs=1e-6)
        assert c1.gross == pytest.approx(lam * c0.gross, rel=1e-6)
    assert scaled.binding == base.binding
    assert scaled.capital_released == pytest.approx(base.capital_released, abs=1e-6)


def test_scaling_the_reference_book():
    """The reference book (every contract type, all eight clusters): base, floor,
    cluster ES, worst case and full collateral scale by lambda = 2."""
    book = kj.load_book("examples/reference_book.toml")
    scaled = book.with_positions({k: 2 * v for k, v in book.net_quantities().items()})
    r0, r1 = kj.portfolio_margin(book), kj.portfolio_margin(scaled)
    for field in ("base", "floor", "worst_case_loss", "full_collateral"):
        assert getattr(r1, field) == pytest.approx(2 * getattr(r0, field), rel=1e-5)
    for c0, c1 in zip(r0.clusters, r1.clusters):
        assert c1.es == pytest.approx(2 * c0.es, rel=1e-5)

"""Stress scenarios (SPEC.md §5.2): exact losses against closed forms written here
from the specification (scipy.stats.norm; no engine internals), conditional
means of factors not given, resolutions on ladders / outcomes / parlays, every
input error, the stress add-on on and off, and the CLI JSON."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import above, below, binary, make_book, outcome, parlay
from scipy.stats import norm

import kinetic_jax as kj
from kinetic_jax._cli import main as cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def mass(intervals, a: float, f: float) -> float:
    """P(Phi(X) in the union of `intervals` (in u)) for X = a f + sqrt(1 - a^2) eta."""
    s = math.sqrt(1 - a * a)
    total = 0.0
    for lo, hi in intervals:
        x_lo = -math.inf if lo <= 0 else norm.ppf(lo)
        x_hi = math.inf if hi >= 1 else norm.ppf(hi)
        total += norm.cdf((x_hi - a * f) / s) - norm.cdf((x_lo - a * f) / s)
    return total


def loss(book: kj.Book, p_yes: dict[str, float]) -> float:
    q = book.net_quantities()
    return sum(q[c.id] * (c.price - p_yes[c.id]) for c in book.contracts)


def by_name(report, name):
    return next(x for x in report if x.name == name)


# ---- factors: given values and conditional means ------------------------------------
def test_node_shock_sets_its_clusters_and_conditional_means_elsewhere():
    # crypto = -2 fixes BTC, ETH, SOL at -2. In the default hierarchy
    # R_SS = 0.68 off the diagonal, R_US = 0.35 for SPX and OIL (LCA risk) and 0
    # for Election, Sports, Parlays; R_SS^+ (-2, -2, -2) = -2 / (1 + 2 * 0.68) each.
    h = kj.default_hierarchy()
    f = kj.stress_factors(h, {"crypto": -2.0})
    mu = 0.35 * 3 * (-2.0) / (1 + 2 * 0.68)
    np.testing.assert_allclose(f, [-2, -2, -2, mu, mu, 0, 0, 0], rtol=1e-12, atol=1e-15)
    # One cluster: mu_U = R_US f_S.
    f = kj.stress_factors(h, {"BTC": 1.5})
    np.testing.assert_allclose(f, [1.5, 0.68 * 1.5, 0.68 * 1.5, 0.35 * 1.5, 0.35 * 1.5, 0, 0, 0],
                               rtol=1e-12, atol=1e-15)
    # Two given with different values: mu_U = R_US R_SS^{-1} f_S by hand (2x2 inverse).
    f = kj.stress_factors(h, {"BTC": -3.0, "SPX": 1.0})
    det = 1 - 0.35**2
    w_btc, w_spx = (-3.0 - 0.35 * 1.0) / det, (1.0 - 0.35 * -3.0) / det
    eth = 0.68 * w_btc + 0.35 * w_spx
    oil = 0.35 * w_btc + 0.35 * w_spx
    np.testing.assert_allclose(f, [-3, eth, eth, 1, oil, 0, 0, 0], rtol=1e-12, atol=1e-15)
    # No factors: the median scenario, every factor 0.
    np.testing.assert_array_equal(kj.stress_factors(h, {}), np.zeros(8))


def test_node_shock_losses_match_the_closed_form():
    contracts = [
        above("B1", "BTC-E", 100, 0.55, "BTC"),
        above("B2", "BTC-E", 110, 0.30, "BTC"),
        below("E0", "ETH-E", 3, 0.20, "ETH"),
        above("S1", "SPX-E", 5500, 0.62, "SPX"),
        below("O1", "OIL-E", 60, 0.25, "OIL"),
        binary("G", 0.4),
        parlay("P", ["B1", "S1"], 0.30),
    ]
    qty = {"B1": 1000, "B2": -700, "E0": 400, "S1": 800, "O1": -300, "G": 250, "P": -900}
    book = make_book(contracts, qty)
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("risk off", {"risk": -2.5}),))
    # risk = -2.5 covers every risk-asset cluster; Election/Sports/Parlays: 0.
    a, f = 0.9, -2.5
    p = {
        "B1": mass([(0.45, 1)], a, f),
        "B2": mass([(0.70, 1)], a, f),
        "E0": mass([(0, 0.20)], a, f),
        "S1": mass([(0.38, 1)], a, f),
        "O1": mass([(0, 0.25)], a, f),
        "G": 0.4,
        "P": mass([(0.45, 1)], a, f) * mass([(0.38, 1)], a, f),
    }
    (result,) = kj.stress_losses(book)
    assert result.loss == pytest.approx(loss(book, p), rel=1e-10)
    q = book.net_quantities()
    btc = q["B1"] * (0.55 - p["B1"]) + q["B2"] * (0.30 - p["B2"])
    assert result.clusters["BTC"] == pytest.approx(btc, rel=1e-10)
    assert result.clusters["Parlays"] == pytest.approx(-900 * (0.30 - p["P"]), rel=1e-10)
    assert result.clusters["Sports"] == 0.0
    assert sum(result.clusters.values()) == pytest.approx(result.loss, rel=1e-12)
    # The matrix itself, per contract.
    # (atol: the closed form here takes 1 - cdf, which loses digits deep in a tail.)
    np.testing.assert_allclose(kj.stress_matrix(book)[0], [p[c.id] for c in book.contracts],
                               rtol=1e-10, atol=1e-15)


def test_cluster_shock_moves_other_clusters_by_their_conditional_mean():
    contracts = [above("E1", "ETH-E", 4000, 0.5, "ETH"), above("S1", "SPX-E", 5500, 0.5, "SPX")]
    book = make_book(contracts, {"E1": 1000, "S1": -500})
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("btc", {"BTC": -3.0}),))
    p_eth = mass([(0.5, 1)], 0.9, 0.68 * -3.0)
    p_spx = mass([(0.5, 1)], 0.9, 0.35 * -3.0)
    (r,) = kj.stress_losses(book)
    assert r.loss == pytest.approx(1000 * (0.5 - p_eth) - 500 * (0.5 - p_spx), rel=1e-10)


# ---- resolutions --------------------------------------------------------------------
def test_resolve_on_a_ladder_conditions_the_other_strikes():
    # Ladder: above 100 at 0.6 (u > 0.4), above 110 at 0.3 (u > 0.7), below 90 at 0.15
    # (u <= 0.15). Resolving above-110 NO restricts u to (0, 0.7].
    contracts = [above("A100", "E", 100, 0.6), above("A110", "E", 110, 0.3),
                 below("B90", "E", 90, 0.15)]
    book = make_book(contracts, {"A100": 1000, "A110": -500, "B90": 300})
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("no 110", {"BTC": -1.0}, {"A110": "NO"}),))
    a, f = 0.9, -1.0
    z = mass([(0, 0.7)], a, f)
    p = {"A100": mass([(0.4, 0.7)], a, f) / z, "A110": 0.0, "B90": mass([(0, 0.15)], a, f) / z}
    (r,) = kj.stress_losses(book)
    assert r.loss == pytest.approx(loss(book, p), rel=1e-10)
    # YES on the top strike forces every lower above YES and the below NO.
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("yes 110", {}, {"A110": "YES"}),))
    np.testing.assert_allclose(kj.stress_matrix(book)[0], [1.0, 1.0, 0.0], atol=1e-12)


def test_resolve_no_of_a_middle_outcome_leaves_two_intervals():
    # Outcomes A 0.4 (0, 0.4], B 0.3 (0.4, 0.7], C 0.2 (0.7, 0.9]; remainder 0.1.
    # B NO leaves (0, 0.4] U (0.7, 1]. With a loading the factor matters.
    from kinetic_jax import Cluster, Hierarchy, Node

    h = Hierarchy((Node("root", None, 0.0), Node("pol", "root", 0.3)),
                  (Cluster("Election", "pol", 0.6), Cluster("Parlays", "root", 0.0),
                   Cluster("Sports", "root", 0.0)))
    contracts = [outcome("A", "E", "a", 0.4), outcome("B", "E", "b", 0.3),
                 outcome("C", "E", "c", 0.2), binary("G", 0.5),
                 parlay("PA", ["A", "G"], 0.2), parlay("PC", ["C", "G"], 0.1)]
    qty = {"A": -1000, "B": 500, "C": -800, "PA": 300, "PC": -600}
    book = make_book(contracts, qty, hierarchy=h)
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("B loses", {"Election": 1.2}, {"B": "NO"}),))
    a, f = 0.6, 1.2
    z = mass([(0, 0.4), (0.7, 1)], a, f)
    pa, pc = mass([(0, 0.4)], a, f) / z, mass([(0.7, 0.9)], a, f) / z
    p = {"A": pa, "B": 0.0, "C": pc, "G": 0.5, "PA": pa * 0.5, "PC": pc * 0.5}
    (r,) = kj.stress_losses(book)
    assert r.loss == pytest.approx(loss(book, p), rel=1e-10)
    assert r.clusters["Election"] == pytest.approx(-1000 * (0.4 - pa) + 500 * 0.3
                                                   - 800 * (0.2 - pc), rel=1e-10)


def test_outcome_overround_scales_the_intervals():
    # Prices sum to 1.04: probabilities are prices / 1.04, the last reaching u = 1.
    contracts = [outcome("A", "E", "a", 0.54), outcome("B", "E", "b", 0.5)]
    book = make_book(contracts, {"A": 100, "B": 100})
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("median"), kj.Stress("A wins", resolve={"A": "YES"})))
    m = kj.stress_matrix(book)
    np.testing.assert_allclose(m[0], [0.54 / 1.04, 0.5 / 1.04], rtol=1e-12)
    np.testing.assert_allclose(m[1], [1.0, 0.0], atol=1e-12)
    (median, a_wins) = kj.stress_losses(book)
    assert median.loss == pytest.approx(100 * 1.04 - 100, rel=1e-10)
    assert a_wins.loss == pytest.approx(100 * (0.54 - 1) + 100 * 0.5, rel=1e-10)


def test_parlay_on_one_event_uses_the_intersection_of_its_legs():
    # Legs above 100 (u > 0.45) and below 120 (u <= 0.8) on one event, plus a game:
    # P = P(0.45 < u <= 0.8 | resolve) * P(game).
    contracts = [above("A", "E", 100, 0.55), below("B", "E", 120, 0.8), binary("G", 0.6),
                 parlay("P", ["A", "B", "G"], 0.2)]
    book = make_book(contracts, {"P": -1000})
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("s", {"crypto": 0.5}, {"G": "YES"}),))
    p = mass([(0.45, 0.8)], 0.9, 0.5) * 1.0
    (r,) = kj.stress_losses(book)
    assert r.loss == pytest.approx(-1000 * (0.2 - p), rel=1e-10)


def test_ladder_within_tolerance_keeps_each_contracts_own_cut():
    # above 100 at 0.50 and above 110 at 0.51: violates nesting by 0.01 < 0.02.
    # Each keeps its own cut: (0.5, 1] and (0.49, 1]. Resolving A100 YES:
    # P(A110) = P(u > 0.5) / P(u > 0.5) = 1 (its cut is below).
    contracts = [above("A", "E", 100, 0.50), above("B", "E", 110, 0.51)]
    book = make_book(contracts, {"A": 10, "B": -10})
    book = kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("a", {}, {"A": "YES"}), kj.Stress("b", {}, {"B": "YES"})))
    m = kj.stress_matrix(book)
    np.testing.assert_allclose(m[0], [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(m[1], [mass([(0.5, 1)], 0.9, 0) / mass([(0.49, 1)], 0.9, 0), 1.0],
                               rtol=1e-12)


# ---- errors ---------------------------------------------------------------------------
BASE = """
[[contracts]]
id = "A"
cluster = "BTC"
type = "above"
event = "E"
threshold = 100
price = 0.6
[[contracts]]
id = "B"
cluster = "BTC"
type = "below"
event = "E"
threshold = 90
price = 0.3
[[contracts]]
id = "X"
cluster = "Election"
type = "outcome"
event = "V"
outcome = "x"
price = 0.5
[[contracts]]
id = "Y"
cluster = "Election"
type = "outcome"
event = "V"
outcome = "y"
price = 0.4
[[contracts]]
id = "G"
cluster = "Sports"
type = "binary"
price = 0.5
[[contracts]]
id = "P"
cluster = "Parlays"
type = "parlay"
legs = ["A", "G"]
price = 0.3
[[positions]]
contract = "A"
quantity = 100
"""


@pytest.mark.parametrize("stress, message", [
    ('name = "s"\nfactors = { nope = 1.0 }',
     r"stress\[0\] \(name 's'\)\.factors\.nope: unknown hierarchy node or cluster 'nope'"),
    ('name = "s"\nfactors = { crypto = "x" }',
     r"stress\[0\] \(name 's'\)\.factors\.crypto: 'x' is not a number"),
    ('name = "s"\nfactors = { crypto = nan }',
     r"stress\[0\] \(name 's'\)\.factors\.crypto: nan is not finite"),
    ('name = "s"\nfactors = { crypto = inf }',
     r"stress\[0\] \(name 's'\)\.factors\.crypto: inf is not finite"),
    ('name = "s"\nfactors = { crypto = true }',
     r"stress\[0\] \(name 's'\)\.factors\.crypto: True is not a number"),
    ('name = "s"\nfactors = { crypto = -3.0, BTC = -2.0 }',
     r"stress\[0\] \(name 's'\)\.factors\.BTC: 'BTC' is below 'crypto', and both are given"),
    ('name = "s"\nfactors = { BTC = -2.0, risk = -1.0 }',
     r"stress\[0\] \(name 's'\)\.factors\.risk: 'BTC' is below 'risk', and both are given"),
    ('name = "s"\nfactors = { risk = -3.0, crypto = -2.0 }',
     r"factors\.crypto: 'crypto' is below 'risk', and both are given"),
    ('name = "s"\nresolve = { NOPE = "YES" }',
     r"stress\[0\] \(name 's'\)\.resolve\.NOPE: unknown contract 'NOPE'"),
    ('name = "s"\nresolve = { P = "YES" }',
     r"stress\[0\] \(name 's'\)\.resolve\.P: 'P' is a parlay"),
    ('name = "s"\nresolve = { A = "yes" }',
     r"stress\[0\] \(name 's'\)\.resolve\.A: 'yes' is not 'YES' or 'NO'"),
    ('name = "s"\nresolve = { A = 1 }',
     r"stress\[0\] \(name 's'\)\.resolve\.A: 1 is not 'YES' or 'NO'"),
    ('name = "s"\nresolve = { X = "YES", Y = "YES" }',
     r"stress\[0\] \(name 's'\)\.resolve: X = YES, Y = YES leave event 'V' no outcome"),
    # above 100 at 0.6 is u > 0.4; below 90 at 0.3 is u <= 0.3: both YES is impossible.
    ('name = "s"\nresolve = { A = "YES", B = "YES" }',
     r"stress\[0\] \(name 's'\)\.resolve: A = YES, B = YES leave event 'E' no outcome"),
    ('name = "s"\nresolve = { A = "YES", G = "NO" }\n[[stress]]\nname = "s"',
     r"stress\[1\]\.name: duplicate scenario name 's' \(first at stress\[0\]\)"),
    ('name = ""', r"stress\[0\]\.name: '' is not a non-empty string"),
    ('factors = { crypto = 1.0 }', r"stress\[0\]\.name: missing"),
    ('name = "s"\nshock = 3',
     r"stress\[0\]\.shock: unknown key \(allowed: factors, name, resolve\)"),
    ('name = "s"\nfactors = 3', r"stress\[0\] \(name 's'\)\.factors: expected a table"),
])
def test_stress_input_errors(stress, message, tmp_path, capsys):
    with pytest.raises(kj.BookError, match=message):
        kj.loads_book(BASE + "[[stress]]\n" + stress + "\n")
    path = tmp_path / "b.toml"
    path.write_text(BASE + "[[stress]]\n" + stress + "\n")
    assert cli(["margin", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kinetic-jax: error: stress[") and "Traceback" not in err


def test_possible_resolutions_are_accepted():
    # The remainder of an outcome event (0.1) lets both listed outcomes be NO; an
    # above and a below that can both hold (u in (0.4, 0.3]) cannot, but NO/NO can.
    book = kj.loads_book(BASE + '[[stress]]\nname = "s"\nresolve = { X = "NO", Y = "NO", '
                                'A = "NO", B = "NO" }\n')
    m = kj.stress_matrix(book)[0]
    ids = book.contract_ids
    assert m[ids.index("X")] == 0.0 and m[ids.index("Y")] == 0.0
    assert m[ids.index("A")] == 0.0 and m[ids.index("B")] == 0.0


def test_stress_tables_round_trip_through_book_to_dict():
    book = kj.loads_book(BASE + '[model]\nstress_addon = true\n'
                                '[[stress]]\nname = "a"\nfactors = { crypto = -3.0 }\n'
                                'resolve = { X = "YES" }\n[[stress]]\nname = "b"\n')
    data = kj.book_to_dict(book)
    assert data["stress"] == [{"name": "a", "factors": {"crypto": -3.0}, "resolve": {"X": "YES"}},
                              {"name": "b", "factors": {}, "resolve": {}}]
    assert data["model"]["stress_addon"] is True
    again = kj.parse_book(data)
    assert again.stress == book.stress and again.settings.stress_addon


# ---- the add-on and the margin --------------------------------------------------------
def _addon_book(stress_addon: bool) -> kj.Book:
    # Long 1000 of an above at 0.5 on each of BTC, ETH and SOL: the crash scenario
    # (crypto = -4) loses nearly 3 * 500, above the 50% ES of the book (the
    # upper half of a diversified loss) and above the floor (2 * 500).
    contracts = [above("A", "E", 100, 0.5), above("B", "F", 100, 0.5, "ETH"),
                 above("C", "H", 100, 0.5, "SOL"), binary("G", 0.5)]
    book = make_book(contracts, {"A": 1000, "B": 1000, "C": 1000}, scenarios=8192,
                     confidence=0.5, stress_addon=stress_addon, liquidity=False)
    return kj.Book(book.contracts, book.positions, book.hierarchy, book.settings,
                   (kj.Stress("crash", {"crypto": -4.0}), kj.Stress("calm")))


def test_stress_addon_on_and_off():
    on, off = kj.portfolio_margin(_addon_book(True)), kj.portfolio_margin(_addon_book(False))
    crash = 3 * 1000 * (0.5 - mass([(0.5, 1)], 0.9, -4.0))
    assert by_name(on.stress, "crash").loss == pytest.approx(crash, rel=1e-10)
    assert by_name(on.stress, "calm").loss == pytest.approx(0.0, abs=1e-9)
    assert off.addons["stress"] == 0.0
    assert set(on.addons) == {"mc_error", "liquidity", "stress"}
    stressed = max(on.base, on.floor)
    assert crash > stressed
    # float32 core: the scenario loss to float32 rounding of ~1500 dollars.
    assert on.addons["stress"] == pytest.approx(crash - stressed, abs=2e-3)
    assert on.margin == pytest.approx(min(on.worst_case_loss,
                                          stressed + sum(on.addons.values())), rel=1e-6)
    assert on.margin > off.margin
    for key in ("base", "floor", "worst_case_loss"):
        assert getattr(on, key) == getattr(off, key)
    # A book whose scenarios all lose less than max(base, floor): no add-on.
    calm_only = dataclasses.replace(_addon_book(True), stress=(kj.Stress("calm"),))
    assert kj.portfolio_margin(calm_only).addons["stress"] == 0.0


def test_stress_addon_is_differentiable_in_quantity_and_price():
    book = _addon_book(True)
    arrays, _, params = kj.margin_inputs(book)
    s = book.settings
    top = kj.tail_size(s.scenarios, s.confidence)
    key = jax.random.key(s.seed)

    def addon(q, p):
        a = kj.MarginVars(q, p, arrays.rho, arrays.loading, arrays.horizon, arrays.spot,
                           arrays.vol).into(arrays)
        return kj.margin_arrays(a, params, key, s.scenarios, top).addons[2]

    g_q, g_p = jax.jit(jax.grad(addon, argnums=(0, 1)))(arrays.quantity, arrays.price)
    p_crash = mass([(0.5, 1)], 0.9, -4.0)
    # d addon / d q_A = (p_A - P_A) - d max(base, floor) / d q_A; the scenario part
    # is exact, so check it through the difference with the base's own gradient.
    def stressed(q, p):
        a = kj.MarginVars(q, p, arrays.rho, arrays.loading, arrays.horizon, arrays.spot,
                           arrays.vol).into(arrays)
        r = kj.margin_arrays(a, params, key, s.scenarios, top)
        return jnp.maximum(r.base, r.floor)

    h_q, h_p = jax.jit(jax.grad(stressed, argnums=(0, 1)))(arrays.quantity, arrays.price)
    assert float(g_q[0] + h_q[0]) == pytest.approx(0.5 - p_crash, rel=1e-5)
    assert float(g_p[0] + h_p[0]) == pytest.approx(1000.0, rel=1e-5)
    # The JAX scenario losses: linear in q with slope p - P, in p with slope q.
    m = jnp.asarray(kj.stress_matrix(book), jnp.float32)
    q = jnp.asarray([1000.0, 1000.0, 1000.0, 0.0], jnp.float32)
    p = jnp.asarray([0.5, 0.5, 0.5, 0.5], jnp.float32)
    cl = jnp.asarray([0, 1, 2, 6], jnp.int32)
    jac = jax.jacobian(lambda q: kj.scenario_losses(q, p, cl, m, 8).sum(axis=1))(q)
    np.testing.assert_allclose(np.asarray(jac), np.asarray(p[None, :] - m), rtol=1e-6)
    jac_p = jax.jacobian(lambda p: kj.scenario_losses(q, p, cl, m, 8).sum(axis=1))(p)
    np.testing.assert_allclose(np.asarray(jac_p), np.broadcast_to(np.asarray(q), (2, 4)))


# ---- the command line and the reference book -------------------------------------------
def test_cli_json_and_text_carry_the_stress_scenarios(tmp_path, capsys):
    path = tmp_path / "b.toml"
    path.write_text(BASE.replace("[[contracts]]", "[model]\nscenarios = 4096\nstress_addon = "
                                 "true\n[[contracts]]", 1)
                    + '[[stress]]\nname = "crash"\nfactors = { crypto = -3.0 }\n'
                    + '[[stress]]\nname = "X wins"\nresolve = { X = "YES" }\n')
    assert cli(["margin", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    p_a = mass([(0.4, 1)], 0.9, -3.0)
    assert [x["name"] for x in out["stress"]] == ["crash", "X wins"]
    assert out["stress"][0]["loss"] == pytest.approx(100 * (0.6 - p_a), rel=1e-10)
    assert out["stress"][0]["clusters"]["BTC"] == pytest.approx(100 * (0.6 - p_a), rel=1e-10)
    # No factors: every factor at 0, where the event's own noise alone moves A.
    p_median = mass([(0.4, 1)], 0.9, 0.0)
    assert out["stress"][1]["loss"] == pytest.approx(100 * (0.6 - p_median), rel=1e-10)
    assert set(out["stress"][0]["clusters"]) == set(out["correlation"]["clusters"])
    stressed = max(out["base"], out["floor"])
    assert out["addons"]["stress"] == pytest.approx(max(0.0, out["stress"][0]["loss"]
                                                        - stressed), abs=1e-3)
    assert cli(["margin", str(path), "--json", "--no-addon", "stress"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["addons"]["stress"] == 0.0 and off["stress"] == out["stress"]
    assert cli(["margin", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Stress scenarios" in text and "crash" in text and "X wins" in text


def test_reference_book_scenarios_leave_the_reference_figures_alone():
    ref = ROOT / "examples" / "reference_book.toml"
    assert filecmp.cmp(ref, ROOT / "kinetic_jax" / "dashboard" / "reference_book.toml",
                       shallow=False)
    book = kj.load_book(ref)
    assert len(book.stress) >= 2 and not book.settings.stress_addon
    report = kj.portfolio_margin(book, scenarios=4096)
    assert report.addons["stress"] == 0.0
    assert [x.name for x in report.stress] == [s.name for s in book.stress]
    crash = by_name(report.stress, "crypto crash")
    # A crypto crash loses on the long crypto ladders.
    assert crash.clusters["BTC"] > 0 and crash.loss > 0

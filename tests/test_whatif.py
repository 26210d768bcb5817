"""Pre-trade what-if (kinetic_jax._whatif): a session simulates once; every what-if
equals a full `portfolio_margin` call on the traded book with the same seed (worst
case, add-ons and binding included), for trades on held and unheld contracts and
for contracts new to the book; what-ifs of up to 8 trades never recompile."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import above, binary, make_book, outcome, parlay, parlay_book

import kinetic_jax as kj
from kinetic_jax import _whatif

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
N = 8192  # scenarios: small, so the tests stay cheap; equality does not depend on it


def traded_book(book: kj.Book, trades: dict, new=()) -> kj.Book:
    """The book after `trades` (id or Contract -> quantity), written independently
    of the session: contracts appended, quantities added."""
    q = book.net_quantities()
    for key, v in trades.items():
        cid = key.id if isinstance(key, kj.Contract) else key
        q[cid] = q.get(cid, 0.0) + v
    extended = dataclasses.replace(book, contracts=book.contracts + tuple(new))
    return extended.with_positions(q)


def assert_same(r: kj.MarginReport, f: kj.MarginReport) -> None:
    """Equal to float32 rounding of the loss updates (relative 1e-5 of the
    scale of the book)."""
    tol = 1e-5 * max(1.0, f.full_collateral)
    for name in ("margin", "base", "floor", "worst_case_loss", "full_collateral", "var",
                 "standard_error"):
        assert getattr(r, name) == pytest.approx(getattr(f, name), abs=tol), name
    for name, v in f.addons.items():
        assert r.addons[name] == pytest.approx(v, abs=tol), name
    assert r.binding == f.binding
    assert r.worst_case_exact == f.worst_case_exact
    for a, b in zip(r.clusters, f.clusters, strict=True):
        assert (a.name, a.positions) == (b.name, b.positions)
        assert a.es == pytest.approx(b.es, abs=tol) and a.gross == pytest.approx(b.gross, abs=tol)
    assert [s.to_dict() for s in r.stress] == [s.to_dict() for s in f.stress]


def small_book(**settings) -> kj.Book:
    """Ladders, an election (outcomes held and not), games and parlays on them,
    open interest (liquidity add-on) and a binding stress scenario."""
    contracts = [
        above("B90", "BTC-DEC", 90_000, 0.78), above("B100", "BTC-DEC", 100_000, 0.55),
        above("B110", "BTC-DEC", 110_000, 0.33, open_interest=2000.0),
        above("S5", "SPX-DEC", 5500, 0.6, "SPX"),
        outcome("A", "PRES", "A", 0.48), outcome("B", "PRES", "B", 0.37),
        outcome("C", "PRES", "C", 0.09),
        binary("G0", 0.62), binary("G1", 0.55), binary("G2", 0.4),
        parlay("P01", ["G0", "G1"], 0.36), parlay("PB", ["G2", "B100"], 0.2),
    ]
    qty = {"B90": -800, "B110": 1500, "S5": 700, "A": -2000, "B": 900, "G0": 300,
           "P01": -1200, "PB": 600}
    book = make_book(contracts, qty, scenarios=N, **settings)
    stress = kj.Stress("crypto crash", {"crypto": -3.0},
                       {"C": "YES", "S5": "NO", "B90": "YES", "G1": "NO"})
    return dataclasses.replace(book, stress=(stress,))


@pytest.fixture(scope="module")
def reference():
    # The plain sampler: there a what-if equals the full call of the traded book
    # (the default, exact_block, agrees within standard errors: below).
    book = kj.load_book(REFERENCE).with_settings(scenarios=N, sampler="plain")
    return book, kj.margin_session(book)


def test_session_report_is_the_full_call(reference):
    book, session = reference
    assert_same(session.report, kj.portfolio_margin(book))
    assert session.margin == session.report.margin


@pytest.mark.parametrize("trades", [
    {"BTC-100K-DEC": 500.0},
    {"BTC-90K-DEC": 1200.0, "PRES-2028-B": -3000.0, "PARLAY-LAL-KC": 800.0},
    {"SPX-5500-BELOW-DEC": -4600.0, "PRES-2028-A": 2500.5, "NBA-LAL": 10.0,
     "PARLAY-BTC-ETH": -100.0, "BTC-110K-DEC": 0.0},
])
def test_what_if_equals_full_call_on_the_reference_book(reference, trades):
    book, session = reference
    r = session.what_if(trades)
    f = kj.portfolio_margin(traded_book(book, trades))
    assert_same(r, f)
    # Float32 rounding of the updated losses, as in assert_same (one float32 step
    # of an $18,000 margin is $0.002).
    tol = 1e-5 * max(1.0, f.full_collateral)
    assert r.incremental == pytest.approx(f.margin - session.report.margin, abs=tol)
    assert r.margin_before == session.report.margin
    assert r.binding_before == session.report.binding
    assert dict(r.trades) == trades


def test_what_if_does_not_commit(reference):
    book, session = reference
    before = session.report
    session.what_if({"BTC-100K-DEC": 10_000.0})
    assert session.report is before and session.book is book


@pytest.mark.parametrize("settings", [{}, {"stress_addon": True, "confidence": 0.9},
                                      {"confidence": 0.975}])
def test_what_if_on_unheld_contracts_with_every_addon(settings):
    book = small_book(sampler="plain", **settings)
    session = kj.margin_session(book)
    trades = {"B100": 900.0, "C": -4000.0, "G1": 250.0, "B110": 5000.0, "P01": 1200.0}
    r = session.what_if(trades)
    f = kj.portfolio_margin(traded_book(book, trades))
    assert_same(r, f)
    assert f.addons["liquidity"] > 0 and f.addons["mc_error"] > 0
    if settings.get("stress_addon"):
        assert f.addons["stress"] > 0  # the scenario binds: the add-on is exercised


def test_what_if_when_the_worst_case_binds():
    # Two shorts on exclusive outcomes: the worst case (300) is below base + add-ons.
    contracts = [outcome("A", "E", "A", 0.4), outcome("B", "E", "B", 0.3), binary("G", 0.5)]
    book = make_book(contracts, {"A": -1000, "B": -1000}, scenarios=N)
    session = kj.margin_session(book)
    assert session.report.binding == "worst_case"
    for trades in ({"A": 500.0}, {"G": 100.0}, {"A": 1000.0, "B": 1000.0}):
        r = session.what_if(trades)
        f = kj.portfolio_margin(traded_book(book, trades))
        assert_same(r, f)
    # Closing every position: nothing to lose, margin 0.
    assert session.what_if({"A": 1000.0, "B": 1000.0}).margin == 0.0


NEW = [
    # a new strike on an existing ladder
    [kj.Contract("BTC-130K-DEC", "BTC", "above", 0.1, event="BTC-DEC", threshold=130_000.0,
                 resolves="2026-12-31")],
    # a new outcome of the election (its event's last outcome changes)
    [kj.Contract("PRES-2028-D", "Election", "outcome", 0.05, event="PRES-2028", outcome="D",
                 resolves="2028-11-07")],
    # a new event, and a new parlay on it and on an existing ladder
    [kj.Contract("NEW-GAME", "Sports", "binary", 0.4),
     kj.Contract("NEW-PARLAY", "Parlays", "parlay", 0.2, legs=("NEW-GAME", "BTC-100K-DEC"))],
    # a new event in a cluster with a loading
    [kj.Contract("ETH-2K-MAR", "ETH", "below", 0.2, event="ETH-MAR", threshold=2000.0)],
    # 22 new games: 65 contracts cross the padding bucket of 64 slots
    [kj.Contract(f"NEW-GAME-{i}", "Sports", "binary", 0.3 + 0.01 * i) for i in range(22)],
]


@pytest.mark.parametrize("new", NEW, ids=["strike", "outcome", "parlay", "event",
                                          "new-bucket"])
def test_new_contracts_equal_a_full_call_on_the_new_book(reference, new):
    book, session = reference
    trades = {c: (-1500.0 if i else 2000.0) for i, c in enumerate(new)}
    trades["PRES-2028-A"] = -700.0
    r = session.what_if(trades)
    f = kj.portfolio_margin(traded_book(book, trades, new))
    assert_same(r, f)
    assert {c.name: c.positions for c in r.clusters} == {c.name: c.positions
                                                         for c in f.clusters}


def test_a_new_parlay_on_legs_already_in_the_book(reference):
    """No event is redrawn: only the parlay's row is new, the minimum of its three
    legs' rows (one padding leg, always YES). Sold, so that how often it pays
    moves the Parlays cluster's tail (bought at 0.05, its rare YES barely would)."""
    book, session = reference
    new = kj.Contract("NEW-3-LEGS", "Parlays", "parlay", 0.05,
                      legs=("NBA-LAL", "NFL-PHI", "ETH-5K-DEC"))
    trades = {new: -3000.0}
    r = session.what_if(trades)
    f = kj.portfolio_margin(traded_book(book, trades, [new]))
    assert_same(r, f)
    parlays = {c.name: c.es for c in r.clusters}["Parlays"]
    assert parlays > {c.name: c.es for c in session.report.clusters}["Parlays"]


def test_new_contract_held_at_zero_leaves_the_margin(reference):
    book, session = reference
    r = session.what_if({kj.Contract("X", "Sports", "binary", 0.3): 0.0})
    assert r.margin == pytest.approx(session.report.margin, rel=1e-6)


def test_apply_commits_and_what_if_follows():
    book = parlay_book(scenarios=N)
    session = kj.margin_session(book)
    first = {"G1": 700.0, "P23": -400.0}
    applied = session.apply(first)
    after = traded_book(book, first)
    assert session.book.net_quantities() == after.net_quantities()
    assert_same(session.report, kj.portfolio_margin(after))
    assert applied.margin == pytest.approx(session.report.margin, abs=1e-3)
    new = kj.Contract("G5", "Sports", "binary", 0.5)
    second = {new: 300.0, "G0": -100.0}
    r = session.what_if(second)
    assert_same(r, kj.portfolio_margin(traded_book(after, second, [new])))
    assert r.margin_before == session.report.margin
    session.apply(second)
    assert "G5" in session.book.contract_ids
    assert_same(session.report, kj.portfolio_margin(traded_book(after, second, [new])))


def test_what_ifs_do_not_recompile():
    book = small_book()
    session = kj.margin_session(book)
    session.what_if({"B100": 1.0})
    compiled = _whatif._what_if._cached._cache_size()
    for trades in ({"B100": 5.0}, {"A": -3.0, "G2": 4.0}, {"C": 1.0, "B": 2.0, "G0": 3.0,
                   "G1": 4.0, "P01": 5.0, "PB": 6.0, "S5": 7.0, "B90": 8.0}):
        session.what_if(trades)
    session.apply({"G2": 10.0})
    session.what_if({"G2": -10.0})
    assert _whatif._what_if._cached._cache_size() == compiled


def test_default_sampler_what_ifs_agree_with_full_calls():
    # The default (exact_block): the untraded session is the full call exactly;
    # a what-if keeps the opening proposal and computes the traded book's law, so
    # it agrees with the full call (which refits) within standard errors; a
    # cluster exact in both (Sports, Parlays) is equal. (A half-unit trade puts
    # the block's lattice out of reach: the full call then samples Sports, while
    # the what-if keeps its untraded exact row.)
    book = kj.load_book(REFERENCE).with_settings(scenarios=N)
    session = kj.margin_session(book)
    assert session.sampler == "exact_block" and session.report.exact_positions == 27
    assert_same(session.report, kj.portfolio_margin(book))
    for trades in ({"BTC-100K-DEC": 500.0}, {"NBA-LAL": 700.0, "PARLAY-LAL-KC": -800.0},
                   {"SPX-5500-BELOW-DEC": -4600.0, "PRES-2028-A": 2500.5}):
        r = session.what_if(trades)
        f = kj.portfolio_margin(traded_book(book, trades))
        assert r.exact_positions == f.exact_positions
        assert abs(r.base - f.base) < 4 * (r.base_standard_error + f.base_standard_error)
        for a, b in zip(r.clusters, f.clusters):
            if a.standard_error == b.standard_error == 0:
                assert a.es == pytest.approx(b.es, rel=1e-5), a.name
            else:
                assert abs(a.es - b.es) < 4 * (a.standard_error + b.standard_error), a.name


def test_importance_sampler_keeps_the_original_proposal_until_apply():
    book = small_book(sampler="importance")
    session = kj.margin_session(book)
    # Untraded: the full call with the same proposal, exactly.
    assert_same(session.report, kj.portfolio_margin(book))
    assert_same(session.what_if({}), kj.portfolio_margin(book))
    # Traded: the same estimator on the original proposal; within a few standard
    # errors of the full call (which refits its proposal to the traded book).
    trades = {"B100": 900.0, "C": -4000.0}
    r = session.what_if(trades)
    f = kj.portfolio_margin(traded_book(book, trades))
    assert r.worst_case_loss == pytest.approx(f.worst_case_loss, rel=1e-6)
    assert abs(r.base - f.base) < 4 * (r.base_standard_error + f.base_standard_error)
    # Committing refits the proposal: the session's report, and the one apply
    # returns, are the full call's on the committed book, here every position
    # flipped (the opening proposal would sample the wrong tail).
    flip = {cid: -2.0 * q for cid, q in book.net_quantities().items() if q}
    applied = session.apply(flip)
    f = kj.portfolio_margin(traded_book(book, flip))
    assert_same(session.report, f)
    assert_same(applied, f)
    assert applied.margin_before == pytest.approx(kj.portfolio_margin(book).margin, rel=1e-6)
    assert applied.incremental == applied.margin - applied.margin_before


@pytest.mark.parametrize("trades, message", [
    ({"NOPE": 1.0}, r"trades\['NOPE'\]: unknown contract; to trade a contract new to the "
                    r"book, give its definition"),
    ({"G0": "ten"}, r"trades\['G0'\]: 'ten' is not a number"),
    ({"G0": float("nan")}, r"trades\['G0'\]: nan is not finite"),
    ({"G0": True}, r"trades\['G0'\]: True is not a number"),
    ({"G0": 2e15}, r"trades\['G0'\]: 2000000000000000.0 is outside \[-1e\+15, 1e\+15\]"),
    ({3: 1.0}, r"trades: key 3 is neither a contract id nor a kj.Contract"),
    ({kj.Contract("G0", "Sports", "binary", 0.9): 1.0},
     r"trades\['G0'\]: a contract of that id is in the book with another definition"),
    ({kj.Contract("N", "Nowhere", "binary", 0.5): 1.0},
     r"trades \(contracts\[\d+\] \(id 'N'\)\.cluster\): unknown cluster 'Nowhere'"),
    ([("G0", 1.0)], r"trades: list is not a mapping"),
])
def test_bad_trades_are_named(trades, message):
    # At N: the session program of test_apply_commits_and_what_if_follows.
    session = kj.margin_session(parlay_book(scenarios=N))
    with pytest.raises(kj.BookError, match=message):
        session.what_if(trades)
    assert session.book.net_quantities() == parlay_book().net_quantities()

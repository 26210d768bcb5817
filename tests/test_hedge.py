"""Hedge optimiser: exact certificates (LP optimum, closing a position), bounds,
costs, input errors, CLI.

Compiled programs are keyed by the book's padded shape, the scenario count, the
instrument bucket and the (static) step count: the tests below use 2,048 scenarios
and the same few shapes (a 48-contract random book with 20 instruments; two- and
one-contract books with their own instruments) so they share them.

Every figure they check is exact at any scenario count (the LP optimum on the same
draws, a closed position, a whole-lot search), so they run at 2,048: each step of the
optimiser ranks every scenario, and at 8,192 the module took twice as long (49.6
against 24.4 s in one process, warm compilation cache, 2026-12-04)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import above, binary, make_book, outcome, parlay

import kinetic_jax as kj
from kinetic_jax._cli import main as cli
from kinetic_jax._lp import certify_hedge


def test_optax_base_es_is_within_0_1_percent_of_the_lp_optimum():
    # Same scenarios, instruments and box: the Rockafellar-Uryasev LP (HiGHS) is
    # the exact minimum of the empirical base ES; the optax hedge must come
    # within 0.1% of it (and can never beat it by more than rounding).
    book = kj.random_book(48, seed=3, settings=kj.Settings(scenarios=2048, mc_error=False,
                                                            liquidity=False))
    instruments = [c.id for c in book.contracts][:20]
    lp = certify_hedge(book, instruments, max_quantity=1000.0)
    assert lp.status == "optimal"
    hedge = kj.optimise_hedge(book, instruments, max_quantity=1000.0, objective="base")
    assert hedge.continuous_base >= lp.es * (1 - 1e-5)
    assert hedge.continuous_base <= lp.es * (1 + 1e-3)
    assert hedge.base_after < hedge.base_before
    # Whole contracts cannot beat the continuous LP optimum either.
    assert hedge.base_after >= lp.es * (1 - 1e-5)


def test_lp_with_trading_cost_matches_optax():
    # The plain sampler: the optimiser's scenarios are the margin call's, so the
    # reported base after the hedge is the LP's objective at the same draws.
    book = kj.random_book(48, seed=4, settings=kj.Settings(scenarios=2048, mc_error=False,
                                                            liquidity=False, sampler="plain"))
    instruments = [c.id for c in book.contracts][:20]  # the optimum test's bucket
    lp = certify_hedge(book, instruments, max_quantity=800.0, cost=0.05)
    hedge = kj.optimise_hedge(book, instruments, max_quantity=800.0, cost=0.05,
                              objective="base", lot=None)
    assert hedge.base_after + hedge.trading_cost <= lp.es * (1 + 1e-3)
    assert hedge.base_after + hedge.trading_cost >= lp.es * (1 - 1e-5)


@pytest.mark.parametrize("price, bound, cost, lp_es", [(0.39, 300.0, 0.05, 588.0),
                                                      (0.30, 1000.0, 0.0, 550.0)])
def test_the_optimiser_follows_a_valley_across_the_coordinates(price, bound, cost, lp_es):
    """Long a game, short a parlay with it as a leg priced above it: a sure gain
    of (price - 0.25) a unit, so the optimum is the box's corner (+Q, -Q); each
    coordinate alone adds risk. One schedule stalls part of the way (at 175 and
    755 of the bound, at these 2,048 scenarios); the warm restarts reach the LP
    optimum (exact here: lp_es = the long A's ES less the gain, less the cost)."""
    book = make_book([above("A", "BTC-E", 1.0, 0.6), binary("G", 0.25), binary("G1", 0.5),
                      parlay("P", ["G", "G1"], price)], {"A": 1000.0}, scenarios=2048,
                     sampler="plain")
    lp = certify_hedge(book, ["G", "P"], max_quantity=bound, cost=cost)
    assert lp.es == pytest.approx(lp_es, rel=1e-6)
    problem, top = kj.build_hedge_problem(book, ["G", "P"], bound, cost)
    _, trace = kj.solve_hedge(problem, top, 1000, "base")
    assert float(np.min(np.asarray(trace))) > lp_es * 1.005  # one schedule stalls
    hedge = kj.optimise_hedge(book, ["G", "P"], max_quantity=bound, cost=cost,
                              objective="base", lot=None)
    x = np.array([hedge.continuous_quantities[c] for c in ("G", "P")])
    assert hedge.continuous_base + cost * np.abs(x).sum() == pytest.approx(lp_es, rel=1e-5)
    np.testing.assert_allclose(x, [bound, -bound], rtol=1e-4)
    assert hedge.converged and hedge.iterations == len(hedge.trace) >= 2000


def test_closing_the_position_is_found():
    # Long 1000 of a game; the instrument is the game itself with |trade| <= 2000:
    # selling 1000 leaves an empty book with margin 0.
    book = make_book([binary("G", 0.4), binary("H", 0.7)], {"G": 1000.0}, scenarios=2048)
    h = kj.optimise_hedge(book, ["G"], max_quantity=2000.0)
    assert h.margin_before == pytest.approx(400.0, rel=1e-6)
    assert h.quantities["G"] == pytest.approx(-1000.0, abs=0.5)
    assert h.margin_after == pytest.approx(0.0, abs=0.5)
    assert h.capital_freed == pytest.approx(h.margin_before - h.margin_after)


def test_bounds_and_prohibitive_cost():
    book = make_book([above("A", "BTC-E", 1.0, 0.6), above("B", "ETH-E", 1.0, 0.5,
                                                           cluster="ETH")],
                     {"A": 1000.0}, scenarios=2048)
    h = kj.optimise_hedge(book, ["A", "B"], max_quantity=300.0)
    assert all(abs(q) <= 300.0 + 1e-3 for q in h.quantities.values())
    assert h.margin_after <= h.margin_before
    # A cost above any marginal margin (|dM/dq| <= 1 for a $1 contract) makes
    # every trade a loss: the best trade is none.
    h = kj.optimise_hedge(book, ["A", "B"], max_quantity=300.0, cost=2.0)
    assert all(q == 0.0 for q in h.quantities.values())
    assert h.margin_after == h.margin_before


@pytest.mark.parametrize("kwargs, message", [
    ({"instruments": ["NOPE"]}, r"instrument\[0\]: unknown contract 'NOPE'"),
    ({"instruments": ["G", "G"]}, r"instrument\[1\]: 'G' is given twice"),
    ({"instruments": []}, r"instrument: give at least one instrument"),
    ({"instruments": ["G"], "cost": -1.0}, r"cost: -1.0 must be non-negative"),
    ({"instruments": ["G"], "max_quantity": 0.0}, r"max_quantity: 0.0 is outside \(0, 1e\+15\]"),
    # beyond float32 the optimiser diverged, with NaN in its trace and exit 0
    ({"instruments": ["G"], "max_quantity": 1e39}, r"max_quantity: 1e\+39 is outside"),
    ({"instruments": ["G"], "max_quantity": float("nan")}, r"max_quantity: nan is not"),
    ({"instruments": ["G"], "objective": "var"}, r"objective: 'var' is not one of"),
    ({"instruments": ["G"], "steps": 0}, r"steps: 0 is outside"),
])
def test_bad_hedge_inputs(kwargs, message):
    book = make_book([binary("G", 0.4)], {"G": 10.0}, scenarios=1024)
    instruments = kwargs.pop("instruments")
    with pytest.raises(kj.BookError, match=message):
        kj.optimise_hedge(book, instruments, **kwargs)


def test_cli_hedge_json(capsys, tmp_path):
    book = tmp_path / "b.toml"
    book.write_text(
        '[model]\nscenarios = 2048\n'
        '[[contracts]]\nid = "X"\ncluster = "BTC"\ntype = "above"\nthreshold = 1\nprice = 0.55\n'
        '[[contracts]]\nid = "Y"\ncluster = "ETH"\ntype = "above"\nthreshold = 1\nprice = 0.4\n'
        '[[positions]]\ncontract = "X"\nquantity = 1000\n'
        '[[positions]]\ncontract = "Y"\nquantity = -800\n'
    )
    assert cli(["hedge", str(book), "--instrument", "X", "--instrument", "Y",
                "--max-quantity", "2000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("quantities", "margin_before", "margin_after", "iterations", "converged"):
        assert key in out
    assert set(out["quantities"]) == {"X", "Y"}
    assert out["margin_after"] <= out["margin_before"]
    before = kj.portfolio_margin(kj.load_book(book)).margin
    assert out["margin_before"] == pytest.approx(before, rel=1e-6)
    # The hedged book, margined from scratch on the same seed, has the reported margin.
    hedged = kj.load_book(book).with_positions(out["positions_after"])
    assert kj.portfolio_margin(hedged).margin == pytest.approx(out["margin_after"], rel=1e-4,
                                                                abs=0.05)
    assert np.isfinite(out["capital_freed"])
    assert cli(["hedge", str(book), "--instrument", "Z"]) == 2
    assert "instrument[0]: unknown contract 'Z'" in capsys.readouterr().err


# ---- whole lots -----------------------------------------------------------------------
def _traded_book(book, result):
    return book.with_positions(result.positions_after)


def test_integer_hedge_is_remargined_exactly():
    """Default lot 1: every trade is a whole number of contracts within the bound;
    the reported margin after is the traded book's plain portfolio_margin with the
    same seed (hedges run on plain draws), and the optimiser's own figure at that
    trade agrees to float32 rounding."""
    book = make_book([above("A", "BTC-E", 1.0, 0.61), above("B", "BTC-E", 2.0, 0.33),
                      above("E", "ETH-E", 1.0, 0.47, cluster="ETH"), binary("G", 0.45)],
                     {"A": 1000.0, "E": -700.0, "G": 300.0}, scenarios=2048)
    instruments = ["A", "B", "E"]
    h = kj.optimise_hedge(book, instruments, max_quantity=750.0, steps=300)
    assert h.lot == 1.0
    for cid, v in h.quantities.items():
        assert v == round(v) and abs(v) <= 750.0
    traded = kj.portfolio_margin(_traded_book(book, h), sampler="plain")
    assert h.margin_after == traded.margin
    assert h.search_margin == pytest.approx(traded.margin, rel=2e-6, abs=1e-3)
    assert h.margin_before == kj.portfolio_margin(book, sampler="plain").margin
    assert h.capital_freed == pytest.approx(h.margin_before - h.margin_after)
    # The continuous optimum is reported beside it; rounding plus the search
    # costs at most a little (|dM/dq| <= 1 per contract, half a lot per instrument).
    assert set(h.continuous_quantities) == set(instruments)
    assert h.search_margin <= h.continuous_margin + 0.5 * len(instruments)
    assert h.margin_after < h.margin_before


def test_lot_size_and_closing_in_lots():
    # Long 1000 of a game, lot 300, |trade| <= 2000: multiples of 300 only, so
    # -900 or -1200 (both leave 100 contracts at risk; -900: long 100 at 0.4,
    # margin 40; -1200: short 200, margin 120): the search must find -900.
    book = make_book([binary("G", 0.4)], {"G": 1000.0}, scenarios=2048)
    h = kj.optimise_hedge(book, ["G"], max_quantity=2000.0, lot=300.0)
    assert h.quantities["G"] == -900.0
    assert h.margin_after == pytest.approx(40.0, rel=1e-6)
    assert h.continuous_quantities["G"] == pytest.approx(-1000.0, abs=0.5)
    assert h.continuous_margin == pytest.approx(0.0, abs=0.5)


def test_rounding_is_improved_by_the_local_search():
    # From a continuous optimum that is not a whole number, the search evaluates
    # one lot either way: its result is never worse than plain rounding.
    book = kj.random_book(16, seed=8, settings=kj.Settings(scenarios=4096))
    instruments = [c.id for c in book.contracts][:4]
    h = kj.optimise_hedge(book, instruments, max_quantity=500.0, steps=200, lot=7.0)
    assert all(v % 7.0 == 0 for v in h.quantities.values())
    rounded = {k: 7.0 * round(v / 7.0) for k, v in h.continuous_quantities.items()}
    plain = dict(book.net_quantities())
    for k, v in rounded.items():
        plain[k] += v
    m_rounded = kj.portfolio_margin(book.with_positions(
        {k: v for k, v in plain.items() if v != 0}), sampler="plain").margin
    assert h.margin_after <= m_rounded + 1e-3


@pytest.mark.parametrize("lot, message", [
    (0.0, r"lot: 0.0 must be positive"),
    (-1.0, r"lot: -1.0 must be positive"),
    (float("inf"), r"lot: inf is not a finite number"),
    (5000.0, r"lot: 5000.0 is larger than max_quantity 100.0"),
])
def test_bad_lots(lot, message):
    book = make_book([binary("G", 0.4)], {"G": 10.0}, scenarios=1024)
    with pytest.raises(kj.BookError, match=message):
        kj.optimise_hedge(book, ["G"], max_quantity=100.0, lot=lot)


def test_changing_bounds_cost_or_lot_does_not_recompile():
    CompileCounter = kj.CompileCounter

    book = make_book([above("A", "BTC-E", 1.0, 0.6), above("B", "ETH-E", 1.0, 0.5,
                                                           cluster="ETH")],
                     {"A": 1000.0, "B": -300.0}, scenarios=2048)
    kj.optimise_hedge(book, ["A", "B"], max_quantity=300.0)
    with CompileCounter() as counter:
        h = kj.optimise_hedge(book, ["A", "B"], max_quantity=420.0, cost=0.01, lot=3.0)
    assert (counter.traces, counter.compiles) == (0, 0)
    assert all(abs(v) <= 420.0 and v % 3.0 == 0 for v in h.quantities.values())


def test_a_float64_hedge_in_whole_lots(x64):
    # The local search's objective values came back as a read-only float64 view.
    book = make_book([above("A", "BTC-E", 1.0, 0.6), above("B", "ETH-E", 1.0, 0.5,
                                                           cluster="ETH")],
                     {"A": 1000.0, "B": -300.0}, scenarios=2048)
    h32 = kj.optimise_hedge(book, ["A", "B"], max_quantity=300.0, steps=200)
    h64 = kj.optimise_hedge(book, ["A", "B"], max_quantity=300.0, steps=200, dtype="float64")
    assert all(v == round(v) and abs(v) <= 300.0 for v in h64.quantities.values())
    assert h64.margin_after == pytest.approx(h32.margin_after, rel=1e-3)
    assert h64.margin_after <= h64.margin_before


def test_cli_hedge_lot(capsys, tmp_path):
    book = tmp_path / "b.toml"
    book.write_text(
        '[model]\nscenarios = 2048\n'
        '[[contracts]]\nid = "G"\ncluster = "Sports"\ntype = "binary"\nprice = 0.4\n'
        '[[positions]]\ncontract = "G"\nquantity = 1000\n'
    )
    assert cli(["hedge", str(book), "--instrument", "G", "--max-quantity", "2000",
                "--lot", "300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quantities"] == {"G": -900.0} and out["lot"] == 300.0
    for key in ("continuous_quantities", "continuous_margin", "search_margin", "search_moves"):
        assert key in out
    assert cli(["hedge", str(book), "--instrument", "G", "--max-quantity", "2000"]) == 0
    text = capsys.readouterr().out
    assert "-1,000" in text and "continuous optimum" in text
    assert cli(["hedge", str(book), "--instrument", "G", "--lot", "0"]) == 2
    assert "lot: 0.0 must be positive" in capsys.readouterr().err


def test_a_hedge_reports_the_margins_it_searched():
    """A book with games (an exact block under the default margin call) whose base
    binds: the search runs on plain draws, and so must the margins it reports.
    They were margined with the default's exact law, 868.40 after against the
    search's 852.69, and the trade was not the best by the reported margin."""
    contracts = [above("B", "BTC-DEC", 100_000, 0.55), above("E", "ETH-DEC", 5000, 0.6,
                                                              cluster="ETH"),
                 binary("G0", 0.52), binary("G1", 0.7), outcome("PA", "PRES", "A", 0.5),
                 outcome("PB", "PRES", "B", 0.45)]
    book = make_book(contracts, {"B": 1000, "G0": 300, "G1": -400, "PA": 200}, scenarios=4096,
                     seed=5, confidence=0.9, mc_error=False, liquidity=False)
    h = kj.optimise_hedge(book, ["E"], max_quantity=1000.0)
    assert h.binding_after == "base"
    assert h.search_margin == pytest.approx(h.margin_after, rel=2e-6)
    grid = {q: kj.portfolio_margin(book.with_positions({**book.net_quantities(), "E": q}),
                                   sampler="plain").margin for q in range(-500, 1, 100)}
    assert h.margin_after <= min(grid.values()) + 1e-3

"""Hedge optimiser: exact certificates (LP optimum, closing a position), bounds,
costs, input errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import above, binary, make_book

import kinetic_jax as kj
from kinetic_jax._cli import main as cli
from kinetic_jax._lp import certify_hedge


def test_optax_base_es_is_within_0_1_percent_of_the_lp_optimum():
    # Same scenarios, instruments and box: the Rockafellar-Uryasev LP (HiGHS) is
    # the exact minimum of the empirical base ES; the optax hedge must come
    # within 0.1% of it (and can never beat it by more than rounding).
    book = kj.random_book(48, seed=3, settings=kj.Settings(scenarios=8192, mc_error=False,
                                                            liquidity=False))
    instruments = [c.id for c in book.contracts][:20]
    lp = certify_hedge(book, instruments, max_quantity=1000.0)
    assert lp.status == "optimal"
    hedge = kj.optimise_hedge(book, instruments, max_quantity=1000.0, objective="base")
    assert hedge.base_after >= lp.es * (1 - 1e-5)
    assert hedge.base_after <= lp.es * (1 + 1e-3)
    assert hedge.base_after < hedge.base_before


def test_lp_with_trading_cost_matches_optax():
    book = kj.random_book(48, seed=4, settings=kj.Settings(scenarios=8192, mc_error=False,
                                                            liquidity=False))
    instruments = [c.id for c in book.contracts][:10]
    lp = certify_hedge(book, instruments, max_quantity=800.0, cost=0.05)
    hedge = kj.optimise_hedge(book, instruments, max_quantity=800.0, cost=0.05,
                              objective="base")
    assert hedge.base_after + hedge.trading_cost <= lp.es * (1 + 1e-3)
    assert hedge.base_after + hedge.trading_cost >= lp.es * (1 - 1e-5)


def test_closing_the_position_is_found():
    # Long 1000 of a game; the instrument is the game itself with |trade| <= 2000:
    # selling 1000 leaves an empty book with margin 0.
    book = make_book([binary("G", 0.4), binary("H", 0.7)], {"G": 1000.0}, scenarios=8192)
    h = kj.optimise_hedge(book, ["G"], max_quantity=2000.0)
    assert h.margin_before == pytest.approx(400.0, rel=1e-6)
    assert h.quantities["G"] == pytest.approx(-1000.0, abs=0.5)
    assert h.margin_after == pytest.approx(0.0, abs=0.5)
    assert h.capital_freed == pytest.approx(h.margin_before - h.margin_after)


def test_bounds_and_prohibitive_cost():
    book = make_book([above("A", "BTC-E", 1.0, 0.6), above("B", "ETH-E", 1.0, 0.5,
                                                           cluster="ETH")],
                     {"A": 1000.0}, scenarios=8192)
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
    ({"instruments": ["G"], "max_quantity": 0.0}, r"max_quantity: 0.0 must be positive"),
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
        '[model]\nscenarios = 8192\n'
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

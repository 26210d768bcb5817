"""What-if under a liquidation horizon and with perps: the session keeps marks
(fractions, and linear value changes), so a what-if equals the full margin call
of the traded book."""

from __future__ import annotations

import dataclasses

import pytest

import kinetic_jax as kj

N = 8192


def traded(book, trades):
    q = book.net_quantities()
    for k, v in trades.items():
        q[k] = q.get(k, 0.0) + v
    return book.with_positions(q)


@pytest.fixture(scope="module")
def horizon_session():
    # The plain sampler: there a what-if equals the full call exactly (the default
    # agrees within standard errors: tests/test_whatif.py).
    book = kj.load_book("examples/reference_book.toml").with_settings(scenarios=N,
                                                                      horizon_days=2,
                                                                      sampler="plain")
    return book, kj.margin_session(book)


@pytest.mark.parametrize("trades", [{"BTC-100K-DEC": 30000.0},  # a live ladder strike
                                    {"PARLAY-BTC-ETH": -5000.0},  # a shared-factor parlay
                                    {"ETH-5K-DEC": -8000.0, "NBA-LAL": 900.0}])
def test_live_trades_equal_full_calls(horizon_session, trades):
    book, session = horizon_session
    w = session.what_if(trades)
    full = kj.portfolio_margin(traded(book, trades))
    assert w.margin == pytest.approx(full.margin, rel=1e-5)
    assert w.base == pytest.approx(full.base, rel=1e-5)
    # The trade in a live contract moves the base (marks are fractions, not 0/1).
    assert w.base != pytest.approx(session.report.base, rel=1e-4)


def test_new_strike_on_a_dated_event(horizon_session):
    book, session = horizon_session
    new = kj.Contract("BTC-130K-DEC", "BTC", "above", 0.1, event="BTC-DEC",
                      threshold=130000.0)
    w = session.what_if({new: -20000.0})
    extended = dataclasses.replace(book, contracts=book.contracts + (
        dataclasses.replace(new, resolves="2026-12-31"),))
    full = kj.portfolio_margin(traded(extended, {"BTC-130K-DEC": -20000.0}))
    assert w.base == pytest.approx(full.base, rel=1e-5)
    assert w.margin == pytest.approx(full.margin, rel=1e-5)


def test_perp_trade_equals_full_call():
    book = kj.load_book("examples/perps_and_strip.toml").with_settings(scenarios=N,
                                                                       sampler="plain")
    session = kj.margin_session(book)
    w = session.what_if({"BTC-PERP": -1.0})
    full = kj.portfolio_margin(traded(book, {"BTC-PERP": -1.0}))
    assert w.margin == pytest.approx(full.margin, rel=1e-5)
    assert w.margin < session.report.margin  # selling the perp flattens the delta

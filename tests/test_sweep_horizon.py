"""Sweeps under a liquidation horizon: a ``horizon_days`` axis, and every axis of a
book with a horizon, give the margin call's figures at each point."""

from __future__ import annotations

import numpy as np
import pytest

import kinetic_jax as kj

# Every assertion compares a sweep point with the margin call on the same draws
# (common random numbers) or figures far apart: they hold at any scenario count.
# 4,096 is the count of the CLI tests (the reference book's programs are shared).
N = 4096


@pytest.fixture(scope="module")
def book():
    # The sweep's sampler (plain where unset), for its margin calls too.
    return kj.load_book("examples/reference_book.toml").with_settings(scenarios=N,
                                                                      sampler="plain")


def test_horizon_axis_points_equal_margin_calls(book):
    days = [0.0, 1.0, 2.0, 5.0, 400.0]
    r = kj.sweep(book, [("horizon_days", days)])
    assert list(r.valid) == [False, True, True, True, False]
    assert "model.horizon_days" in r.reasons[0] and "0.0" in r.reasons[0]
    assert "400.0" in r.reasons[-1]
    for i, d in enumerate(days[1:4], start=1):
        call = kj.portfolio_margin(book.with_settings(horizon_days=d))
        assert r.margin[i] == pytest.approx(call.margin, rel=1e-5)
        assert r.binding[i] == call.binding
    # Longer horizons reveal more: the margin rises with the horizon here.
    assert r.margin[1] < r.margin[2] < r.margin[3]


def test_axes_of_a_book_with_a_horizon_use_the_marks(book):
    at2 = book.with_settings(horizon_days=2)
    r = kj.sweep(at2, [("loading.BTC", [0.8, 0.9])])
    assert r.margin[1] == pytest.approx(kj.portfolio_margin(at2).margin, rel=1e-5)
    low = kj.portfolio_margin(at2.with_hierarchy(at2.hierarchy.replace(loading={"BTC": 0.8})))
    assert r.margin[0] == pytest.approx(low.margin, rel=1e-5)
    # Not the resolution figures.
    assert r.margin[1] < 0.6 * kj.portfolio_margin(book).margin


def test_horizon_sensitivity_agrees_with_the_grid(book):
    r = kj.sweep(book, [("horizon_days", [2.0, 2.25])], sensitivities=True)
    slope = (r.margin[1] - r.margin[0]) / 0.25
    d = r.sensitivities["horizon_days"]
    assert np.all(np.isfinite(d))
    assert d[0] == pytest.approx(slope, rel=0.25)


def test_layout_at_the_shortest_valid_horizon():
    """A parlay over four loaded clusters is refused while all four legs are live
    (its leg D resolves on day 5): the 2-day point is invalid, and the valid points
    are margined at their horizons — not on v1 outcomes because the shortest
    horizon could not be laid out."""
    from test_horizon import _four_cluster_parlay, day

    # 1,024 scenarios: the parlay's three-cluster quadrature dominates the run time.
    book = _four_cluster_parlay(None, d_date=day(5)).with_settings(scenarios=1024,
                                                                   sampler="plain")
    book = book.with_positions({"P4": 1.0, "a": 1000.0})  # a: 30 days out, loaded
    r = kj.sweep(book, [("horizon_days", [2.0, 6.0, 8.0])])
    assert list(r.valid) == [False, True, True]
    assert "legs" in r.reasons[0]
    for i, h in ((1, 6.0), (2, 8.0)):
        call = kj.portfolio_margin(book.with_settings(horizon_days=h))
        assert r.base[i] == pytest.approx(call.base, rel=1e-5)
    # A 30-day binary's 6-day marks, not its resolution outcomes (v1 would charge ~$500).
    assert r.base[1] < 0.9 * kj.portfolio_margin(book).base

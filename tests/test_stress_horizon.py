"""Stress scenarios under a liquidation horizon (kinetic_jax._stress module doc):
the loss is the expected mark at the horizon given the scenario's factors,
checked against direct integration of the closed-form mark over the event's own
revealed noise; perps against the lognormal expectation; resolution unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

import kinetic_jax as kj

AS_OF = "2026-06-01"


def _book(horizon, stress, **extra):
    contracts = [kj.Contract("BTC-UP", "BTC", "above", 0.4, event="BTC-E", threshold=1.0,
                             resolves="2026-07-01"),
                 kj.Contract("GAME", "Sports", "binary", 0.55, resolves="2026-06-02")]
    return kj.Book(tuple(contracts), (kj.Position("BTC-UP", 1000.0), kj.Position("GAME", -500.0)),
                   settings=kj.Settings(horizon_days=horizon, as_of=AS_OF, scenarios=4096),
                   stress=(stress,), **extra)


def _expected_mark(p, tau, a, f):
    """E over eta^Z of the closed-form mark of an 'above' contract at price p."""
    cut = norm.ppf(1 - p)
    s = math.sqrt(1 - a * a)

    def mark(eta):
        z = a * f + s * eta
        return norm.sf((cut - math.sqrt(tau) * z) / math.sqrt(1 - tau)) * norm.pdf(eta)

    return integrate.quad(mark, -12, 12, epsabs=1e-12)[0]


@pytest.mark.parametrize("f", [-3.0, 0.0, 2.0])
def test_factor_stress_at_the_horizon_is_the_expected_mark(f):
    stress = kj.Stress("btc", factors={"BTC": f})
    book = _book(2, stress)
    (res,) = kj.stress_losses(book)
    tau = 2 / 30
    m = _expected_mark(0.4, tau, 0.9, f)
    # GAME resolves by the horizon (tau = 1) and is unloaded: its P(YES) is its price.
    assert res.clusters["BTC"] == pytest.approx(1000 * (0.4 - m), abs=1e-6)
    assert res.clusters["Sports"] == pytest.approx(0.0, abs=1e-9)
    # A short horizon reveals little of the crash; resolution all of it.
    full = kj.stress_losses(_book(None, stress))[0]
    v1 = 1000 * (0.4 - norm.sf((norm.ppf(0.6) - 0.9 * f) / math.sqrt(1 - 0.81)))
    assert full.clusters["BTC"] == pytest.approx(v1, abs=1e-6)
    if f:
        assert abs(res.clusters["BTC"]) < abs(full.clusters["BTC"])


def test_resolution_at_the_horizon_date_is_v1():
    stress = kj.Stress("btc", factors={"BTC": -2.0}, resolve={"GAME": "NO"})
    at_date = kj.stress_losses(_book(30, stress))[0]
    v1 = kj.stress_losses(_book(None, stress))[0]
    assert at_date.loss == pytest.approx(v1.loss, abs=1e-9)


def test_perp_stress_is_the_lognormal_expectation():
    under = kj.Underlying("BTC", "BTC", 100_000.0, 0.6)
    contracts = (kj.Contract("PERP", None, "perp", None, underlying="BTC"),)
    for f in (-3.0, 1.5):
        book = kj.Book(contracts, (kj.Position("PERP", 2.0),),
                       settings=kj.Settings(horizon_days=2, as_of=AS_OF),
                       stress=(kj.Stress("s", factors={"BTC": f}),), underlyings=(under,))
        (res,) = kj.stress_losses(book)
        h, a, sigma = 2 / 365, 0.9, 0.6
        # E[S_h | f] by integration over eta: S_h = S0 exp(sigma sqrt(h) Z - sigma^2 h / 2).
        s = math.sqrt(1 - a * a)
        mean = integrate.quad(lambda e: math.exp(sigma * math.sqrt(h) * (a * f + s * e)
                                                 - sigma ** 2 * h / 2) * norm.pdf(e),
                              -12, 12, epsabs=1e-14)[0]
        assert res.loss == pytest.approx(-2.0 * 100_000.0 * (mean - 1), rel=1e-9)
        assert np.sign(res.loss) == -np.sign(f)  # a long perp loses in a crash

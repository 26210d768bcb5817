"""Host API: one simulation for the report and the loss histogram, explicit keys."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import above, binary, make_book

import kinetic_jax as kj

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

@pytest.fixture(scope="module")
def book():
    games = [binary(f"G{i}", 0.3 + 0.05 * i) for i in range(8)]
    return make_book([*games, above("A", "BTC-E", 1.0, 0.6)],
                     {**{f"G{i}": (-1) ** i * 200.0 for i in range(8)}, "A": 500.0},
                     scenarios=1 << 14)


def test_margin_with_losses_is_the_report_of_those_losses(book):
    # Plain draws, equally likely (the default's weighted losses: test_block.py).
    book = book.with_settings(sampler="plain")
    report, losses = kj.margin_with_losses(book)
    assert report == kj.portfolio_margin(book)
    np.testing.assert_array_equal(losses, kj.book_losses(book))
    # ES and VaR of the returned losses, recomputed by sorting (exact discrete ES
    # of the empirical distribution, fractional boundary weight).
    n, alpha = len(losses), book.settings.confidence
    es = kj.exact_expected_shortfall(losses, np.full(n, 1 / n), alpha)
    assert report.base == pytest.approx(es, rel=1e-5)
    k = n * (1 - alpha)
    assert report.var == pytest.approx(np.sort(losses)[::-1][int(np.floor(k))], rel=1e-6)


def test_explicit_key_matches_the_seed_and_changes_the_draws(book):
    same = kj.portfolio_margin(book, key=jax.random.key(book.settings.seed))
    assert same == kj.portfolio_margin(book)
    other = kj.portfolio_margin(book, key=jax.random.key(12345))
    seeded = kj.portfolio_margin(book, seed=12345)
    assert (other.base, other.margin, other.var) == (seeded.base, seeded.margin, seeded.var)
    assert other.base != same.base


def _cap(report):
    steps = [s for s in report.waterfall() if s["step"] == "cap"]
    assert report.waterfall()[-1] == {"step": "margin", "amount": report.margin,
                                      "total": report.margin}
    return steps[0]["amount"] if steps else None


def test_the_waterfall_cap_is_what_the_cap_takes_off():
    """The cap step is the change where the worst case (or the 0 floor) binds,
    exactly 0 where it does not (the float32 margin against the float64 running
    sum left about $0.001 there), and absent without a worst case."""
    # Not binding: the margin is the sum of its parts (up to float32 rounding).
    book = kj.load_book(EXAMPLES / "reference_book.toml").with_settings(scenarios=1 << 12)
    report = kj.portfolio_margin(book)
    assert report.binding != "worst_case" and _cap(report) == 0.0
    parts = report.stressed_loss + sum(report.addons.values())
    assert report.margin == pytest.approx(parts, rel=1e-6)
    # The worst case binds: one long contract, whose ES at 99 % is its whole
    # stake ($2), plus a liquidity add-on (the position is all the open interest:
    # gross x (1 - threshold)).
    book = make_book([binary("G", 0.02, open_interest=100.0)], {"G": 100.0},
                     scenarios=1 << 12)
    report = kj.portfolio_margin(book)
    assert report.binding == "worst_case" and report.margin == pytest.approx(2.0)
    assert report.addons["liquidity"] == pytest.approx(2.0 * (1.0 - 0.1))  # methodology.md
    total = report.stressed_loss + sum(report.addons.values())
    assert _cap(report) == pytest.approx(report.margin - total) and _cap(report) < 0
    # The 0 floor binds: long at 0.01 what resolves YES with probability 0.999:
    # every 99 % tail scenario but a tenth is a gain, the ES is negative.
    book = make_book([binary("L", 0.01, probability=0.999)], {"L": 1000.0},
                     scenarios=1 << 14, mc_error=False, liquidity=False)
    report = kj.portfolio_margin(book)
    assert report.base < 0 and report.margin == 0.0
    assert _cap(report) == pytest.approx(-report.stressed_loss)
    # No worst case (net short an underlying): no cap step.
    perps = kj.load_book(EXAMPLES / "perps_and_strip.toml").with_settings(
        scenarios=1 << 12)
    report = kj.portfolio_margin(perps)
    assert report.worst_case_loss is None and _cap(report) is None

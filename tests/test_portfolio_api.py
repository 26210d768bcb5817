"""Host API: one simulation for the report and the loss histogram, explicit keys."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import above, binary, make_book

import kinetic_jax as kj


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

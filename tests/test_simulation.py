"""The joint simulation (SPEC.md §2.1–2.2): event latents carry the LCA
correlation, and the simulated outcomes are joint outcomes the model allows, with
the model's probabilities (checked against the enumeration in tests/helpers.py)."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
from helpers import (
    above,
    binary,
    books,
    contract_probabilities,
    enumerate_outcomes,
    make_book,
)
from hypothesis import HealthCheck, given, settings

import kinetic_jax as kj
import kinetic_jax._simulation as kj_simulation

NAMES = ("BTC", "ETH", "SOL", "SPX", "OIL", "Election", "Sports", "Parlays")
_outcomes = eqx.filter_jit(kj.outcomes)


def simulate(book: kj.Book, scenarios: int, seed: int = 0) -> np.ndarray:
    """Simulated YES (scenarios x contracts, book order) of the engine."""
    arrays, _ = kj.book_arrays(book)
    yes = _outcomes(jax.random.key(seed), arrays, scenarios)
    return np.asarray(yes)[:, : len(book.contracts)].astype(int)


def test_event_latents_have_the_lca_correlation():
    """Sample correlations of the event latents of one BTC, one ETH, one SPX and
    one Sports event against a_c a_d R[c, d] (0.5508, 0.2835, 0), and unit
    variances. N = 131072: the s.e. of a sample correlation r is about
    (1 - r^2) / sqrt(N) <= 0.0028 and of a variance sqrt(2/N) = 0.0039; the
    tolerance is 4 of them."""
    book = make_book([
        above("B", "BTC-E", 1, 0.5, "BTC"),
        above("E", "ETH-E", 1, 0.5, "ETH"),
        above("S", "SPX-E", 1, 0.5, "SPX"),
        binary("G", 0.5),
    ])
    arrays, layout = kj.book_arrays(book)
    x = np.asarray(jax.jit(kj.event_latents, static_argnums=2)(jax.random.key(11), arrays,
                                                              131072), np.float64)
    cols = [layout.event_names.index(e) for e in ("BTC-E", "ETH-E", "SPX-E", "G")]
    sample = np.corrcoef(x[:, cols].T)
    a = np.array([0.9, 0.9, 0.9, 0.0])
    r = kj.correlation_of(book.hierarchy)
    idx = [NAMES.index(c) for c in ("BTC", "ETH", "SPX", "Sports")]
    expected = np.outer(a, a) * r[np.ix_(idx, idx)]
    np.fill_diagonal(expected, 1.0)
    assert abs(expected[0, 1] - 0.9 * 0.9 * 0.68) < 1e-12
    np.testing.assert_allclose(sample, expected, atol=4 * 0.0028)
    np.testing.assert_allclose(x[:, cols].var(axis=0), 1.0, atol=4 * 0.0039)


def test_materialised_latents_are_the_same_draws(monkeypatch):
    """A ladder of 120 strikes on one BTC event and two games: 128 slots, 8 event
    rows, so latent_rows passes the latents through its identity matmul (each
    event row feeds 16 slots on average). The latents are those of the elementwise
    formula to rounding (XLA contracts a * F + b * eta into fused multiply-adds in
    some programs and not in others: a few draws differ in the terms' last
    bit), and an
    outcome differs only where its event's latent does; float32 and float64."""
    strikes = np.linspace(80.0, 120.0, 120)
    prices = np.round(np.linspace(0.95, 0.05, 120), 4)
    book = make_book([above(f"B{i}", "BTC-E", float(k), float(p))
                      for i, (k, p) in enumerate(zip(strikes, prices))]
                     + [binary("G1", 0.4), binary("G2", 0.7)])
    key = jax.random.key(5)
    few = kj_simulation.FEW_EVENTS
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            arrays, _ = kj.book_arrays(book, dtype)
            rows, slots = arrays.event_seed.shape[0], arrays.quantity.shape[0]
            assert rows * few <= slots
            draws = []
            for threshold in (few, slots + 1):  # materialised, elementwise
                monkeypatch.setattr(kj_simulation, "FEW_EVENTS", threshold)
                run = jax.jit(lambda a: (kj.event_latents(key, a, 2048),
                                         kj.outcomes(key, a, 2048)))
                draws.append([np.asarray(x) for x in run(arrays)])
            (latents, yes), (latents_ref, yes_ref) = draws
            assert latents.dtype == np.dtype(dtype)
            # A few units in float32's last place (the normals are drawn in float32,
            # whatever the values' dtype; the terms are of order 1).
            eps = np.finfo(np.float32).eps
            np.testing.assert_allclose(latents, latents_ref, rtol=4 * eps, atol=4 * eps)
            moved = (latents != latents_ref)[:, np.asarray(arrays.event)]  # (N, C)
            assert np.all((yes == yes_ref) | moved)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books(max_games=3, zero_loadings=True))
def test_joint_outcomes_have_the_enumerated_probabilities(book):
    """Independent events (every loading 0): each simulated joint YES pattern is
    one the enumeration allows, and each allowed pattern's frequency in
    N = 32768 draws is within 5 binomial standard errors sqrt(p (1 - p) / N)
    (+ 1/N) of its exact probability -- 5 rather than 4 because a book has up to
    ~100 patterns, so ~100 comparisons."""
    n = 32768
    yes, prob = enumerate_outcomes(book)
    assert prob is not None and abs(prob.sum() - 1) < 1e-12
    # Each 0/1 pattern as an integer (bit j = contract j), to match rows at once.
    bits = 1 << np.arange(yes.shape[1], dtype=np.int64)
    codes = yes.astype(np.int64) @ bits
    assert len(np.unique(codes)) == len(yes)
    order = np.argsort(codes)
    sim = simulate(book, n)
    sim_codes = sim.astype(np.int64) @ bits
    pos = np.minimum(np.searchsorted(codes[order], sim_codes), len(yes) - 1)
    assert np.all(codes[order][pos] == sim_codes), "a simulated outcome the model does not allow"
    hits = order[pos]
    freq = np.bincount(hits, minlength=len(yes)) / n
    se = np.sqrt(prob * (1 - prob) / n)
    assert np.all(np.abs(freq - prob) <= 5 * se + 1 / n), np.max(np.abs(freq - prob) / se)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books(max_games=2))
def test_correlated_outcomes_are_feasible_with_the_right_marginals(book):
    """With loadings 0.9 (BTC and SPX ladders), ladders stay nested, outcomes
    exclusive and parlays the AND of their legs in every scenario (every pattern
    is one the enumeration allows), and each contract's YES frequency is within
    5 binomial s.e. of its probability (each event latent is N(0, 1))."""
    n = 16384
    yes, _ = enumerate_outcomes(book)
    feasible = {tuple(r.astype(int)) for r in yes}
    sim = simulate(book, n, seed=3)
    assert all(tuple(r) in feasible for r in sim)
    p = contract_probabilities(book)
    single = ~np.isnan(p)
    se = np.sqrt(p[single] * (1 - p[single]) / n)
    assert np.all(np.abs(sim[:, single].mean(axis=0) - p[single]) <= 5 * se + 1 / n)

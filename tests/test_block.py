"""The exact-block sampler (issue 7): the independent block's exact law against
enumeration, exact figures on an all-block book, no bias and honest standard
errors on a book with a correlated pair beside the block, the fallbacks, and the
runs that refuse it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ProgramLog,
    above,
    below,
    binary,
    books,
    exact_es,
    exact_losses,
    make_book,
    outcome,
    parlay,
    reference_es,
    run_cli,
)
from hypothesis import HealthCheck, given, settings
from scipy.stats import multivariate_normal, norm

import kinetic_jax as kj
from kinetic_jax._block import (
    MAX_LATTICE,
    BlockLaw,
    block_law,
    independent_slots,
    lattice_statistics,
    pairs_tail_statistics,
    sampler_law,
)

PX, PY, Q = 0.95, 0.10, 1000.0

# Jitted, as the engine runs it (eagerly, each primitive compiles on its own).
lattice = jax.jit(lattice_statistics)


def _games(scale: float = 1.0):
    """Games, an election and a parlay: zero loadings only (exactly enumerable)."""
    contracts = [binary(f"G{i}", p) for i, p in enumerate((0.55, 0.4, 0.7, 0.35, 0.5, 0.62))]
    contracts += [outcome("E1", "PRES", "a", 0.45), outcome("E2", "PRES", "b", 0.35),
                  parlay("P", ["G0", "G1"], 0.25)]
    qty = {"G0": 400.0, "G1": -300.0, "G2": 250.0, "G3": -350.0, "G4": 300.0, "G5": 200.0,
           "E1": -500.0, "E2": 400.0, "P": 350.0}
    return contracts, {k: v * scale for k, v in qty.items()}


def _block_book(scale: float = 1.0, **settings):
    contracts, qty = _games(scale)
    return make_book(contracts, qty, mc_error=False, liquidity=False, **settings)


def _pair_and_games(**settings):
    """Long X / short Y on co-moving assets beside the games."""
    contracts, qty = _games()
    pair = [above("X", "BTC-E", 1.0, PX), above("Y", "ETH-E", 1.0, PY, cluster="ETH")]
    return make_book(pair + contracts, {"X": Q, "Y": -Q, **qty}, mc_error=False,
                     liquidity=False, **settings)


def _pair_and_games_exact(confidence: float = 0.99) -> float:
    """ES of R + S: the pair's four outcomes (bivariate normal, the default
    hierarchy's crypto correlation) convolved with the games' enumerated law."""
    s_loss, s_prob = exact_losses(_block_book())
    r = 0.9 * 0.9 * 0.68
    cx, cy = norm.ppf(1 - PX), norm.ppf(1 - PY)
    nn = multivariate_normal(cov=[[1, r], [r, 1]]).cdf([cx, cy])
    ny, yn = (1 - PX) - nn, (1 - PY) - nn
    r_prob = np.array([nn, ny, yn, 1 - nn - ny - yn])  # X no/yes, Y no/yes
    r_loss = Q * np.array([PX - PY, PX + 1 - PY, PX - 1 - PY, PX - 1 + 1 - PY])
    return reference_es((r_loss[:, None] + s_loss[None]).ravel(),
                        (r_prob[:, None] * s_prob[None]).ravel(), confidence)


def _ladder_and_games(**settings):
    """A ladder on one loaded event (above and below strikes) beside the games."""
    contracts, qty = _games()
    ladder = [above("L1", "BTC-E", 1.0, 0.7), above("L2", "BTC-E", 2.0, 0.4),
              below("L3", "BTC-E", 0.5, 0.2)]
    return make_book(ladder + contracts, {"L1": 900.0, "L2": -1200.0, "L3": 700.0, **qty},
                     mc_error=False, liquidity=False, **settings)


def _ladder_and_games_exact(confidence: float = 0.99) -> float:
    """One loaded event alone is enumerable (its factor only mixes its marginal):
    the ladder's law convolved with the games'."""
    book = _ladder_and_games()
    ladder = make_book([c for c in book.contracts if c.id.startswith("L")],
                       {k: v for k, v in book.net_quantities().items() if k.startswith("L")})
    r_loss, r_prob = exact_losses(ladder)
    s_loss, s_prob = exact_losses(_block_book())
    return reference_es((r_loss[:, None] + s_loss[None]).ravel(),
                        (r_prob[:, None] * s_prob[None]).ravel(), confidence)


def _seeds(book, sampler, seeds, law=None):
    arrays, _, params = kj.margin_inputs(book)
    n = book.settings.scenarios
    top = kj.tail_size(n, book.settings.confidence)
    # The book's arrays as arguments, not closed over (constants: conftest.py).
    run = jax.jit(jax.vmap(lambda a, p, k, w: kj.margin_arrays(a, p, k, n, top, sampler, law=w),
                           in_axes=(None, None, 0, None)))
    return run(arrays, params, jax.random.split(jax.random.key(11), seeds), law)


def test_block_law_is_the_enumerated_law():
    book = _block_book()
    arrays, _, _ = kj.margin_inputs(book)
    law, positions = block_law(arrays)
    assert positions == 9
    losses, prob = exact_losses(book)
    values = np.asarray(law.origin) + np.asarray(law.spacing) * np.arange(law.probs.size)
    assert float(law.spacing) == 50.0  # the quantities' gcd
    # Every enumerated loss lies on the lattice; its probability there is the law's.
    index = np.round((losses - float(law.origin)) / float(law.spacing)).astype(int)
    np.testing.assert_allclose(values[index], losses, atol=1e-3)
    expected = np.bincount(index, weights=prob, minlength=law.probs.size)
    np.testing.assert_allclose(np.asarray(law.probs, np.float64), expected, atol=1e-6)
    for alpha in (0.99, 0.9, 0.5):
        es, var = lattice(law.origin[None], law.spacing[None], law.probs[None],
                          np.float32(alpha))
        assert float(es[0]) == pytest.approx(exact_es(book, alpha), rel=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books(max_games=3, zero_loadings=True))
def test_the_law_of_random_independent_books_is_the_enumerated_law(book):
    """Every contract type (ladders above and below, outcomes with a remainder or
    an overround, games, parlays with two legs on one event), every loading 0:
    the whole book is the block, and its law is the enumeration's, point by
    point, at its ES at three levels and per cluster."""
    arrays, layout, _ = kj.margin_inputs(book)
    law, positions = block_law(arrays)
    held = sum(q != 0 for q in book.net_quantities().values())
    if held == 0:
        assert law is None
        return
    assert positions == held
    losses, prob = exact_losses(book)
    origin, spacing = float(law.origin), float(law.spacing)
    index = np.round((losses - origin) / spacing).astype(int)
    # The origin (sum q p) is stored in float32: values agree to its rounding.
    np.testing.assert_allclose(origin + spacing * index, losses, rtol=0,
                               atol=2e-7 * (abs(origin) + np.abs(losses).max()))
    expected = np.bincount(index, weights=prob, minlength=law.probs.size)
    np.testing.assert_allclose(np.asarray(law.probs, np.float64), expected, atol=2e-6)
    for alpha in (0.99, 0.95, 0.8):
        es, _ = lattice(law.origin[None], law.spacing[None], law.probs[None], np.float32(alpha))
        assert float(es[0]) == pytest.approx(exact_es(book, alpha), rel=1e-5, abs=1e-2)
    exact = np.asarray(law.cluster_exact)
    es, _ = lattice(law.cluster_origin, law.cluster_spacing, law.cluster_probs,
                    np.float32(0.99))
    for c, name in enumerate(layout.cluster_names):
        if exact[c]:
            assert float(es[c]) == pytest.approx(exact_es(book, 0.99, name), rel=1e-5, abs=1e-2)


def _lattice_law(origin: float, spacing: float, probs: np.ndarray) -> BlockLaw:
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    padded = np.zeros(MAX_LATTICE)
    padded[:probs.size] = probs
    return BlockLaw(rest=f(np.ones(1)), frozen=f(np.zeros(1)), origin=f(origin),
                    spacing=f(spacing), probs=f(padded), cluster_exact=jnp.zeros(1, bool),
                    cluster_origin=f(np.zeros(1)), cluster_spacing=f(np.ones(1)),
                    cluster_probs=f(np.zeros((1, MAX_LATTICE))))


def test_the_base_is_exact_when_atoms_sit_at_its_var():
    """R's draws on S's lattice (or R = 0), so R + S is a few heavy atoms and the
    VaR sits on one: the ES's Rockafellar-Uryasev function rises left of an atom
    with slope (its mass / budget - 1), up to 99 here, so evaluating the excess
    one rounding below the atom would miss by ~1e-5 relative. Dyadic masses keep
    every sum exact in float32: the base must be the enumerated ES to 1e-6, its
    VaR the atom to a few roundings, and with R = 0 its standard error exactly
    0."""
    rng = np.random.default_rng(7)
    n = 512
    run = jax.jit(pairs_tail_statistics)
    for case in range(24):
        spacing = float(rng.choice([0.5, 1.0, 10.0, 100.0]))
        origin = float(rng.choice([-1000.0, -300.0, 0.0, 300.0]))
        probs = rng.multinomial(64, np.ones(4) / 4) / 64  # dyadic
        alpha = float(rng.choice([0.99, 0.96875, 0.9375, 0.875]))  # dyadic budgets
        r = np.zeros(n) if case % 3 == 0 else spacing * rng.integers(-3, 4, n).astype(float)
        es, se, var = run(jnp.asarray(r, jnp.float32), jnp.ones(n, jnp.float32),
                          _lattice_law(origin, spacing, probs), jnp.float32(alpha))
        values = (r[:, None] + origin + spacing * np.arange(4)).ravel()
        masses = np.tile(probs / n, n)
        assert float(es) == pytest.approx(reference_es(values, masses, alpha), rel=1e-6)
        assert np.min(np.abs(values - float(var))) <= 4 * abs(np.spacing(np.float32(var)))
        if case % 3 == 0:
            assert float(se) == 0.0


def test_a_book_all_in_the_block_is_margined_exactly():
    book = _block_book(scenarios=4096)
    report = kj.portfolio_margin(book, sampler="exact_block")
    assert report.exact_positions == 9 and report.sampler == "exact_block"
    # R = 0: every draw's h is the same, so the estimate is the exact ES, s.e. 0.
    assert report.base == pytest.approx(exact_es(book), rel=1e-5)
    assert report.base_standard_error == 0.0
    for c in report.clusters:
        assert c.es == pytest.approx(exact_es(book, cluster=c.name), rel=1e-5, abs=1e-3)
        assert c.standard_error == 0.0
    assert report.floor_standard_error == 0.0
    text = kj.format_margin_report(report)
    assert "sampler exact_block: 9 positions no factor touches" in text


@pytest.mark.parametrize("make, exact", [
    pytest.param(_pair_and_games, _pair_and_games_exact, id="correlated pair"),
    pytest.param(_ladder_and_games, _ladder_and_games_exact, id="ladder"),
])
def test_no_bias_and_honest_errors_beside_loaded_positions(make, exact):
    # 48 seeds at 4,096 draws: the mean within 3 standard errors of the mean of the
    # exact ES; the exact value within +-2 reported SE in 80-100% of runs (a
    # binomial 99.9% band for 48 runs); the reported SE the seed-to-seed spread
    # within sampling error.
    book = make(scenarios=4096)
    exact = exact()
    arrays, _, _ = kj.margin_inputs(book)
    law, positions = block_law(arrays)
    assert positions == 9
    res = _seeds(book, "exact_block", 48, law)
    es, se = np.asarray(res.base, np.float64), np.asarray(res.base_se, np.float64)
    sem = es.std(ddof=1) / np.sqrt(len(es))
    assert abs(es.mean() - exact) <= 3 * sem + 1e-4 * exact
    coverage = np.mean(np.abs(es - exact) <= 2 * se)
    assert 0.8 <= coverage <= 1.0, coverage
    assert 0.65 <= se.mean() / es.std(ddof=1) <= 1.6
    # The games' clusters are exact, s.e. 0; the loaded clusters are sampled.
    exact_clusters = np.asarray(law.cluster_exact)
    assert exact_clusters.sum() == 3  # Sports, Election, Parlays
    assert np.all(np.asarray(res.cluster_se)[:, exact_clusters] == 0.0)


def test_far_less_noise_than_plain_sampling_beside_a_correlated_pair():
    # Measured: sd 7.9 against plain sampling's 35.8 (VRF ~20) at 4,096 draws.
    book = _pair_and_games(scenarios=4096)
    law, _ = block_law(kj.margin_inputs(book)[0])
    block = np.asarray(_seeds(book, "exact_block", 48, law).base, np.float64)
    plain = np.asarray(_seeds(book, "plain", 48).base, np.float64)
    assert block.std(ddof=1) < 0.4 * plain.std(ddof=1)


def test_deterministic_and_the_same_for_every_chunk_size_and_padding():
    """5,000 draws (padding in the last block): one key gives the same figures
    twice, and chunks of 1,024 or 2,048 agree to float32 rounding (the
    importance weights' exp/logsumexp may round by one ulp; losses are
    bit-identical, see tests/test_sampler.py)."""
    book = _ladder_and_games(scenarios=5000)
    arrays, _, params = kj.margin_inputs(book)
    law, _ = block_law(arrays)
    top = kj.tail_size(5000, 0.99)

    @jax.jit
    def chunked(key, law):
        return [kj.margin_arrays(arrays, params, key, 5000, top, "exact_block", c, law=law)
                for c in (1024, 2048)]

    key = jax.random.key(5)
    first, second = chunked(key, law)
    again, _ = chunked(key, law)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(first.margin, second.margin, rtol=1e-6)
    np.testing.assert_allclose(first.base_se, second.base_se, rtol=1e-5)
    np.testing.assert_allclose(first.cluster_es, second.cluster_es, rtol=1e-6)


def test_a_parlay_with_a_loaded_leg_takes_its_events_out_of_the_block():
    contracts, qty = _games()
    contracts += [above("X", "BTC-E", 1.0, 0.6), parlay("XG", ["X", "G2"], 0.3)]
    book = make_book(contracts, {**qty, "X": 100.0, "XG": 200.0})
    arrays, layout, _ = kj.margin_inputs(book)
    ids = np.asarray(layout.contract_ids + ("",) * (arrays.quantity.size - layout.n_contracts))
    inside = set(ids[independent_slots(arrays)])
    # G2 shares its event with the parlay on a loaded leg: it leaves the block.
    assert inside == {"G0", "G1", "G3", "G4", "G5", "E1", "E2", "P"}
    law, positions = block_law(arrays)
    assert positions == 8
    rest = np.asarray(law.rest)[:layout.n_contracts]
    assert rest.tolist() == [c not in inside for c in layout.contract_ids]


@pytest.mark.parametrize("book", [
    pytest.param(lambda: _block_book(scale=1 / 3, scenarios=4096), id="off-lattice quantities"),
    pytest.param(lambda: make_book([above("X", "BTC-E", 1.0, PX),
                                    above("Y", "ETH-E", 1.0, PY, cluster="ETH")],
                                   {"X": Q, "Y": -Q}, scenarios=4096), id="no block"),
])
def test_without_a_law_the_sampler_runs_on_the_empty_law(book):
    """No block, or its law out of reach: margin calls run on the empty law (S =
    0, every slot sampled; one compiled program whether a book has a block or
    not): the importance sampler's draws and weighted estimator, its proposal
    fitted on the excess over the VaR, so its figures agree with the importance
    sampler's within standard errors; the exact parts are equal."""
    book = book()
    arrays, _, _ = kj.margin_inputs(book)
    assert block_law(arrays) == (None, 0)
    law, positions = kj.sampler_law(arrays)
    assert positions == 0 and bool(jnp.all(law.rest == 1)) and not bool(law.cluster_exact.any())
    block = kj.portfolio_margin(book, sampler="exact_block")
    importance = kj.portfolio_margin(book, sampler="importance")
    assert block.exact_positions == 0 and block.sampler == "exact_block"
    pairs = [(block.base, importance.base, block.base_standard_error,
              importance.base_standard_error)]
    pairs += [(a.es, b.es, a.standard_error, b.standard_error)
              for a, b in zip(block.clusters, importance.clusters)]
    for x, y, sx, sy in pairs:
        assert abs(x - y) <= 4 * (sx + sy) + 1e-5 * block.full_collateral
    for field in ("worst_case_loss", "full_collateral", "correlation"):
        assert getattr(block, field) == getattr(importance, field)
    # One cluster holds everything here ("no block": BTC and ETH are two, so take
    # the book without Y): the base is that cluster's ES, the same estimator.
    if "Y" in book.contract_ids:
        one = book.with_positions({"X": Q})
        r = kj.portfolio_margin(one, sampler="exact_block")
        btc = next(c for c in r.clusters if c.name == "BTC")
        assert r.base == pytest.approx(btc.es, rel=1e-6) and r.exact_positions == 0


def test_float64_runs_the_same_estimator(x64):
    # The same draws (float32 normals), the law and the statistics in float64.
    book = _ladder_and_games(scenarios=4096)
    single = kj.portfolio_margin(book, sampler="exact_block")
    double = kj.portfolio_margin(book, sampler="exact_block", dtype=jnp.float64)
    assert double.exact_positions == single.exact_positions == 9
    assert double.base == pytest.approx(single.base, rel=1e-4)
    assert double.base_standard_error == pytest.approx(single.base_standard_error, rel=1e-3)
    all_block = _block_book(scenarios=4096)
    exact = kj.portfolio_margin(all_block, sampler="exact_block", dtype=jnp.float64)
    assert exact.base == pytest.approx(exact_es(all_block), rel=1e-12)


@pytest.mark.parametrize("double", [False, True])
def test_quantities_on_a_decimal_lattice_keep_the_exact_law(double):
    """Tenths, not dyadic: in float32, 72.1 is 72.0999985 and 10 x that is an
    integer only to float32's precision, which is what the lattice test reads it
    to (it read float64's, and every tenths book in float32 lost its law)."""
    contracts = [binary("G0", 0.17), binary("G1", 0.81), binary("G3", 0.97),
                 binary("G4", 0.97), binary("G5", 0.84), outcome("E0", "PRES", "o0", 0.38),
                 outcome("E1", "PRES", "o1", 0.35), outcome("E2", "PRES", "o2", 0.21),
                 parlay("P0", ["E0", "G1"], 0.51)]
    qty = {"G0": -72.1, "G1": -45.9, "G3": 65.0, "G4": -22.8, "G5": -48.5, "E1": 13.4,
           "E2": 7.0, "P0": -37.1}
    book = make_book(contracts, qty, scenarios=4096)
    dtype = jnp.float64 if double else jnp.float32
    with jax.enable_x64(double):
        arrays, _, _ = kj.margin_inputs(book, dtype=dtype)
        law, positions = block_law(arrays)
        report = kj.portfolio_margin(book, sampler="exact_block", dtype=dtype)
    assert positions == 8 and float(law.spacing) == pytest.approx(0.1)
    assert report.exact_positions == 8 and report.base_standard_error == 0.0
    assert report.base == pytest.approx(exact_es(book), rel=1e-6)
    for c in report.clusters:
        assert c.standard_error == 0.0
        assert c.es == pytest.approx(exact_es(book, cluster=c.name), rel=1e-6, abs=1e-4)
    # Quantities on no lattice of SCALES keep the sampled estimate.
    odd = make_book(contracts, {**qty, "G0": -72.1234}, scenarios=4096)
    assert block_law(kj.margin_inputs(odd)[0]) == (None, 0)


def test_what_if_sessions_recompute_the_law_per_trade():
    book = _pair_and_games(scenarios=4096, sampler="exact_block")
    session = kj.margin_session(book)
    full = kj.portfolio_margin(book)
    # The untraded book: the full call's figures (R's losses summed in another
    # order: to float32 rounding).
    for name in ("margin", "base", "base_standard_error", "var", "floor"):
        assert getattr(session.report, name) == pytest.approx(getattr(full, name), rel=1e-6)
    assert session.report.exact_positions == 9

    def full_after(trades, contracts=()):
        qty = book.net_quantities()
        traded = dataclasses.replace(book, contracts=book.contracts + tuple(contracts))
        return kj.portfolio_margin(traded.with_positions(
            {**{c.id: 0.0 for c in contracts}, **qty,
             **{k: qty.get(k, 0.0) + v for k, v in trades.items()}}))

    # A game traded: the block's law changes, Sports stays exact (the full call's
    # figure); the base agrees with a full call within its standard error (the
    # session keeps its proposal).
    after = session.what_if({"G3": 500.0})
    ref = full_after({"G3": 500.0})
    sports = {c.name: c for c in after.clusters}["Sports"]
    assert sports.es == pytest.approx({c.name: c for c in ref.clusters}["Sports"].es, rel=1e-6)
    assert sports.standard_error == 0.0
    assert abs(after.base - ref.base) <= 2 * max(after.base_standard_error, 1.0)
    # A parlay with a loaded leg takes G2's event out of the block.
    mixed = parlay("XG", ["X", "G2"], 0.3)
    after = session.what_if({mixed: 300.0})
    ref = full_after({"XG": 300.0}, [mixed])
    assert after.exact_positions == ref.exact_positions == 8
    assert abs(after.base - ref.base) <= 2 * max(after.base_standard_error, 1.0)
    # Committing recomputes every row: the session's report is its book's.
    session.apply({"G3": 500.0})
    assert session.report.base == pytest.approx(
        session.what_if({"G3": 0.0}).base, rel=1e-6)


def test_what_if_laws_are_memoised_on_what_they_depend_on(monkeypatch):
    """A session keeps the exact-block laws it computed, keyed by the block, its
    quantities and the clusters held outside it: a trade outside the block
    reuses the session's law, a repeated trade its earlier one, and contracts
    new to the book (other prices in the same padding slot) never share one.
    Each figure is checked against the full call on the traded book, and the
    laws computed are counted."""
    import kinetic_jax._whatif as whatif

    computed = []
    monkeypatch.setattr(whatif, "sampler_law",
                        lambda a: computed.append(1) or kj.sampler_law(a))
    book = _pair_and_games(scenarios=4096, sampler="exact_block")
    session = kj.margin_session(book)
    opened = len(computed)

    def full_after(trades, contracts=()):
        qty = book.net_quantities()
        traded = dataclasses.replace(book, contracts=book.contracts + tuple(contracts))
        return kj.portfolio_margin(traded.with_positions(
            {**{c.id: 0.0 for c in contracts}, **qty,
             **{k: qty.get(k, 0.0) + v for k, v in trades.items()}}))

    def exact(report):  # the block's clusters, margined by their exact law
        out = {c.name: (c.es, c.standard_error) for c in report.clusters
               if c.name in ("Sports", "Election", "Parlays")}
        assert len(out) == 3 and all(se == 0.0 for _, se in out.values())
        return {name: es for name, (es, _) in out.items()}

    game = session.what_if({"G3": 500.0})
    assert len(computed) == opened + 1  # a new block quantity: a new law
    assert exact(game) == pytest.approx(exact(full_after({"G3": 500.0})), rel=1e-6)
    pair = session.what_if({"X": 100.0})  # outside the block: the session's law
    assert len(computed) == opened + 1
    assert exact(pair) == pytest.approx(exact(session.report), rel=1e-6)
    assert exact(pair) == pytest.approx(exact(full_after({"X": 100.0})), rel=1e-6)
    again = session.what_if({"G3": 500.0})  # the same block as `game`: its law
    assert len(computed) == opened + 1
    assert again.margin == game.margin and again.base == game.base
    assert exact(again) == exact(game)
    for count, new in enumerate((binary("NEW-A", 0.2), binary("NEW-B", 0.7)), start=2):
        report = session.what_if({new: 300.0})
        assert len(computed) == opened + count  # new contracts: never memoised
        ref = full_after({new.id: 300.0}, [new])
        assert report.exact_positions == ref.exact_positions == 10
        assert exact(report) == pytest.approx(exact(ref), rel=1e-6)
    assert exact(session.what_if({"G3": 500.0})) == exact(game)


def test_sweep_points_are_margin_calls_with_their_own_law():
    # A quantity axis moves the block's law per point; a third of a contract puts
    # the block on no lattice, so that point is the importance sampler's (as a
    # margin call of it is).
    book = _pair_and_games(scenarios=4096, sampler="exact_block")
    values = [-350.0, 500.0, 1 / 3]
    result = kj.sweep(book, {"quantity.G3": values})
    for value, margin, base in zip(values, result.margin, result.base):
        point = book.with_positions({**book.net_quantities(), "G3": value})
        full = kj.portfolio_margin(point)
        assert full.exact_positions == (0 if value == 1 / 3 else 9)
        assert base == pytest.approx(full.base, rel=1e-5)
        assert margin == pytest.approx(full.margin, rel=1e-5)
    with pytest.raises(kj.BookError, match="sensitivities: the 'exact_block' sampler"):
        kj.sweep(book, {"rho.crypto": [0.5, 0.6]}, sensitivities=True)


def test_runs_that_share_one_simulation_refuse_the_sampler():
    book = _pair_and_games(scenarios=4096, sampler="exact_block")
    with pytest.raises(kj.BookError, match="sampler: 'exact_block' .* jump run"):
        kj.jump_run(book.settings, sampler="exact_block")
    # The core refuses a law given with another sampler.
    arrays, _, params = kj.margin_inputs(book)
    law, _ = block_law(arrays)
    with pytest.raises(ValueError, match="law: given with sampler 'importance'"):
        kj.margin_arrays(arrays, params, jax.random.key(0), 4096, 64, "importance", law=law)


def test_derivatives_that_would_miss_the_block_raise():
    # The law is data for the book's values: a gradient through it would hold it
    # fixed and miss the block's own terms, so it raises; rho does not move the
    # law and differentiates as through the importance sampler.
    book = _pair_and_games(scenarios=4096)
    arrays, _, params = kj.margin_inputs(book)
    law, _ = block_law(arrays)
    top = kj.tail_size(4096, 0.99)
    key = jax.random.key(3)

    def margin_of(arrays):
        return kj.margin_arrays(arrays, params, key, 4096, top, "exact_block", law=law).margin

    for leaf in ("quantity", "price", "loading"):
        def along(x, leaf=leaf):
            return margin_of(eqx.tree_at(lambda a: getattr(a, leaf), arrays, x))

        with pytest.raises(ValueError, match="quantity, price, probability, loading: the "
                                             "'exact_block' sampler's law is fixed data"):
            jax.jit(jax.grad(along))(getattr(arrays, leaf))
    # Jitted (eagerly, each primitive compiles on its own: hundreds of compiles).
    d_rho = jax.jit(jax.grad(lambda r: margin_of(eqx.tree_at(lambda a: a.rho, arrays, r))))(
        arrays.rho)
    assert np.all(np.isfinite(np.asarray(d_rho)))
    # Without differentiation the same program runs (vmapped over seeds above).
    assert np.isfinite(float(jax.jit(margin_of)(arrays)))


def test_cli_reports_the_sampler_and_the_exact_positions(tmp_path):
    rc, out, _ = run_cli("margin", "examples/reference_book.toml", "--sampler", "exact_block",
                         "--scenarios", "4096", "--json")
    assert rc == 0
    import json

    report = json.loads(out)
    assert report["sampler"] == "exact_block" and report["exact_positions"] == 27
    sports = {c["name"]: c for c in report["clusters"]}["Sports"]
    assert sports["standard_error"] == 0.0


def test_the_law_of_one_arrays_object_is_computed_once():
    """`sampler_law` keeps the law of the arrays objects it saw last (the layout
    cache hands out one object per book): the same object back for the same
    arrays; arrays equal in content but another object get the same law, anew."""
    book = kj.random_book(64, seed=3)
    arrays, _ = kj.book_arrays(book)
    law, positions = sampler_law(arrays)
    assert positions > 0
    assert sampler_law(arrays)[0] is law
    twin = eqx.tree_at(lambda a: a.quantity, arrays, arrays.quantity + 0)  # another object
    again, positions_again = sampler_law(twin)
    assert again is not law and positions_again == positions
    for a, b in zip(jax.tree_util.tree_leaves(law), jax.tree_util.tree_leaves(again),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_clear_caches_forgets_the_kept_layouts_and_laws_with_the_programs():
    """After `kj.clear_caches` a book laid out before is laid out again and its
    exact-block law computed again, with the programs that takes (`atom_cuts`),
    as for a new book: a compile count then does not depend on which books were
    margined earlier. After `jax.clear_caches` alone the kept layout and law come
    back and nothing runs."""
    reference = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
    book = kj.load_book(reference)
    arrays = kj.book_arrays(book)[0]
    law, positions = sampler_law(arrays)
    assert positions > 0
    jax.clear_caches()
    with ProgramLog() as jax_only:
        kept = kj.book_arrays(book)[0]
        assert kept is arrays and sampler_law(kept)[0] is law
    assert jax_only.compiled() == [], jax_only.events
    kj.clear_caches()
    with ProgramLog() as everything:
        fresh = kj.book_arrays(book)[0]
        fresh_law = sampler_law(fresh)[0]
    assert fresh is not arrays and fresh_law is not law
    assert "jit(atom_cuts)" in everything.compiled(), everything.events
    for a, b in zip(jax.tree_util.tree_leaves(law), jax.tree_util.tree_leaves(fresh_law),
                    strict=True):
        np.testing.assert_array_equal(a, b)

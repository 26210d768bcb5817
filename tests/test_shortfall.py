"""The expected-shortfall estimator (SPEC.md §2.4) against exact discrete ES.

With N equally likely draws the estimator must equal the Acerbi–Tasche ES of the
empirical distribution exactly (up to rounding), including a fractional boundary
weight when N (1 - alpha) is not an integer and ties that straddle the boundary.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    expected_shortfall,
    reference_es,
    sortfree_tail_statistics,
    tail_statistics,
    weighted_tail,
    weighted_tail_statistics,
)
from scipy import stats

import kinetic_jax as kj
from kinetic_jax._block import lattice_statistics
from kinetic_jax._shortfall import (
    order_ties,
    ordered_tail_statistics,
    tied_with_var as kj_tied_with_var,
)


def _es(losses, alpha, top=None, dtype=jnp.float32):
    x = jnp.asarray(losses, dtype)
    n = x.shape[-1]
    top = kj.tail_size(n, alpha) if top is None else top
    es, se, var = expected_shortfall(x, jnp.asarray(alpha, dtype), top)
    return float(es), float(se), float(var)


# --- the exact reference itself --------------------------------------------------


def test_exact_es_hand_computed_atoms():
    # Ten equally likely losses; the boundary falls inside the atom at 10 (k = 2.5)
    # and inside the atom at 5 (k = 3.5).
    v = [10, 10, 10, 5, 5, 0, 0, 0, -1, -2]
    p = np.full(10, 0.1)
    assert kj.exact_expected_shortfall(v, p, 0.75) == pytest.approx(10.0, rel=1e-12)
    assert kj.exact_expected_shortfall(v, p, 0.65) == pytest.approx(32.5 / 3.5, rel=1e-12)
    # Bernoulli loss 1 w.p. 0.005: half the 1% tail is the atom, half is 0.
    assert kj.exact_expected_shortfall([1, 0], [0.005, 0.995], 0.99) == pytest.approx(0.5)
    # A tail of one atom: ES is the atom.
    assert kj.exact_expected_shortfall([300, -700], [0.7, 0.3], 0.99) == pytest.approx(300)


def test_exact_es_is_the_quantile_integral():
    # (1/(1-a)) * integral_a^1 VaR_u du by the midpoint rule on the quantile
    # function of a random discrete distribution (error O(1/grid) = ~1e-6 here).
    rng = np.random.default_rng(1)
    v = rng.integers(-5, 6, 40).astype(float)  # many ties
    p = rng.dirichlet(np.ones(40))
    order = np.argsort(v)
    cdf = np.cumsum(p[order])
    for a in (0.5, 0.9, 0.973):
        u = a + (np.arange(200_000) + 0.5) * (1 - a) / 200_000
        var_u = v[order][np.minimum(np.searchsorted(cdf, u), len(v) - 1)]
        integral = var_u.mean()
        assert kj.exact_expected_shortfall(v, p, a) == pytest.approx(integral, abs=1e-3)
        assert reference_es(v, p, a) == pytest.approx(integral, abs=1e-3)


# --- the estimator against the exact ES of the empirical distribution ------------


@pytest.mark.parametrize("alpha", [0.99, 0.975, 0.9937, 0.95, 0.6])
def test_estimator_is_exact_for_the_empirical_distribution(alpha, x64):
    # N = 1000: N (1 - alpha) = 10, 25, 6.3, 50, 400 (6.3: fractional boundary
    # weight 0.3). float64, so agreement to rounding.
    rng = np.random.default_rng(0)
    losses = rng.standard_t(3, 1000)
    weights = np.full(1000, 1e-3)
    expected = kj.exact_expected_shortfall(losses, weights, alpha)
    es, _, var = _es(losses, alpha, dtype=jnp.float64)
    assert es == pytest.approx(expected, rel=1e-12)
    # VaR is the empirical alpha-quantile: the smallest x with F_N(x) >= alpha.
    ascending = np.sort(losses)
    assert var == ascending[math.ceil(1000 * alpha - 1e-9) - 1]


def test_estimator_float32_matches_exact():
    rng = np.random.default_rng(2)
    losses = rng.normal(size=4096).astype(np.float32)
    for alpha in (0.99, 0.9937):
        expected = kj.exact_expected_shortfall(losses, np.full(4096, 1 / 4096), alpha)
        es, _, _ = _es(losses, alpha)
        # float32 alpha and sums: a few ulps of relative error.
        assert es == pytest.approx(expected, rel=2e-5)


@pytest.mark.parametrize(
    "alpha, k", [(0.75, 2.5), (0.65, 3.5), (0.7, 3.0), (0.93, 0.7)]
)
def test_estimator_with_ties_at_the_boundary(alpha, k, x64):
    losses = np.array([10, 10, 10, 5, 5, 0, 0, 0, -1, -2], float)
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(losses)
    expected = kj.exact_expected_shortfall(losses, np.full(10, 0.1), alpha)
    # Hand value: the k largest draws, the last one with weight k - floor(k).
    desc = np.sort(losses)[::-1]
    hand = (desc[: math.floor(k)].sum() + (k - math.floor(k)) * desc[math.floor(k)]) / k
    assert expected == pytest.approx(hand, rel=1e-12)
    es, _, _ = _es(shuffled, alpha, top=10, dtype=jnp.float64)
    assert es == pytest.approx(hand, rel=1e-12)


def test_estimator_independent_of_tail_bucket_and_batched(x64):
    rng = np.random.default_rng(4)
    losses = rng.exponential(size=(3, 2000))
    alpha = 0.987  # k = 26 exactly in exact arithmetic, 25.99999... in binary
    top = kj.tail_size(2000, alpha)
    assert top % 64 == 0 and top >= math.floor(2000 * (1 - alpha)) + 2
    es_batched, se_batched, _ = expected_shortfall(jnp.asarray(losses), jnp.asarray(alpha), top)
    for row in range(3):
        full_sort, _, _ = _es(losses[row], alpha, top=2000, dtype=jnp.float64)
        assert float(es_batched[row]) == pytest.approx(full_sort, rel=1e-12)
        expected = kj.exact_expected_shortfall(losses[row], np.full(2000, 1 / 2000), alpha)
        assert float(es_batched[row]) == pytest.approx(expected, rel=1e-12)
    assert np.all(np.asarray(se_batched) > 0)


def test_tail_size():
    assert kj.tail_size(131072, 0.99) == 1344  # floor(1310.72) + 2 = 1312 -> 1344
    assert kj.tail_size(100, 0.5) == 64
    assert kj.tail_size(50, 0.1) == 50  # capped at N
    for n, a in [(1000, 0.99), (8192, 0.975), (131072, 0.999), (777, 0.3)]:
        t = kj.tail_size(n, a)
        assert math.floor(n * (1 - a)) + 1 <= t <= n
        assert t % 64 == 0 or t == n


def test_standard_error_is_zero_on_an_atom_and_positive_otherwise():
    # 131072 draws of a loss 300 w.p. 0.7: the 1% tail is one atom, no MC error.
    rng = np.random.default_rng(5)
    n = 131072
    atom = np.where(rng.random(n) < 0.7, 300.0, -700.0)
    es, se, var = _es(atom, 0.99)
    assert (es, se, var) == (pytest.approx(300.0, rel=1e-6), 0.0, 300.0)
    # Loss 995 w.p. 0.005 else -5: ES_99 = 495 exactly; the estimator's SE is the
    # binomial one, 1000 * sqrt(0.005 * 0.995 / N) / 0.01 = 19.48.
    bern = np.where(rng.random(n) < 0.005, 995.0, -5.0)
    es, se, _ = _es(bern, 0.99)
    exact_se = 1000 * math.sqrt(0.005 * 0.995 / n) / 0.01
    assert se == pytest.approx(exact_se, rel=0.1)  # SE of an SE: ~4% at 655 hits
    assert abs(es - 495.0) < 4 * exact_se


def test_standard_error_matches_spread_of_replications():
    """The reported SE against the standard deviation of ES over 256 independent
    replications of N = 8192 standard normal losses at 99% (k = 81.92). The
    sample standard deviation of 256 replications is itself uncertain by ~4.4%
    (1/sqrt(2 * 255)) and the asymptotic SE is a few per cent off at k ~ 80, so
    the ratio is asserted within [0.8, 1.25]. The mean of the 256 estimates is
    compared to the closed form phi(z_a) / (1 - a) within 4 of its standard
    errors plus the estimator's O(1/k) bias (1%)."""
    reps, n, alpha = 256, 8192, 0.99
    x = jax.random.normal(jax.random.key(7), (reps, n), jnp.float32)
    es, se, _ = jax.jit(kj.expected_shortfall, static_argnums=2)(
        x, jnp.asarray(alpha, jnp.float32), kj.tail_size(n, alpha)
    )
    es, se = np.asarray(es, np.float64), np.asarray(se, np.float64)
    spread = es.std(ddof=1)
    assert 0.8 < se.mean() / spread < 1.25, (se.mean(), spread)
    closed = stats.norm.pdf(stats.norm.ppf(alpha)) / (1 - alpha)  # 2.6652
    assert abs(es.mean() - closed) < 4 * spread / math.sqrt(reps) + 0.01 * closed


def test_gradient_is_the_tail_weight(x64):
    # dES/dL_i = w_i / k: 1/k for the floor(k) largest draws, (k - floor(k))/k for
    # the boundary draw, 0 below it (distinct losses, so the order is locally fixed).
    rng = np.random.default_rng(8)
    losses = jnp.asarray(rng.normal(size=500))
    alpha = 0.9874  # k = 6.3
    k = 500 * (1 - alpha)
    grad = jax.grad(lambda x: kj.expected_shortfall(x, jnp.asarray(alpha), 64)[0])(losses)
    rank = np.argsort(np.argsort(-np.asarray(losses)))
    expected = np.clip(k - rank, 0, 1) / k
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-12)


def _statistics_np(losses, alpha):
    """ES, standard error and VaR of a sample by sorting (float64 NumPy)."""
    n = len(losses)
    tail = np.sort(losses)[::-1]
    k = n * (1 - alpha)
    m = math.floor(k)
    es = np.sum(np.clip(k - np.arange(n), 0, 1) * tail) / k
    excess = np.maximum(losses - tail[m], 0.0)
    m1, m2 = excess.mean(), (excess * excess).mean()
    return np.array([es, math.sqrt((m2 - m1 * m1) / n) / (1 - alpha), tail[m]])


def _tie_sample():
    # 100 draws, alpha 0.95 (k = 5): two draws above a run of five tied at 7.0 that
    # holds the VaR (position 5, the fourth of the run), the rest below; the tied
    # draws move in different directions (the losses of different outcomes).
    losses = np.concatenate([[10.0, 9.0], np.full(5, 7.0), np.linspace(6.0, -3.0, 93)])
    tangent = np.concatenate([[0.3, -0.2], [1.0, -1.0, 2.0, 0.0, 0.5],
                              np.linspace(1.0, -1.0, 93)])
    return losses, tangent, 0.95


def test_one_sided_derivatives_at_ties_are_exact(x64):
    # The statistics of a sample are piecewise linear in a direction; at ties the
    # slopes to the right and to the left differ. order_ties + ordered_tail_statistics
    # give each exactly (a finite difference on the re-sorted sample, on one piece).
    losses, tangent, alpha = _tie_sample()
    tail = jnp.asarray(losses)[None, :64]
    slopes = {}
    for sign in (1, -1):
        ordered = order_ties(tail, jnp.asarray(tangent)[None, :64, None], sign)[..., 0]
        _, d = jax.jvp(lambda t: ordered_tail_statistics(t, 100, jnp.asarray(alpha)),
                       (tail,), (ordered,))
        slopes[sign] = np.array([float(x[0]) for x in d])
        h = 1e-6
        fd = sign * (_statistics_np(losses + sign * h * tangent, alpha)
                     - _statistics_np(losses, alpha)) / h
        np.testing.assert_allclose(slopes[sign], fd, rtol=1e-6, atol=1e-6)
    # To the right the VaR follows the run's 4th largest slope (0.0), to the left
    # its 4th smallest (1.0); ES and the standard error differ too.
    assert slopes[1][2] == pytest.approx(0.0) and slopes[-1][2] == pytest.approx(1.0)
    assert np.all(np.abs(slopes[1] - slopes[-1]) > 1e-3)


def test_losses_equal_but_for_rounding_are_one_tie():
    # Float32 losses of the tie sample with the run at 7.0 spread over a few units
    # in the last place (what summing the same terms in another order, or with
    # fused multiply-adds, does): the derivatives are those of the exact tie, to
    # the right, to the left and averaged. A draw 1e-4 (relative) away is not tied.
    losses, tangent, alpha = _tie_sample()
    exact = jnp.asarray(losses, jnp.float32)
    ulp = np.spacing(np.float32(7.0))
    spread = exact.at[2:7].add(jnp.asarray([3, -2, 0, 4, -1], jnp.float32) * ulp)
    assert len(np.unique(np.asarray(spread[2:7]))) == 5
    tangent = jnp.asarray(tangent, jnp.float32)

    @jax.jit  # eagerly, each primitive compiles on its own (100 compiles)
    def derivatives(t):
        tail = t[None, :64]
        run = kj_tied_with_var(tail, tail[:, 5])
        snapped = jnp.where(run, tail[:, 5:6], tail)
        out = []
        for sign in (1, -1):
            ordered = order_ties(snapped, tangent[None, :64, None], sign)[..., 0]
            out.append(jax.jvp(lambda x: ordered_tail_statistics(x, 100, jnp.asarray(alpha)),
                               (tail,), (ordered,))[1])
        out.append(jax.jvp(lambda x: kj.expected_shortfall(x, jnp.asarray(alpha), 64),
                           (t,), (tangent,))[1])
        return out

    def slopes(t):
        return np.array([[float(np.ravel(x)[0]) for x in d] for d in derivatives(t)])

    # The sort leaves the spread run in another order than the exact one.
    spread = jnp.sort(spread)[::-1]
    np.testing.assert_allclose(slopes(spread), slopes(exact), atol=1e-6)
    far = exact.at[6].add(7.0 * 1e-4)
    run = kj_tied_with_var(far[None, :64], far[None, 5])
    assert np.flatnonzero(np.asarray(run[0])).tolist() == [2, 3, 4, 5]


def test_tie_averaged_derivative_ignores_the_order_of_the_ties(x64):
    # tail_statistics' derivative (linear, the Euler allocation's): the tied draws
    # share their mean slope (0.5 here), whatever order the sort left them in.
    losses, tangent, alpha = _tie_sample()

    def slope(t):
        _, d = jax.jvp(lambda x: kj.expected_shortfall(x, jnp.asarray(alpha), 64),
                       (jnp.asarray(losses),), (jnp.asarray(t),))
        return np.array([float(x) for x in d])

    base = slope(tangent)
    permuted = tangent.copy()
    permuted[2:7] = tangent[[6, 4, 2, 5, 3]]
    np.testing.assert_allclose(slope(permuted), base, atol=1e-12)
    assert base[2] == pytest.approx(0.5)
    # The ES's: 0.3 and -0.2 above, then three of the run's weight at its mean.
    assert base[0] == pytest.approx((0.3 - 0.2 + 3 * 0.5) / 5)


def test_a_tail_bucket_too_small_for_the_confidence_gives_nan_under_jit():
    """`top` is static and alpha a run-time array: a confidence whose tail
    (N (1 - alpha) = 100 draws here) does not fit the bucket (64) must never
    silently drop losses, under jit and vmap alike. The check is a NaN (no host
    callback, so the program stays cacheable); the host layer raises EngineError."""
    x = jax.random.normal(jax.random.key(0), (1000,), jnp.float32)
    es = eqx.filter_jit(kj.expected_shortfall)
    exact = kj.exact_expected_shortfall(np.asarray(x), np.full(1000, 1e-3), 0.95)
    assert float(es(x, jnp.float32(0.95), 64)[0]) == pytest.approx(exact, rel=1e-5)
    assert all(np.isnan(float(v)) for v in es(x, jnp.float32(0.9), 64))
    batched = eqx.filter_jit(jax.vmap(kj.expected_shortfall, in_axes=(None, 0, None)))
    good, se, var = batched(x, jnp.asarray([0.95, 0.9], jnp.float32), 64)
    assert float(good[0]) == pytest.approx(exact, rel=1e-5)
    assert np.isnan(float(good[1])) and np.isnan(float(se[1])) and np.isnan(float(var[1]))


def test_var_at_a_confidence_whose_tail_is_the_whole_law():
    """At confidence 1e-9, 1 - alpha rounds to 1 in float32 and no cumulated mass
    exceeds it: the VaR is then the lowest loss that holds mass (the whole law is
    the tail), not the top of the zero-padded lattice. The ES is the mean loss."""
    origin, spacing = jnp.float32(-700.0), jnp.float32(100.0)
    probs = np.zeros(64)
    probs[[0, 3, 10]] = [0.5, 0.25, 0.25]  # losses -700, -400, 300
    es, var = lattice_statistics(origin[None], spacing[None], jnp.asarray(probs[None],
                                                                         jnp.float32),
                                 jnp.float32(1e-9))
    assert float(var[0]) == -700.0
    assert float(es[0]) == pytest.approx(0.5 * -700 + 0.25 * -400 + 0.25 * 300, rel=1e-6)
    # Through a book: long 1,000 of outcomes A (0.4) and B (0.3) of one election
    # loses -300 if either wins, 700 if neither; the VaR at 1e-9 is -300.
    book = kj.loads_book(
        '[model]\nscenarios = 4096\nconfidence = 1e-9\n'
        '[[contracts]]\nid = "A"\ncluster = "Election"\nevent = "PRES"\ntype = "outcome"\n'
        'outcome = "A"\nprice = 0.4\n'
        '[[contracts]]\nid = "B"\ncluster = "Election"\nevent = "PRES"\ntype = "outcome"\n'
        'outcome = "B"\nprice = 0.3\n'
        '[[positions]]\ncontract = "A"\nquantity = 1000\n'
        '[[positions]]\ncontract = "B"\nquantity = 1000\n')
    election = next(c for c in kj.portfolio_margin(book).clusters if c.name == "Election")
    assert election.var == pytest.approx(-300.0)


@pytest.mark.parametrize("n, alpha", [(5000, 0.99), (1000, 0.99), (4000, 0.975), (200, 0.95)])
def test_var_at_an_integer_tail_count_is_the_same_draw_everywhere(n, alpha, x64):
    """N (1 - alpha) = k an integer: the VaR is the draw with exactly k draws above
    it (the lower alpha-quantile of the sample), in float32 and float64, for the
    sorted, the weighted and the sort-free estimators, and whatever the rounding
    of the cumulated masses (a GPU's parallel cumsum rounds differently from a
    CPU's sequential one). Before, float32's rounded alpha (0.99 -> 0.9900000095)
    put k a hair below the integer and the sorted estimator took the draw above:
    float32 and float64 disagreed, and the weighted estimator on a GPU picked
    the other draw from the CPU's."""
    k = round(n * (1 - alpha))
    rng = np.random.default_rng(n)
    losses64 = rng.normal(size=(3, n)) * 100
    expected = -np.sort(-losses64, axis=1)[:, k]
    for dtype in (jnp.float32, jnp.float64):
        losses = jnp.asarray(losses64, dtype)
        conf = jnp.asarray(alpha, dtype)
        top = kj.tail_size(n, alpha)
        tail, _ = jax.lax.top_k(losses, top)
        want = np.asarray(expected, dtype)
        np.testing.assert_array_equal(tail_statistics(tail, n, conf)[2], want)
        t, mass, _ = weighted_tail(losses, jnp.ones(n, dtype), top, n)
        np.testing.assert_array_equal(weighted_tail_statistics(t, mass, conf, n)[2], want)
        # Masses off by an ulp or two either way (another summation order).
        for step in (-2, 2):
            nudged = jnp.asarray(np.nextafter(np.asarray(mass), step * np.inf), dtype)
            nudged = jnp.where(jnp.arange(top) % 2 == 0, nudged, mass)
            np.testing.assert_array_equal(
                weighted_tail_statistics(t, nudged, conf, n)[2], want)
        np.testing.assert_array_equal(
            sortfree_tail_statistics(losses, jnp.ones(n, dtype), conf, n)[2], want)
    # A k that is not an integer is floor(k), as before: 8,192 x 0.01 = 81.92.
    losses = jnp.asarray(rng.normal(size=(1, 8192)), jnp.float32)
    tail, _ = jax.lax.top_k(losses, kj.tail_size(8192, 0.99))
    assert tail_statistics(tail, 8192, jnp.float32(0.99))[2][0] == tail[0, 81]

"""The conditional (smoothed-perturbation) sensitivity estimator: unbiased against
exact derivatives, with honest standard errors (issue 7, item 2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from helpers import above, binary, exact_es, make_book, outcome, pair_exact, parlay
from jax import lax

import kinetic_jax as kj
from kinetic_jax._conditional import Aggregates, jump_surrogate, pooled_yes, tail_surrogate
from kinetic_jax._sensitivities import JumpRun, sensitivity_jit

# The scenario count of the closed-form pair (and of the sensitivity tests' pair).
N = 4096


def _seeds(book, seeds, row=1):
    """The base row of the Jacobian and its standard errors over `seeds` keys (the
    conditional estimator and its jump run named: the book's scenario count, plain
    sampler, so the checks do not depend on the engine's defaults)."""
    arrays, layout, params = kj.margin_inputs(book)
    n = book.settings.scenarios
    top = kj.tail_size(n, 0.99)
    out = []
    for seed in range(seeds):
        res = sensitivity_jit(arrays, params, jax.random.key(100 + seed), n, top,
                              jnp.float32(0.05), "conditional", JumpRun(n, top, "plain"))
        out.append(jax.tree.map(lambda x: np.asarray(x[row], np.float64),
                                (res.jacobian, res.standard_error)))
    jac = jax.tree.map(lambda *x: np.stack(x), *[o[0] for o in out])
    err = jax.tree.map(lambda *x: np.stack(x), *[o[1] for o in out])
    return layout, jac, err


def _check(values, errors, exact, *, rel=0.0, name=""):
    """Mean over seeds within 4 standard errors of the mean (+ rel * |exact|) of the
    exact value; reported standard error within a factor 2 of the seed spread."""
    mean, sd = values.mean(), values.std(ddof=1)
    sem = sd / np.sqrt(len(values))
    assert abs(mean - exact) <= 4 * sem + rel * abs(exact) + 1e-6, (name, mean, exact, sem)
    tiny = 1e-5 * max(abs(exact), 1.0)  # both ~0 where the estimate is exact (marks only)
    assert 0.5 * sd - tiny <= errors.mean() <= 2.0 * sd + tiny, (name, errors.mean(), sd)


def test_pair_rho_loading_and_price_derivatives_match_the_closed_form():
    """Long X / short Y: ES = [P1 L1 + (1% - P1) L2] / 1% with P1 = P(X NO, Y YES)
    < 1% (bivariate normal, latent correlation r = a_X a_Y rho_crypto). Then
    dES/dtheta = (L1 - L2) / 1% * dP1/dtheta (+ q from the marks for prices), with
    dP1/dr = -phi2(cx, cy; r), dP1/dpx = -P(Y > cy | X = cx),
    dP1/dpy = P(X <= cx | Y = cy). No smoothing: no bias allowance."""
    px, py, q = 0.95, 0.10, 1000.0
    exact = pair_exact(px, py, q)
    assert exact["p1"] < 0.01
    d_rho, d_loading, d_px, d_py = (exact[k] for k in ("d_rho", "d_loading", "d_px", "d_py"))
    # 96 seeds of 4,096 scenarios: the same draws in all as 12 of 32,768, so the
    # same standard error of the mean (measured at 4,096 x 96: 6.0 for dES/drho of
    # -128.7).
    book = make_book([above("X", "BTC-E", 1.0, px), above("Y", "ETH-E", 1.0, py, cluster="ETH")],
                     {"X": q, "Y": -q}, scenarios=N, mc_error=False)
    layout, jac, err = _seeds(book, 96)
    crypto = layout.node_names.index("crypto")
    _check(jac.rho[:, crypto], err.rho[:, crypto], d_rho, name="rho")
    _check(jac.loading[:, 0], err.loading[:, 0], d_loading, name="loading")
    _check(jac.price[:, 0], err.price[:, 0], d_px, name="px")
    _check(jac.price[:, 1], err.price[:, 1], d_py, name="py")
    # rho of nodes above only zero-loading clusters cannot move the margin.
    for node in ("root", "politics", "sports"):
        assert np.all(jac.rho[:, layout.node_names.index(node)] == 0.0)


def test_price_derivatives_of_every_contract_type_match_exact_enumeration():
    """Independent events (zero loadings): ES is an exact function of the prices by
    enumeration; its central difference (float64, h = 1e-6) is the exact derivative.
    Games, a parlay on two of them, an election with an unlisted remainder."""
    contracts = [binary("G0", 0.55), binary("G1", 0.4), binary("G2", 0.7), binary("G3", 0.35),
                 outcome("E1", "PRES", "a", 0.45), outcome("E2", "PRES", "b", 0.35),
                 parlay("P", ["G0", "G1"], 0.25)]
    qty = {"G0": 400.0, "G1": -300.0, "G2": 250.0, "G3": -350.0, "E1": -500.0, "E2": 400.0,
           "P": 350.0}
    settings = dict(mc_error=False, liquidity=False, scenarios=1 << 15)
    book = make_book(contracts, qty, **settings)
    layout, jac, err = _seeds(book, 8)

    def exact_derivative(i, h=1e-6):
        def es_at(dp):
            bumped = [c if k != i else c.__class__(**{**c.__dict__, "price": c.price + dp})
                      for k, c in enumerate(contracts)]
            return exact_es(make_book(bumped, qty, **settings))
        return (es_at(h) - es_at(-h)) / (2 * h)

    for i, c in enumerate(contracts):
        if c.type == "parlay":
            continue  # a parlay's price is only its mark: d/dp = q in the tail
        _check(jac.price[:, i], err.price[:, i], exact_derivative(i), rel=2e-3, name=c.id)


def test_reported_sensitivities_carry_standard_errors(tmp_path):
    book = make_book([above("X", "BTC-E", 1.0, 0.9), above("Y", "ETH-E", 1.0, 0.2, cluster="ETH"),
                      binary("G", 0.5)], {"X": 500.0, "Y": -400.0, "G": 100.0}, scenarios=N)
    s = kj.sensitivities(book, scenarios=N)
    assert s.estimator == "conditional"
    assert set(s.rho_standard_error) == set(s.rho)
    assert set(s.loading_standard_error) == set(s.loading)
    for entry in s.positions.values():
        assert entry["d_price_se"] >= 0 and entry["d_quantity_se"] >= 0
    d = s.to_dict()
    assert d["rho_standard_error"] == s.rho_standard_error
    assert np.isfinite(list(d["loading_standard_error"].values())).all()
    # Tiny scenario counts still give finite figures (sub-batches for the errors).
    tiny = kj.sensitivities(book, scenarios=1024)
    assert all(np.isfinite(v) for v in tiny.rho_standard_error.values())


def test_one_batch_surrogates_equal_that_batch_of_the_whole():
    """The Jacobian of batch b is taken through batch b's aggregates alone (linear,
    not quadratic, in the batches); its surrogates equal row b of the surrogates
    of every batch, an empty-tailed batch (tau = 0) included, which takes the
    whole run's pooled tail mean."""
    book = make_book([above("B", "BTC-E", 1, 0.55, "BTC"), above("E", "ETH-E", 1, 0.38, "ETH"),
                      binary("G", 0.4), parlay("P", ["B", "G"], 0.2)],
                     {"B": 1000.0, "E": -800.0, "G": 300.0, "P": -500.0})
    arrays, _ = kj.book_arrays(book)
    c, r, k = arrays.quantity.shape[0], arrays.loading.shape[0] + 1, arrays.loading.shape[0]
    rng = np.random.default_rng(0)
    b = 6
    tau = rng.uniform(0.1, 1.0, (b, r))
    tau[3] = 0.0  # a batch whose tail holds no draw
    agg = Aggregates(*(jnp.asarray(x, jnp.float32) for x in (
        rng.normal(size=(b, c, r)), rng.normal(size=(b, c, r, k)), tau,
        rng.uniform(0, 1, (b, r, c)) * tau[..., None])))
    # Jitted (eagerly, every primitive compiles on its own, for each of the shapes).
    jump, tail = jax.jit(jump_surrogate), jax.jit(tail_surrogate)
    pooled = pooled_yes(agg)
    whole_jump, whole_tail = jump(arrays, agg), tail(arrays, agg)
    for i in range(b):
        one = jax.tree.map(lambda x, i=i: lax.dynamic_index_in_dim(x, i), agg)
        np.testing.assert_allclose(jump(arrays, one)[0], whole_jump[i], rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(tail(arrays, one, pooled)[0], whole_tail[i], rtol=1e-6,
                                   atol=1e-3)
    # Without the pooled mean the empty batch would see only its own (empty) tail.
    empty = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, 3), agg)
    assert not np.allclose(tail(arrays, empty)[0], whole_tail[3])

"""Sensitivities (SPEC.md §2.6): exact quantity derivatives, smoothed derivatives
against finite differences and closed forms, Euler allocation, jit/vmap, no NaN."""

from __future__ import annotations

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    above,
    binary,
    check_grad,
    make_book,
    outcome,
    pair_exact,
    quantities_of,
    sensitivity_result,
)

import kinetic_jax as kj
from kinetic_jax._cli import main as cli
from kinetic_jax._sensitivities import MarginVars, _order_binary_ties, differentiable_margin
from kinetic_jax._shortfall import order_ties as kj_order_ties

REFERENCE = "examples/reference_book.toml"
# One scenario count for the whole module (and the CLI tests' count): every assertion
# here is exact at any count or has its tolerance from the seed spread, and the small
# books below share one padded shape (8 contract slots), so they share compiled
# programs (the conditional estimator's once for all of them).
N = 4096


def _pair_book(px=0.95, py=0.10, q=1000.0, scenarios=N, **settings):
    """Long X (BTC above) / short Y (ETH above): event-latent correlation
    0.9 * 0.9 * 0.68 in the default hierarchy."""
    return make_book([above("X", "BTC-E", 1.0, px), above("Y", "ETH-E", 1.0, py, cluster="ETH")],
                     {"X": q, "Y": -q}, scenarios=scenarios, mc_error=False, **settings)


def test_single_contract_quantity_derivative_is_exact():
    # Long q at p: loss q p with probability 1 - p > 1%, so ES = q p and dES/dq = p
    # (the whole tail lies in one atom: exact at any scenario count).
    book = make_book([binary("G", 0.4)], {"G": 500.0}, mc_error=False, scenarios=N)
    s = kj.sensitivities(book)
    assert s.base == pytest.approx(200.0, rel=1e-6)
    assert s.positions["G"]["d_quantity"] == pytest.approx(0.4, rel=1e-6)
    assert s.positions["G"]["euler"] == pytest.approx(200.0, rel=1e-6)
    # A short: loss |q| (1 - p) with probability p = 0.4: dES/dq = -(1 - p).
    short = make_book([binary("G", 0.4)], {"G": -500.0}, mc_error=False, scenarios=N)
    assert kj.sensitivities(short).positions["G"]["d_quantity"] == pytest.approx(-0.6, rel=1e-6)


def test_euler_allocation_sums_to_the_margin_when_homogeneous():
    # No liquidity add-on: base, floor, the MC buffer and the cap are all
    # homogeneous of degree 1 in quantities, so sum q dM/dq = M (float32 sums).
    book = kj.load_book(REFERENCE).with_settings(liquidity=False, scenarios=N)
    s = kj.sensitivities(book)
    assert s.euler_total == pytest.approx(s.margin, rel=2e-5)
    assert abs(s.euler_residual) <= 2e-5 * s.margin
    assert sum(s.clusters.values()) == pytest.approx(s.euler_total, rel=1e-9)
    # Each homogeneous figure (base, floor, every cluster's ES) adds up over its
    # additive derivatives, the Euler allocation's.
    res = sensitivity_result(book)
    q = quantities_of(book)
    additive = np.asarray(res.additive, np.float64)[:, :len(q)]
    figures = [res.result.margin, res.result.base, res.result.floor, *res.result.cluster_es]
    assert additive @ q == pytest.approx(np.asarray(figures, np.float64), rel=2e-5, abs=1e-3)
    # The reported derivatives (the mean of the one-sided ones at ties) and the
    # additive ones agree away from ties; this book at N draws has ties at the VaR
    # of mixed outcomes, so they differ there, and only there.
    d = np.array([s.positions[c]["d_quantity"] for c in s.positions])
    e = np.array([s.positions[c]["euler"] / s.positions[c]["quantity"] for c in s.positions])
    assert 0 < np.sum(np.abs(d - e) > 1e-4) < len(d)


def test_quantity_derivative_at_a_kink_is_the_central_difference():
    # X and Y (other clusters) at 0.97: the whole book's 99% tail is both NO (loss
    # 194, under 1%) then a run of draws tied at 94 of two kinds, X NO / Y YES and
    # X YES / Y NO. Buying X lifts the first kind (slope 0.97), selling it the
    # second (slope -0.03): the base is kinked in q_X. Its reported derivative is
    # the mean of the two slopes, exact on the draws, and the additive one still
    # adds up to the base.
    book = make_book([above("X", "BTC-E", 1.0, 0.97), above("Y", "ETH-E", 1.0, 0.97,
                                                         cluster="ETH")],
                     {"X": 100.0, "Y": 100.0}, scenarios=N, liquidity=False)
    res = sensitivity_result(book)
    d_base = np.asarray(res.jacobian.quantity, np.float64)[1, :2]

    def base(dx, dy):
        b = book.with_positions({"X": 100.0 + dx, "Y": 100.0 + dy})
        return kj.portfolio_margin(b, sampler="plain").base

    sides = np.asarray(res.one_sided, np.float64)[:, 1, :2]  # (right, left) of the base
    b0 = base(0.0, 0.0)
    for i, step in enumerate([(1.0, 0.0), (0.0, 1.0)]):
        right = base(*step) - b0
        left = b0 - base(-step[0], -step[1])
        assert right - left > 0.2  # a kink
        assert d_base[i] == pytest.approx((right + left) / 2, abs=2e-4)
        assert sides[:, i] == pytest.approx([right, left], abs=2e-4)
    # The report's buy and sell slopes are the margin's one-sided derivatives.
    report = kj.sensitivities(book)
    margin_sides = np.asarray(res.one_sided, np.float64)[:, 0, :2]
    for i, cid in enumerate("XY"):
        p = report.positions[cid]
        assert [p["d_quantity_buy"], p["d_quantity_sell"]] == pytest.approx(
            margin_sides[:, i], rel=1e-12)
        assert p["d_quantity"] == pytest.approx(margin_sides[:, i].mean(), rel=1e-6)
    additive = np.asarray(res.additive, np.float64)[1, :2]
    assert additive @ np.array([100.0, 100.0]) == pytest.approx(b0, rel=1e-5)


def test_binary_ties_are_ordered_as_the_general_sort_orders_them():
    # quantity_jacobian's shortcut for 0/1 outcomes against order_ties (a sort), on
    # the run of ties at each row's VaR: rows of 64 draws with runs of equal losses,
    # random outcomes of 5 slots (one slot out of the row: all slopes 0).
    rng = np.random.default_rng(3)
    tail = -np.sort(-rng.integers(0, 12, size=(3, 64)).astype(np.float32), axis=-1)
    var = tail[:, 20]
    yes = rng.integers(0, 2, size=(3, 64, 5)).astype(np.float32)
    weight = np.array([1.0, 1.0, 0.0, 1.0, 1.0], np.float32)
    price = np.array([0.3, 0.9, 0.5, 0.01, 0.6], np.float32)
    slope = (price - yes) * weight
    run = tail == var[:, None]
    assert np.all(run.sum(-1) >= 5)
    no = np.sum(run[..., None] * (1 - yes), axis=1)
    no_slope, yes_slope = np.broadcast_to(price * weight, no.shape), (price - 1) * weight
    for sign in (1, -1):
        first, lead, rest = ((no, no_slope, yes_slope) if sign > 0
                             else (run.sum(-1)[:, None] - no, yes_slope, no_slope))
        fast = np.asarray(_order_binary_ties(
            *map(jnp.asarray, (run, first, np.broadcast_to(lead, no.shape),
                               np.broadcast_to(rest, no.shape), slope))))
        general = np.asarray(kj_order_ties(jnp.asarray(tail), jnp.asarray(slope), sign))
        np.testing.assert_array_equal(fast[run], general[run])
        np.testing.assert_array_equal(fast[~run], slope[~run])


def test_euler_residual_equals_the_liquidity_non_homogeneity():
    # liquidity_i = rate * gross_i * (|q_i| / OI_i - threshold) (below the gross cap)
    # has q d/dq = liquidity_i + rate * gross_i * |q_i| / OI_i: the residual is
    # minus that excess.
    # Four independent games, short 300 at 0.2 (gross 240 each): all four lose with
    # probability 0.2^4 = 0.16% < 1%, so the worst case (960) does not cap the margin
    # (ES about 710 plus 48 of liquidity); one cluster, so the base binds.
    games = [binary(f"G{i}", 0.2, **({"open_interest": 1000.0} if i == 0 else {}))
             for i in range(4)]
    book = make_book(games, {f"G{i}": -300.0 for i in range(4)}, mc_error=False,
                     liquidity_threshold=0.1, liquidity_rate=1.0, scenarios=N)
    s = kj.sensitivities(book)
    assert s.binding == "base"
    gross, ratio = 240.0, 300.0 / 1000.0
    assert s.margin - s.base == pytest.approx(gross * (ratio - 0.1), rel=1e-5)
    assert s.euler_residual == pytest.approx(-gross * ratio, rel=1e-4)


@pytest.mark.slow  # 96 margin and sensitivity calls: 13-14 s
def test_closed_form_rho_and_loading_derivative_of_the_pair():
    """ES of long X / short Y with the worst outcome (X NO, Y YES) of probability
    P1 < 1%: ES = [P1 L1 + (1% - P1) L2] / 1%, so dES/drho = (L1 - L2)/1% * dP1/drho
    with dP1/drho_latent = -phi2(cX, cY; r) (bivariate normal density) and
    r = a_BTC a_ETH rho_crypto. Through the report of kj.sensitivities, with the
    conditional estimator and its jump run (8 x 4,096 importance-sampled draws: the
    engine's default, so the program is the other tests'; named, so the test does
    not depend on the default), which has no smoothing bias
    (tests/test_conditional.py checks it against the same closed form): tolerance
    4 standard errors of the mean over 96 seeds (asserted under 25% of each
    derivative, where the former smoothed check allowed 3 standard errors plus
    15%; dES/drho and dES/dloading differ by the factor 0.9 / 0.68 = 1.32 that a
    swapped loading and correlation would show); the ES within 3 standard errors
    plus 0.5%."""
    px, py, q = 0.95, 0.10, 1000.0
    exact = pair_exact(px, py, q)
    assert exact["p1"] < 0.01
    es, d_rho, d_loading = exact["es"], exact["d_rho"], exact["d_loading"]
    book = _pair_book(px, py, q)
    seeds = 96
    got = np.array([[s.base, s.base_sensitivities["rho"]["crypto"],
                     s.base_sensitivities["loading"]["BTC"]]
                    for s in (kj.sensitivities(book, seed=seed, scenarios=N,
                                               estimator="conditional", sampler="importance",
                                               jump_scenarios=8 * N)
                              for seed in range(seeds))])
    mean, sem = got.mean(axis=0), got.std(axis=0, ddof=1) / np.sqrt(seeds)
    assert abs(mean[0] - es) <= 3 * max(sem[0], 1.0) + 0.005 * es
    assert abs(mean[1] - d_rho) <= 4 * sem[1], (mean[1], d_rho, sem[1])
    assert abs(mean[2] - d_loading) <= 4 * sem[2], (mean[2], d_loading, sem[2])
    assert 4 * sem[1] < 0.25 * abs(d_rho) and 4 * sem[2] < 0.25 * abs(d_loading)


def _smooth_fn(arrays, params, key, scenarios, t):
    top = kj.tail_size(scenarios, float(params.confidence))

    def fn(v):
        return differentiable_margin(v, arrays, params, key, scenarios, top, t, "smooth").margin

    return fn


def test_smoothed_gradient_matches_finite_differences_in_float64(x64):
    book = make_book(
        [above("A", "BTC-E", 1.0, 0.6), above("B", "BTC-E", 2.0, 0.3),
         above("C", "ETH-E", 1.0, 0.45, cluster="ETH"),
         outcome("E1", "PRES", "a", 0.5), outcome("E2", "PRES", "b", 0.3),
         binary("G", 0.55)],
        {"A": 800.0, "B": -500.0, "C": -600.0, "E1": -400.0, "E2": 300.0, "G": 200.0},
        scenarios=N,
    )
    arrays, _, params = kj.margin_inputs(book, dtype=jnp.float64)
    # One compiled program gives both the value (for the finite differences) and
    # the gradient.
    value_and_grad = jax.jit(jax.value_and_grad(
        _smooth_fn(arrays, params, jax.random.key(0), N, jnp.float64(0.1))))

    def fn(v):
        return value_and_grad(v)[0]

    x = MarginVars.of(arrays)
    grad = value_and_grad(x)[1]
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    check_grad(fn, x, grad=grad, eps=1e-6, rtol=1e-5, atol=1e-6, directions=6)


def test_grad_under_jit_and_vmap_matches_a_loop():
    """jax.grad of the smoothed margin, vmapped over rho under jit, against one
    kj.sensitivities call per rho (the same function, seed, scenarios and
    temperature; the engine's own compiled program, which the boundary test below
    also uses)."""
    book = _pair_book()
    arrays, _, params = kj.margin_inputs(book)
    fn = _smooth_fn(arrays, params, jax.random.key(1), N, jnp.float32(0.05))
    base = MarginVars.of(arrays)
    rhos = jnp.array([0.5, 0.6, 0.7], jnp.float32)
    crypto = list(book.hierarchy.node_names).index("crypto")

    def grad_at(rho):
        return jax.grad(fn)(eqx_set_rho(base, base.rho.at[crypto].set(rho))).rho[crypto]

    batched = jax.jit(jax.vmap(grad_at))(rhos)
    looped = [kj.sensitivities(book.with_hierarchy(book.hierarchy.replace(rho={"crypto": r})),
                               estimator="smooth", seed=1, temperature=0.05).rho["crypto"]
              for r in rhos.tolist()]
    np.testing.assert_allclose(batched, looped, rtol=1e-4, atol=1e-3)


def eqx_set_rho(v: MarginVars, rho) -> MarginVars:
    return MarginVars(v.quantity, v.price, rho, v.loading, v.horizon, v.spot, v.vol)


@pytest.mark.parametrize("px, py, rho", [(0.001, 0.999, 0.68), (0.999, 0.001, 0.68),
                                          (0.5, 0.5, 0.999), (0.3, 0.7, 0.0)])
def test_no_nan_gradients_at_the_boundaries(px, py, rho):
    h = kj.default_hierarchy().replace(rho={"crypto": rho, "risk": min(rho, 0.35)})
    book = make_book([above("X", "BTC-E", 1.0, px), above("Y", "ETH-E", 1.0, py, cluster="ETH"),
                      outcome("O1", "PRES", "a", 0.999), binary("G", 0.001)],
                     {"X": 1000.0, "Y": -1000.0, "O1": -10.0, "G": 5.0},
                     hierarchy=h, scenarios=N)
    for estimator in ("hybrid", "smooth", "straight_through"):
        s = kj.sensitivities(book, estimator=estimator)
        values = [s.margin, *s.rho.values(), *s.loading.values()]
        values += [v for p in s.positions.values() for v in p.values()]
        assert np.all(np.isfinite(values)), estimator


def test_sensitivities_do_not_recompile_on_value_changes():
    from kinetic_jax._sensitivities import sensitivity_jit

    book = _pair_book(scenarios=N)
    kj.sensitivities(book)
    before = sensitivity_jit._cached._cache_size()
    kj.sensitivities(_pair_book(px=0.8, py=0.3, q=250.0, scenarios=N), seed=5,
                     temperature=0.1)
    assert sensitivity_jit._cached._cache_size() == before


def test_bad_temperature_and_estimator_are_input_errors():
    book = _pair_book(scenarios=N)
    with pytest.raises(kj.BookError, match=r"temperature: 0 is outside"):
        kj.sensitivities(book, temperature=0)
    with pytest.raises(kj.BookError, match=r"estimator: 'exact' is not one of"):
        kj.sensitivities(book, estimator="exact")


def test_cli_sensitivities_json_and_table(capsys):
    assert cli(["sensitivities", REFERENCE, "--json", "--scenarios", str(N)]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("margin", "positions", "rho", "loading", "clusters"):
        assert key in out
    book = kj.load_book(REFERENCE)
    held = {k for k, v in book.net_quantities().items() if v != 0}
    assert set(out["positions"]) == held
    for p in out["positions"].values():
        assert set(p) >= {"quantity", "price", "d_quantity", "d_price", "euler"}
        assert math.isfinite(p["euler"]) and math.isfinite(p["d_quantity"])
    assert sum(p["euler"] for p in out["positions"].values()) == pytest.approx(
        out["euler_total"], rel=1e-12)
    assert set(out["rho"]) == set(book.hierarchy.node_names)
    assert set(out["loading"]) == set(book.hierarchy.cluster_names)
    assert sum(out["clusters"].values()) == pytest.approx(out["euler_total"], rel=1e-9)
    # The margin the sensitivities differentiate: the plain estimator's.
    margin = kj.portfolio_margin(book, scenarios=N, sampler="plain").margin
    assert out["margin"] == pytest.approx(margin, rel=1e-6)
    assert cli(["sensitivities", REFERENCE, "--scenarios", str(N), "--top", "5"]) == 0
    text = capsys.readouterr().out
    assert "largest Euler contribution first" in text and "dM/drho" in text
    assert f"margin ${margin:,.2f} (binding: " in text and "plain sampling" in text
    assert cli(["sensitivities", REFERENCE, "--temperature", "-1"]) == 2
    assert "temperature: -1.0 is outside (0, 1]" in capsys.readouterr().err


def test_padding_slots_have_zero_derivatives_and_no_effect():
    """A padding slot is an always-YES contract: a quantity there would earn
    p - 1 a unit. Every entry point holds it at 0, so its derivatives are exactly
    0 and a quantity passed there changes no figure."""
    book = _pair_book(scenarios=N)
    arrays, layout, params = kj.margin_inputs(book)
    n = layout.n_contracts
    assert arrays.quantity.shape[0] > n
    key, top, t = jax.random.key(2), kj.tail_size(N, 0.99), jnp.float32(0.05)
    stuffed = arrays.quantity.at[n:].set(1e4)

    # Jitted: run eagerly, every primitive of the margin compiles on its own (523
    # compiles, 13 s for this test).
    @jax.jit
    def base(q):
        return kj.margin_arrays(eqx.tree_at(lambda x: x.quantity, arrays, q), params, key,
                                N, top).base

    assert float(base(stuffed)) == float(base(arrays.quantity))
    assert np.all(np.asarray(jax.jit(jax.grad(base))(stuffed))[n:] == 0)
    v = MarginVars.of(arrays)
    v = MarginVars(stuffed, v.price, v.rho, v.loading, v.horizon, v.spot, v.vol)
    g = jax.jit(jax.grad(lambda v: differentiable_margin(v, arrays, params, key, N, top, t,
                                                         "hard").margin))(v)
    assert np.all(np.asarray(g.quantity)[n:] == 0) and np.all(np.asarray(g.price)[n:] == 0)
    s = kj.sensitivity_jit(eqx.tree_at(lambda x: x.quantity, arrays, stuffed), params, key,
                           N, top, t, "conditional", kj.JumpRun(N, top, "importance"))
    assert np.all(np.asarray(s.jacobian.quantity)[:, n:] == 0)
    assert np.all(np.asarray(s.jacobian.price)[:, n:] == 0)
    assert float(s.result.margin) == float(kj.margin_jit(arrays, params, key, N, top).margin)

"""The conditional estimator's own run (the "jump run", issue 7 item 2): its
defaults, its input errors, and unbiasedness under both samplers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import above, make_book, pair_exact

import kinetic_jax as kj
from kinetic_jax._cli import main as cli

REFERENCE = "examples/reference_book.toml"
N = 4096


def test_default_is_8x_the_draws_importance_sampled():
    s = kj.Settings()
    run = kj.jump_run(s)
    assert run == kj.JumpRun(8 * 131072, kj.tail_size(8 * 131072, 0.99), "importance")
    assert (kj.JUMP_FACTOR, kj.JUMP_SAMPLER) == (8, "importance")
    # Never past the engine's scenario limit.
    big = kj.Settings(scenarios=1 << 23)
    assert kj.jump_run(big).scenarios == 1 << 24
    assert kj.jump_run(s, 4096, "plain") == kj.JumpRun(4096, kj.tail_size(4096, 0.99), "plain")


@pytest.mark.parametrize("scenarios, sampler, field, text", [
    (0, None, "jump_scenarios", "0 is not an integer in [1, 16777216]"),
    (1 << 25, None, "jump_scenarios", "33554432 is not an integer"),
    (2.5, None, "jump_scenarios", "2.5 is not an integer"),
    (True, None, "jump_scenarios", "True is not an integer"),
    (50, None, "jump_scenarios", "50 leaves no draw in the 0.01 tail"),
    (None, "sobol", "sampler", "'sobol' is not one of plain, importance"),
])
def test_bad_jump_run_names_the_field_and_value(scenarios, sampler, field, text):
    with pytest.raises(kj.BookError) as e:
        kj.jump_run(kj.Settings(), scenarios, sampler)
    assert e.value.field == field and text in str(e.value)


def test_sensitivities_reject_a_bad_jump_run_before_any_work():
    book = kj.load_book(REFERENCE)
    with pytest.raises(kj.BookError) as e:
        kj.sensitivities(book, jump_scenarios=-4)
    assert e.value.field == "jump_scenarios" and "-4" in str(e.value)


def test_cli_names_the_flag(capsys):  # rejected before any compile
    assert cli(["sensitivities", REFERENCE, "--jump-scenarios", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jump-scenarios" in err and "0 is not an integer" in err


def _pair(px=0.95, py=0.10, q=1000.0):
    return make_book([above("X", "BTC-E", 1.0, px), above("Y", "ETH-E", 1.0, py,
                                                           cluster="ETH")],
                     {"X": q, "Y": -q}, scenarios=N, mc_error=False)


def test_the_report_says_which_run_and_keeps_the_margins_figures():
    # The plain run is test_conditional's program, the importance run the
    # unbiasedness test's below (each compiled once in a session).
    book = _pair()
    s = kj.sensitivities(book, jump_scenarios=N, sampler="plain")
    assert (s.jump_scenarios, s.jump_sampler) == (N, "plain")
    assert s.to_dict()["jump_scenarios"] == N and s.to_dict()["jump_sampler"] == "plain"
    other = kj.sensitivities(book, jump_scenarios=N)
    assert (other.jump_scenarios, other.jump_sampler) == (N, "importance")
    # The margin and the quantity derivatives are the margin's, whatever the run.
    assert other.margin == s.margin == pytest.approx(kj.portfolio_margin(book).margin, rel=1e-6)
    assert other.positions["X"]["d_quantity"] == s.positions["X"]["d_quantity"]
    base = lambda r: r.base_sensitivities["rho"]["crypto"]  # noqa: E731
    assert base(other) != base(s) and base(other) < 0  # two runs, two estimates


def test_pair_rho_and_loading_are_unbiased_on_a_1x_importance_run():
    """The pair against its closed form (tests/helpers.pair_exact) on an
    importance-sampled run of the book's own count (the dashboard's run; the
    plain run is checked in tests/test_conditional.py, the library's 8x default in
    tests/test_sensitivities.py): the mean over 48 seeds within 4 of its standard
    errors of the exact value, no bias allowance, and the reported standard error
    within a factor 2 of the seed spread."""
    px, py, q = 0.95, 0.10, 1000.0
    exact = pair_exact(px, py, q)
    exact = {"rho": exact["d_rho"], "loading": exact["d_loading"]}
    book = _pair(px, py, q)
    arrays, layout, params = kj.margin_inputs(book)
    run = kj.jump_run(book.settings, N, "importance")
    crypto = layout.node_names.index("crypto")

    def one(key):
        res = kj.sensitivity_jit(arrays, params, key, N, kj.tail_size(N, 0.99),
                                 jnp.float32(0.05), "conditional", run)
        return (res.jacobian.rho[1, crypto], res.jacobian.loading[1, 0],
                res.standard_error.rho[1, crypto], res.standard_error.loading[1, 0])

    got = np.array([[float(x) for x in one(jax.random.key(500 + s))] for s in range(48)])
    for col, name in ((0, "rho"), (1, "loading")):
        values, errors = got[:, col], got[:, col + 2]
        sd = values.std(ddof=1)
        assert abs(values.mean() - exact[name]) <= 4 * sd / np.sqrt(len(values)), (
            name, values.mean(), exact[name])
        assert 0.5 * sd <= errors.mean() <= 2.0 * sd, (name, errors.mean(), sd)

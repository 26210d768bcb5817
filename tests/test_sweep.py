"""Sweeps (SPEC.md §5.3, kinetic_jax/_sweep.py): common random numbers against single
margin calls at points of every axis kind, invalid points with the engine's own
messages, no recompilation when only values change, sensitivities against
`kj.sensitivities`, the JSON/CSV/NPZ/PNG outputs and the CLI.

Scenario counts are small (4,096, a whole number of draw blocks): the tests check
that a sweep point *is* the margin call of the book with those values, which holds
at any scenario count, to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli as run

import kinetic_jax as kj
from kinetic_jax import BookError
from kinetic_jax._sweep import Axis, parse_axis

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
N = 4096
RTOL = 2e-6  # float32 rounding of the same sums in another order


@pytest.fixture(scope="module")
def book() -> kj.Book:
    return kj.load_book(REFERENCE)


def point_book(book: kj.Book, values: dict) -> kj.Book:
    """The book with a sweep point's values, built the way a user would edit it."""
    rho = {k[4:]: v for k, v in values.items() if k.startswith("rho.")}
    loading = {k[8:]: v for k, v in values.items() if k.startswith("loading.")}
    if rho or loading:
        book = book.with_hierarchy(book.hierarchy.replace(rho=rho, loading=loading))
    contracts = [dataclasses.replace(c, price=values.get(f"price.{c.id}", c.price))
                 for c in book.contracts]
    qty = book.net_quantities()
    qty.update({k[9:]: v for k, v in values.items() if k.startswith("quantity.")})
    book = dataclasses.replace(book, contracts=tuple(contracts)).with_positions(qty)
    if "confidence" in values:
        book = book.with_settings(confidence=values["confidence"])
    return book


def assert_point_is_margin_call(result, book, idx):
    values = {a.name: a.values[i] for a, i in zip(result.axes, idx)}
    # The sampler the sweep used (unset: plain, where a margin call's is exact_block).
    sampler = kj.resolved_sampler(book.settings, "sweep")
    report = kj.portfolio_margin(point_book(book, values), scenarios=N, sampler=sampler)
    got = {k: float(getattr(result, k)[idx]) for k in
           ("margin", "base", "floor", "standard_error", "worst_case_loss",
            "capital_released")}
    want = {"margin": report.margin, "base": report.base, "floor": report.floor,
            "standard_error": report.standard_error, "worst_case_loss": report.worst_case_loss,
            "capital_released": report.capital_released}
    for k in got:
        assert got[k] == pytest.approx(want[k], rel=RTOL, abs=1e-3), (values, k)
    assert result.binding[idx] == report.binding, values


@pytest.mark.parametrize("axis", [
    "rho.crypto=0.5:0.9:3",
    "rho.risk=0:0.35:3",
    "loading.ETH=0.3:0.95:3",
    "confidence=0.95:0.995:3",
    "quantity.ETH-5K-DEC=-9000:4000:3",
    "price.BTC-100K-DEC=0.5:0.6:3",
])
def test_every_point_is_the_margin_call_with_its_values(book, axis):
    """Common random numbers: each point equals kj.portfolio_margin of the book with
    the point's value, the same seed and scenarios (every axis kind)."""
    result = kj.sweep(book, [axis], scenarios=N, points_per_call=4)
    assert result.valid.all()
    for i in range(3):
        assert_point_is_margin_call(result, book, (i,))
    # The axis moves the margin: the points are not one point repeated.
    assert len(set(np.round(result.margin, 2))) > 1


def test_two_axis_grid_with_invalid_points(book):
    """A rho.risk x rho.crypto grid: points with crypto below risk are invalid with
    the Hierarchy's own message; every other point is the margin call."""
    result = kj.sweep(book, ["rho.risk=0.1:0.3:3", "rho.crypto=0.15:0.35:3"], scenarios=N,
                      points_per_call=4)
    assert result.shape == (3, 3)
    risk, crypto = np.meshgrid(result.axes[0].values, result.axes[1].values, indexing="ij")
    np.testing.assert_array_equal(result.valid, crypto >= risk)
    for idx in zip(*np.nonzero(~result.valid)):
        with pytest.raises(BookError) as e:
            book.hierarchy.replace(rho={"risk": float(risk[idx]), "crypto": float(crypto[idx])})
        assert result.reasons[idx] == str(e.value)
        assert "below its parent 'risk'" in result.reasons[idx]
        assert np.isnan(result.margin[idx]) and result.binding[idx] is None
    for idx in zip(*np.nonzero(result.valid)):
        assert result.reasons[idx] is None
        assert_point_is_margin_call(result, book, idx)


def test_invalid_prices_and_values_give_the_book_messages(book):
    """Prices breaking a ladder or an outcome sum, and values outside their range,
    carry the message the book validation gives for that book."""
    ladder = kj.sweep(book, ["price.BTC-100K-DEC=0.55:0.9:2"], scenarios=N, points_per_call=4)
    assert ladder.valid.tolist() == [True, False]
    with pytest.raises(BookError) as e:
        point_book(book, {"price.BTC-100K-DEC": 0.9})
    assert ladder.reasons[1] == str(e.value)
    assert "inconsistent ladder" in ladder.reasons[1]

    outcome = next(c for c in book.contracts if c.type == "outcome")
    others = sum(c.price for c in book.contracts
                 if c.type == "outcome" and c.event == outcome.event and c is not outcome)
    too_high = round(min(0.99, 1.06 - others), 3)
    result = kj.sweep(book, [(f"price.{outcome.id}", [outcome.price, too_high])],
                      scenarios=N, points_per_call=4)
    assert result.valid.tolist() == [True, False]
    assert "outcome prices sum to" in result.reasons[1]

    loading = kj.sweep(book, [("loading.BTC", [0.5, 1.0])], scenarios=N, points_per_call=4)
    assert loading.valid.tolist() == [True, False]
    assert loading.reasons[1].endswith("loading: 1.0 is outside [0, 1)")

    conf = kj.sweep(book, [("confidence", [0.99, 0.9999])], scenarios=N, points_per_call=4)
    assert conf.valid.tolist() == [True, False]
    assert conf.reasons[1].startswith("model.scenarios: 4096 draws leave no tail")


def test_unknown_axis_names_are_input_errors(book):
    for spec, needle in [("rho.nowhere=0:1:2", "unknown hierarchy node 'nowhere'"),
                         ("loading.XRP=0:1:2", "unknown cluster 'XRP'"),
                         ("price.NOPE=0.1:0.2:2", "unknown contract 'NOPE'"),
                         ("volatility=0:1:2", "NAME is not rho.<node>")]:
        with pytest.raises(BookError, match=needle):
            kj.sweep(book, [spec], scenarios=N)
    for spec, needle in [("rho.risk=0:1", "is not NAME=START:STOP:COUNT"),
                         ("rho.risk=a:1:2", "START and STOP must be numbers"),
                         ("rho.risk=0:1:0", "COUNT 0 is not a positive integer"),
                         ("rho.risk=0:inf:3", "STOP inf is not a finite number")]:
        with pytest.raises(BookError, match=needle):
            parse_axis(spec)
    with pytest.raises(BookError, match="the same axis is given twice"):
        kj.sweep(book, ["rho.risk=0:0.3:2", "rho.risk=0:0.3:2"], scenarios=N)
    # A future's price is its forward F0 (basis and cap), not a binary's p: its
    # points were margined as a loss of q F0 (the cap) before it was refused.
    perps = kj.load_book(Path(__file__).resolve().parents[1] / "examples" / "perps_and_strip.toml")
    for cid, kind in (("SPX-FUT-Sep26", "future"), ("BTC-PERP", "perp")):
        with pytest.raises(BookError, match=rf"--vary price.{cid}: '{cid}' is a {kind}: its "
                                            r"price is not an axis \(vary spot"):
            kj.sweep(perps, [f"price.{cid}=6000:6100:2"], scenarios=N)


def test_axis_values_are_linspace_with_both_ends():
    axis = parse_axis("rho.crypto=0.35:0.95:4")
    assert axis.name == "rho.crypto"
    np.testing.assert_allclose(axis.values, [0.35, 0.55, 0.75, 0.95], rtol=0, atol=1e-15)
    assert Axis.linspace("x", 0, 1, 3).values == (0.0, 0.5, 1.0)
    assert parse_axis("confidence=0.99:0.99:1").values == (0.99,)


def test_changing_values_does_not_recompile(book):
    """Same grid shape, other values (rho and quantity): no trace, no compile."""
    axes = ["rho.crypto=0.5:0.9:3", "quantity.ETH-5K-DEC=-5000:0:2"]
    kj.sweep(book, axes, scenarios=N, points_per_call=4)
    with kj.CompileCounter() as counter:
        kj.sweep(book, ["rho.crypto=0.4:0.8:3", "quantity.ETH-5K-DEC=100:900:2"],
                 scenarios=N, points_per_call=4)
    assert (counter.traces, counter.compiles) == (0, 0)


def test_sensitivities_match_the_sensitivity_report(book):
    """At the book's own values: dM/drho and dM/dloading are the conditional
    estimator's (with its standard errors), dM/dq and dM/dp those of
    kj.sensitivities; dM/dconfidence matches a central difference of the sweep
    itself (common random numbers, the same tail)."""
    q = book.net_quantities()
    axes = [("rho.crypto", [0.68]), ("loading.BTC", [0.9]),
            ("quantity.BTC-100K-DEC", [q["BTC-100K-DEC"]]), ("price.ETH-5K-DEC", [0.38])]
    result = kj.sweep(book, axes, scenarios=N, sensitivities=True)
    report = kj.sensitivities(book, scenarios=N)
    d = {k: float(v.reshape(-1)[0]) for k, v in result.sensitivities.items()}
    se = {k: float(v.reshape(-1)[0]) for k, v in result.sensitivity_standard_errors.items()}
    assert float(result.margin.reshape(-1)[0]) == pytest.approx(report.margin, rel=RTOL)
    assert d["rho.crypto"] == pytest.approx(report.rho["crypto"], rel=1e-4, abs=1e-2)
    assert se["rho.crypto"] == pytest.approx(report.rho_standard_error["crypto"], rel=1e-4)
    assert d["loading.BTC"] == pytest.approx(report.loading["BTC"], rel=1e-4, abs=1e-2)
    # The tail mean of p - YES: the boundary draw's fractional weight (of 1/41 at
    # N = 4,096) rounds differently in the sweep's program and the report's (3e-5
    # seen), far below the change of one tail draw.
    assert d["quantity.BTC-100K-DEC"] == pytest.approx(
        report.positions["BTC-100K-DEC"]["d_quantity"], rel=1e-4, abs=1e-4)
    assert np.isnan(se["quantity.BTC-100K-DEC"])  # exact on the scenarios
    eth = report.positions.get("ETH-5K-DEC") or report.candidates["ETH-5K-DEC"]
    assert d["price.ETH-5K-DEC"] == pytest.approx(eth["d_price"], rel=1e-4, abs=1e-2)

    h = 1e-4
    conf = kj.sweep(book, [("confidence", [0.99 - h, 0.99, 0.99 + h])], scenarios=N,
                    sensitivities=True)
    central = (conf.margin[2] - conf.margin[0]) / (2 * h)
    assert conf.sensitivities["confidence"][1] == pytest.approx(central, rel=0.02)


def test_json_csv_npz_and_plot(book, tmp_path):
    result = kj.sweep(book, ["rho.risk=0.2:0.6:2", "rho.crypto=0.3:0.7:3"], scenarios=N,
                      points_per_call=4)
    out = result.to_dict()
    assert set(out) == {"axes", "figures", "valid", "reasons", "scenarios", "seed", "devices"}
    assert set(out["figures"]) == {"margin", "base", "floor", "binding", "standard_error"}
    assert out["axes"][1] == {"name": "rho.crypto", "values": [0.3, 0.5, 0.7]}
    assert np.array(out["valid"]).shape == (2, 3)
    assert out["figures"]["margin"][1][0] is None  # crypto 0.3 < risk 0.6
    assert out["figures"]["margin"][0][1] == pytest.approx(result.margin[0, 1])
    assert out["reasons"][0][1] is None and "below its parent" in out["reasons"][1][0]
    assert (out["scenarios"], out["seed"], out["devices"]) == (N, 0, 1)
    json.dumps(out)  # plain JSON, no NaN

    result.save(tmp_path / "grid.csv")
    rows = (tmp_path / "grid.csv").read_text().splitlines()
    assert rows[0].startswith("rho.risk,rho.crypto,valid,margin,")
    assert len(rows) == 1 + 6
    result.save(tmp_path / "grid.npz")
    data = np.load(tmp_path / "grid.npz")
    np.testing.assert_array_equal(data["valid"], result.valid)
    np.testing.assert_array_equal(data["axis1_values"], [0.3, 0.5, 0.7])
    with pytest.raises(BookError, match="must end in .csv or .npz"):
        result.save(tmp_path / "grid.txt")

    kj.plot_sweep(result, tmp_path / "map.png")
    kj.plot_sweep(kj.sweep(book, ["rho.crypto=0.5:0.9:3"], scenarios=N, points_per_call=4),
                  tmp_path / "line.png")
    for name in ("map.png", "line.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Invalid points stay on the line plot's axis, hatched (they were left off it).
    partly = kj.sweep(book, ["rho.crypto=0:0.9:4"], scenarios=N, points_per_call=4)
    assert list(partly.valid) == [False, False, True, True]
    ax = kj.plot_sweep(partly, tmp_path / "partly.png")
    assert ax.get_xlim() == pytest.approx((0.0, 0.9))
    hatched = [p for p in ax.patches if p.get_label() == "_invalid"]
    assert len(hatched) == 2 and all(p.get_hatch() == "///" for p in hatched)




def test_cli_sweep(book, tmp_path):
    rc, out, err = run("sweep", str(REFERENCE), "--vary", "rho.crypto=0.3:0.9:3",
                       "--scenarios", str(N), "--json", "--out", str(tmp_path / "s.csv"),
                       "--plot", str(tmp_path / "s.png"))
    assert (rc, err) == (0, "")  # no progress bar: --json and not a terminal
    data = json.loads(out)
    assert data["valid"] == [False, True, True]
    api = kj.sweep(book, ["rho.crypto=0.3:0.9:3"], scenarios=N)
    assert data["figures"]["margin"][1:] == pytest.approx(api.margin[1:].tolist(), rel=1e-7)
    assert (tmp_path / "s.csv").exists() and (tmp_path / "s.png").exists()

    rc, out, err = run("sweep", str(REFERENCE), "--vary", "rho.crypto=0.3:0.9:3",
                       "--scenarios", str(N))
    assert rc == 0 and "3 points: 2 valid, 1 invalid" in out and "invalid: hierarchy" in out

    for argv, needle in [(["--vary", "rho.crypto=0:1"], "--vary: 'rho.crypto=0:1' is not"),
                         (["--vary", "rho.x=0:0.5:2"], "unknown hierarchy node 'x'"),
                         (["--vary", "rho.crypto=0.5:0.9:2", "--out", "x.txt"],
                          "must end in .csv or .npz"),
                         (["--vary", "rho.crypto=0.5:0.9:2", "--vary", "rho.risk=0:0.1:2",
                           "--vary", "loading.BTC=0.5:0.9:2", "--plot", "x.png"],
                          "a plot needs one or two axes")]:
        rc, out, err = run("sweep", str(REFERENCE), "--scenarios", str(N), *argv)
        assert rc == 2 and needle in err and "Traceback" not in err


def test_stress_addon_importance_sampler_and_partial_blocks(book):
    """Points equal margin calls also with the stress add-on on (stress
    probabilities recomputed per point: they move with rho), under importance
    sampling (the vmapped margin_arrays path), and at a scenario count that is not
    a whole number of draw blocks."""
    stressed = book.with_settings(stress_addon=True)
    result = kj.sweep(stressed, ["rho.crypto=0.5:0.95:2"], scenarios=N, points_per_call=4)
    for i in range(2):
        assert_point_is_margin_call(result, stressed, (i,))
    odd = kj.sweep(book, ["loading.SOL=0.5:0.8:2"], scenarios=5000, points_per_call=4)
    for i in range(2):
        report = kj.portfolio_margin(point_book(book, {"loading.SOL": odd.axes[0].values[i]}),
                                     scenarios=5000, sampler="plain")
        assert odd.margin[i] == pytest.approx(report.margin, rel=RTOL)
        assert odd.standard_error[i] == pytest.approx(report.standard_error, rel=1e-5)
    imp = book.with_settings(sampler="importance")
    result = kj.sweep(imp, [("rho.risk", [0.2])], scenarios=N)
    report = kj.portfolio_margin(point_book(imp, {"rho.risk": 0.2}), scenarios=N)
    assert result.margin[0] == pytest.approx(report.margin, rel=1e-5)
    assert result.binding[0] == report.binding


def test_progress_bar_on_stderr(book, capsys):
    kj.sweep(book, ["rho.crypto=0.5:0.9:3"], scenarios=N, points_per_call=4, progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\rsweep  [") and "3/3 points" in err and err.endswith("\n")
    kj.sweep(book, ["rho.crypto=0.5:0.9:3"], scenarios=N, points_per_call=4, progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(BookError, match="points_per_call: 0 is not a positive integer"):
        kj.sweep(book, ["rho.crypto=0.5:0.9:3"], scenarios=N, points_per_call=0)

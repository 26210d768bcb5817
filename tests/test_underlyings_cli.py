"""Underlyings and perps through the command line and the public API (SPEC-horizon.md
§6.6, §6.9, §6.10): input errors exit 2 naming the field, the JSON and text reports
of examples/perps_and_strip.toml, the spot/vol sweep axes, and dM/d spot, dM/d vol
against central finite differences of the margin (common random numbers)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import kinetic_jax as kj

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "perps_and_strip.toml"
TEXT = EXAMPLE.read_text()
SCENARIOS = 8192


def variant(tmp_path, old: str, new: str) -> str:
    """The example book with `old` replaced by `new` (once), written to a file."""
    assert TEXT.count(old) >= 1, old
    path = tmp_path / "book.toml"
    path.write_text(TEXT.replace(old, new, 1))
    return str(path)


FILE_ERRORS = [
    ("vol = 0.60", "vol = 6.0", "underlyings[0] (id 'BTC').vol", "6.0"),
    ("lot_size = 0.001", "lot_size = 0", "underlyings[0] (id 'BTC').lot_size", "0"),
    ('cluster = "BTC"\nspot', 'cluster = "Nowhere"\nspot', "underlyings[0] (id 'BTC').cluster",
     "'Nowhere'"),
    ('type = "perp"', 'type = "perp"\nprice = 100000', "contracts[0] (id 'BTC-PERP').price",
     "100000"),
    ('underlying = "BTC"\ntype = "perp"', 'underlying = "DOGE"\ntype = "perp"',
     "contracts[0] (id 'BTC-PERP').underlying", "'DOGE'"),
    ("horizon_days = 2 ", "# no horizon ", "positions[0] (contract 'BTC-PERP')", "horizon"),
    ("strike = 110000\nexpiry = \"2026-08-28\"\nprice = 0.32",
     "strike = 110000\nexpiry = \"2026-08-28\"\nprice = 0.45",
     "contracts (event 'BTC@2026-08-28')", "'BTC>110K-Aug26'"),
    ('expiry = "2026-09-18"\nprice = 6030', 'price = 6030',
     "contracts[7] (id 'SPX-FUT-Sep26').expiry", "missing"),
    ('type = "above"\nstrike = 6200', 'type = "above"\nevent = "X"\nstrike = 6200',
     "contracts[6] (id 'SPX>6200-Sep26').event", "'X'"),
]


@pytest.mark.parametrize("old, new, field, value", FILE_ERRORS,
                         ids=[e[2] for e in FILE_ERRORS])
def test_book_file_errors_exit_2_naming_the_field(tmp_path, old, new, field, value):
    rc, out, err = run_cli("margin", variant(tmp_path, old, new), "--json")
    assert rc == 2 and out == ""
    assert err.startswith(f"kinetic-jax: error: {field}: ") and value in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, field, value", [
    (["--pnl-points", "1"], "--pnl-points", "1"),
    (["--pnl-points", "10002"], "--pnl-points", "10002"),
    (["--pnl-range", "1.5", "0.5"], "--pnl-range", "1.5"),
    (["--pnl-range", "0", "1.5"], "--pnl-range", "0"),
    (["--resolution"], "positions[0] (contract 'BTC-PERP')", "horizon"),
])
def test_flag_errors_exit_2_naming_the_flag(argv, field, value):
    rc, out, err = run_cli("margin", str(EXAMPLE), *argv)
    assert rc == 2 and out == ""
    assert err.startswith(f"kinetic-jax: error: {field}: ") and value in err, err


def test_margin_json_has_the_underlying_keys():
    rc, out, err = run_cli("margin", str(EXAMPLE), "--json", "--scenarios", str(SCENARIOS))
    assert rc == 0, err
    d = json.loads(out)
    book = kj.load_book(EXAMPLE)
    api = kj.portfolio_margin(book, scenarios=SCENARIOS)
    assert d["margin"] == pytest.approx(api.margin, rel=1e-12)
    assert d["capped"] is False and d["worst_case_loss"] is None  # net short SPX
    assert d["binding"] in ("base", "floor")
    assert d["horizon_days"] == 2
    assert d["linear_notional"] == pytest.approx(1.5 * 100_000 + 5 * 6030)
    assert d["full_collateral"] == pytest.approx(api.full_collateral, rel=1e-12)
    reports = {u.id: u for u in kj.underlying_reports(book)}
    assert [u["id"] for u in d["underlyings"]] == ["BTC", "SPX"]
    for u in d["underlyings"]:
        assert set(u) >= {"id", "cluster", "spot", "vol", "lot_size", "net_delta",
                          "hedge_quantity", "hedge_lots", "linear_exposure", "pnl_curve"}
        r = reports[u["id"]]
        assert u["net_delta"] == pytest.approx(r.net_delta, rel=1e-12)
        assert u["hedge_quantity"] == pytest.approx(-u["net_delta"], rel=1e-12)
        assert u["hedge_lots"] == {"unrounded": pytest.approx(-u["net_delta"] / u["lot_size"]),
                                   "rounded": round(-u["net_delta"] / u["lot_size"])}
        curve = u["pnl_curve"]
        assert len(curve["spot"]) == len(curve["pnl"]) == 101
        assert curve["spot"][0] == pytest.approx(0.5 * u["spot"])
        assert curve["spot"][-1] == pytest.approx(1.5 * u["spot"])
    btc = d["underlyings"][0]
    assert btc["hedge_lots"]["rounded"] == round(-reports["BTC"].net_delta / 0.001)
    by_id = {c["id"]: c for c in d["contracts"]}
    for c in book.contracts:
        got = by_id[c.id]
        if c.is_linear:
            assert got["effective_strike"] is None and got["model_probability"] is None
        else:
            assert got["effective_strike"] > 0 and 0 < got["model_probability"] < 1
            assert got["implied_probability"] == c.price
    # The text report: the header's horizon, no cap, the Underlyings table.
    rc, text, err = run_cli("margin", str(EXAMPLE), "--scenarios", str(SCENARIOS))
    assert rc == 0, err
    assert "horizon: 2 days" in text and "unbounded" in text
    table = text[text.index("Underlyings"):]
    lines = {line.split()[0]: line for line in table.splitlines()[2:4]}
    assert set(lines) == {"BTC", "SPX"}
    assert f"{reports['BTC'].hedge_lots_rounded:,d}" in lines["BTC"]
    assert "Binaries on underlyings" in text and "BTC>105K-Aug26" in text


def test_pnl_flags_shape_the_curve():
    rc, out, err = run_cli("margin", str(EXAMPLE), "--json", "--scenarios", str(SCENARIOS),
                           "--pnl-range", "0.8", "1.2", "--pnl-points", "5")
    assert rc == 0, err
    for u in json.loads(out)["underlyings"]:
        np.testing.assert_allclose(u["pnl_curve"]["spot"],
                                   np.linspace(0.8 * u["spot"], 1.2 * u["spot"], 5))
        assert len(u["pnl_curve"]["pnl"]) == 5


def with_spot_vol(book: kj.Book, uid: str, *, spot: float | None = None,
                  vol: float | None = None) -> kj.Book:
    us = tuple(dataclasses.replace(u, spot=u.spot if spot is None else spot,
                                   vol=u.vol if vol is None else vol) if u.id == uid else u
               for u in book.underlyings)
    return dataclasses.replace(book, underlyings=us)


@pytest.mark.slow
def test_sweep_over_spot():
    rc, out, err = run_cli("sweep", str(EXAMPLE), "--vary", "spot.BTC=90000:110000:3",
                           "--scenarios", str(SCENARIOS), "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["axes"] == [{"name": "spot.BTC", "values": [90_000.0, 100_000.0, 110_000.0]}]
    assert d["valid"] == [True, True, True]
    book = kj.load_book(EXAMPLE)
    for spot, margin in zip(d["axes"][0]["values"], d["figures"]["margin"]):
        want = kj.portfolio_margin(with_spot_vol(book, "BTC", spot=spot),
                                   scenarios=SCENARIOS, sampler="plain").margin  # a sweep's
        assert margin == pytest.approx(want, rel=1e-4)
    assert d["figures"]["margin"][0] < d["figures"]["margin"][2]  # long perp notional grows


@pytest.mark.slow
@pytest.mark.parametrize("positions", [
    {"BTC-PERP": 1.5},
    {"BTC-PERP": 1.5, "BTC>105K-Aug26": -20000, "BTC>110K-Aug26": -20000},
], ids=["perp", "perp+strip"])
def test_spot_and_vol_sensitivities_against_finite_differences(positions):
    """Constant basis (a perp, F0 = spot): dM/d spot and dM/d vol against central
    differences of the margin on the same scenarios, within 5% (the plain
    sampler: the default refits its proposal to each bumped book)."""
    book = kj.load_book(EXAMPLE).with_positions(positions).with_settings(scenarios=SCENARIOS,
                                                                         sampler="plain")
    sens = kj.sensitivities(book)
    u = book.underlying("BTC")
    margin = lambda b: kj.portfolio_margin(b).margin  # noqa: E731
    ds = 0.01 * u.spot
    fd_spot = (margin(with_spot_vol(book, "BTC", spot=u.spot + ds))
               - margin(with_spot_vol(book, "BTC", spot=u.spot - ds))) / (2 * ds)
    dv = 0.01
    fd_vol = (margin(with_spot_vol(book, "BTC", vol=u.vol + dv))
              - margin(with_spot_vol(book, "BTC", vol=u.vol - dv))) / (2 * dv)
    assert set(sens.spot) == set(sens.vol) == {"BTC", "SPX"}
    assert sens.spot["SPX"] == 0.0 and sens.vol["SPX"] == 0.0  # nothing held on SPX
    assert abs(fd_spot) > 0.01 and abs(fd_vol) > 100
    assert sens.spot["BTC"] == pytest.approx(fd_spot, rel=0.05)
    assert sens.vol["BTC"] == pytest.approx(fd_vol, rel=0.05)

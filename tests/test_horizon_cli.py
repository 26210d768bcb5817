"""The liquidation horizon on the command line and in the sensitivities
(SPEC-horizon.md §6.1, §6.6, §6.7, §6.9, §6.10): ``--horizon``, ``--resolution``,
``--as-of``, the JSON ``horizon_days`` / ``as_of`` / ``contracts[]``, the text
report's header and table, exit status 2 naming the field, and dM/d horizon_days.

Runs are in-process (tests/helpers.py `run_cli`) at 8192 scenarios.
"""

from __future__ import annotations

import json
import math

import pytest
import tomli_w
from helpers import above, make_book, run_cli
from scipy import stats

import kinetic_jax as kj

N = 8192
AS_OF = "2026-06-01"

BOOK = {
    "model": {"as_of": AS_OF, "horizon_days": 2, "scenarios": N, "seed": 3},
    "contracts": [
        # 30 days out: tau = 2/30 at a 2-day horizon.
        {"id": "BTC-100K", "cluster": "BTC", "type": "above", "event": "BTC-M",
         "threshold": 100000, "price": 0.55, "resolves": "2026-07-01"},
        {"id": "BTC-80K-B", "cluster": "BTC", "type": "below", "event": "BTC-M",
         "threshold": 80000, "price": 0.1, "resolves": "2026-07-01"},
        # Half a year, given in years: tau = (2/365) / 0.5.
        {"id": "ETH-5K", "cluster": "ETH", "type": "above", "event": "ETH-H",
         "threshold": 5000, "price": 0.3, "resolves_in": 0.5},
        # Games: one resolving in 1 day (by the horizon), one in 4 days.
        {"id": "G1", "cluster": "Sports", "type": "binary", "price": 0.6,
         "resolves": "2026-06-02"},
        {"id": "G2", "cluster": "Sports", "type": "binary", "price": 0.45,
         "resolves": "2026-06-05"},
        # An election with a 4% overround: implied probabilities are price / 1.04.
        {"id": "E-A", "cluster": "Election", "type": "outcome", "event": "E",
         "outcome": "A", "price": 0.52, "resolves": "2026-11-03"},
        {"id": "E-B", "cluster": "Election", "type": "outcome", "event": "E",
         "outcome": "B", "price": 0.52, "resolves": "2026-11-03"},
        {"id": "P12", "cluster": "Parlays", "type": "parlay", "legs": ["G1", "G2"],
         "price": 0.25},
    ],
    "positions": [{"contract": c, "quantity": q} for c, q in
                  [("BTC-100K", 2000), ("BTC-80K-B", -1500), ("ETH-5K", 1000), ("G1", -800),
                   ("G2", 600), ("E-A", 500), ("P12", -1200)]],
}


def write(tmp_path, data: dict, name: str = "book.toml") -> str:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return str(path)


@pytest.fixture(scope="module")
def book_path(tmp_path_factory) -> str:
    return write(tmp_path_factory.mktemp("horizon"), BOOK)


def margin_json(*argv: str) -> dict:
    rc, out, err = run_cli("margin", *argv, "--json")
    assert (rc, err) == (0, ""), err
    return json.loads(out)


def test_json_reports_the_horizon_and_each_contract(book_path):
    r = margin_json(book_path, "--horizon", "2", "--scenarios", str(N))
    assert r["horizon_days"] == 2 and r["as_of"] == AS_OF and r["scenarios"] == N
    rows = {c["id"]: c for c in r["contracts"]}
    assert list(rows) == [c["id"] for c in BOOK["contracts"]]
    for c in r["contracts"]:  # §6.9 (model_probability, effective_strike: underlyings only)
        assert set(c) >= {"id", "implied_probability", "tau", "resolved_by_horizon",
                          "stressed_marks"}
        assert c.get("model_probability") is None and c.get("effective_strike") is None
    rows = {cid: {k: v for k, v in c.items() if k not in ("model_probability",
                                                           "effective_strike")}
            for cid, c in rows.items()}
    h = 2 / 365
    assert rows["BTC-100K"]["tau"] == pytest.approx(h / (30 / 365), rel=1e-12)
    assert rows["ETH-5K"]["tau"] == pytest.approx(h / 0.5, rel=1e-12)
    assert rows["G2"]["tau"] == pytest.approx(0.5, rel=1e-12)
    # Resolved by the horizon: tau 1, stressed marks the indicators at the latent's
    # 1% and 99% quantiles (a long YES set is lost low and won high).
    assert rows["G1"] == {"id": "G1", "implied_probability": 0.6, "tau": 1.0,
                          "resolved_by_horizon": True, "stressed_marks": [0.0, 1.0]}
    assert not rows["BTC-100K"]["resolved_by_horizon"]
    # Live marks at Z = Phi^-1(0.01), Phi^-1(0.99) (float64 closed form of §6.2).
    z = stats.norm.ppf([0.01, 0.99])
    for cid, lo_hi in (("BTC-100K", (stats.norm.ppf(0.45), math.inf)),
                       ("BTC-80K-B", (-math.inf, stats.norm.ppf(0.1)))):
        tau = rows[cid]["tau"]
        s, v = math.sqrt(tau), math.sqrt(1 - tau)
        want = stats.norm.cdf((lo_hi[1] - s * z) / v) - stats.norm.cdf((lo_hi[0] - s * z) / v)
        assert rows[cid]["stressed_marks"] == pytest.approx(list(want), abs=1e-12), cid
    assert rows["BTC-100K"]["stressed_marks"][0] < 0.55 < rows["BTC-100K"]["stressed_marks"][1]
    assert rows["BTC-80K-B"]["stressed_marks"][0] > 0.1 > rows["BTC-80K-B"]["stressed_marks"][1]
    for cid in ("E-A", "E-B"):
        assert rows[cid]["implied_probability"] == pytest.approx(0.5, rel=1e-12)
    # A parlay: no date of its own, its latest leg's tau, no stressed marks.
    assert rows["P12"] == {"id": "P12", "implied_probability": 0.25, "tau": 0.5,
                           "resolved_by_horizon": False, "stressed_marks": None}


def test_horizon_flag_equals_the_book_setting(book_path, tmp_path):
    """``--horizon 2`` on the undated-horizon book is the book with
    ``horizon_days = 2``; the API gives the same figures."""
    data = {**BOOK, "model": {k: v for k, v in BOOK["model"].items() if k != "horizon_days"}}
    flag = margin_json(write(tmp_path, data), "--horizon", "2")
    setting = margin_json(book_path)
    assert flag == setting
    api = kj.portfolio_margin(kj.load_book(book_path)).to_dict()
    assert setting["margin"] == api["margin"] and setting["base"] == api["base"]


def test_resolution_flag_gives_v1(book_path):
    """``--resolution`` drops the book's horizon: horizon_days null, every tau 1,
    and the figures of the same book margined without a horizon."""
    r = margin_json(book_path, "--resolution")
    assert r["horizon_days"] is None and r["as_of"] == AS_OF
    assert all(c["tau"] == 1.0 and c["resolved_by_horizon"] for c in r["contracts"])
    book = kj.load_book(book_path)
    v1 = kj.portfolio_margin(book.with_settings(horizon_days=None)).to_dict()
    for key in ("margin", "base", "floor", "worst_case_loss", "standard_error"):
        assert r[key] == v1[key], key
    assert [c["es"] for c in r["clusters"]] == [c["es"] for c in v1["clusters"]]
    horizon = margin_json(book_path)
    assert horizon["base"] < 0.5 * r["base"]


def test_text_report_shows_the_horizon(book_path):
    rc, out, err = run_cli("margin", book_path)
    assert (rc, err) == (0, "")
    assert "horizon: 2 days | as of 2026-06-01\n" in out
    assert "Contracts at the horizon" in out
    table = out.split("Contracts at the horizon")[1]
    g1 = next(line for line in table.splitlines() if line.strip().startswith("G1 "))
    assert "resolved" in g1 and "0.000 .. 1.000" in g1
    btc = next(line for line in table.splitlines() if line.strip().startswith("BTC-100K "))
    assert f"{2 / 30:.4f}" in btc
    rc, out, err = run_cli("margin", book_path, "--resolution")
    assert "horizon: to resolution (v1) | as of 2026-06-01\n" in out
    assert "Contracts at the horizon" not in out


def test_a_horizon_beyond_every_date_is_the_resolution_margin(book_path):
    """Every date of the book is within 365 days: ``--horizon 365`` gives tau = 1
    everywhere, v1's figures, and the header says so. Plain draws: at a horizon
    the book has no exact block (its marks are not 0/1), at resolution the
    default margins its games exactly, so only plain sampling is draw for draw."""
    r = margin_json(book_path, "--horizon", "365", "--sampler", "plain")
    assert r["horizon_days"] == 365
    assert all(c["tau"] == 1.0 and c["resolved_by_horizon"] for c in r["contracts"])
    v1 = margin_json(book_path, "--resolution", "--sampler", "plain")
    for key in ("margin", "base", "floor", "var", "standard_error"):
        assert r[key] == pytest.approx(v1[key], rel=1e-6), key
    rc, out, err = run_cli("margin", book_path, "--horizon", "365")
    assert (rc, err) == (0, "")
    assert "horizon: 365 days | as of 2026-06-01; every contract resolves within it" in out


ERRORS = [
    (["--horizon", "0"], "--horizon", "0.0 is outside"),  # the value, not the interval's 0
    (["--horizon", "-1"], "--horizon", "-1.0 is outside"),
    (["--horizon", "400"], "--horizon", "400.0 is outside"),
    (["--horizon", "nan"], "--horizon", "nan"),
    (["--horizon", "inf"], "--horizon", "inf"),
    (["--as-of", "2026-13-01"], "--as-of", "2026-13-01"),
    (["--as-of", "01/06/2026"], "--as-of", "01/06/2026"),
    # G1 resolves on 2026-06-02: on/before the new as_of.
    (["--as-of", "2026-06-02"], "contracts[3] (id 'G1').resolves", "2026-06-02"),
]


@pytest.mark.parametrize("argv, field, value", ERRORS)
def test_flag_errors_exit_2_naming_the_field(book_path, argv, field, value):
    rc, out, err = run_cli("margin", book_path, *argv)
    assert rc == 2 and out == ""
    assert err.startswith(f"kinetic-jax: error: {field}: ") and value in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv", [["--horizon", "2", "--resolution"], ["--horizon", "two"]])
def test_flag_usage_errors_exit_2(book_path, argv):
    rc, out, err = run_cli("margin", book_path, *argv)
    assert rc == 2 and out == "" and "--horizon" in err and "Traceback" not in err


def _contract(**kw) -> dict:
    return {"id": "G", "cluster": "Sports", "type": "binary", "price": 0.5, **kw}


FILE_ERRORS = [
    ({"horizon_days": 2}, [_contract()], [], "contracts[0] (id 'G').resolves",
     "horizon_days = 2"),
    ({}, [_contract(resolves="2026-06-05")], [], "contracts[0] (id 'G').resolves",
     "model.as_of is not given"),
    ({"as_of": AS_OF}, [_contract(resolves="2026-06-05", resolves_in=0.1)], [],
     "contracts[0] (id 'G').resolves", "resolves_in = 0.1"),
    ({"as_of": AS_OF}, [_contract(resolves="2026-05-05")], [],
     "contracts[0] (id 'G').resolves", "2026-05-05"),
    ({"as_of": AS_OF}, [_contract(resolves_in=-1.0)], [], "contracts[0] (id 'G').resolves_in",
     "-1.0"),
    ({"as_of": "2026-06-31"}, [_contract()], [], "model.as_of", "2026-06-31"),
    ({"horizon_days": 366}, [_contract(resolves_in=0.1)], [], "model.horizon_days", "366"),
]


@pytest.mark.parametrize("model, contracts, extra, field, value", FILE_ERRORS)
def test_book_file_errors_exit_2_naming_the_field(tmp_path, model, contracts, extra, field,
                                                  value):
    path = write(tmp_path, {"model": model, "contracts": contracts + extra})
    rc, out, err = run_cli("margin", path, "--json")
    assert rc == 2 and out == ""
    assert err.startswith(f"kinetic-jax: error: {field}: ") and value in err, err


def test_horizon_on_an_undated_v1_book_names_the_contract(tmp_path):
    path = write(tmp_path, {"contracts": [_contract()],
                            "positions": [{"contract": "G", "quantity": 10}]})
    rc, out, err = run_cli("margin", path, "--horizon", "1")
    assert rc == 2 and out == ""
    assert err.startswith("kinetic-jax: error: contracts[0] (id 'G').resolves: missing"), err


# --- sensitivities under a horizon -------------------------------------------------


def _ladders(**settings) -> kj.Book:
    """Ladders only (every mark smooth in the latent and the horizon): BTC 30 days,
    ETH 90 days, SPX 60 days; add-ons off, so the margin is max(base, floor)."""
    contracts = [
        above("BTC-90K", "BTC-M", 90_000, 0.7, "BTC", resolves_in=30 / 365),
        above("BTC-100K", "BTC-M", 100_000, 0.5, "BTC", resolves_in=30 / 365),
        above("BTC-110K", "BTC-M", 110_000, 0.3, "BTC", resolves_in=30 / 365),
        above("ETH-4K", "ETH-Q", 4_000, 0.6, "ETH", resolves_in=90 / 365),
        above("ETH-5K", "ETH-Q", 5_000, 0.35, "ETH", resolves_in=90 / 365),
        above("SPX-6K", "SPX-Q", 6_000, 0.55, "SPX", resolves_in=60 / 365),
    ]
    qty = {"BTC-90K": 3000, "BTC-100K": -2000, "BTC-110K": 4000, "ETH-4K": 2500,
           "ETH-5K": -1500, "SPX-6K": 3000}
    return make_book(contracts, qty, mc_error=False, liquidity=False, **settings)


@pytest.mark.slow  # the sensitivity program's compile: ~10 s
def test_horizon_sensitivity_matches_a_finite_difference():
    """dM/d horizon_days (hybrid estimator, the default under a horizon) vs a
    central difference of the margin over +-0.25 day with common random numbers,
    within 10%; the margin grows with the horizon. Common random numbers need
    the plain sampler (the default refits its proposal to each bumped book)."""
    book = _ladders(horizon_days=2, scenarios=N, sampler="plain")
    s = kj.sensitivities(book)
    assert s.estimator == "hybrid" and s.horizon_days is not None
    r = kj.portfolio_margin(book)
    assert r.binding in ("base", "floor") and s.margin == pytest.approx(r.margin, rel=1e-4)
    d = 0.25
    up = kj.portfolio_margin(book.with_settings(horizon_days=2 + d)).margin
    down = kj.portfolio_margin(book.with_settings(horizon_days=2 - d)).margin
    fd = (up - down) / (2 * d)
    assert fd > 0
    assert s.horizon_days == pytest.approx(fd, rel=0.1), (s.horizon_days, fd)
    # Resolution mode: nothing depends on the horizon.
    assert _ladders().settings.horizon_days is None


def test_conditional_estimator_with_a_horizon_is_refused(book_path):
    book = _ladders(horizon_days=2, scenarios=N)
    with pytest.raises(kj.BookError) as e:
        kj.sensitivities(book, estimator="conditional")
    assert e.value.field == "estimator" and "'conditional'" in e.value.detail
    rc, out, err = run_cli("sensitivities", book_path, "--estimator", "conditional")
    assert rc == 2 and err.startswith("kinetic-jax: error: estimator: 'conditional'"), err

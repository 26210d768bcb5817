"""Underlyings, binaries on them, perps and futures in the dashboard's service
(SPEC-horizon.md §6.3-6.4, §6.7, §6.9; issue 12 items 4-5): POST /api/margin
returns for examples/perps_and_strip.toml the report of
``kinetic_jax.portfolio_margin`` (the JSON ``kinetic-jax margin --json``
prints), plus per underlying the PnL curve split by leg and the value of its
binaries, which equal their closed forms (§6.3's Black digital with the
effective strike; the Brownian bridge inside the horizon); the OpenAPI schema
accepts these books with the engine's bounds; every bad underlying or linear
contract is a 422 naming the field, never a 5xx; the books persist, export and
import; the service's work bounds (parlay quadrature with the engine's node
count, PnL marks) hold. The page is tested in tests/test_dashboard_browser_perps.py.

Books run at 8,192 scenarios.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("tomli_w")

from helpers import run_cli  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from test_dashboard_api import (  # noqa: E402
    REFERENCE,
    SCENARIOS,
    TOML,
    client as client,  # noqa: F401 - the fixture
    field_error,
    local_client,
    post_margin,
    state_path as state_path,  # noqa: F401 - the fixture
)

import kinetic_jax as kj  # noqa: E402
from kinetic_jax.dashboard import (  # noqa: E402
    _schema as schema_module,
    _service as service,
    create_app,  # noqa: E402
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "perps_and_strip.toml"
AS_OF = datetime.date(2026, 6, 1)
N = NormalDist()


def perps_book() -> dict:
    """examples/perps_and_strip.toml as JSON, at 8,192 scenarios."""
    book = kj.book_to_dict(kj.load_book(EXAMPLE))
    book["model"]["scenarios"] = SCENARIOS
    return book



def close(a, b, rel=1e-6, path="report"):
    """`a` equals `b` key by key, floats to float32 rounding."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            close(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, rel=rel, abs=1e-6), path
    else:
        assert a == b, path



# ---------------------------------------------------------------------------
# The example book through the service: the engine's report, the CLI's JSON
# ---------------------------------------------------------------------------
def test_the_example_round_trips_to_the_engines_report(client, tmp_path):
    # Through the page's import (TOML -> the validated book as JSON) ...
    text = EXAMPLE.read_text().replace("scenarios = 131072", f"scenarios = {SCENARIOS}")
    imported = client.post("/api/import", content=text.encode(), headers=TOML)
    assert imported.status_code == 200, imported.text
    book = imported.json()["book"]
    assert book == perps_book()
    assert [u["id"] for u in book["underlyings"]] == ["BTC", "SPX"]
    # ... and POST /api/margin: the report is MarginReport.to_dict() of the same book.
    out = post_margin(client, book)
    report = out["report"]
    expected = json.loads(json.dumps(kj.portfolio_margin(kj.parse_book(book)).to_dict()))
    close(report, expected)
    # Net short SPX (the future): no cap, worst case null, binding never the cap.
    assert report["capped"] is False and report["worst_case_loss"] is None
    assert report["binding"] != "worst_case"
    assert report["linear_notional"] == pytest.approx(1.5 * 100000 + 5 * 6030)
    assert [u["id"] for u in report["underlyings"]] == ["BTC", "SPX"]
    # The CLI prints the same JSON for the same file.
    path = tmp_path / "perps.toml"
    path.write_text(text)
    rc, stdout, stderr = run_cli("margin", str(path), "--json")
    assert rc == 0, stderr
    close(report, json.loads(stdout))


def test_a_book_net_long_every_underlying_has_a_cap(client):
    book = perps_book()
    book["positions"] = [p for p in book["positions"] if p["contract"] != "SPX-FUT-Sep26"]
    report = post_margin(client, book)["report"]
    assert report["capped"] is True and report["worst_case_loss"] > 0
    assert report["margin"] <= report["worst_case_loss"]
    close(report, json.loads(json.dumps(kj.portfolio_margin(kj.parse_book(book)).to_dict())))


def black_digital(kind, price, t, h, spot, vol, s):
    """SPEC-horizon §6.3/6.5, written out: T > h, Black's digital with the
    effective strike K*; T <= h, the indicator's probability on the Brownian
    bridge given Z_u."""
    cut = N.inv_cdf(1 - price) if kind == "above" else N.inv_cdf(price)
    if t > h:
        kstar = spot * math.exp(vol * math.sqrt(t) * cut - vol * vol * t / 2)
        d = (math.log(s / kstar) - vol * vol * (t - h) / 2) / (vol * math.sqrt(t - h))
        up = N.cdf(d)
    else:
        z = (math.log(s / spot) + vol * vol * h / 2) / (vol * math.sqrt(h))
        up = N.cdf((math.sqrt(t / h) * z - cut) / math.sqrt(1 - t / h))
    return up if kind == "above" else 1 - up


def test_the_view_figures_are_their_closed_forms(client):
    """Per underlying: pnl_binaries = sum q (m_h(S) - p), pnl_linear = e_u (S - S0),
    their sum the report's pnl_curve; portfolio_value = sum q p; net delta and the
    hedge lots of §6.7; each binary's model probability and effective strike."""
    book = perps_book()
    out = post_margin(client, book)
    report, views = out["report"], out["underlyings"]
    h = 2 / 365
    qty = {p["contract"]: p["quantity"] for p in book["positions"]}
    assert [v["id"] for v in views] == [u["id"] for u in book["underlyings"]]
    figures = {c["id"]: c for c in report["contracts"]}
    for u, rep, view in zip(book["underlyings"], report["underlyings"], views, strict=True):
        on = [c for c in book["contracts"] if c["underlying"] == u["id"]]
        assert view["linear"] == [c["id"] for c in on if c["type"] in ("perp", "future")]
        assert view["binaries"] == [c["id"] for c in on if c["type"] in ("above", "below")]
        spots = np.asarray(rep["pnl_curve"]["spot"])
        assert len(spots) == 101
        assert spots[0] == pytest.approx(0.5 * u["spot"]) and spots[-1] == pytest.approx(
            1.5 * u["spot"])
        binaries = np.zeros_like(spots)
        value = delta = exposure = 0.0
        for c in on:
            q = qty.get(c["id"], 0.0)
            if c["type"] in ("perp", "future"):
                exposure += q * c.get("price", u["spot"]) / u["spot"]
                continue
            t = (datetime.date.fromisoformat(c["expiry"]) - AS_OF).days / 365
            value += q * c["price"]
            marks = [black_digital(c["type"], c["price"], t, h, u["spot"], u["vol"], s)
                     for s in spots]
            binaries += q * (np.asarray(marks) - c["price"])
            sign = 1 if c["type"] == "above" else -1
            delta += sign * q * N.pdf(N.inv_cdf(c["price"])) / (
                u["spot"] * u["vol"] * math.sqrt(t))
            d2 = (math.log(u["spot"] / c["strike"]) - u["vol"] ** 2 * t / 2) / (
                u["vol"] * math.sqrt(t))
            f = figures[c["id"]]
            assert f["model_probability"] == pytest.approx(
                N.cdf(sign * d2), rel=1e-9), c["id"]
            z = N.inv_cdf(1 - c["price"]) if c["type"] == "above" else N.inv_cdf(c["price"])
            assert f["effective_strike"] == pytest.approx(u["spot"] * math.exp(
                u["vol"] * math.sqrt(t) * z - u["vol"] ** 2 * t / 2), rel=1e-9), c["id"]
        np.testing.assert_allclose(view["pnl_binaries"], binaries, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(view["pnl_linear"], exposure * (spots - u["spot"]),
                                   rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(np.add(view["pnl_binaries"], view["pnl_linear"]),
                                   rep["pnl_curve"]["pnl"], rtol=1e-12, atol=1e-6)
        assert view["portfolio_value"] == pytest.approx(value, rel=1e-12)
        assert rep["net_delta"] == pytest.approx(delta + exposure, rel=1e-9)
        lots = -(delta + exposure) / u["lot_size"]
        assert rep["hedge_lots"] == {"unrounded": pytest.approx(lots, rel=1e-9),
                                     "rounded": round(lots)}
    # The example's figures (README): BTC -1,601 lots of 0.001, SPX net long 13.8.
    btc, spx = report["underlyings"]
    assert btc["hedge_lots"]["rounded"] == -1601 and views[0]["portfolio_value"] == -22100
    assert spx["net_delta"] == pytest.approx(13.8, abs=0.05)


def test_the_pnl_range_and_points_shape_the_curves(client):
    book = perps_book()
    book["model"].update(pnl_range=[0.8, 1.25], pnl_points=7)
    out = post_margin(client, book)
    for u, rep, view in zip(book["underlyings"], out["report"]["underlyings"],
                            out["underlyings"], strict=True):
        assert rep["pnl_curve"]["spot"] == pytest.approx(
            list(np.linspace(0.8 * u["spot"], 1.25 * u["spot"], 7)), rel=1e-12)
        assert len(view["pnl_binaries"]) == len(view["pnl_linear"]) == 7


def test_a_book_without_underlyings_has_no_view(client):
    book = kj.book_to_dict(kj.load_book(REFERENCE))
    book["model"]["scenarios"] = SCENARIOS
    out = post_margin(client, book)
    assert out["underlyings"] == [] and out["report"]["underlyings"] == []
    assert out["report"]["capped"] is True and out["report"]["linear_notional"] == 0


# ---------------------------------------------------------------------------
# The schema: these books fit it, with the engine's bounds
# ---------------------------------------------------------------------------
def served_schema(client) -> dict:
    spec = client.get("/openapi.json").json()
    return spec["paths"]["/api/margin"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]


def test_the_example_fits_the_served_schema(client):
    jsonschema = pytest.importorskip("jsonschema")
    schema = served_schema(client)
    book = perps_book()
    jsonschema.validate(book, schema)
    book["model"].update(pnl_range=[0.5, 1.5], pnl_points=101)
    jsonschema.validate(book, schema)

    def refused(edit):
        bad = perps_book()
        edit(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(kj.BookError):  # and the engine refuses it too
            kj.parse_book(bad)

    perp = next(i for i, c in enumerate(perps_book()["contracts"]) if c["type"] == "perp")
    binary = next(i for i, c in enumerate(perps_book()["contracts"]) if c["type"] == "above")
    refused(lambda b: b["contracts"][perp].update(price=0.5))  # a perp has no price
    refused(lambda b: b["contracts"][binary].update(price=1.2))  # a binary's price < 1
    refused(lambda b: b["contracts"][binary].update(strike=0))
    refused(lambda b: b["underlyings"][0].update(vol=5.5))
    refused(lambda b: b["underlyings"][0].pop("spot"))
    refused(lambda b: b["model"].update(pnl_points=1))
    refused(lambda b: b["model"].update(pnl_range=[0, 1.5]))
    refused(lambda b: b["model"].update(pnl_range=[0.5]))
    plain = kj.book_to_dict(kj.load_book(REFERENCE))
    plain["contracts"][0].pop("cluster")  # a plain contract still needs its cluster
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(plain, schema)


@pytest.mark.parametrize("key", sorted(schema_module.UNDERLYING_BOUNDS))
def test_every_underlying_bound_is_the_engines(key):
    """Each served bound is accepted by the engine when closed and refused when
    open, and a step beyond it is refused (naming the field)."""
    low, high, low_open, high_open = schema_module.UNDERLYING_BOUNDS[key]

    def check(value):
        book = perps_book()
        book["underlyings"][0][key] = value
        kj.parse_book(book)

    for bound, is_open, beyond in ((low, low_open, -1e-9), (high, high_open, 1e-9 * high)):
        if is_open:
            with pytest.raises(kj.BookError):
                check(bound)
        else:
            check(bound)
        with pytest.raises(kj.BookError) as info:
            check(bound + beyond)
        assert info.value.field == f"underlyings[0] (id 'BTC').{key}"


# Contracts alone on their (underlying, expiry): no ladder to keep in order.
@pytest.mark.parametrize("name, bounds, cid", [
    ("strike", schema_module.STRIKE_BOUNDS, "BTC>101K-Jun02"),
    ("price", schema_module.FUTURE_PRICE_BOUNDS, "SPX-FUT-Sep26"),
])
def test_strike_and_future_price_bounds_are_the_engines(name, bounds, cid):
    low, high, low_open, high_open = bounds

    def check(value):
        book = perps_book()
        _contract(book, cid)[name] = value
        kj.parse_book(book)

    assert low_open and not high_open
    with pytest.raises(kj.BookError):
        check(low)
    check(high)
    with pytest.raises(kj.BookError) as info:
        check(high * (1 + 1e-9))
    assert info.value.field.endswith(f".{name}")


def test_config_serves_the_new_types_and_settings(client):
    cfg = client.get("/api/config").json()
    assert cfg["linear_types"] == ["perp", "future"]
    assert set(cfg["contract_types"]) >= {"perp", "future", "above", "below"}
    assert cfg["keys_on_underlying"]["above"] == ["underlying", "strike", "expiry"]
    assert cfg["underlying_bounds"]["vol"] == {"min": 1e-4, "max": 5, "min_open": False,
                                               "max_open": False}
    points = cfg["settings"]["pnl_points"]
    assert (points["table"], points["type"], points["min"], points["max"]) == (
        "model", "integer", 2, 10001)
    assert cfg["settings"]["pnl_range"]["type"] == "array"
    assert cfg["limits"]["max_pnl_cells"] == service.MAX_PNL_CELLS


# ---------------------------------------------------------------------------
# Bad underlyings and linear contracts: a 422 naming the field, never a 5xx
# ---------------------------------------------------------------------------
def _contract(book, cid) -> dict:
    return next(c for c in book["contracts"] if c["id"] == cid)


def _set(cid, **values):
    return lambda b: _contract(b, cid).update(values)


def _drop(cid, key):
    return lambda b: _contract(b, cid).pop(key)


BTC = "underlyings[0] (id 'BTC')"
PERP = "contracts[0] (id 'BTC-PERP')"
STRIP = "contracts[1] (id 'BTC>105K-Aug26')"
FUT = "contracts[7] (id 'SPX-FUT-Sep26')"

BAD = [
    ("spot -1", lambda b: b["underlyings"][0].update(spot=-1), f"{BTC}.spot"),
    ("spot 0", lambda b: b["underlyings"][0].update(spot=0), f"{BTC}.spot"),
    ("spot text", lambda b: b["underlyings"][0].update(spot="x"), f"{BTC}.spot"),
    ("spot missing", lambda b: b["underlyings"][0].pop("spot"), "underlyings[0].spot"),
    ("vol 0", lambda b: b["underlyings"][0].update(vol=0), f"{BTC}.vol"),
    ("vol 6", lambda b: b["underlyings"][0].update(vol=6), f"{BTC}.vol"),
    ("lot 0", lambda b: b["underlyings"][0].update(lot_size=0), f"{BTC}.lot_size"),
    ("unknown cluster", lambda b: b["underlyings"][0].update(cluster="Nope"), f"{BTC}.cluster"),
    ("duplicate id", lambda b: b["underlyings"][1].update(id="BTC"), "underlyings[1].id"),
    ("unknown key", lambda b: b["underlyings"][0].update(drift=0.1), "underlyings[0].drift"),
    ("underlyings not a list", lambda b: b.update(underlyings=5), "underlyings"),
    ("perp with a price", _set("BTC-PERP", price=100000), f"{PERP}.price"),
    ("perp on an unknown underlying", _set("BTC-PERP", underlying="ETH"), f"{PERP}.underlying"),
    ("perp without underlying", _drop("BTC-PERP", "underlying"), f"{PERP}.underlying"),
    ("perp with an expiry", _set("BTC-PERP", expiry="2026-09-01"), f"{PERP}.expiry"),
    ("future price 0", _set("SPX-FUT-Sep26", price=0), f"{FUT}.price"),
    ("future without expiry", _drop("SPX-FUT-Sep26", "expiry"), f"{FUT}.expiry"),
    ("binary without strike", _drop("BTC>105K-Aug26", "strike"), f"{STRIP}.strike"),
    ("binary without expiry", _drop("BTC>105K-Aug26", "expiry"), f"{STRIP}.expiry"),
    ("binary price 1", _set("BTC>105K-Aug26", price=1.0), f"{STRIP}.price"),
    ("expiry and expiry_in", _set("BTC>105K-Aug26", expiry_in=0.2), f"{STRIP}.expiry"),
    ("expiry not a date", _set("BTC>105K-Aug26", expiry="Aug 28"), f"{STRIP}.expiry"),
    ("expiry before as_of", _set("BTC>105K-Aug26", expiry="2026-05-01"), f"{STRIP}.expiry"),
    ("plain key on an underlying", _set("BTC>105K-Aug26", event="E"), f"{STRIP}.event"),
    ("contradicting cluster", _set("BTC>105K-Aug26", cluster="ETH"), f"{STRIP}.cluster"),
    ("parlay type on an underlying", _set("BTC>105K-Aug26", type="parlay"),
     f"{STRIP}.underlying"),
    ("pnl_points 1", lambda b: b["model"].update(pnl_points=1), "model.pnl_points"),
    ("pnl_points 10002", lambda b: b["model"].update(pnl_points=10002), "model.pnl_points"),
    ("pnl_range reversed", lambda b: b["model"].update(pnl_range=[1.5, 0.5]), "model.pnl_range"),
    ("pnl_range one", lambda b: b["model"].update(pnl_range=[0.5]), "model.pnl_range"),
    ("perps to resolution", lambda b: b["model"].pop("horizon_days"),
     "positions[0] (contract 'BTC-PERP')"),
]


@pytest.mark.parametrize("edit, field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_underlyings_and_linear_contracts_are_a_422_naming_the_field(client, edit, field):
    book = perps_book()
    edit(book)
    for path in ("/api/validate", "/api/margin", "/api/export"):
        field_error(client.post(path, json=book), field)
    field_error(client.put("/api/state", json={"book": book}), field)
    err = field_error(client.post("/api/what-if", json={"book": book, "trades": []}),
                   f"book.{field}")
    assert err["path"][0] == "book"


def test_a_strip_out_of_order_names_both_contracts(client):
    book = perps_book()
    _contract(book, "BTC>110K-Aug26")["price"] = 0.45  # above the 105K strike's 0.38
    r = client.post("/api/margin", json=book)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert "BTC>105K-Aug26" in err["message"] and "BTC>110K-Aug26" in err["message"]
    assert err["path"][0] == "contracts"


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_perps_books_never_a_5xx(client, data):
    """Random values in the underlyings and the contracts on them: validation
    and export answer 200 or a 4xx with a path, never a 5xx."""
    values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6),
                       st.floats(allow_nan=False), st.text(max_size=6),
                       st.sampled_from([0, -0.0, 1e308, 5e-324, 10**400, "2026-06-02",
                                        "perp", "future", "BTC", [0.5, 1.5], []]))
    book = perps_book()
    for _ in range(data.draw(st.integers(1, 3))):
        part = data.draw(st.sampled_from(["underlyings", "contracts", "model"]))
        if part == "model":
            target = book["model"]
            key = data.draw(st.sampled_from(["pnl_range", "pnl_points", "horizon_days"]))
        else:
            target = data.draw(st.sampled_from(book[part]))
            key = data.draw(st.sampled_from(
                ["spot", "vol", "lot_size", "cluster", "id"] if part == "underlyings" else
                ["underlying", "type", "strike", "expiry", "expiry_in", "price", "cluster"]))
        target[key] = data.draw(values)
    for path in ("/api/validate", "/api/export"):
        r = client.post(path, content=json.dumps(book), headers={
            "Content-Type": "application/json"})
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            err = r.json()["error"]
            assert err["message"] and isinstance(err["path"], list)


# ---------------------------------------------------------------------------
# Persistence: saved, exported and imported with its underlyings
# ---------------------------------------------------------------------------
def test_the_book_is_saved_exported_and_imported(state_path):
    book = perps_book()
    with local_client(create_app(None, state_path)) as c:
        assert c.put("/api/state", json={"book": book, "ui": {"view": "perps",
                                                               "asset": "SPX"}}).status_code == 200
        toml = c.get("/api/export").text
    assert 'type = "perp"' in toml and "lot_size = 0.001" in toml
    assert kj.book_to_dict(kj.loads_book(toml)) == book
    with local_client(create_app(None, state_path)) as c:  # a restarted server
        saved = c.get("/api/state").json()
        assert saved["book"] == book and saved["ui"] == {"view": "perps", "asset": "SPX"}
        again = c.post("/api/import", content=toml.encode(), headers=TOML)
        assert again.status_code == 200, again.text
        assert again.json()["book"] == book


# ---------------------------------------------------------------------------
# The service's work bounds, from the engine's own layout
# ---------------------------------------------------------------------------
def test_the_quadrature_bound_uses_the_engines_nodes_and_grid():
    """The reference book's one correlated parlay (BTC x ETH at loading 0.9) at a
    horizon: the engine marks it with 64 nodes over one grid dimension (the
    second factor in closed form) and 2 legs, so the reference book is accepted
    at every scenario count of the service, at 1, 2, 5 and 10 days."""
    reference = kj.load_book(REFERENCE)
    for days in (1, 2, 5, 10):
        book = reference.with_settings(horizon_days=days, scenarios=max(
            service.SCENARIO_CHOICES))
        arrays, _ = kj.book_arrays(book)
        quad = service.quadrature(book)
        assert quad == service.Quadrature(1, 2, 2, arrays.quad_nodes, True)
        assert arrays.quad_nodes == 64 and quad.points == 64
        assert service.quadrature_work(book) == (1 << 20) * 2 * 64 == 1 << 27
        for n in service.SCENARIO_CHOICES:
            service.check_limits(book.with_settings(scenarios=n))
    assert service.quadrature(reference) == service.Quadrature()  # to resolution: none
    assert service.quadrature(kj.load_book(EXAMPLE)) == service.Quadrature()  # no parlays


def test_the_quadrature_limit_refuses_with_the_engines_arithmetic(state_path):
    book = kj.load_book(REFERENCE).with_settings(horizon_days=2, scenarios=SCENARIOS)
    work = SCENARIOS * 2 * 64
    assert service.quadrature_work(book) == work
    limits = service.Limits(max_quadrature=work - 1)
    body = kj.book_to_dict(book)
    with local_client(create_app(None, state_path, limits=limits)) as c:
        err = field_error(c.post("/api/margin", json=body), "model.horizon_days")
        assert f"x 64^1 Gauss-Hermite points = {work:,}" in err["detail"]
    service.check_limits(book, service.Limits(max_quadrature=work))


def test_the_pnl_marks_are_bounded(state_path):
    book = perps_book()
    book["model"]["pnl_points"] = 1001
    # 6 binaries held: 1,001 x 6 closed-form marks.
    assert service.pnl_cells(kj.parse_book(book)) == 6006
    limits = service.Limits(max_pnl_cells=6005)
    with local_client(create_app(None, state_path, limits=limits)) as c:
        err = field_error(c.post("/api/margin", json=book), "model.pnl_points")
        assert "6,006 marks" in err["detail"]
        assert c.post("/api/validate", json=perps_book()).status_code == 200


def test_a_perps_book_names_its_own_program():
    book = kj.parse_book(perps_book())
    two = service.program_key("margin", book)
    five = service.program_key("margin", book.with_settings(horizon_days=5))
    assert two == five and two[3] == "horizon"
    fewer = copy.deepcopy(perps_book())
    fewer["contracts"] = [c for c in fewer["contracts"] if c["underlying"] == "BTC"]
    fewer["underlyings"] = fewer["underlyings"][:1]
    fewer["positions"] = [p for p in fewer["positions"] if not p["contract"].startswith("SPX")]
    assert service.program_key("margin", kj.parse_book(fewer)) != two

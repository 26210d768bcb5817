"""The liquidation horizon in the dashboard's service (SPEC-horizon.md §6,
issue 11 item 4): `model.horizon_days` and `model.as_of` are served settings
(config and OpenAPI bounds equal the engine's), POST /api/margin returns the
fields of ``kinetic-jax margin --json`` (`horizon_days`, `as_of`, `contracts`)
with tau and stressed marks equal to their closed forms, a book without a
horizon is v1 exactly, and every bad horizon or date is a 4xx naming the
field, never a 5xx. The page is tested in tests/test_dashboard_browser_horizon.py.

Books run at 8,192 scenarios (one compiled program per mode shared by the tests).
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from statistics import NormalDist

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("tomli_w")

from helpers import run_cli  # noqa: E402
from test_dashboard_api import (  # noqa: E402
    REFERENCE,
    SCENARIOS,
    client as client,  # noqa: F401 - the fixture
    field_error,
    local_client,
    post_margin,
    small_book,
    state_path as state_path,  # noqa: F401 - the fixture
)

import kinetic_jax as kj  # noqa: E402
from kinetic_jax._dates import MAX_HORIZON_DAYS  # noqa: E402
from kinetic_jax.dashboard import _service as service, create_app  # noqa: E402

JSON = {"Content-Type": "application/json"}
AS_OF = datetime.date(2026, 6, 1)
HORIZON = 2
N = NormalDist()


def horizon_book(days=HORIZON) -> dict:
    book = small_book()
    book["model"]["horizon_days"] = days
    return book



def expected_report(book: dict) -> dict:
    """The engine's report of the same book, as JSON, from the program the dashboard
    runs (`margin_with_losses`: the report and the histogram's losses from one
    simulation). `portfolio_margin`, which the CLI runs, is another XLA program with
    the same figures: bit for bit at XLA's default code generation, to float32
    rounding under the test session's flags (see conftest.py), so the CLI is
    compared to rounding below."""
    report, _ = kj.margin_with_losses(kj.parse_book(book))
    return json.loads(json.dumps(report.to_dict()))



# ---------------------------------------------------------------------------
# Settings: config and OpenAPI derived from the engine
# ---------------------------------------------------------------------------
def test_config_serves_the_horizon_settings(client):
    settings = client.get("/api/config").json()["settings"]
    h, a = settings["horizon_days"], settings["as_of"]
    assert (h["table"], h["type"], h["default"]) == ("model", "number", None)
    assert (h["min"], h["min_open"], h["max"], h["max_open"]) == (0, True, MAX_HORIZON_DAYS,
                                                                    False)
    assert h["choices"] == [1, 2, 5, 10]
    assert (a["table"], a["type"], a["default"]) == ("model", "string", None)
    # The table each setting is served under is the one parse_book reads it from.
    book = kj.parse_book({"model": {"horizon_days": 10, "as_of": "2026-06-01"}})
    assert (book.settings.horizon_days, book.settings.as_of) == (10, "2026-06-01")
    with pytest.raises(kj.BookError, match="addons"):
        kj.parse_book({"addons": {"horizon_days": 10}})


def test_openapi_bounds_are_the_engines(client):
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/api/margin"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    prop = schema["properties"]["model"]["properties"]
    h = prop["horizon_days"]
    assert h["type"] == ["number", "null"] and h.get("default") is None  # null: resolution
    assert (h["exclusiveMinimum"], h["maximum"]) == (0, 365) and "minimum" not in h
    assert prop["as_of"]["format"] == "date" and prop["as_of"]["type"] == ["string", "null"]
    # The engine: 365 days is accepted, a step beyond it and 0 are not.
    kj.Settings(horizon_days=365)
    for bad in (0, 365 + 1e-9, -1):
        with pytest.raises(kj.BookError) as info:
            kj.Settings(horizon_days=bad)
        assert info.value.field == "model.horizon_days"
    contract = schema["properties"]["contracts"]["items"]["properties"]
    assert contract["resolves"]["format"] == "date"
    assert contract["resolves_in"]["exclusiveMinimum"] == 0


def test_the_dated_reference_book_fits_the_served_schema(client):
    """The schema lists every key of a dated book (it refuses unknown keys)."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/margin"]["post"]["requestBody"]["content"]["application/json"]
    for book in (small_book(), horizon_book(), {**horizon_book(), "model": {
            **horizon_book()["model"], "horizon_days": None}}, body["example"]):
        jsonschema.validate(book, body["schema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(horizon_book(0), body["schema"])


# ---------------------------------------------------------------------------
# POST /api/margin at a horizon
# ---------------------------------------------------------------------------
def test_margin_at_a_horizon_is_the_engines_and_the_clis(client, tmp_path):
    book = horizon_book()
    out = post_margin(client, book)
    report = out["report"]
    assert report == expected_report(book)
    assert report["horizon_days"] == HORIZON and report["as_of"] == AS_OF.isoformat()
    # A 2-day horizon margins less than resolution on this book (the long-dated
    # ladders lose most of their risk), and the waterfall adds up to it.
    assert report["margin"] < post_margin(client, small_book())["report"]["margin"]
    assert out["waterfall"][-1]["total"] == pytest.approx(report["margin"], abs=0.01)
    # The CLI's JSON of the same book has the same fields and values.
    path = tmp_path / "book.json"
    path.write_text(json.dumps(small_book()))
    rc, stdout, stderr = run_cli("margin", str(path), "--horizon", str(HORIZON), "--json")
    assert rc == 0, stderr
    cli = json.loads(stdout)
    for key in ("horizon_days", "as_of", "contracts", "binding"):
        assert cli[key] == report[key], key
    assert cli["margin"] == pytest.approx(report["margin"], rel=1e-6)


def test_tau_and_stressed_marks_are_their_closed_forms(client):
    report = post_margin(client, horizon_book())["report"]
    book = kj.parse_book(small_book())
    figures = {c["id"]: c for c in report["contracts"]}
    assert list(figures) == list(book.contract_ids)
    h = HORIZON / 365.0
    z01, z99 = N.inv_cdf(0.01), N.inv_cdf(0.99)
    resolved = live = 0
    for c in book.contracts:
        f = figures[c.id]
        if c.type == "parlay":
            legs = [figures[leg]["tau"] for leg in c.legs]
            assert f["tau"] == min(legs) and f["stressed_marks"] is None
            continue
        years = (datetime.date.fromisoformat(c.resolves) - AS_OF).days / 365.0
        tau = min(1.0, h / years)
        assert f["tau"] == pytest.approx(tau, rel=1e-12)
        assert f["resolved_by_horizon"] is (tau >= 1)
        if c.type not in ("above", "binary"):
            continue
        p = f["implied_probability"]
        cut = N.inv_cdf(1 - p)  # YES: the event's latent above the cut (SPEC.md §2.2)
        if tau >= 1:  # resolved by the horizon: the outcome's indicator
            assert f["stressed_marks"] == [float(z01 > cut), float(z99 > cut)]
            resolved += 1
        else:  # Phi((sqrt(tau) z - cut) / sqrt(1 - tau))
            marks = [N.cdf((math.sqrt(tau) * z - cut) / math.sqrt(1 - tau)) for z in (z01, z99)]
            assert f["stressed_marks"] == pytest.approx(marks, abs=1e-12)
            assert marks[0] < p < marks[1]
            live += 1
    # The reference book has both: games within 2 days of as_of, ladders months away.
    assert resolved >= 3 and live >= 5
    btc = figures["BTC-100K-DEC"]
    assert btc["tau"] == pytest.approx(2 / 213, rel=1e-12)  # 2026-06-01 -> 2026-12-31


def test_without_a_horizon_the_response_is_v1(client):
    """No horizon_days (or null): the v1 figures, tau 1 everywhere, indicator
    marks; the dates change nothing (an undated copy margins the same)."""
    book = small_book()
    assert "horizon_days" not in book["model"]
    out = post_margin(client, book)
    report = out["report"]
    assert report == expected_report(book)
    assert report["horizon_days"] is None and report["as_of"] == AS_OF.isoformat()
    assert all(c["tau"] == 1 and c["resolved_by_horizon"] for c in report["contracts"])
    assert all(m in (0.0, 1.0) for c in report["contracts"] for m in c["stressed_marks"] or ())
    null = small_book()
    null["model"]["horizon_days"] = None
    assert post_margin(client, null)["report"] == report
    undated = small_book()
    del undated["model"]["as_of"]
    for c in undated["contracts"]:
        c.pop("resolves", None)
    plain = post_margin(client, undated)["report"]
    assert plain["as_of"] is None
    for key in ("margin", "base", "floor", "worst_case_loss", "binding", "clusters", "addons"):
        assert plain[key] == report[key], key


def test_what_if_at_a_horizon_equals_the_margin_of_the_traded_book(client):
    """The what-if session at a horizon keeps the marks (not 0/1 outcomes): its
    figures are /api/margin's of the traded book, for a trade and for a contract
    new to an existing event (the plain sampler, where they are equal)."""
    book = horizon_book()
    book["model"]["sampler"] = "plain"
    trades = [{"contract": "BTC-100K-DEC", "quantity": 20000}]
    r = client.post("/api/what-if", json={"book": book, "trades": trades})
    assert r.status_code == 200, r.text
    w = r.json()["what_if"]
    traded = copy.deepcopy(book)
    for p in traded["positions"]:
        if p["contract"] == "BTC-100K-DEC":
            p["quantity"] += 20000
    assert r.json()["report"]["horizon_days"] == HORIZON
    assert w["margin_before"] == pytest.approx(expected_report(book)["margin"], rel=1e-5)
    assert w["margin_after"] == pytest.approx(expected_report(traded)["margin"], rel=1e-5)
    assert w["margin_after"] < expected_report({**traded, "model": small_book()["model"]})[
        "margin"]  # well below the resolution margin of the traded book
    new = {"id": "BTC-105K-DEC", "cluster": "BTC", "type": "above", "event": "BTC-DEC",
           "threshold": 105000, "price": 0.44, "resolves": "2026-12-31"}
    r = client.post("/api/what-if", json={"book": book, "new_contracts": [new], "trades": [
        {"contract": new["id"], "quantity": -30000}]})
    assert r.status_code == 200, r.text
    grown = copy.deepcopy(book)
    grown["contracts"].append(new)
    grown["positions"].append({"contract": new["id"], "quantity": -30000})
    assert r.json()["what_if"]["margin_after"] == pytest.approx(
        expected_report(grown)["margin"], rel=1e-5)


# ---------------------------------------------------------------------------
# Bad horizons and dates: a 4xx naming the field
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("value, detail", [
    (0, "0.0 is outside (0, 365]"), (400, "400.0 is outside (0, 365]"),
    (-1, "-1.0 is outside (0, 365]"), (365.5, "365.5 is outside (0, 365]"),
    ("x", "'x' is not a number"), ("2", "'2' is not a number"),
    (True, "True is not a number"), ([2], "[2] is not a number"), ({}, "{} is not a number"),
])
def test_a_bad_horizon_is_a_422_naming_the_field(client, value, detail):
    book = horizon_book(value)
    for path in ("/api/margin", "/api/validate", "/api/losses", "/api/sensitivities",
                 "/api/export"):
        err = field_error(client.post(path, json=book), "model.horizon_days")
        assert err["path"] == ["model", "horizon_days"] and err["detail"] == detail
    err = field_error(client.post("/api/what-if", json={"book": book, "trades": []}),
                      "book.model.horizon_days")
    field_error(client.put("/api/state", json={"book": book}), "model.horizon_days")


@pytest.mark.parametrize("text", ["NaN", "Infinity", "1e400", "-0.0", "1" * 400])
def test_a_non_finite_or_huge_horizon_is_a_422(client, text):
    body = json.dumps(horizon_book()).replace(f'"horizon_days": {HORIZON}',
                                              f'"horizon_days": {text}')
    assert text in body
    r = client.post("/api/margin", content=body, headers=JSON)
    err = field_error(r, "model.horizon_days")
    assert err["path"] == ["model", "horizon_days"]


def test_bad_dates_are_a_422_naming_the_field(client):
    # A horizon with an undated binary (SPEC-horizon §6.10): the contract's date is named.
    book = horizon_book()
    i = next(i for i, c in enumerate(book["contracts"]) if c["id"] == "NFL-KC")
    assert book["contracts"][i]["type"] == "binary"  # an event of its own
    book["contracts"][i].pop("resolves")
    err = field_error(client.post("/api/margin", json=book),
                      f"contracts[{i}] (id 'NFL-KC').resolves")
    assert err["path"] == ["contracts", i, "resolves"] and "horizon_days" in err["detail"]
    # Without a horizon the same book is a v1 book (undated binaries are fine).
    del book["model"]["horizon_days"]
    assert client.post("/api/validate", json=book).status_code == 200
    # as_of: not a date; a resolution on or before it; two dates on one event.
    book = horizon_book()
    book["model"]["as_of"] = "2026-02-30"
    err = field_error(client.post("/api/margin", json=book), "model.as_of")
    assert "2026-02-30" in err["detail"]
    book = horizon_book()
    book["model"]["as_of"] = "2027-01-01"
    r = client.post("/api/margin", json=book)
    assert r.status_code == 422 and r.json()["error"]["path"][-1] == "resolves"
    assert "on or before model.as_of" in r.json()["error"]["detail"]
    book = horizon_book()
    j = next(i for i, c in enumerate(book["contracts"]) if c["id"] == "BTC-100K-DEC")
    book["contracts"][j]["resolves"] = "2026-12-30"
    r = client.post("/api/margin", json=book)
    assert r.status_code == 422, r.text
    assert "one date per event" in r.json()["error"]["detail"]
    assert r.json()["error"]["path"][0] == "contracts"
    # resolves and resolves_in together.
    book = horizon_book()
    book["contracts"][j]["resolves_in"] = 0.5
    err = field_error(client.post("/api/margin", json=book),
                      f"contracts[{j}] (id 'BTC-100K-DEC').resolves")


# ---------------------------------------------------------------------------
# The service's bound on the horizon's parlay quadrature
# ---------------------------------------------------------------------------
def test_quadrature_work_is_bounded(state_path):
    """The bound counts what the engine evaluates: its node count per dimension
    (BookArrays.quad_nodes, 64 at loading 0.9) over its grid (the last factor in
    closed form: one dimension fewer), for the legs it marks (quad_width)."""
    reference = kj.load_book(REFERENCE)
    big = reference.with_settings(scenarios=max(service.SCENARIO_CHOICES), horizon_days=2)
    arrays, _ = kj.book_arrays(big)
    # One parlay (BTC x ETH: two correlated loaded factors), two legs.
    quad = service.quadrature(big)
    assert quad == (1, arrays.quad_width, 2, arrays.quad_nodes, arrays.quad_closed)
    assert (quad.legs, quad.nodes, quad.closed, quad.points) == (2, 64, True, 64)
    assert service.quadrature_work(big) == (1 << 20) * 2 * 64 < service.MAX_QUADRATURE
    assert service.quadrature_work(reference) == 0  # resolution mode: no quadrature
    for n in service.SCENARIO_CHOICES:  # the default admits the reference book at every count
        service.check_limits(big.with_settings(scenarios=n))
    limits = service.Limits(max_quadrature=SCENARIOS * 2 * 64 - 1)
    with local_client(create_app(None, state_path, limits=limits)) as c:
        err = field_error(c.post("/api/margin", json=horizon_book()), "model.horizon_days")
        assert "quadrature" in err["detail"] and "lower the scenario count" in err["detail"]
        assert c.post("/api/validate", json=small_book()).status_code == 200
        assert c.get("/api/config").json()["limits"]["max_quadrature"] == limits.max_quadrature


def test_a_horizon_names_its_own_program():
    book = kj.parse_book(small_book())
    v1 = service.program_key("margin", book)
    two = service.program_key("margin", book.with_settings(horizon_days=2))
    five = service.program_key("margin", book.with_settings(horizon_days=5))
    assert two != v1 and two[:3] == v1 and two == five and two[3] == "horizon"


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------
def test_the_horizon_is_saved_exported_and_imported(state_path):
    book = horizon_book(5)
    with local_client(create_app(None, state_path)) as c:
        assert c.put("/api/state", json={"book": book}).status_code == 200
        toml = c.get("/api/export").text
    assert "horizon_days = 5" in toml and 'as_of = "2026-06-01"' in toml
    with local_client(create_app(None, state_path)) as c:  # a restarted server
        saved = c.get("/api/state").json()["book"]
        assert saved["model"]["horizon_days"] == 5
        assert saved["contracts"] == kj.book_to_dict(kj.parse_book(book))["contracts"]
        imported = c.post("/api/import", content=toml,
                          headers={"Content-Type": "application/toml"}).json()["book"]
        assert imported == saved

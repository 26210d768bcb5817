"""Stress scenarios in the dashboard's service (kinetic_jax/dashboard): the
book's ``stress`` tables survive the saved state, a restart and the TOML
export/import; /api/margin reports each scenario's exact loss and the stress
add-on; an invalid scenario is a 422 whose ``path`` points at the scenario's
field (the page marks it from there). The page itself is tested in
tests/test_dashboard_browser_stress.py.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("tomli_w")


from test_dashboard_api import (  # noqa: E402
    client as client,  # noqa: F401 - the fixture
    local_client,
    state_path as state_path,  # noqa: F401 - the fixture
)

import kinetic_jax as kj  # noqa: E402
from kinetic_jax.dashboard import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "examples" / "reference_book.toml"
SCENARIOS = 8192
JSON = {"Content-Type": "application/json"}
TOML = {"Content-Type": "application/toml"}


# Added to the reference book's three scenarios: a cluster factor beside a node
# factor elsewhere, and a NO resolution.
EXTRA = {"name": "SOL spike, A loses", "factors": {"SOL": 2.5, "equity": -1.0},
         "resolve": {"PRES-2028-A": "NO"}}


def reference_with_extra() -> dict:
    book = kj.book_to_dict(kj.load_book(REFERENCE))
    book["model"]["scenarios"] = SCENARIOS
    book["stress"] = [*book["stress"], copy.deepcopy(EXTRA)]
    return book




def test_the_reference_state_carries_its_scenarios(client):
    served = client.get("/api/state").json()["book"]["stress"]
    assert [s["name"] for s in served] == [s.name for s in kj.load_book(REFERENCE).stress]
    assert served[1] == {"name": "risk-off, B wins", "factors": {"risk": -2.5},
                         "resolve": {"PRES-2028-B": "YES"}}
    assert served[2]["factors"] == {}


def test_stress_round_trips_through_state_restart_export_and_import(state_path):
    book = reference_with_extra()
    with local_client(create_app(None, state_path)) as c:
        saved = c.put("/api/state", json={"book": book, "ui": {}})
        assert saved.status_code == 200, saved.text
    with local_client(create_app(None, state_path)) as c:  # a restarted server
        again = c.get("/api/state").json()["book"]
        assert again["stress"] == book["stress"]
        assert again["stress"][3] == EXTRA
        exported = c.get("/api/export")
        assert exported.status_code == 200
        assert "[[stress]]" in exported.text
        assert [dict(name=s.name, factors=dict(s.factors), resolve=dict(s.resolve))
                for s in kj.loads_book(exported.text).stress] == book["stress"]
        imported = c.post("/api/import", content=exported.content, headers=TOML)
        assert imported.status_code == 200, imported.text
        assert imported.json()["book"]["stress"] == book["stress"]
        # Removing every scenario is saved too (no key, not the old list).
        book.pop("stress")
        assert c.put("/api/state", json={"book": book, "ui": {}}).status_code == 200
    with local_client(create_app(None, state_path)) as c:
        assert "stress" not in c.get("/api/state").json()["book"]


def _binaries_book(stress_addon: bool) -> dict:
    """12 independent longs of 100 on binaries at 0.5: the scenario 'all lose'
    loses exactly 12 * 100 * 0.5 = 600, the median scenario (every factor 0)
    exactly 0 (P(YES) = Phi(0) = 0.5 = the price)."""
    return {"model": {"scenarios": SCENARIOS, "stress_addon": stress_addon},
            "contracts": [{"id": f"G{i}", "cluster": "Sports", "type": "binary", "price": 0.5}
                          for i in range(12)],
            "positions": [{"contract": f"G{i}", "quantity": 100} for i in range(12)],
            "stress": [{"name": "all lose", "resolve": {f"G{i}": "NO" for i in range(12)}},
                       {"name": "median"}]}


@pytest.mark.parametrize("addon", [False, True])
def test_margin_reports_exact_losses_and_the_addon(client, addon):
    book = _binaries_book(addon)
    r = client.post("/api/margin?sensitivities=false&histogram=false", json=book)
    assert r.status_code == 200, r.text
    report = r.json()["report"]
    assert [s["name"] for s in report["stress"]] == ["all lose", "median"]
    assert report["stress"][0]["loss"] == pytest.approx(600.0, abs=1e-9)
    assert report["stress"][0]["clusters"]["Sports"] == pytest.approx(600.0, abs=1e-9)
    assert report["stress"][1]["loss"] == pytest.approx(0.0, abs=1e-9)
    expected = kj.portfolio_margin(kj.parse_book(book))
    assert report["margin"] == pytest.approx(expected.margin, rel=1e-6)
    assert report["addons"]["stress"] == pytest.approx(expected.addons["stress"], abs=1e-3)
    stressed = max(report["base"], report["floor"])
    want = max(0.0, 600.0 - stressed) if addon else 0.0
    assert report["addons"]["stress"] == pytest.approx(want, abs=1e-3)
    step = next(s for s in r.json()["waterfall"] if s["step"] == "add-on: stress")
    assert step["amount"] == pytest.approx(want, abs=1e-3)
    if addon:
        assert want > 100  # the add-on matters on this book


def test_margin_stress_of_the_reference_book_equals_the_engine(client):
    book = reference_with_extra()
    r = client.post("/api/margin?sensitivities=false&histogram=false", json=book)
    assert r.status_code == 200, r.text
    served = r.json()["report"]["stress"]
    expected = kj.portfolio_margin(kj.parse_book(book)).stress
    assert [s["name"] for s in served] == [s.name for s in expected]
    for s, e in zip(served, expected, strict=True):
        assert s["loss"] == pytest.approx(e.loss, rel=1e-12, abs=1e-9)
        assert s["clusters"] == pytest.approx(e.clusters, rel=1e-12, abs=1e-9)
        assert math.isclose(sum(s["clusters"].values()), s["loss"], rel_tol=1e-9, abs_tol=1e-6)


def _with(stress: list) -> dict:
    book = reference_with_extra()
    book["stress"] = stress
    return book


INVALID = [
    ([{"name": "x", "factors": {"NOPE": -1.0}}], ["stress", 0, "factors", "NOPE"],
     "unknown hierarchy node or cluster"),
    ([{"name": "x", "factors": {"crypto": "abc"}}], ["stress", 0, "factors", "crypto"],
     "'abc' is not a number"),
    ([{"name": "x", "factors": {"crypto": -1.0, "BTC": 1.0}}], ["stress", 0, "factors", "BTC"],
     "both are given"),
    ([{"name": "x"}, {"name": "y", "resolve": {"PRES-2028-A": "MAYBE"}}],
     ["stress", 1, "resolve", "PRES-2028-A"], "'MAYBE'"),
    ([{"name": "x", "resolve": {"NO-SUCH": "YES"}}], ["stress", 0, "resolve", "NO-SUCH"],
     "unknown contract"),
    ([{"name": "x", "resolve": {"PARLAY-LAL-KC": "YES"}}],
     ["stress", 0, "resolve", "PARLAY-LAL-KC"], "parlay"),
    ([{"name": "x", "resolve": {"PRES-2028-A": "YES", "PRES-2028-B": "YES"}}],
     ["stress", 0, "resolve"], "PRES-2028"),
    ([{"name": "x"}, {"name": "x"}], ["stress", 1, "name"], "duplicate scenario name"),
    ([{"name": ""}], ["stress", 0, "name"], "not a non-empty string"),
    ([{"name": "x", "shock": 1}], ["stress", 0, "shock"], "unknown key"),
]


@pytest.mark.parametrize(("stress", "path", "detail"), INVALID)
def test_an_invalid_scenario_is_a_422_with_its_path(client, state_path, stress, path, detail):
    before = client.get("/api/state").json()["book"]
    for method, url in (("POST", "/api/margin?sensitivities=false"), ("POST", "/api/validate"),
                        ("PUT", "/api/state")):
        body = _with(stress) if method == "POST" else {"book": _with(stress), "ui": {}}
        r = client.request(method, url, json=body)
        assert r.status_code == 422, (url, r.text)
        err = r.json()["error"]
        assert err["path"] == path, err
        assert err["field"].startswith(f"stress[{path[1]}]"), err
        assert detail in err["detail"], err
        assert "Traceback" not in r.text
    # The refused book was not saved.
    assert client.get("/api/state").json()["book"] == before


def test_config_and_schema_describe_stress(client):
    cfg = client.get("/api/config").json()["settings"]["stress_addon"]
    assert cfg["table"] == "model" and cfg["type"] == "boolean" and cfg["default"] is False
    spec = client.get("/openapi.json").json()
    text = str(spec)
    assert "hierarchy node or cluster -> factor value" in text

"""The dashboard's JSON margin service (kinetic_jax/dashboard): every endpoint,
bad input, limits, persistence across a restart, atomic saves, TOML round trip.

The books here run at 8,192 scenarios to keep the suite fast; the figures are
compared with kinetic_jax.portfolio_margin on the same book (same draws), so
they agree exactly.
"""

from __future__ import annotations

import copy
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
tomli_w = pytest.importorskip("tomli_w")

from fastapi.testclient import TestClient  # noqa: E402
from helpers import ProgramLog  # noqa: E402

import kinetic_jax as kj  # noqa: E402
from kinetic_jax.dashboard import (  # noqa: E402
    MAX_SCENARIOS,
    _state as state_module,  # noqa: E402
    create_app,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "examples" / "reference_book.toml"
SCENARIOS = 8192


def small_book() -> dict:
    """The reference book as JSON, at 8,192 scenarios."""
    book = kj.book_to_dict(kj.load_book(REFERENCE))
    book["model"]["scenarios"] = SCENARIOS
    return book


def engine(book: dict) -> kj.MarginReport:
    return kj.portfolio_margin(kj.parse_book(book))


def node_index(book: dict, name: str) -> int:
    return next(i for i, n in enumerate(book["hierarchy"]) if n["node"] == name)


BASE = "http://127.0.0.1:8765"
JSON = {"Content-Type": "application/json"}
TOML = {"Content-Type": "application/toml"}


def local_client(app) -> TestClient:
    """A client that talks to `app` as the page does: Host 127.0.0.1."""
    return TestClient(app, base_url=BASE)


@pytest.fixture
def state_path(tmp_path) -> Path:
    return tmp_path / "state" / "dashboard.json"


@pytest.fixture
def client(state_path):
    with local_client(create_app(None, state_path)) as c:
        yield c


def assert_error(response, status: int, field_part: str):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert field_part in err["field"], err
    assert err["detail"] and err["message"].endswith(err["detail"])
    assert "Traceback" not in response.text


def field_error(response, field: str, status: int = 422) -> dict:
    """The error body of a refused request, naming exactly `field`."""
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["field"] == field, err
    assert err["detail"] and err["message"] == f"{field}: {err['detail']}"
    assert "Traceback" not in response.text
    return err


def post_margin(client, book) -> dict:
    """POST /api/margin without sensitivities (20 histogram bins); must succeed."""
    r = client.post("/api/margin", params={"sensitivities": False, "bins": 20}, json=book)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------------
# Package data and static files
# ---------------------------------------------------------------------------
def test_packaged_reference_book_is_a_copy_of_the_example():
    packaged = Path(kj.__file__).parent / "dashboard" / "reference_book.toml"
    assert packaged.read_bytes() == REFERENCE.read_bytes()


MODULES = ("main.js", "state.js", "api.js", "table.js", "controls.js", "charts.js", "docs.js")


def test_page_and_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    # The page is ES modules; plotly is not a blocking <script> (charts load it later).
    assert '<script type="module" src="/static/js/main.js">' in html
    assert "plotly" not in html
    assert "http://" not in html and "https://" not in html  # no CDN
    plotly = client.get("/vendor/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    for name in ("style.css", "favicon.svg", "docs.html", *(f"js/{m}" for m in MODULES)):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200, name
        text = r.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in text and "http://" not in text, name
    charts = client.get("/static/js/charts.js").text
    assert 'src = "/vendor/plotly.min.js"' in charts and "s.async = true" in charts
    # The old single script is gone; the modules import each other only.
    assert client.get("/static/app.js").status_code == 404
    main = client.get("/static/js/main.js").text
    for m in ("api.js", "charts.js", "controls.js", "state.js", "table.js"):
        assert f'from "./{m}"' in main, m


def test_api_docs_are_local(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/static/js/docs.js" in docs.text and "/openapi.json" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text  # no CDN
    assert "cdn" not in docs.text.lower()
    assert client.get("/redoc").status_code == 404


def test_health_and_openapi(client, state_path):
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    assert health["limits"]["max_scenarios"] == MAX_SCENARIOS == 1 << 20
    assert health["state_path"] == str(state_path)
    assert {"traces", "compiles"} <= set(health["jax"])
    maps = kj.memory_maps()
    assert (health["memory_maps"] is None) == (maps is None)
    if maps is not None:  # Linux
        assert 0 < health["memory_maps"]["count"] < health["memory_maps"]["limit"] == maps[1]
    spec = client.get("/openapi.json").json()
    for path in ("/api/margin", "/api/losses", "/api/sensitivities", "/api/validate", "/api/state",
                 "/api/export", "/api/import", "/api/health", "/api/reference"):
        assert path in spec["paths"], path
    body = spec["paths"]["/api/margin"]["post"]["requestBody"]["content"]["application/json"]
    assert "contracts" in body["schema"]["properties"] and "example" in body
    assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------------------
# The margin service
# ---------------------------------------------------------------------------
def test_margin_matches_the_engine(client):
    book = small_book()
    r = client.post("/api/margin", params={"sensitivities": False, "bins": 40}, json=book)
    assert r.status_code == 200, r.text
    out = r.json()
    report = engine(book)
    expected = json.loads(json.dumps(report.to_dict()))
    assert out["report"] == expected
    assert out["waterfall"] == expected["waterfall"] == report.waterfall()
    assert out["report"]["scenarios"] == SCENARIOS
    h = out["histogram"]
    assert len(h["counts"]) == 40 and len(h["edges"]) == 41
    assert sum(h["counts"]) == SCENARIOS and np.isclose(sum(h["probability"]), 1.0)
    assert h["var"] == report.var and h["es"] == report.base
    losses = kj.book_losses(kj.parse_book(book))
    assert h["min"] == pytest.approx(losses.min()) and h["max"] == pytest.approx(losses.max())
    assert h["var"] <= h["es"] <= h["max"] + 1e-6
    names = [n["name"] for n in out["hierarchy"]["nodes"]]
    assert {"root", "risk", "crypto", "equity", "macro"} <= set(names)
    assert [c["name"] for c in out["hierarchy"]["clusters"]] == [
        "BTC", "ETH", "SOL", "SPX", "OIL", "Election", "Sports", "Parlays"]
    assert out["sensitivities"] is None
    # The page's split: the tiles first, then the histogram of the same draws.
    tiles = client.post("/api/margin", params={"sensitivities": False, "histogram": False},
                        json=book).json()
    assert tiles["report"] == expected and tiles["histogram"] is None
    alone = client.post("/api/losses", params={"bins": 40}, json=book)
    assert alone.status_code == 200
    assert alone.json()["histogram"]["counts"] == h["counts"]
    assert alone.json()["histogram"]["var"] == report.var
    assert_error(client.post("/api/losses", params={"bins": 0}, json=book), 422, "bins")
    bad = copy.deepcopy(book)
    bad["positions"][1]["contract"] = "NOPE"
    assert_error(client.post("/api/losses", json=bad), 422, "positions[1].contract")


def test_an_importance_sampled_histogram_is_weighted(client):
    # The draws of a variance-reduced sampler (the default, exact_block) are not
    # equally likely: the page's probabilities, mean and sd are likelihood-ratio
    # weighted, self-normalised (counts stay draws).
    book = small_book()
    assert "sampler" not in book["model"]
    out = client.post("/api/losses", params={"bins": 30}, json=book)
    assert out.status_code == 200, out.text
    h = out.json()["histogram"]
    report, losses, w = kj.margin_with_losses(kj.parse_book(book), with_weights=True)
    assert report.exact_positions == 27 and h["es"] == report.base
    mass, _ = np.histogram(losses, bins=30, range=(losses.min(), losses.max()), weights=w)
    np.testing.assert_allclose(h["probability"], mass / w.sum(), rtol=1e-9, atol=1e-12)
    assert sum(h["counts"]) == SCENARIOS and sum(h["probability"]) == pytest.approx(1.0)
    assert h["mean"] == pytest.approx(np.sum(w * losses) / w.sum(), rel=1e-9)
    assert abs(w.sum() / SCENARIOS - 1) < 0.05  # E[w] = 1: the weights are honest
    # The tail is oversampled: unweighted, the largest bins would hold more.
    assert mass[-5:].sum() / SCENARIOS < np.asarray(h["counts"])[-5:].sum() / SCENARIOS


@pytest.mark.skipif(not hasattr(kj, "sensitivities"), reason="no kinetic_jax.sensitivities")
def test_margin_with_sensitivities_and_the_sensitivities_endpoint(client):
    book = small_book()
    out = client.post("/api/margin", json=book).json()
    sens = out["sensitivities"]
    parsed = kj.parse_book(book)
    # The page's conditional run is at its own scenario count (not the library's 8x).
    expected = kj.sensitivities(parsed, jump_scenarios=parsed.settings.scenarios).to_dict()
    assert sens["jump_scenarios"] == parsed.settings.scenarios
    assert sens["jump_sampler"] == "importance"
    assert sens["margin"] == pytest.approx(expected["margin"])
    # The sensitivities differentiate the plain estimator's margin on the same
    # seed; the tiles show the default (exact_block) margin: the two agree
    # within standard errors.
    plain = kj.portfolio_margin(parsed, sampler="plain")
    assert sens["margin"] == pytest.approx(plain.margin, rel=1e-6)
    shown = out["report"]
    assert shown["sampler"] == "exact_block"
    assert abs(sens["margin"] - shown["margin"]) < 4 * (plain.standard_error
                                                        + shown["standard_error"])
    assert set(sens["positions"]) == set(expected["positions"])
    for cid, entry in sens["positions"].items():
        for key in ("quantity", "price", "d_quantity", "d_price", "euler"):
            assert entry[key] == pytest.approx(expected["positions"][cid][key], rel=1e-6, abs=1e-6)
    assert set(sens["rho"]) == set(expected["rho"]) and set(sens["loading"]) == set(
        expected["loading"])
    alone = client.post("/api/sensitivities", json=book)
    assert alone.status_code == 200
    assert alone.json()["sensitivities"]["positions"] == sens["positions"]


def test_validate_endpoint(client):
    book = small_book()
    ok = client.post("/api/validate", json=book)
    assert ok.status_code == 200 and ok.json()["ok"] is True
    assert ok.json()["book"]["positions"] == book["positions"]
    bad = copy.deepcopy(book)
    bad["positions"][0]["quantity"] = "many"
    assert_error(client.post("/api/validate", json=bad), 422, "positions[0]")


def test_value_changes_do_not_recompile(client):
    """Moving a slider (rho, loading), the seed, an add-on or a quantity keeps
    every array shape: no new trace, no new compilation.

    The engine's in-memory caches are cleared first (`kj.clear_caches`: JAX's
    programs, and the books laid out with their exact-block laws), so what this
    test counts does not depend on what earlier tests in this worker left: the
    warm-up then runs every program a new book runs. CI once failed here when
    the warm-up found the book laid out by an earlier test and so skipped
    `atom_cuts`, which JAX no longer held, and the loop's new layouts compiled
    it; clearing only JAX's caches first fails the same way.
    """
    kj.clear_caches()
    book = small_book()
    within = node_index(book, "crypto")

    def changed(k: int, w: float, x: float) -> dict:
        b = copy.deepcopy(book)
        b["hierarchy"][within]["rho"] = w
        for name in ("risk", "equity", "macro"):
            b["hierarchy"][node_index(b, name)]["rho"] = x
        b["clusters"][k]["loading"] = 0.5 + 0.1 * k
        b["model"]["seed"] = k + 1
        b["addons"]["mc_error_z"] = 1.0 + k
        b["addons"]["liquidity"] = bool(k % 2)
        b["positions"][3]["quantity"] = 1000.0 * (k + 1)
        return b

    assert client.post("/api/margin?sensitivities=false", json=book).status_code == 200
    engine(book)  # the test's own reference call compiles once too
    before = client.get("/api/health").json()["jax"]
    with ProgramLog() as programs:
        for k, (w, x) in enumerate([(0.8, 0.4), (0.5, 0.5), (0.95, 0.1)]):
            b = changed(k, w, x)
            r = client.post("/api/margin?sensitivities=false", json=b)
            assert r.status_code == 200
            assert r.json()["report"]["margin"] == engine(b).margin
        after = client.get("/api/health").json()["jax"]
    assert programs.events == [], programs.events
    assert (after["traces"], after["compiles"]) == (before["traces"], before["compiles"])


# ---------------------------------------------------------------------------
# Bad input: a 4xx JSON error naming the field, and the server stays up
# ---------------------------------------------------------------------------
def test_unknown_field(client):
    book = small_book()
    book["contracts"][2]["strike"] = 5
    assert_error(client.post("/api/margin", json=book), 422, "contracts[2]")
    r = client.post("/api/margin", json=book)
    assert r.json()["error"]["field"].endswith(".strike")
    top = small_book()
    top["extras"] = {}
    assert_error(client.post("/api/margin", json=top), 422, "extras")


def test_bad_price(client):
    book = small_book()
    book["contracts"][1]["price"] = 1.2
    r = client.post("/api/margin", json=book)
    assert_error(r, 422, "contracts[1] (id 'BTC-100K-DEC').price")
    assert "1.2" in r.json()["error"]["detail"]
    book["contracts"][1]["price"] = 0
    assert_error(client.post("/api/margin", json=book), 422, ".price")


def test_rho_within_below_rho_cross(client):
    book = small_book()
    book["hierarchy"][node_index(book, "crypto")]["rho"] = 0.2  # risk (rho_cross) is 0.35
    r = client.post("/api/margin", json=book)
    assert_error(r, 422, "(node 'crypto').rho")
    assert "below its parent 'risk'" in r.json()["error"]["detail"]


def test_oversized_body_is_refused_before_parsing(state_path):
    with local_client(create_app(None, state_path, max_body_bytes=4096)) as c:
        big = b"{" + b" " * 5000 + b"}"  # would be valid JSON: refused on size alone
        assert_error(c.post("/api/margin", content=big,
                            headers={"Content-Type": "application/json"}), 413, "body")

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b" " * 1000

        assert_error(c.post("/api/margin", content=chunks(), headers=JSON), 413, "body")
        assert_error(c.post("/api/import", content=b"#" * 5000, headers=TOML), 413, "body")
        assert_error(c.put("/api/state", content=b"#" * 5000, headers=JSON), 413, "body")
        assert c.get("/api/health").status_code == 200


def test_default_body_limit(client):
    r = client.post("/api/margin", content=b" " * (2 * 1024 * 1024 + 1), headers=JSON)
    assert_error(r, 413, "body")


def test_too_many_scenarios(client):
    book = small_book()
    book["model"]["scenarios"] = MAX_SCENARIOS + 1
    r = client.post("/api/margin", json=book)
    assert_error(r, 422, "model.scenarios")
    assert "1,048,576" in r.json()["error"]["detail"]
    for path in ("/api/sensitivities", "/api/validate"):
        assert_error(client.post(path, json=book), 422, "model.scenarios")
    book["model"]["scenarios"] = 0
    assert_error(client.post("/api/margin", json=book), 422, "model.scenarios")


def test_malformed_requests(client):
    assert_error(client.post("/api/margin", content=b"{not json", headers=JSON), 400, "book")
    assert_error(client.post("/api/margin", content=b"[1, 2]", headers=JSON), 422, "book")
    assert_error(client.post("/api/margin", content=b"\xff\xfe", headers=JSON), 400, "book")
    assert_error(client.post("/api/margin", content=b'{"model": {"seed": NaN}}',
                             headers=JSON), 422, "seed")
    assert_error(client.post("/api/margin?bins=0", json=small_book()), 422, "bins")
    assert_error(client.post("/api/margin?bins=100000", json=small_book()), 422, "bins")
    assert_error(client.put("/api/state", json={"book": small_book(), "x": 1}), 422, "x")
    assert_error(client.put("/api/state", json={"ui": {}}), 422, "book")
    assert_error(client.put("/api/state", json={"book": small_book(), "ui": {"a": [1]}}),
                 422, "ui.a")
    assert client.get("/api/nowhere").status_code == 404
    assert client.get("/api/health").json()["status"] == "ok"


def test_engine_failure_is_a_json_500(client, monkeypatch):
    from kinetic_jax.dashboard import _service

    def boom(book, **kwargs):
        raise RuntimeError("XLA ran out of something\nlong internal details")

    monkeypatch.setattr(_service.kj, "portfolio_margin", boom)
    monkeypatch.setattr(_service.kj, "margin_with_losses", boom)
    r = client.post("/api/margin", json=small_book())
    assert r.status_code == 500
    err = r.json()["error"]
    assert "RuntimeError" in err["message"] and "long internal" not in err["message"]
    assert "Traceback" not in r.text


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------
def edited_book() -> dict:
    book = small_book()
    book["hierarchy"][node_index(book, "crypto")]["rho"] = 0.8
    book["clusters"][0]["loading"] = 0.75
    book["addons"]["liquidity"] = False
    book["model"]["seed"] = 7
    book["positions"][0]["quantity"] = 1234.0
    book["positions"].pop()
    return book


def test_state_persists_across_a_restart(state_path):
    with local_client(create_app(None, state_path)) as c:
        first = c.get("/api/state").json()
        assert first["saved_at"] is None and first["source"]["path"] == "reference"
        assert first["book"] == kj.book_to_dict(kj.load_book(REFERENCE))
        saved = c.put("/api/state", json={"book": edited_book(), "ui": {"auto": False, "bins": 30}})
        assert saved.status_code == 200, saved.text
        assert saved.json()["saved_at"]
    assert state_path.exists()
    assert not [p for p in state_path.parent.iterdir() if p.name.endswith(".tmp")]
    # A new app (a restarted server) on the same state file.
    with local_client(create_app(None, state_path)) as c:
        again = c.get("/api/state").json()
        assert again["book"] == kj.book_to_dict(kj.parse_book(edited_book()))
        assert again["ui"] == {"auto": False, "bins": 30}
        export = c.get("/api/export")
        assert kj.book_to_dict(kj.loads_book(export.text)) == again["book"]
        # Reset goes back to the source (the reference book), and is saved too.
        reset = c.post("/api/state/reset", headers=JSON).json()
        assert reset["book"] == kj.book_to_dict(kj.load_book(REFERENCE))
    with local_client(create_app(None, state_path)) as c:
        assert c.get("/api/state").json()["book"] == reset["book"]


def test_a_given_book_file_replaces_the_state_unless_it_is_the_same_file(tmp_path, state_path):
    path = tmp_path / "mine.toml"
    path.write_bytes(REFERENCE.read_bytes())
    with local_client(create_app(path, state_path)) as c:
        assert c.get("/api/state").json()["source"]["path"] == str(path)
        assert c.put("/api/state", json={"book": edited_book()}).status_code == 200
    with local_client(create_app(path, state_path)) as c:  # same, unchanged file: edits kept
        assert c.get("/api/state").json()["book"]["model"]["seed"] == 7
    path.write_text(REFERENCE.read_text() + "\n# changed\n")
    with local_client(create_app(path, state_path)) as c:  # the file changed: it wins
        assert c.get("/api/state").json()["book"]["model"]["seed"] == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nconfidence = 2\n')
    with pytest.raises(kj.BookError, match="model.confidence"):
        create_app(bad, state_path)


def test_failed_write_leaves_the_previous_state_intact(client, state_path, monkeypatch):
    first = client.put("/api/state", json={"book": small_book(), "ui": {"bins": 10}})
    assert first.status_code == 200
    before = state_path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module.os, "replace", failing_replace)
    r = client.put("/api/state", json={"book": edited_book(), "ui": {"bins": 99}})
    assert r.status_code == 500
    assert "No space left" in r.json()["error"]["detail"]
    assert state_path.read_bytes() == before
    assert [p.name for p in state_path.parent.iterdir()] == [state_path.name]  # no temp left
    monkeypatch.undo()
    # The server keeps serving the last saved state, and a later save works.
    assert client.get("/api/state").json()["ui"] == {"bins": 10}
    assert client.put("/api/state", json={"book": edited_book()}).status_code == 200


def test_crash_mid_write_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "s.json"
    state_module.atomic_write_bytes(target, b'{"old": true}')

    real_fsync = os.fsync

    def crash(fd):  # the process "dies" after writing part of the temp file
        raise KeyboardInterrupt

    monkeypatch.setattr(state_module.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        state_module.atomic_write_bytes(target, b'{"new": true, "padding": "' + b"x" * 10000)
    monkeypatch.setattr(state_module.os, "fsync", real_fsync)
    assert target.read_bytes() == b'{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_corrupt_state_is_set_aside(state_path):
    state_path.parent.mkdir(parents=True)
    state_path.write_text('{"version": 1, "book": {"contracts": [{"id": 1}]}}')
    with local_client(create_app(None, state_path)) as c:
        assert c.get("/api/state").json()["source"]["path"] == "reference"
    aside = [p for p in state_path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and "contracts" in aside[0].read_text()


@pytest.mark.parametrize("field", ['"source": "reference"', '"source": ["a"]',
                                   '"source": {"path": 3}', '"saved_at": {"t": 1}'])
def test_state_with_a_malformed_field_is_set_aside(state_path, field):
    state_path.parent.mkdir(parents=True)
    state = {"version": 1, "book": small_book()}
    text = json.dumps(state)[:-1] + ", " + field + "}"
    state_path.write_text(text)
    with local_client(create_app(None, state_path)) as c:
        assert c.get("/api/state").json()["source"]["path"] == "reference"
    aside = [p for p in state_path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_text() == text


def test_files_set_aside_in_one_second_are_all_kept(state_path, monkeypatch):
    real = state_module._dt

    class Frozen(real.datetime):  # every file is set aside in one second
        @classmethod
        def now(cls, tz=None):
            return real.datetime(2026, 12, 3, 16, 4, 40, tzinfo=tz)

    monkeypatch.setattr(state_module, "_dt", types.SimpleNamespace(datetime=Frozen, UTC=real.UTC))
    state_path.parent.mkdir(parents=True)
    texts = ['{"version": 2}', "{not json", '{"version": 1}']
    for text in texts:
        state_path.write_text(text)
        assert state_module.StateStore(state_path).load() is None
    aside = sorted(p.name for p in state_path.parent.iterdir() if ".corrupt-" in p.name)
    assert len(aside) == 3 and aside[1] == aside[0] + "-2" and aside[2] == aside[0] + "-3"
    assert sorted(state_path.parent.joinpath(a).read_text() for a in aside) == sorted(texts)


# ---------------------------------------------------------------------------
# TOML export / import
# ---------------------------------------------------------------------------
def test_toml_export_import_round_trip(client):
    book = edited_book()
    exported = client.post("/api/export", json=book)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/toml")
    assert "attachment" in exported.headers["content-disposition"]
    parsed = kj.loads_book(exported.text)
    assert kj.book_to_dict(parsed) == kj.book_to_dict(kj.parse_book(book))
    imported = client.post("/api/import", content=exported.content,
                           headers={"Content-Type": "application/toml"})
    assert imported.status_code == 200
    assert imported.json()["book"] == kj.book_to_dict(parsed)
    # The reference file itself imports as the reference book.
    ref = client.post("/api/import", content=REFERENCE.read_bytes(), headers=TOML)
    assert ref.json()["book"] == kj.book_to_dict(kj.load_book(REFERENCE))


def test_import_validates(client):
    assert_error(client.post("/api/import", content=b"[model\nseed = 1", headers=TOML), 400, "book")
    bad = REFERENCE.read_text().replace("price = 0.55", "price = 1.55", 1)
    r = client.post("/api/import", content=bad.encode(), headers=TOML)
    assert_error(r, 422, "(id 'BTC-100K-DEC').price")
    many = REFERENCE.read_text().replace("scenarios = 131072", "scenarios = 4194304")
    assert_error(client.post("/api/import", content=many.encode(), headers=TOML), 422,
                 "model.scenarios")
    assert_error(client.post("/api/export", json={"contracts": [{"id": "x"}]}), 422,
                 "contracts[0]")


def test_reference_endpoint(client):
    assert client.get("/api/reference").json()["book"] == kj.book_to_dict(kj.load_book(REFERENCE))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def test_cli_dashboard_input_errors(tmp_path, capsys):
    from kinetic_jax._cli import main

    assert main(["dashboard", str(tmp_path / "missing.toml"), "--state",
                 str(tmp_path / "s.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["dashboard", "--port", "0", "--state", str(tmp_path / "s.json")]) == 2
    assert "--port" in capsys.readouterr().err

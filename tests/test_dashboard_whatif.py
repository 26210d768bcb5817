"""``POST /api/what-if`` (kinetic_jax/dashboard/_whatif.py): the figures equal
/api/margin (and kinetic_jax.portfolio_margin) of the traded book, the book's
simulation is reused across what-ifs, new contracts are accepted, bad trades are
JSON field errors with a path, and the same-origin rules apply."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_dashboard_api import JSON, assert_error, local_client, small_book  # noqa: E402

import kinetic_jax as kj  # noqa: E402
from kinetic_jax.dashboard import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    state = tmp_path_factory.mktemp("state") / "dashboard.json"
    with local_client(create_app(None, state)) as c:
        yield c


def traded(book: dict, trades: list[dict], new: list[dict] = ()) -> dict:
    out = copy.deepcopy(book)
    out["contracts"] += list(new)
    for t in trades:
        out["positions"].append({"contract": t["contract"], "quantity": t["quantity"]})
    return out


def test_what_if_equals_the_margin_of_the_traded_book(client):
    book = small_book()
    book["model"]["sampler"] = "plain"  # there a what-if equals the full call exactly
    trades = [{"contract": "BTC-100K-DEC", "quantity": 500},
              {"contract": "PRES-2028-B", "quantity": -3000},
              {"contract": "BTC-100K-DEC", "quantity": 100}]
    r = client.post("/api/what-if", json={"book": book, "trades": trades}, headers=JSON)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["timing"]["session"] == "opened"
    after = kj.portfolio_margin(kj.parse_book(traded(book, trades)))
    before = kj.portfolio_margin(kj.parse_book(book))
    w = got["what_if"]
    assert w["margin_after"] == pytest.approx(after.margin, rel=1e-5)
    assert w["margin_before"] == pytest.approx(before.margin, rel=1e-6)
    assert w["incremental"] == pytest.approx(after.margin - before.margin, abs=0.05)
    assert (w["binding_before"], w["binding_after"]) == (before.binding, after.binding)
    assert w["trades"] == {"BTC-100K-DEC": 600.0, "PRES-2028-B": -3000.0}
    assert got["report"]["worst_case_loss"] == pytest.approx(after.worst_case_loss, rel=1e-6)
    margin = client.post("/api/margin?sensitivities=false&histogram=false",
                         json=traded(book, trades), headers=JSON).json()["report"]
    assert w["margin_after"] == pytest.approx(margin["margin"], rel=1e-5)
    # The same book again: the session (its simulation) is reused.
    again = client.post("/api/what-if", json={"book": book, "trades": trades[:1]},
                        headers=JSON).json()
    assert again["timing"]["session"] == "reused"


def test_what_if_with_a_new_contract(client):
    book = small_book()
    book["model"]["sampler"] = "plain"  # there a what-if equals the full call exactly
    new = [{"id": "NEW-GAME", "cluster": "Sports", "type": "binary", "price": 0.4},
           {"id": "NEW-PARLAY", "cluster": "Parlays", "type": "parlay", "price": 0.2,
            "legs": ["NEW-GAME", "BTC-100K-DEC"]}]
    trades = [{"contract": "NEW-PARLAY", "quantity": -2000}]
    r = client.post("/api/what-if", json={"book": book, "trades": trades,
                                          "new_contracts": new}, headers=JSON)
    assert r.status_code == 200, r.text
    after = kj.portfolio_margin(kj.parse_book(traded(book, trades, new)))
    assert r.json()["what_if"]["margin_after"] == pytest.approx(after.margin, rel=1e-5)


@pytest.mark.parametrize("body, status, field, path", [
    ({"book": "BOOK", "trades": [{"contract": "NOPE", "quantity": 1}]}, 422,
     "trades[0].contract", ["trades", 0, "contract"]),
    ({"book": "BOOK", "trades": [{"contract": "NBA-LAL", "quantity": "ten"}]}, 422,
     "trades[0].quantity", ["trades", 0, "quantity"]),
    ({"book": "BOOK", "trades": [{"contract": "NBA-LAL", "quantity": True}]}, 422,
     "trades[0].quantity", ["trades", 0, "quantity"]),
    ({"book": "BOOK", "trades": [{"contract": "NBA-LAL", "quantity": 1e16}]}, 422,
     "trades[0].quantity", ["trades", 0, "quantity"]),
    ({"book": "BOOK", "trades": [{"contract": "NBA-LAL", "qty": 1}]}, 422,
     "trades[0].qty", ["trades", 0, "qty"]),
    ({"book": "BOOK", "trades": {"NBA-LAL": 1}}, 422, "trades", ["trades"]),
    ({"book": "BOOK"}, 422, "trades", ["trades"]),
    ({"book": "BOOK", "trades": [], "extra": 1}, 422, "extra", ["extra"]),
    ({"book": "BOOK", "trades": [], "new_contracts": [
        {"id": "X", "cluster": "Nowhere", "type": "binary", "price": 0.5}]}, 422,
     "new_contracts[0]", ["new_contracts", 0, "cluster"]),
    ({"book": "BADPRICE", "trades": []}, 422, "book.contracts[0]",
     ["book", "contracts", 0, "price"]),
    # Trades that pass one by one but not together: the trade that crosses the
    # limit, or (a rule on the traded book) the trades, with the book's field in
    # the message; an event rule broken by a new contract names the event.
    ({"book": "BOOK", "trades": [{"contract": "NBA-LAL", "quantity": 9e14},
                                 {"contract": "NBA-LAL", "quantity": 9e14}]}, 422,
     "trades[1].quantity", ["trades", 1, "quantity"]),
    ({"book": "BOOK", "trades": [{"contract": "PRES-2028-A", "quantity": -9e14},
                                 {"contract": "PRES-2028-B", "quantity": -9e14}]}, 422,
     "trades (positions[", ["trades"]),
    ({"book": "BOOK", "trades": [], "new_contracts": [
        {"id": "PRES-2028-X", "cluster": "Election", "type": "outcome", "event": "PRES-2028",
         "outcome": "X", "price": 0.5}]}, 422,
     "new_contracts (contracts (event 'PRES-2028'))", ["new_contracts"]),
])
def test_bad_what_ifs_are_field_errors(client, body, status, field, path):
    body = copy.deepcopy(body)
    if body.get("book") == "BOOK":
        body["book"] = small_book()
    elif body.get("book") == "BADPRICE":
        body["book"] = small_book()
        body["book"]["contracts"][0]["price"] = 1.5
    r = client.post("/api/what-if", json=body, headers=JSON)
    assert_error(r, status, field)
    assert r.json()["error"]["path"] == path
    assert r.json()["error"].get("event") == ("PRES-2028" if "event" in field else None)


def test_what_if_follows_the_same_origin_rules(client):
    body = {"book": small_book(), "trades": []}
    r = client.post("/api/what-if", json=body,
                    headers={**JSON, "Origin": "http://evil.example"})
    assert r.status_code == 403
    r = client.post("/api/what-if", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/api/what-if", content=b"{not json", headers=JSON)
    assert_error(r, 400, "book")

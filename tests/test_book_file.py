"""Book files (SPEC.md §3): TOML and JSON decoding, syntax and file errors, and
round trips. Semantic validation is in test_validation.py."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings, strategies as st

import kinetic_jax._book_file as book_file
from kinetic_jax import (
    Book,
    BookError,
    book_to_dict,
    default_hierarchy,
    load_book,
    loads_book,
    parse_book,
    portfolio_margin,
)

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"

SMALL_TOML = """\
[model]
scenarios = 4096
seed = 3

[[contracts]]
id = "G1"
cluster = "Sports"
type = "binary"
price = 0.4

[[contracts]]
id = "G2"
cluster = "Sports"
type = "binary"
price = 0.5

[[positions]]
contract = "G1"
quantity = 100
"""

# A book using every optional feature: its own hierarchy (with the root's rho),
# open interest, separate probabilities, overround, every add-on setting.
FULL = {
    "model": {"confidence": 0.975, "scenarios": 8192, "seed": 11, "ladder_tolerance": 0.01,
              "outcome_overround": 1.02},
    "addons": {"mc_error": False, "mc_error_z": 3.0, "liquidity": True,
               "liquidity_threshold": 0.2, "liquidity_rate": 0.5},
    "hierarchy": [
        {"node": "root", "rho": 0.1},
        {"node": "risk", "parent": "root", "rho": 0.3},
        {"node": "crypto", "parent": "risk", "rho": 0.7},
    ],
    "clusters": [
        {"name": "BTC", "parent": "crypto", "loading": 0.8},
        {"name": "ETH", "parent": "crypto", "loading": 0.75},
        {"name": "Vote", "parent": "root", "loading": 0.0},
        {"name": "Games", "parent": "risk", "loading": 0.2},
    ],
    "contracts": [
        {"id": "BTC-1", "cluster": "BTC", "type": "above", "event": "BTC-E", "threshold": 100000,
         "price": 0.5, "open_interest": 20000.0},
        {"id": "BTC-2", "cluster": "BTC", "type": "below", "event": "BTC-E", "threshold": 90000.5,
         "price": 0.25, "probability": 0.3},
        {"id": "ETH-1", "cluster": "ETH", "type": "above", "threshold": 4000, "price": 0.45},
        {"id": "V-A", "cluster": "Vote", "type": "outcome", "event": "V", "outcome": "A",
         "price": 0.6},
        {"id": "V-B", "cluster": "Vote", "type": "outcome", "event": "V", "outcome": "B",
         "price": 0.41},
        {"id": "G", "cluster": "Games", "type": "binary", "price": 0.35},
        {"id": "P", "cluster": "Games", "type": "parlay", "legs": ["G", "ETH-1", "V-A"],
         "price": 0.07},
    ],
    "positions": [
        {"contract": "BTC-1", "quantity": 1500},
        {"contract": "BTC-2", "quantity": -250.5},
        {"contract": "V-A", "quantity": -800},
        {"contract": "P", "quantity": 300},
        {"contract": "BTC-1", "quantity": -500},
    ],
}


def _error(path_or_text, **kwargs) -> BookError:
    with pytest.raises(BookError) as info:
        if isinstance(path_or_text, Path):
            load_book(path_or_text)
        else:
            loads_book(path_or_text, **kwargs)
    return info.value


# ---- reading files ----------------------------------------------------------------


def test_reference_book_loads():
    raw = tomllib.loads(REFERENCE.read_text())
    book = load_book(REFERENCE)
    assert [c.id for c in book.contracts] == [c["id"] for c in raw["contracts"]]
    assert [(p.contract, p.quantity) for p in book.positions] == [
        (p["contract"], p["quantity"]) for p in raw["positions"]]
    assert "hierarchy" not in raw
    assert book.hierarchy == default_hierarchy()  # a book without [[hierarchy]]
    for key, value in raw.get("model", {}).items():
        assert getattr(book.settings, key) == value
    for c, entry in zip(book.contracts, raw["contracts"]):
        for key, value in entry.items():
            assert getattr(c, key) == (tuple(value) if key == "legs" else value)


def test_load_accepts_str_and_pathlike(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(SMALL_TOML)
    assert load_book(path) == load_book(str(path)) == loads_book(SMALL_TOML)
    assert loads_book(SMALL_TOML.encode()) == loads_book(SMALL_TOML)


def test_empty_toml_is_an_empty_book():
    book = loads_book("")
    assert book.contracts == () and book.positions == ()
    assert book.hierarchy == default_hierarchy()


@pytest.mark.parametrize("name", ["b.json", "b.JSON", "b.Json"])
def test_json_by_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text(json.dumps(tomllib.loads(SMALL_TOML)))
    assert load_book(path) == loads_book(SMALL_TOML)


@pytest.mark.parametrize("name", ["b.toml", "b.txt", "book"])
def test_anything_else_is_toml(tmp_path, name):
    path = tmp_path / name
    path.write_text(SMALL_TOML)
    assert load_book(path) == loads_book(SMALL_TOML)
    path.write_text(json.dumps(tomllib.loads(SMALL_TOML)))
    err = _error(path)
    assert err.field == "book"
    assert f"{path} is not valid TOML" in err.detail


# ---- TOML and JSON give the same book and the same report ---------------------------


def test_toml_and_json_give_the_same_book_and_report(tmp_path):
    text = REFERENCE.read_text()
    (tmp_path / "reference.toml").write_text(text)
    (tmp_path / "reference.json").write_text(json.dumps(tomllib.loads(text)))
    from_toml = load_book(tmp_path / "reference.toml")
    from_json = load_book(tmp_path / "reference.json")
    assert from_toml == from_json
    a = portfolio_margin(from_toml, scenarios=4096).to_dict()
    b = portfolio_margin(from_json, scenarios=4096).to_dict()
    assert a == b
    assert a["scenarios"] == 4096 and a["margin"] > 0


def test_toml_and_json_of_a_full_book_agree(tmp_path):
    (tmp_path / "full.toml").write_text(tomli_w.dumps(FULL))
    (tmp_path / "full.json").write_text(json.dumps(FULL))
    book = parse_book(FULL)
    assert load_book(tmp_path / "full.toml") == load_book(tmp_path / "full.json") == book
    assert book.hierarchy.node_names == ("root", "risk", "crypto")
    assert book.hierarchy.rho.tolist() == [0.1, 0.3, 0.7]
    assert book.settings.mc_error is False and book.settings.liquidity_rate == 0.5
    assert book.contract("BTC-2").probability == 0.3


# ---- book_to_dict round-trips -------------------------------------------------------


@pytest.mark.parametrize("source", ["reference", "full", "small", "empty"])
def test_book_to_dict_round_trips(source):
    book = {
        "reference": lambda: load_book(REFERENCE),
        "full": lambda: parse_book(FULL),
        "small": lambda: loads_book(SMALL_TOML),
        "empty": lambda: loads_book(""),
    }[source]()
    data = book_to_dict(book)
    assert parse_book(data) == book
    assert loads_book(json.dumps(data), json_format=True) == book
    assert loads_book(tomli_w.dumps(data)) == book
    assert book_to_dict(parse_book(data)) == data


def test_book_to_dict_has_the_spec_layout():
    data = book_to_dict(parse_book(FULL))
    assert set(data) <= {"model", "addons", "hierarchy", "clusters", "contracts", "positions"}
    assert data["model"]["confidence"] == 0.975
    assert data["clusters"][1] == {"name": "ETH", "parent": "crypto", "loading": 0.75}
    assert data["hierarchy"][0] == {"node": "root", "rho": 0.1}  # the root has no parent
    assert data["contracts"][6] == {"id": "P", "cluster": "Games", "type": "parlay",
                                    "price": 0.07, "legs": ["G", "ETH-1", "V-A"]}
    assert data["contracts"][5] == {"id": "G", "cluster": "Games", "type": "binary",
                                    "price": 0.35}
    assert data["positions"][-1] == {"contract": "BTC-1", "quantity": -500}


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
prices = st.floats(min_value=1e-6, max_value=1 - 1e-6)


@settings(max_examples=40, deadline=None)
@given(p=st.lists(prices, min_size=3, max_size=3), q=st.lists(finite, min_size=3, max_size=3),
       threshold=finite, loading=st.floats(min_value=0, max_value=0.999999),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip_keeps_every_number_exactly(p, q, threshold, loading, seed):
    data = {
        "model": {"seed": seed},
        "hierarchy": [],
        "clusters": [{"name": "X", "parent": "root", "loading": loading}],
        "contracts": [
            {"id": "A", "cluster": "X", "type": "binary", "price": p[0]},
            {"id": "B", "cluster": "X", "type": "above", "threshold": threshold, "price": p[1]},
            {"id": "P", "cluster": "X", "type": "parlay", "legs": ["A", "B"], "price": p[2]},
        ],
        "positions": [{"contract": c, "quantity": x} for c, x in zip("ABP", q)],
    }
    book = parse_book(data)
    for text, fmt in ((json.dumps(book_to_dict(book)), True),
                      (tomli_w.dumps(book_to_dict(book)), False)):
        again = loads_book(text, json_format=fmt)
        assert again == book
        assert [c.price for c in again.contracts] == p
        assert [x.quantity for x in again.positions] == q


# ---- non-finite numbers as the decoders give them ------------------------------------


@pytest.mark.parametrize("literal, shown", [("nan", "nan"), ("inf", "inf"), ("+inf", "inf"),
                                            ("-inf", "-inf"), ("-nan", "nan")])
@pytest.mark.parametrize("table, key, field", [
    ("contracts", "price", "contracts[0] (id 'G1').price"),
    ("positions", "quantity", "positions[0] (contract 'G1').quantity"),
])
def test_toml_non_finite(literal, shown, table, key, field):
    text = SMALL_TOML.replace(
        "price = 0.4" if key == "price" else "quantity = 100", f"{key} = {literal}")
    err = _error(text)
    assert err.field == field
    assert err.detail == f"{shown} is not finite"


@pytest.mark.parametrize("literal", ["nan", "inf", "-inf"])
def test_toml_non_finite_model_and_hierarchy(literal):
    shown = literal.lstrip("+")
    err = _error(f"[model]\nconfidence = {literal}\n")
    assert (err.field, err.detail) == ("model.confidence", f"{shown} is not finite")
    hier = ('[[hierarchy]]\nnode = "n"\nparent = "root"\nrho = {rho}\n'
            '[[clusters]]\nname = "C"\nparent = "n"\nloading = {loading}\n')
    err = _error(hier.format(rho=literal, loading=0.5))
    assert (err.field, err.detail) == ("hierarchy[0] (node 'n').rho", f"{shown} is not finite")
    err = _error(hier.format(rho=0.5, loading=literal))
    assert (err.field, err.detail) == ("clusters[0] (cluster 'C').loading",
                                       f"{shown} is not finite")


@pytest.mark.parametrize("literal, shown", [("NaN", "nan"), ("Infinity", "inf"),
                                            ("-Infinity", "-inf")])
def test_json_non_finite(literal, shown):
    book = tomllib.loads(SMALL_TOML)
    text = json.dumps(book).replace('"price": 0.5', f'"price": {literal}')
    err = _error(text, json_format=True)
    assert (err.field, err.detail) == ("contracts[1] (id 'G2').price", f"{shown} is not finite")
    text = json.dumps(book).replace('"quantity": 100', f'"quantity": {literal}')
    err = _error(text, json_format=True)
    assert err.field == "positions[0] (contract 'G1').quantity"
    assert err.detail == f"{shown} is not finite"
    err = _error(f'{{"model": {{"seed": {literal}}}}}', json_format=True)
    assert (err.field, err.detail) == ("model.seed", f"{shown} is not an integer")


def test_json_overflowing_number_is_not_finite():
    err = _error('{"contracts": [{"id": "G", "cluster": "Sports", "type": "binary", '
                 '"price": 0.5}], "positions": [{"contract": "G", "quantity": 1e400}]}',
                 json_format=True)
    assert (err.field, err.detail) == ("positions[0] (contract 'G').quantity", "inf is not finite")


# ---- syntax errors ---------------------------------------------------------------------


def test_bad_toml_syntax(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nscenarios = 4096\nseed = \n')
    err = _error(path)
    assert err.field == "book"
    assert err.detail.startswith(f"{path} is not valid TOML: ")
    assert "line 3" in err.detail
    assert str(err).startswith("book: ")


def test_bad_toml_string_is_named_book():
    err = _error("[[contracts]\n")
    assert err.field == "book" and err.detail.startswith("book is not valid TOML: ")


@pytest.mark.parametrize("text", ['{"model": {"seed": 1}', '{"model": }', "[model]\nseed = 1\n",
                                  '{"model": {"seed": 01}}', ""])
def test_bad_json_syntax(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    err = _error(path)
    assert err.field == "book"
    assert err.detail.startswith(f"{path} is not valid JSON: ")
    assert "line 1" in err.detail


@pytest.mark.parametrize("text", ["seed = 1\nseed = 2\n",
                                  "[model]\nseed = 1\n[model]\nscenarios = 4096\n"])
def test_toml_duplicate_keys(text):
    err = _error(text)
    assert err.field == "book"
    assert "is not valid TOML" in err.detail


def test_json_duplicate_key_at_top_level():
    err = _error('{"model": {"seed": 1}, "model": {"seed": 2}}', json_format=True)
    assert err.field == "book"
    assert err.detail == "key 'model' given twice: {'seed': 1}, then {'seed': 2}"


def test_json_duplicate_key_in_a_contract_names_the_contract(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"contracts": [{"id": "G", "cluster": "Sports", "type": "binary", '
                    '"price": 0.5, "price": 0.6}]}')
    err = _error(path)
    assert err.field == "book"
    assert err.detail == "key 'price' given twice (in the object with id 'G'): 0.5, then 0.6"


def test_json_duplicate_key_in_a_position_and_a_node():
    err = _error('{"positions": [{"contract": "G", "quantity": 1, "quantity": 2}]}',
                 json_format=True)
    assert err.detail == ("key 'quantity' given twice (in the object with contract 'G'): "
                          "1, then 2")
    err = _error('{"hierarchy": [{"node": "n", "rho": 0.1, "rho": 0.2}]}', json_format=True)
    assert err.detail == "key 'rho' given twice (in the object with node 'n'): 0.1, then 0.2"


@pytest.mark.parametrize("text, shown", [("[1, 2]", "[1, 2]"), ('"book"', "'book'"),
                                         ("42", "42"), ("null", "None")])
def test_json_top_level_must_be_an_object(text, shown):
    err = _error(text, json_format=True)
    assert (err.field, err.detail) == ("book", f"expected a table, got {shown}")


# ---- unreadable files ----------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    err = _error(path)
    assert err.field == "book"
    assert err.detail == f"cannot read {str(path)!r}: No such file or directory"


def test_directory_is_unreadable(tmp_path):
    err = _error(tmp_path)
    assert err.field == "book"
    assert err.detail.startswith(f"cannot read {str(tmp_path)!r}: ")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_permissions(tmp_path):
    path = tmp_path / "secret.toml"
    path.write_text(SMALL_TOML)
    path.chmod(0)
    try:
        err = _error(path)
    finally:
        path.chmod(0o600)
    assert err.detail == f"cannot read {str(path)!r}: Permission denied"


def test_read_error_from_the_os(tmp_path, monkeypatch):
    # The same path as a permission error, for runs as root.
    path = tmp_path / "secret.toml"
    path.write_text(SMALL_TOML)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(book_file, "open", denied, raising=False)
    err = _error(path)
    assert (err.field, err.detail) == ("book", f"cannot read {str(path)!r}: Permission denied")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[model]\n# caf\xe9\nseed = 1\n'.encode("latin-1"))
    err = _error(path)
    assert err.field == "book"
    assert err.detail.startswith(f"{path} is not UTF-8 text")


def test_file_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(book_file, "MAX_BOOK_BYTES", 100)
    path = tmp_path / "big.toml"
    path.write_text(SMALL_TOML)
    size = path.stat().st_size
    err = _error(path)
    assert err.field == "book"
    assert err.detail == f"{path} is {size} bytes, over the 100 limit"


def test_book_is_a_frozen_value():
    book = loads_book(SMALL_TOML)
    assert isinstance(book, Book)
    with pytest.raises(AttributeError):
        book.positions = ()  # type: ignore[misc]


@pytest.mark.parametrize("text, field", [
    ('{"contracts": [{"id": "\\ud800"}]}', "contracts[0].id"),
    ('{"model": {"\\udfff": 1}}', "model"),
    ('{"hierarchy": [{"node": "a\\ud83d", "parent": "root", "rho": 0.1}]}', "hierarchy[0].node"),
])
def test_a_lone_surrogate_in_json_names_its_field(text, field, tmp_path):
    """JSON's \\uD800-\\uDFFF escapes outside a pair decode to a lone surrogate,
    not Unicode text: named before the book is built (it could not be printed or
    written back as UTF-8). A pair (an emoji) is text."""
    with pytest.raises(BookError, match=rf"^{field.replace('[', '.').replace(']', '.')}: .*lone "
                                        r"surrogate"):
        loads_book(text, json_format=True)
    path = tmp_path / "book.json"
    path.write_text(text)
    with pytest.raises(BookError, match="lone surrogate"):
        load_book(path)
    assert book_file.check_unicode({"id": "\ud83d\ude00".encode("utf-16", "surrogatepass")
                                    .decode("utf-16")}) is None


@pytest.mark.parametrize("digits", [301, 4301, 60_000])
@pytest.mark.parametrize("sign", ["", "-", "+"])
def test_toml_integer_over_the_digit_limit_names_its_field(digits, sign):
    """A TOML integer literal over MAX_INT_DIGITS digits is named with its field,
    as in JSON, also beyond Python's 4,300-digit conversion limit (which tomllib
    would hit); underscores do not count; the same digits in a string, a comment
    or a float's fraction are not integers."""
    text = REFERENCE.read_text()
    line = 'contract = "BTC-90K-DEC"\nquantity = 4000'
    assert line in text
    long = sign + "9" * digits
    with pytest.raises(BookError, match=rf"an integer of {digits:,} digits is out of range"
                       ) as info:
        loads_book(text.replace(line, f'contract = "BTC-90K-DEC"\nquantity = {long}', 1))
    assert info.value.field == "positions[0] (contract 'BTC-90K-DEC').quantity"
    with pytest.raises(BookError, match=rf"^model.seed: an integer of {digits:,} digits"):
        loads_book(text.replace("seed = 0", "seed = " + sign + "_".join("9" * digits), 1))
    kept = text.replace("[model]", f"# {long}\n[model]", 1).replace(
        'id = "BTC-90K-DEC"', f'id = "BTC-{long}"', 1).replace(
        '"BTC-90K-DEC"', f'"BTC-{long}"')
    book = loads_book(kept)
    assert f"BTC-{long}" in {c.id for c in book.contracts}
    # Underscores do not count: 200 digits written with 199 underscores are read.
    spaced = "_".join("1" * 200)
    with pytest.raises(BookError, match=r"^model.seed: (-)?1{200} is outside"):
        loads_book(text.replace("seed = 0", f"seed = {sign}{spaced}", 1))
    hexadecimal = "0x" + "f" * (digits * 5 // 6)  # as many decimal digits, or one more
    with pytest.raises(BookError, match=r"^model.seed: an integer of [0-9,]+ digits is out"):
        loads_book(text.replace("seed = 0", f"seed = {hexadecimal}", 1))
    with pytest.raises(BookError, match=r"^model.scenarios: 1.5 is not an integer"):
        loads_book(text.replace("scenarios = 131072", "scenarios = 1.5" + "0" * digits, 1))


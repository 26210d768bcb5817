"""Book files (SPEC.md §3): TOML, or the same structure as JSON.

[`load_book`][] reads a file and [`parse_book`][] a decoded mapping; both return a
validated [`Book`][] or raise [`BookError`][] naming the field and value. Nothing
is computed from a partly-read book: the whole book is checked first.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from ._book import Book, Contract, Position, Settings, Stress
from ._checks import (
    MAX_INT_DIGITS,
    LongInteger,
    check_size,
    is_number,
    long_integers,
    plain,
)
from ._dates import iso_date
from ._errors import BookError
from ._hierarchy import Cluster, Hierarchy, Node, default_hierarchy
from ._underlyings import LINEAR, Underlying

_TOP = {"model", "addons", "hierarchy", "clusters", "contracts", "positions", "stress",
        "underlyings"}
_MODEL = {"confidence", "scenarios", "seed", "ladder_tolerance", "outcome_overround",
          "stress_addon", "sampler", "horizon_days", "as_of", "pnl_range",
          "pnl_points"}
_ADDONS = {"mc_error", "mc_error_z", "liquidity", "liquidity_threshold", "liquidity_rate"}
_CONTRACT = {"id", "cluster", "type", "price", "event", "threshold", "outcome", "legs",
             "open_interest", "probability", "resolves", "resolves_in", "underlying", "strike",
             "expiry", "expiry_in"}
MAX_BOOK_BYTES = 16 * 1024 * 1024
# A book nests 4 deep ({"contracts": [{"legs": [...]}]}); deeper text is refused
# before it reaches the decoders (which recurse once per level).
MAX_NESTING = 32


def _table(field: str, value: Any) -> Mapping:
    if not isinstance(value, Mapping):
        raise BookError(field, f"expected a table, got {value!r}")
    return value


def _array(field: str, value: Any) -> list:
    if not isinstance(value, list):
        raise BookError(field, f"expected an array of tables, got {value!r}")
    return value


def _keys(field: str, table: Mapping, allowed: set[str], required: set[str] = frozenset()):
    for key in table:
        if key not in allowed:
            raise BookError(f"{field}.{key}",
                            f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in table:
            raise BookError(f"{field}.{key}", "missing")


def _string(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BookError(field, f"{value!r} is not a non-empty string")
    return value


def _parse_int(text: str) -> int | LongInteger:
    return LongInteger.of_text(text) if len(text.lstrip("+-")) > MAX_INT_DIGITS else int(text)


def _num(field: str, value: Any) -> float:
    check_size(field, value)
    if not is_number(value):
        raise BookError(field, f"{value!r} is not a number")
    value = plain(value)
    if not math.isfinite(value):
        raise BookError(field, f"{value!r} is not finite")
    return value


_SKIP_JSON = re.compile(r'"(?:[^"\\]|\\.)*"')
_SKIP_TOML = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"'
                        r"|'[^'\n]*'|#[^\n]*")
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str, *, toml: bool = False) -> int:
    """The deepest bracket nesting of JSON (or TOML) `text`, strings and
    comments left out (an unbalanced text reads as deeper, never shallower)."""
    depth = deepest = 0
    for m in _BRACKET.finditer((_SKIP_TOML if toml else _SKIP_JSON).sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


# An integer literal outside TOML's strings and comments (not a float's part).
_TOML_TOKENS = re.compile(f"({_SKIP_TOML.pattern})"
                          rf"|(?<![\w.:+-])([+-]?\d[\d_]{{{MAX_INT_DIGITS},}})(?![\w.:])")
_MARK = "e-7777777777"  # the exponent of the floats that stand for long integers


def _toml_loads(text: str) -> dict:
    """`tomllib.loads`, with every integer literal over MAX_INT_DIGITS digits
    decoded as a `LongInteger` (as JSON's are), so that the field holding it is
    named; tomllib would convert it, and Python refuses over 4,300 digits."""
    if _MARK in text:  # a text that holds the marker is left as it is
        return tomllib.loads(text)
    longs: list[LongInteger] = []

    def mark(m: re.Match) -> str:
        long = None if m.group(2) is None else LongInteger.of_text(m.group(2))
        if long is None or long.digits <= MAX_INT_DIGITS:  # a string, a comment, or
            return m.group()  # underscores made it look long
        longs.append(long)
        return f"{len(longs) - 1}.0{_MARK}"

    def parse_float(s: str):
        return longs[int(s.split(".")[0])] if s.endswith(_MARK) else float(s)

    return tomllib.loads(_TOML_TOKENS.sub(mark, text), parse_float=parse_float)


def check_nesting(text: str, *, toml: bool = False, name: str = "book") -> None:
    """Raises BookError if `text` nests deeper than MAX_NESTING."""
    depth = nesting_depth(text, toml=toml)
    if depth > MAX_NESTING:
        raise BookError("book", f"{name} nests {depth} levels deep, over the limit of "
                                f"{MAX_NESTING}")


def parse_book(data: Mapping) -> Book:
    """Builds a validated [`Book`][] from a decoded book file (SPEC.md §3)."""
    data = _table("book", long_integers(data))
    _keys("book", data, _TOP)
    model = _table("model", data.get("model", {}))
    _keys("model", model, _MODEL)
    addons = _table("addons", data.get("addons", {}))
    _keys("addons", addons, _ADDONS)
    for table, values in (("model", model), ("addons", addons)):
        for key, value in values.items():
            check_size(f"{table}.{key}", value)
    settings = Settings(**{**model, **addons})

    has_h, has_c = "hierarchy" in data, "clusters" in data
    if has_h != has_c:
        given, missing = ("hierarchy", "clusters") if has_h else ("clusters", "hierarchy")
        raise BookError(missing, f"missing: a book that gives [[{given}]] must give "
                                 f"[[{missing}]] too (or neither, for the default hierarchy)")
    if has_h:
        nodes = []
        for i, entry in enumerate(_array("hierarchy", data["hierarchy"])):
            f = f"hierarchy[{i}]"
            entry = _table(f, entry)
            _keys(f, entry, {"node", "parent", "rho"}, {"node", "rho"})
            name = _string(f"{f}.node", entry["node"])
            parent = entry.get("parent")
            if parent is not None:
                parent = _string(f"{f} (node {name!r}).parent", parent)
            nodes.append(Node(name, parent, _num(f"{f} (node {name!r}).rho", entry["rho"])))
        clusters = []
        for i, entry in enumerate(_array("clusters", data["clusters"])):
            f = f"clusters[{i}]"
            entry = _table(f, entry)
            _keys(f, entry, {"name", "parent", "loading"}, {"name", "parent", "loading"})
            name = _string(f"{f}.name", entry["name"])
            clusters.append(Cluster(
                name,
                _string(f"{f} (cluster {name!r}).parent", entry["parent"]),
                _num(f"{f} (cluster {name!r}).loading", entry["loading"]),
            ))
        hierarchy = Hierarchy(tuple(nodes), tuple(clusters))
    else:
        hierarchy = default_hierarchy()

    contracts = []
    for i, entry in enumerate(_array("contracts", data.get("contracts", []))):
        f = f"contracts[{i}]"
        entry = _table(f, entry)
        if "id" not in entry:
            raise BookError(f"{f}.id", "missing")
        cid = _string(f"{f}.id", entry["id"])
        f = f"{f} (id {cid!r})"
        on_underlying = "underlying" in entry or entry.get("type") in LINEAR
        _keys(f, entry, _CONTRACT, {"type"} if on_underlying else {"cluster", "type", "price"})
        legs = entry.get("legs")
        if legs is not None:
            if not isinstance(legs, list):
                raise BookError(f"{f}.legs", f"{legs!r} is not an array of contract ids")
            legs = tuple(_string(f"{f}.legs[{j}]", x) for j, x in enumerate(legs))
            if not legs:
                raise BookError(f"{f}.legs", "[] is empty")
        opt_str = {k: _string(f"{f}.{k}", entry[k]) for k in ("event", "outcome", "underlying")
                   if k in entry}
        opt_num = {k: _num(f"{f}.{k}", entry[k])
                   for k in ("threshold", "open_interest", "probability", "resolves_in",
                             "strike", "expiry_in")
                   if k in entry}
        for k in ("resolves", "expiry"):
            if k in entry:
                opt_str[k] = iso_date(f"{f}.{k}", entry[k]).isoformat()
        contracts.append(Contract(
            id=cid,
            cluster=_string(f"{f}.cluster", entry["cluster"]) if "cluster" in entry else None,
            type=_string(f"{f}.type", entry["type"]),
            price=_num(f"{f}.price", entry["price"]) if "price" in entry else None,
            legs=legs or (),
            **opt_str,
            **opt_num,
        ))
    positions = []
    for i, entry in enumerate(_array("positions", data.get("positions", []))):
        f = f"positions[{i}]"
        entry = _table(f, entry)
        _keys(f, entry, {"contract", "quantity"}, {"contract", "quantity"})
        cid = _string(f"{f}.contract", entry["contract"])
        positions.append(Position(cid, _num(f"{f} (contract {cid!r}).quantity",
                                            entry["quantity"])))
    stress = [_stress_entry(i, entry)
              for i, entry in enumerate(_array("stress", data.get("stress", [])))]
    underlyings = []
    for i, entry in enumerate(_array("underlyings", data.get("underlyings", []))):
        f = f"underlyings[{i}]"
        entry = _table(f, entry)
        _keys(f, entry, {"id", "cluster", "spot", "vol", "lot_size"},
              {"id", "cluster", "spot", "vol"})
        uid = _string(f"{f}.id", entry["id"])
        f = f"{f} (id {uid!r})"
        underlyings.append(Underlying(
            uid, _string(f"{f}.cluster", entry["cluster"]), _num(f"{f}.spot", entry["spot"]),
            _num(f"{f}.vol", entry["vol"]),
            _num(f"{f}.lot_size", entry["lot_size"]) if "lot_size" in entry else 1.0))
    return Book(tuple(contracts), tuple(positions), hierarchy, settings, tuple(stress),
                tuple(underlyings))


def _stress_entry(i: int, entry: Any) -> Stress:
    """One ``[[stress]]`` table (SPEC.md §5.2); checked against the book by Book."""
    f = f"stress[{i}]"
    entry = _table(f, entry)
    _keys(f, entry, {"name", "factors", "resolve"}, {"name"})
    name = _string(f"{f}.name", entry["name"])
    f = f"{f} (name {name!r})"
    factors = _table(f"{f}.factors", entry.get("factors", {}))
    resolve = _table(f"{f}.resolve", entry.get("resolve", {}))
    return Stress(
        name,
        tuple((k, _num(f"{f}.factors.{k}", v)) for k, v in factors.items()),
        tuple((k, v) for k, v in resolve.items()),
    )


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            # The hook sees one object, not its path: name it by its id-like key.
            where = next((f" (in the object with {n} {dict(pairs)[n]!r})"
                          for n in ("id", "contract", "node", "name")
                          if n != k and isinstance(dict(pairs).get(n), str)), "")
            raise BookError("book", f"key {k!r} given twice{where}: {out[k]!r}, then {v!r}")
        out[k] = v
    return out


def load_book(path: str | os.PathLike) -> Book:
    """Reads and validates a book file (``.toml`` or ``.json``)."""
    return read_book_file(path)[0]


def read_book_file(path: str | os.PathLike, *, max_bytes: int | None = None
                   ) -> tuple[Book, bytes]:
    """``(book, raw bytes)`` of a book file, refused over `max_bytes` (default
    `MAX_BOOK_BYTES`) before it is read; unreadable files and bad books raise
    [`BookError`][] naming the path."""
    path = os.fspath(path)
    max_bytes = MAX_BOOK_BYTES if max_bytes is None else max_bytes
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise BookError("book", f"{path} is {size} bytes, over the {max_bytes} limit")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise BookError("book", f"cannot read {path!r}: {e.strerror or e}") from None
    return loads_book(raw, json_format=path.lower().endswith(".json"), name=path), raw


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(data, path: str = "") -> None:
    """Raises BookError naming the first string (key or value) of decoded JSON
    `data` that holds a lone surrogate: JSON's ``"\\ud800"`` escape decodes to
    one, which is not Unicode text (it cannot be written as UTF-8: a saved state
    or an exported book holding it could not be written or read back)."""
    stack = [(path, data)]
    while stack:
        where, x = stack.pop()
        if isinstance(x, str):
            if _SURROGATE.search(x):
                raise BookError(where or "book", f"{x!r:.60} holds a lone surrogate "
                                                 "(not Unicode text)")
        elif isinstance(x, dict):
            for k, v in x.items():
                key = f"{where}.{k}" if where else str(k)
                if isinstance(k, str) and _SURROGATE.search(k):
                    raise BookError(where or "book", f"key {k!r:.60} holds a lone surrogate "
                                                     "(not Unicode text)")
                stack.append((key, v))
        elif isinstance(x, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(x))


def _decode(raw: bytes | str, *, json_format: bool, name: str):
    if not isinstance(raw, (bytes, str)):
        raise BookError("book", f"{name} is a {type(raw).__name__}, not text (str or bytes)")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise BookError("book", f"{name} is not UTF-8 text ({e.reason})") from None
    check_nesting(text, toml=not json_format, name=name)
    kind = "JSON" if json_format else "TOML"
    try:
        if json_format:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_int=_parse_int)
        else:
            data = _toml_loads(text)
    except BookError:
        raise
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise BookError("book", f"{name} is not valid {kind}: {e}") from None
    except (ValueError, RecursionError) as e:  # defence: a conversion tomllib makes fails
        raise BookError("book", f"{name} is not valid {kind}: "
                                f"{str(e).split(';')[0] or type(e).__name__}") from None
    if json_format:
        check_unicode(data)
    return data


def loads_json(raw: bytes | str, *, name: str = "book"):
    """Decodes JSON text as the book reader does, refusing with a [`BookError`][]
    what would fail later or hold the decoder: text that is not UTF-8, nesting
    deeper than MAX_NESTING (checked before decoding), a key given twice in one
    object, a lone surrogate (named by its path); an integer of more than
    MAX_INT_DIGITS digits is kept as a `LongInteger`, never converted, for
    [`parse_book`][] to name its field."""
    return _decode(raw, json_format=True, name=name)


def loads_book(raw: bytes | str, *, json_format: bool = False, name: str = "book") -> Book:
    """Parses a book from TOML (or JSON with ``json_format=True``) text."""
    return parse_book(_decode(raw, json_format=json_format, name=name))


def book_to_dict(book: Book) -> dict:
    """The book as a mapping with the structure of SPEC.md §3 (round-trips
    through [`parse_book`][])."""
    s = book.settings
    out: dict = {
        "model": {"confidence": s.confidence, "scenarios": s.scenarios, "seed": s.seed,
                  "ladder_tolerance": s.ladder_tolerance,
                  "outcome_overround": s.outcome_overround, "stress_addon": s.stress_addon,
                  **{k: (list(getattr(s, k)) if k == "pnl_range" else getattr(s, k))
                     for k in ("sampler", "horizon_days", "as_of", "pnl_range", "pnl_points")
                     if getattr(s, k) is not None}},
        "addons": {k: getattr(s, k) for k in sorted(_ADDONS)},
        "hierarchy": [{"node": n.name, **({"parent": n.parent} if n.parent else {}), "rho": n.rho}
                      for n in book.hierarchy.nodes],
        "clusters": [{"name": c.name, "parent": c.parent, "loading": c.loading}
                     for c in book.hierarchy.clusters],
        "contracts": [],
        "positions": [{"contract": p.contract, "quantity": p.quantity} for p in book.positions],
    }
    for c in book.contracts:
        entry = {"id": c.id, "type": c.type}
        if c.underlying is None:
            entry["cluster"] = c.cluster
        if c.price is not None:
            entry["price"] = c.price
        for key in ("event", "threshold", "outcome", "open_interest", "probability", "resolves",
                    "resolves_in", "underlying", "strike", "expiry", "expiry_in"):
            if getattr(c, key) is not None:
                entry[key] = getattr(c, key)
        if c.legs:
            entry["legs"] = list(c.legs)
        out["contracts"].append(entry)
    if book.underlyings:
        out["underlyings"] = [{"id": u.id, "cluster": u.cluster, "spot": u.spot, "vol": u.vol,
                               "lot_size": u.lot_size} for u in book.underlyings]
    if book.stress:
        out["stress"] = [{"name": x.name, "factors": dict(x.factors), "resolve": dict(x.resolve)}
                         for x in book.stress]
    return out

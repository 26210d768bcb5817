"""Input validation of books (SPEC.md §3): every input error names the field and
the value, and nothing is computed from a book that fails validation.

Each case mutates a small valid book (`_book()`, default hierarchy, or
`_book(hierarchy=True)`, its own hierarchy) and checks the exact field path of
the `BookError` plus the value in its message.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kinetic_jax as kj
import kinetic_jax._portfolio as portfolio_module
from kinetic_jax import Book, BookError, parse_book
from kinetic_jax._cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# contracts[i] of _book():
#   0 BTC-100K  above 100000 @ 0.55  event BTC-DEC
#   1 BTC-110K  above 110000 @ 0.33  event BTC-DEC
#   2 BTC-80K-B below  80000 @ 0.09  event BTC-DEC
#   3 PRES-A    outcome A    @ 0.48  event PRES
#   4 PRES-B    outcome B    @ 0.37  event PRES
#   5 NBA-LAL   binary       @ 0.45
#   6 NFL-KC    binary       @ 0.34
#   7 PARLAY    parlay [NBA-LAL, NFL-KC] @ 0.16


def _book(hierarchy: bool = False) -> dict:
    data = {
        "model": {"confidence": 0.99, "scenarios": 4096, "seed": 0},
        "contracts": [
            {"id": "BTC-100K", "cluster": "BTC", "type": "above", "event": "BTC-DEC",
             "threshold": 100000, "price": 0.55},
            {"id": "BTC-110K", "cluster": "BTC", "type": "above", "event": "BTC-DEC",
             "threshold": 110000, "price": 0.33},
            {"id": "BTC-80K-B", "cluster": "BTC", "type": "below", "event": "BTC-DEC",
             "threshold": 80000, "price": 0.09},
            {"id": "PRES-A", "cluster": "Election", "type": "outcome", "event": "PRES",
             "outcome": "A", "price": 0.48},
            {"id": "PRES-B", "cluster": "Election", "type": "outcome", "event": "PRES",
             "outcome": "B", "price": 0.37},
            {"id": "NBA-LAL", "cluster": "Sports", "type": "binary", "price": 0.45},
            {"id": "NFL-KC", "cluster": "Sports", "type": "binary", "price": 0.34},
            {"id": "PARLAY", "cluster": "Parlays", "type": "parlay",
             "legs": ["NBA-LAL", "NFL-KC"], "price": 0.16},
        ],
        "positions": [
            {"contract": "BTC-100K", "quantity": 1000},
            {"contract": "BTC-110K", "quantity": -1000},
            {"contract": "PRES-A", "quantity": -500},
            {"contract": "PARLAY", "quantity": -300},
        ],
    }
    if hierarchy:
        data["hierarchy"] = [
            {"node": "risk", "parent": "root", "rho": 0.35},
            {"node": "crypto", "parent": "risk", "rho": 0.68},
        ]
        data["clusters"] = [
            {"name": "BTC", "parent": "crypto", "loading": 0.9},
            {"name": "Election", "parent": "root", "loading": 0.0},
            {"name": "Sports", "parent": "root", "loading": 0.0},
            {"name": "Parlays", "parent": "root", "loading": 0.0},
        ]
    return data


def _c(i: int, cid: str) -> str:
    return f"contracts[{i}] (id {cid!r})"


# (id, hierarchy?, mutation, expected field, fragments of the message)
CASES = []


def case(name, field, *fragments, hierarchy=False):
    def register(mutate):
        CASES.append(pytest.param(hierarchy, mutate, field, fragments, id=name))
        return mutate
    return register


def _set(path, value):
    """A mutation setting data[path[0]][path[1]]... = value."""
    def mutate(d):
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return mutate


def _del(path):
    def mutate(d):
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return mutate


def _add(**entries):
    def mutate(d):
        for table, value in entries.items():
            d.setdefault(table, []).append(value)
    return mutate


# ---- unknown keys ----------------------------------------------------------
for name, hier, path, field in [
    ("unknown-top", False, ("portfolio",), "book.portfolio"),
    ("unknown-model", False, ("model", "scenario"), "model.scenario"),
    ("unknown-addons", False, ("addons",), "addons.buffer"),
    ("unknown-contract", False, ("contracts", 0, "strik"), _c(0, "BTC-100K") + ".strik"),
    ("unknown-position", False, ("positions", 1, "qty"), "positions[1].qty"),
    ("unknown-hierarchy", True, ("hierarchy", 1, "weight"), "hierarchy[1].weight"),
    ("unknown-cluster-key", True, ("clusters", 2, "beta"), "clusters[2].beta"),
]:
    value = {"mc_error": True, "buffer": 1} if name == "unknown-addons" else 1
    case(name, field, "unknown key", "allowed:", hierarchy=hier)(_set(path, value))

# ---- unknown names -----------------------------------------------------------
case("unknown-cluster", _c(5, "NBA-LAL") + ".cluster", "unknown cluster 'NFL'")(
    _set(("contracts", 5, "cluster"), "NFL"))
case("unknown-cluster-own-hierarchy", _c(0, "BTC-100K") + ".cluster", "unknown cluster 'ETH'",
     hierarchy=True)(_set(("contracts", 0, "cluster"), "ETH"))
case("unknown-position-contract", "positions[2].contract", "unknown contract 'PRES-Z'")(
    _set(("positions", 2, "contract"), "PRES-Z"))
case("unknown-parlay-leg", _c(7, "PARLAY") + ".legs[1]", "unknown contract 'NFL-XX'")(
    _set(("contracts", 7, "legs"), ["NBA-LAL", "NFL-XX"]))
case("unknown-cluster-parent", "clusters[1] (cluster 'Election').parent",
     "unknown node 'politics'", hierarchy=True)(_set(("clusters", 1, "parent"), "politics"))
case("unknown-node-parent", "hierarchy[1] (node 'crypto').parent", "unknown node 'risky'",
     hierarchy=True)(_set(("hierarchy", 1, "parent"), "risky"))

# ---- duplicates ----------------------------------------------------------------
case("duplicate-contract-id", "contracts[1].id", "duplicate contract id 'BTC-100K'",
     "contracts[0]")(_set(("contracts", 1, "id"), "BTC-100K"))
case("duplicate-node", "hierarchy[1] (node 'risk').node", "duplicate node 'risk'",
     hierarchy=True)(_set(("hierarchy", 1, "node"), "risk"))
case("duplicate-cluster", "clusters[3] (cluster 'Sports').name", "duplicate cluster 'Sports'",
     hierarchy=True)(_set(("clusters", 3, "name"), "Sports"))
case("cluster-named-like-node", "clusters[0] (cluster 'crypto').name",
     "'crypto' is already a hierarchy node", hierarchy=True)(
    _set(("clusters", 0, "name"), "crypto"))
case("duplicate-outcome", _c(4, "PRES-B") + ".outcome", "outcome 'A' of event 'PRES'",
     "listed twice")(_set(("contracts", 4, "outcome"), "A"))

# ---- prices and probabilities outside [1e-6, 1 - 1e-6] --------------------------
# (within 1e-9 of 0 or 1 the exact worst case merged the YES region away: a
# short binary at 1e-9 had a worst case of -1e-6, a gain)
for value in (0, 1, -0.25, 1.2, 0.0, 1.0, 1e-9, 1 - 1e-9, 1e-7):
    case(f"price-{value!r}", _c(5, "NBA-LAL") + ".price",
         f"{float(value)!r} is outside [1e-06, 0.999999]")(
        _set(("contracts", 5, "price"), value))
case("price-parlay-1", _c(7, "PARLAY") + ".price", "1.0 is outside [1e-06, 0.999999]")(
    _set(("contracts", 7, "price"), 1))
case("probability-0", _c(6, "NFL-KC") + ".probability", "0.0 is outside [1e-06, 0.999999]")(
    _set(("contracts", 6, "probability"), 0))
case("probability-tiny", _c(6, "NFL-KC") + ".probability", "1e-12 is outside [1e-06, 0.999999]")(
    _set(("contracts", 6, "probability"), 1e-12))
case("open-interest-negative", _c(6, "NFL-KC") + ".open_interest", "-5.0 is outside (0, inf)")(
    _set(("contracts", 6, "open_interest"), -5))

# ---- non-finite numbers (as a decoder gives them: TOML nan/inf, JSON NaN) -----
for label, value, shown in (("nan", math.nan, "nan"), ("inf", math.inf, "inf"),
                            ("-inf", -math.inf, "-inf")):
    case(f"price-{label}", _c(0, "BTC-100K") + ".price", f"{shown} is not finite")(
        _set(("contracts", 0, "price"), value))
    case(f"threshold-{label}", _c(1, "BTC-110K") + ".threshold", f"{shown} is not finite")(
        _set(("contracts", 1, "threshold"), value))
    case(f"quantity-{label}", "positions[0] (contract 'BTC-100K').quantity",
         f"{shown} is not finite")(_set(("positions", 0, "quantity"), value))
    case(f"rho-{label}", "hierarchy[0] (node 'risk').rho", f"{shown} is not finite",
         hierarchy=True)(_set(("hierarchy", 0, "rho"), value))
    case(f"loading-{label}", "clusters[0] (cluster 'BTC').loading", f"{shown} is not finite",
         hierarchy=True)(_set(("clusters", 0, "loading"), value))
    case(f"confidence-{label}", "model.confidence", f"{shown} is not finite")(
        _set(("model", "confidence"), value))
    case(f"open-interest-{label}", _c(5, "NBA-LAL") + ".open_interest",
         f"{shown} is not finite")(_set(("contracts", 5, "open_interest"), value))
case("scenarios-nan", "model.scenarios", "nan is not an integer")(
    _set(("model", "scenarios"), math.nan))
case("seed-inf", "model.seed", "inf is not an integer")(_set(("model", "seed"), math.inf))
case("mc-error-z-nan", "addons.mc_error_z", "nan is not finite")(
    _set(("addons",), {"mc_error_z": math.nan}))

# ---- rho, loadings, confidence ---------------------------------------------------
for value in (-0.1, 1.0, 1.5):
    case(f"rho-{value}", "hierarchy[1] (node 'crypto').rho", f"{value!r} is outside [0, 1)",
         hierarchy=True)(_set(("hierarchy", 1, "rho"), value))
    case(f"loading-{value}", "clusters[0] (cluster 'BTC').loading",
         f"{value!r} is outside [0, 1)", hierarchy=True)(_set(("clusters", 0, "loading"), value))
case("root-rho-1", "hierarchy[0] (node 'root').rho", "1.0 is outside [0, 1)", hierarchy=True)(
    lambda d: d["hierarchy"].insert(0, {"node": "root", "rho": 1.0}))
for value in (0, 1, 0.0, 1.0, -0.5, 1.5):
    case(f"confidence-{value!r}", "model.confidence",
         f"{float(value)!r} is outside (0, 1)")(_set(("model", "confidence"), value))

# ---- scenario counts and seeds ------------------------------------------------------
for value in (0, -4096):
    case(f"scenarios-{value}", "model.scenarios", f"{value} is outside [1, 16777216]")(
        _set(("model", "scenarios"), value))
case("scenarios-too-many", "model.scenarios", "16777217 is outside [1, 16777216]")(
    _set(("model", "scenarios"), 2**24 + 1))
for value in (4096.0, 4096.5, "4096", True):
    case(f"scenarios-{value!r}", "model.scenarios", f"{value!r} is not an integer")(
        _set(("model", "scenarios"), value))
for value in (1.5, 7.0, "7", False):
    case(f"seed-{value!r}", "model.seed", f"{value!r} is not an integer")(
        _set(("model", "seed"), value))
case("seed-negative", "model.seed", "-1 is outside [0, 4294967295]")(
    _set(("model", "seed"), -1))
case("seed-too-large", "model.seed", "4294967296 is outside [0, 4294967295]")(
    _set(("model", "seed"), 2**32))
case("scenarios-no-tail", "model.scenarios", "50 draws leave no tail at confidence 0.99")(
    _set(("model", "scenarios"), 50))

# ---- ladders -----------------------------------------------------------------------
case("ladder-above-above", "contracts (event 'BTC-DEC')", "inconsistent ladder",
     "'BTC-100K' (above 100000 at 0.55)", "'BTC-110K' (above 110000 at 0.58)",
     "by 0.0300", "tolerance 0.02")(_set(("contracts", 1, "price"), 0.58))
case("ladder-below-above", "contracts (event 'BTC-DEC')", "inconsistent ladder",
     "'BTC-80K-B' (below 80000 at 0.5)", "'BTC-100K' (above 100000 at 0.55)",
     "by 0.0500")(_set(("contracts", 2, "price"), 0.5))
case("ladder-same-threshold", "contracts (event 'BTC-DEC')", "inconsistent ladder",
     "'BTC-100K' (above 100000 at 0.55)", "'BTC-80K-B' (below 100000 at 0.5)")(
    lambda d: d["contracts"][2].update(threshold=100000, price=0.5))
case("ladder-tolerance-0", "contracts (event 'BTC-DEC')", "'BTC-110K' (above 110000 at 0.56)",
     "tolerance 0")(lambda d: (d["model"].update(ladder_tolerance=0.0),
                               d["contracts"][1].update(price=0.56)))
case("ladder-tolerance-outside", "model.ladder_tolerance", "0.6 is outside [0, 0.5]")(
    _set(("model", "ladder_tolerance"), 0.6))

# ---- keys that do not belong to the contract's type ------------------------------
for name, i, cid, key, value, ctype in [
    ("threshold-on-binary", 5, "NBA-LAL", "threshold", 100, "binary"),
    ("threshold-on-outcome", 3, "PRES-A", "threshold", 1, "outcome"),
    ("threshold-on-parlay", 7, "PARLAY", "threshold", 2, "parlay"),
    ("legs-on-above", 0, "BTC-100K", "legs", ["NBA-LAL", "NFL-KC"], "above"),
    ("legs-on-binary", 5, "NBA-LAL", "legs", ["NFL-KC", "PRES-A"], "binary"),
    ("outcome-on-below", 2, "BTC-80K-B", "outcome", "low", "below"),
    ("outcome-on-binary", 6, "NFL-KC", "outcome", "KC", "binary"),
    ("outcome-on-parlay", 7, "PARLAY", "outcome", "X", "parlay"),
    ("event-on-binary", 5, "NBA-LAL", "event", "GAME-1", "binary"),
    ("event-on-parlay", 7, "PARLAY", "event", "P", "parlay"),
]:
    case(name, _c(i, cid) + "." + key, f"{value!r} given", f"'{key}' does not belong",
         f"type {ctype!r}")(_set(("contracts", i, key), value))
case("probability-on-parlay", _c(7, "PARLAY") + ".probability", "does not belong to a parlay")(
    _set(("contracts", 7, "probability"), 0.2))
case("threshold-missing", _c(1, "BTC-110K") + ".threshold", "required for type 'above'")(
    _del(("contracts", 1, "threshold")))
case("outcome-missing", _c(4, "PRES-B") + ".outcome", "required for type 'outcome'")(
    _del(("contracts", 4, "outcome")))
case("type-unknown", _c(5, "NBA-LAL") + ".type",
     "'moneyline' is not one of above, below, binary, outcome, parlay")(
    _set(("contracts", 5, "type"), "moneyline"))

# ---- hierarchy and clusters --------------------------------------------------------
case("hierarchy-without-clusters", "clusters", "[[hierarchy]] must give [[clusters]]",
     hierarchy=True)(_del(("clusters",)))
case("clusters-without-hierarchy", "hierarchy", "[[clusters]] must give [[hierarchy]]",
     hierarchy=True)(_del(("hierarchy",)))
case("clusters-empty", "clusters", "the hierarchy has no clusters", hierarchy=True)(
    _set(("clusters",), []))
case("cluster-without-loading", "clusters[2].loading", "missing", hierarchy=True)(
    _del(("clusters", 2, "loading")))
case("cluster-without-parent", "clusters[2].parent", "missing", hierarchy=True)(
    _del(("clusters", 2, "parent")))
case("node-without-rho", "hierarchy[0].rho", "missing", hierarchy=True)(
    _del(("hierarchy", 0, "rho")))
case("rho-non-monotone", "hierarchy[1] (node 'crypto').rho", "0.2 is below",
     "parent 'risk'", "0.35", hierarchy=True)(_set(("hierarchy", 1, "rho"), 0.2))


@case("rho-non-monotone-under-root", "hierarchy[1] (node 'risk').rho", "0.1 is below",
      "parent 'root'", "0.2", hierarchy=True)
def _(d):
    d["hierarchy"].insert(0, {"node": "root", "rho": 0.2})
    d["hierarchy"][1]["rho"] = 0.1


case("cycle", "hierarchy (node 'risk').parent", "cycle through 'risk'", hierarchy=True)(
    _set(("hierarchy", 0, "parent"), "crypto"))
case("cycle-self", "hierarchy (node 'crypto').parent", "cycle through 'crypto'",
     hierarchy=True)(_set(("hierarchy", 1, "parent"), "crypto"))
case("root-with-parent", "hierarchy[2] (node 'root').parent",
     "the root has no parent, got 'risk'", hierarchy=True)(
    _add(hierarchy={"node": "root", "parent": "risk", "rho": 0.0}))
case("node-without-parent", "hierarchy[1] (node 'crypto').parent", "missing", hierarchy=True)(
    _del(("hierarchy", 1, "parent")))

# ---- outcome prices ------------------------------------------------------------------
case("outcome-sum-above-1.05", "contracts (event 'PRES')", "outcome prices sum to 1.1 > 1.05",
     "PRES-A=0.6", "PRES-B=0.5")(
    lambda d: (d["contracts"][3].update(price=0.6), d["contracts"][4].update(price=0.5)))
case("outcome-sum-overround-off", "contracts (event 'PRES')", "sum to 1.03 > 1",
     "PRES-A=0.55", "PRES-B=0.48")(
    lambda d: (d["model"].update(outcome_overround=1.0), d["contracts"][3].update(price=0.55),
               d["contracts"][4].update(price=0.48)))

# ---- parlay legs -----------------------------------------------------------------------
case("leg-is-parlay", _c(8, "PARLAY-2") + ".legs[0]", "'PARLAY' is a parlay")(
    _add(contracts={"id": "PARLAY-2", "cluster": "Parlays", "type": "parlay",
                    "legs": ["PARLAY", "NBA-LAL"], "price": 0.1}))
case("leg-is-itself", _c(8, "PARLAY-2") + ".legs[1]", "'PARLAY-2' is a parlay")(
    _add(contracts={"id": "PARLAY-2", "cluster": "Parlays", "type": "parlay",
                    "legs": ["NBA-LAL", "PARLAY-2"], "price": 0.1}))
case("leg-repeated", _c(7, "PARLAY") + ".legs[2]", "leg 'NBA-LAL' is listed twice")(
    _set(("contracts", 7, "legs"), ["NBA-LAL", "NFL-KC", "NBA-LAL"]))
case("one-leg", _c(7, "PARLAY") + ".legs", "at least 2 legs", "['NBA-LAL']")(
    _set(("contracts", 7, "legs"), ["NBA-LAL"]))
case("legs-empty", _c(7, "PARLAY") + ".legs", "[] is empty")(_set(("contracts", 7, "legs"), []))
case("legs-string", _c(7, "PARLAY") + ".legs", "'NBA-LAL' is not an array")(
    _set(("contracts", 7, "legs"), "NBA-LAL"))
case("leg-not-string", _c(7, "PARLAY") + ".legs[0]", "5 is not a non-empty string")(
    _set(("contracts", 7, "legs"), [5, "NFL-KC"]))

# ---- wrong types ---------------------------------------------------------------------------
case("price-string", _c(0, "BTC-100K") + ".price", "'0.55' is not a number")(
    _set(("contracts", 0, "price"), "0.55"))
case("price-bool", _c(0, "BTC-100K") + ".price", "True is not a number")(
    _set(("contracts", 0, "price"), True))
case("quantity-bool", "positions[3] (contract 'PARLAY').quantity", "True is not a number")(
    _set(("positions", 3, "quantity"), True))
case("quantity-string", "positions[0] (contract 'BTC-100K').quantity", "'1000' is not a number")(
    _set(("positions", 0, "quantity"), "1000"))
case("threshold-string", _c(0, "BTC-100K") + ".threshold", "'100k' is not a number")(
    _set(("contracts", 0, "threshold"), "100k"))
case("rho-string", "hierarchy[0] (node 'risk').rho", "'high' is not a number", hierarchy=True)(
    _set(("hierarchy", 0, "rho"), "high"))
case("loading-bool", "clusters[1] (cluster 'Election').loading", "False is not a number",
     hierarchy=True)(_set(("clusters", 1, "loading"), False))
case("confidence-string", "model.confidence", "'0.99' is not a number")(
    _set(("model", "confidence"), "0.99"))
case("mc-error-not-bool", "addons.mc_error", "'yes' is not true/false")(
    _set(("addons",), {"mc_error": "yes"}))
case("id-not-string", "contracts[2].id", "7 is not a non-empty string")(
    _set(("contracts", 2, "id"), 7))
case("id-empty", "contracts[2].id", "'' is not a non-empty string")(
    _set(("contracts", 2, "id"), ""))
case("id-missing", "contracts[2].id", "missing")(_del(("contracts", 2, "id")))
case("price-missing", _c(2, "BTC-80K-B") + ".price", "missing")(
    _del(("contracts", 2, "price")))
case("cluster-null", _c(6, "NFL-KC") + ".cluster", "None is not a non-empty string")(
    _set(("contracts", 6, "cluster"), None))
case("event-not-string", _c(3, "PRES-A") + ".event", "3 is not a non-empty string")(
    _set(("contracts", 3, "event"), 3))
case("quantity-missing", "positions[1].quantity", "missing")(_del(("positions", 1, "quantity")))
case("contracts-not-array", "contracts", "expected an array of tables")(
    _set(("contracts",), {"id": "X"}))
case("contract-not-table", "contracts[1]", "expected a table, got 'BTC-110K'")(
    _set(("contracts", 1), "BTC-110K"))
case("positions-not-array", "positions", "expected an array of tables")(
    _set(("positions",), "none"))
case("model-not-table", "model", "expected a table, got 4096")(_set(("model",), 4096))
case("hierarchy-not-array", "hierarchy", "expected an array of tables", hierarchy=True)(
    _set(("hierarchy",), {"node": "risk"}))
case("node-name-empty", "hierarchy[0].node", "'' is not a non-empty string", hierarchy=True)(
    _set(("hierarchy", 0, "node"), ""))

case("stress-factor-huge", "stress[0] (name 'crash').factors.BTC", "1e+308",
     "[-100, 100]")(_add(stress={"name": "crash", "factors": {"BTC": 1e308}}))
case("resolves-in-huge", _c(5, "NBA-LAL") + ".resolves_in", "1e+300", "(0, 100]")(
    _set(("contracts", 5, "resolves_in"), 1e300))

# ---- events: one family, one cluster --------------------------------------------------


@case("mixed-family-outcome-above", _c(4, "PRES-B") + ".event",
      "event 'PRES' mixes contract 'PRES-B' (above) with 'PRES-A' (outcome)")
def _(d):
    del d["contracts"][4]["outcome"]
    d["contracts"][4].update(type="above", threshold=1.0)


case("mixed-family-binary-id-is-event", _c(8, "BTC-DEC") + ".event",
     "event 'BTC-DEC' mixes contract 'BTC-DEC' (binary) with 'BTC-100K' (above)")(
    _add(contracts={"id": "BTC-DEC", "cluster": "BTC", "type": "binary", "price": 0.5}))
case("event-split-clusters", _c(1, "BTC-110K") + ".cluster",
     "'ETH' differs from 'BTC' of contract 'BTC-100K' on the same event 'BTC-DEC'")(
    _set(("contracts", 1, "cluster"), "ETH"))
case("outcome-event-split-clusters", _c(4, "PRES-B") + ".cluster",
     "'Sports' differs from 'Election' of contract 'PRES-A' on the same event 'PRES'")(
    _set(("contracts", 4, "cluster"), "Sports"))


@pytest.mark.parametrize("hierarchy, mutate, field, fragments", CASES)
def test_input_error_names_field_and_value(hierarchy, mutate, field, fragments):
    data = _book(hierarchy)
    parse_book(copy.deepcopy(data))  # the unmutated book is valid
    mutate(data)
    with pytest.raises(BookError) as info:
        parse_book(data)
    err = info.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: ")
    for fragment in fragments:
        assert fragment in err.detail, (fragment, str(err))


def test_case_ids_are_unique():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))


# ---- nothing is computed from a bad book ---------------------------------------------


@pytest.fixture
def engine_must_not_run(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the engine ran on an invalid book")

    monkeypatch.setattr(portfolio_module, "margin_jit", fail)
    monkeypatch.setattr(portfolio_module, "book_arrays", fail)


@pytest.mark.parametrize("hierarchy, mutate, field, fragments", CASES)
def test_cli_rejects_bad_book_before_computing(hierarchy, mutate, field, fragments, tmp_path,
                                               capsys, engine_must_not_run):
    data = _book(hierarchy)
    mutate(data)
    path = tmp_path / "book.json"
    path.write_text(json.dumps(data))  # json writes nan/inf as NaN/Infinity, which it reads
    assert main(["margin", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"kinetic-jax: error: {field}: ")
    assert err.count("\n") == 1 and err.endswith("\n")
    for fragment in fragments:
        assert fragment in err


def test_engine_guard_fires_on_a_valid_book(tmp_path, capsys, engine_must_not_run):
    # The guard above is live: a valid book does reach the engine (and the
    # CLI reports the failure as an internal error, exit 1, one line).
    path = tmp_path / "book.json"
    path.write_text(json.dumps(_book()))
    assert main(["margin", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "the engine ran on an invalid book" in err


# ---- acceptance: tolerances and renormalisation ---------------------------------------


@pytest.mark.parametrize("price", [0.56, 0.565, 0.57])
def test_ladder_within_tolerance_is_accepted(price):
    # BTC-100K is above 100000 at 0.55; a higher strike up to 0.02 more likely
    # is a spread, not an arbitrage: accepted, each contract keeps its price.
    data = _book()
    data["contracts"][1]["price"] = price
    book = parse_book(data)
    assert book.contract("BTC-110K").price == price
    assert book.simulation_probabilities()[:2] == [0.55, price]


def test_ladder_tolerance_is_configurable():
    data = _book()
    data["contracts"][1]["price"] = 0.6  # 0.05 beyond BTC-100K
    with pytest.raises(BookError, match="tolerance 0.02"):
        parse_book(copy.deepcopy(data))
    data["model"]["ladder_tolerance"] = 0.05
    assert parse_book(data).contract("BTC-110K").price == 0.6


def test_complementary_above_below_at_one_threshold_is_accepted():
    data = _book()
    data["contracts"][2].update(threshold=100000, price=0.45)  # below 100k + above 100k = 1
    parse_book(data)


def test_outcome_overround_is_accepted_and_renormalised():
    data = _book()
    data["contracts"][3]["price"] = 0.60
    data["contracts"][4]["price"] = 0.43  # sum 1.03: within the 1.05 overround
    book = parse_book(data)
    probs = book.simulation_probabilities()
    assert probs[3] == pytest.approx(0.60 / 1.03)
    assert probs[4] == pytest.approx(0.43 / 1.03)
    assert probs[3] + probs[4] == pytest.approx(1.0)
    assert book.contract("PRES-A").price == 0.60  # the mark is untouched


def test_outcome_sum_at_most_one_is_not_renormalised():
    data = _book()
    data["contracts"][4]["price"] = 0.52  # 0.48 + 0.52 = 1
    probs = parse_book(data).simulation_probabilities()
    assert probs[3:5] == [0.48, 0.52]


def test_outcome_sum_at_the_overround_limit_is_accepted():
    data = _book()
    data["contracts"][4]["price"] = 0.57  # 0.48 + 0.57 = 1.05
    parse_book(data)


def test_positions_on_one_contract_add_up():
    data = _book()
    data["positions"].append({"contract": "BTC-100K", "quantity": -250})
    assert parse_book(data).net_quantities()["BTC-100K"] == 750


def test_book_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_book({"model": {"confidence": 2}})
    assert issubclass(BookError, ValueError)


def test_book_constructor_validates_too():
    # The same checks guard a Book built in Python, not only from a file.
    book = parse_book(_book())
    with pytest.raises(BookError) as info:
        Book(book.contracts, book.positions + (type(book.positions[0])("NOPE", 1.0),))
    assert info.value.field == "positions[4].contract"
    assert "'NOPE'" in info.value.detail
    with pytest.raises(BookError) as info:
        book.with_settings(confidence=1.0)
    assert info.value.field == "model.confidence"


def test_numpy_scalars_are_numbers():
    """A book built from a DataFrame holds numpy scalars (np.int64 quantities,
    np.float32 prices): they are numbers, held as Python's (so the book writes as
    JSON), and a numpy bool is not one."""
    data = _book()
    data["model"]["scenarios"] = np.int64(4096)
    data["contracts"][0]["price"] = np.float32(0.5)
    data["positions"][0]["quantity"] = np.int64(1000)
    book = parse_book(data)
    assert type(book.settings.scenarios) is int and type(book.contracts[0].price) is float
    assert type(book.positions[0].quantity) is int
    assert json.loads(json.dumps(kj.book_to_dict(book)))["positions"][0]["quantity"] == 1000
    again = book.with_positions({"BTC-100K": np.int64(7), "PRES-A": np.float32(-2.5)})
    assert [type(p.quantity) for p in again.positions] == [int, float]
    data["positions"][0]["quantity"] = np.bool_(True)
    with pytest.raises(BookError, match=r"positions\[0\] .*quantity: np.True_ is not a number"):
        parse_book(data)


@pytest.mark.parametrize("dtype, message", [
    ("int8", "dtype: int8 is not float32 or float64"),  # was an OverflowError
    ("float16", "dtype: float16 is not float32 or float64"),
    ("banana", "dtype: 'banana' is not a dtype"),
    # without 64-bit JAX the engine silently computed in float32
    ("float64", "dtype: float64 needs 64-bit JAX"),
])
def test_dtype_is_float32_or_float64_with_x64(dtype, message):
    with pytest.raises(BookError, match=message):
        kj.portfolio_margin(parse_book(_book()), dtype=dtype)


@pytest.mark.parametrize("raw", [None, 42, {"model": {}}])
def test_book_text_that_is_not_text(raw):
    with pytest.raises(BookError, match=rf"book: book is a {type(raw).__name__}, not text"):
        kj.loads_book(raw)


HUGE = 16**5000  # 6,021 decimal digits: Python refuses to write it as text


def _leaves(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, (*path, i))
    else:
        yield path


@pytest.mark.parametrize("value", [HUGE, -HUGE, 10**300], ids=["16^5000", "-16^5000", "10^300"])
def test_an_integer_too_long_to_print_is_named_wherever_it_stands(value):
    """An int of more than 300 digits in any field of a decoded book (or a
    Settings, hedge or sensitivity argument) is refused naming that field, its
    digit count computed without converting it to text (which Python refuses
    over 4,300 digits: the message would otherwise raise a ValueError of its
    own)."""
    digits = len(str(abs(value))) if abs(value) < 10**4000 else 6021
    for path in _leaves(_book(hierarchy=True)):
        data = _book(hierarchy=True)
        node = data
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        with pytest.raises(BookError) as info:
            parse_book(data)
        assert f"{digits:,} digits" in str(info.value), (path, str(info.value)[:200])
        assert str(path[-1]) in info.value.field or path[-1] == "contract", path
    for kw in ("seed", "scenarios", "confidence", "pnl_points"):
        with pytest.raises(BookError, match=rf"^model\.{kw}: an integer of {digits:,} digits "
                                            r"is out of range"):
            kj.Settings(**{kw: value})
    book = parse_book(_book())
    with pytest.raises(BookError, match=rf"^steps: an integer of {digits:,} digits"):
        kj.optimise_hedge(book, ["NBA-LAL"], steps=value)
    with pytest.raises(BookError, match=rf"^max_quantity: an integer of {digits:,} digits"):
        kj.optimise_hedge(book, ["NBA-LAL"], max_quantity=value)
    with pytest.raises(BookError, match=rf"^temperature: an integer of {digits:,} digits"):
        kj.sensitivities(book, temperature=value)
    with pytest.raises(BookError, match=rf"^jump_scenarios: an integer of {digits:,} digits"):
        kj.sensitivities(book, jump_scenarios=value)


def test_hedge_instruments_given_as_one_string_are_refused():
    """A string is a sequence of characters: `optimise_hedge(book, "NBA-LAL")`
    looked for a contract "N" (found by a probe); it is refused as a string."""
    with pytest.raises(BookError, match=r"^instrument: 'NBA-LAL' is one string: give a list"):
        kj.optimise_hedge(parse_book(_book()), "NBA-LAL")


def test_the_worst_case_of_the_smallest_price_is_its_whole_loss():
    """At the smallest price accepted (1e-6) a short binary's YES region is kept:
    its exact worst case is q (1 - p) (at 1e-9, now refused, it was -1e-6)."""
    data = _book()
    data["contracts"][5]["price"] = 1e-6
    data["positions"] = [{"contract": "NBA-LAL", "quantity": -1000}]
    report = kj.portfolio_margin(parse_book(data), scenarios=1024, sampler="plain")
    assert report.worst_case_loss == pytest.approx(1000 * (1 - 1e-6), rel=1e-6)


@pytest.mark.parametrize("entry", ["portfolio_margin", "margin_with_losses", "book_losses",
                                   "sensitivities", "margin_session", "optimise_hedge",
                                   "sweep", "margin_accounts"])
@pytest.mark.parametrize("given", [None, {"contracts": []}])
def test_every_entry_point_names_a_book_that_is_not_one(entry, given):
    """A dict (a book file's data, not parsed) or None is named as the `book`
    (it was an AttributeError from inside the call)."""
    args = {"optimise_hedge": (["NBA-LAL"],), "sweep": (["rho.risk=0:0.3:2"],),
            "margin_accounts": ({"a": {"NBA-LAL": 1.0}},)}.get(entry, ())
    with pytest.raises(BookError, match=rf"^book: expected a kinetic_jax.Book .* got "
                                        rf"{type(given).__name__}$"):
        getattr(kj, entry)(given, *args)



def test_book_copies_name_what_they_cannot_take():
    book = parse_book(_book())
    with pytest.raises(BookError, match=r"^positions: expected a mapping .* got list$"):
        book.with_positions([kj.Position("NBA-LAL", 1.0)])
    with pytest.raises(BookError, match=r"^settings.scenario: unknown setting \(allowed: .*"
                                        r"scenarios"):
        book.with_settings(scenario=4096)
    assert book.with_positions({"NBA-LAL": 2.0}).net_quantities()["NBA-LAL"] == 2.0


def test_margin_jit_names_a_scenario_count_or_tail_it_cannot_use():
    """The array API's static arguments are checked when tracing (scenarios 0 was
    a ZeroDivisionError, top 0 an argmax of an empty sequence)."""
    book = parse_book(_book())
    arrays, _, params = kj.margin_inputs(book)
    key = jax.random.key(0)
    with pytest.raises(BookError, match=r"^scenarios: 0 is not a positive integer"):
        kj.margin_jit(arrays, params, key, 0, 64, "plain")
    for top in (0, 5000):
        with pytest.raises(BookError, match=rf"^top: {top} is not an integer in \[1, "
                                            r"scenarios = 4096\]"):
            kj.margin_jit(arrays, params, key, 4096, top, "plain")


class _Recording:
    """Settings that record which of their fields are read."""

    def __init__(self, settings):
        object.__setattr__(self, "_settings", settings)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._settings, name)


# Books whose settings are recorded: v1, at a horizon, with underlyings and perps.
RECORDED_BOOKS = pytest.mark.parametrize("name, horizon", [
    ("reference_book.toml", None), ("reference_book.toml", 2.0), ("perps_and_strip.toml", None)])


def _recorded(name, horizon):
    """``(book, probe, recording)``: an example book, and a copy of it whose
    settings record which of their fields are read."""
    book = kj.load_book(EXAMPLES / name)
    if horizon is not None:
        book = book.with_settings(horizon_days=horizon)
    recording = _Recording(book.settings)
    probe = copy.copy(book)
    object.__setattr__(probe, "settings", recording)
    return book, probe, recording


@RECORDED_BOOKS
def test_no_book_check_reads_the_run_settings(name, horizon):
    """`Book.with_settings` skips the book's own checks when only RUN_SETTINGS
    change: that is sound only while none of those checks reads them. Run every
    book-level check with settings that record what is read."""
    from kinetic_jax import _book

    _, probe, recording = _recorded(name, horizon)
    for check in (_book.validate_underlyings, _book._validate, _book._validate_dates,
                  _book._validate_stress):
        check(probe)
    assert recording.read  # the checks do read settings (ladder tolerance, horizon, ...)
    assert not recording.read & _book.RUN_SETTINGS, recording.read


def test_changing_run_settings_keeps_the_book_and_checks_the_settings():
    book = kj.load_book(EXAMPLES / "reference_book.toml")
    fast = book.with_settings(scenarios=4096, seed=7, confidence=0.975, sampler="plain")
    full = Book(book.contracts, book.positions, book.hierarchy, fast.settings, book.stress,
                book.underlyings)
    assert fast == full and fast.settings.scenarios == 4096 and book.settings.scenarios != 4096
    assert fast.contracts is book.contracts  # not re-checked, not copied
    with pytest.raises(BookError, match=r"model\.confidence"):
        book.with_settings(confidence=1.5)
    with pytest.raises(BookError, match=r"model\.scenarios"):
        book.with_settings(scenarios=64, confidence=0.999)
    # A book-level setting still checks the book: a perp position needs a horizon.
    perps = kj.load_book(EXAMPLES / "perps_and_strip.toml")
    with pytest.raises(BookError, match="horizon_days"):
        perps.with_settings(horizon_days=None)


@RECORDED_BOOKS
def test_the_layout_reads_no_run_settings(name, horizon):
    """`kj.book_arrays` serves a book equal but for its RUN_SETTINGS from its
    cache: sound only while laying a book out reads none of them."""
    from kinetic_jax import _arrays, _book

    book, probe, recording = _recorded(name, horizon)
    arrays, _ = _arrays._book_arrays(probe, np.dtype(np.float32))
    assert not recording.read & _book.RUN_SETTINGS, recording.read
    cached, _ = kj.book_arrays(book)
    for a, b in zip(jax.tree_util.tree_leaves(arrays), jax.tree_util.tree_leaves(cached),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_equal_books_share_one_layout():
    book = kj.load_book(EXAMPLES / "reference_book.toml")
    arrays, layout = kj.book_arrays(book)
    # Built again from its file, other run settings: the same objects.
    again = kj.load_book(EXAMPLES / "reference_book.toml").with_settings(seed=9, scenarios=4096)
    assert kj.book_arrays(again)[0] is arrays and kj.book_arrays(again)[1] is layout
    # Shared, so read-only.
    with pytest.raises(ValueError, match="read-only"):
        layout.table.yes[0, 0] = 1.0
    # Another position, a book-level setting or another dtype: laid out anew.
    q = book.net_quantities()
    q["BTC-100K-DEC"] += 1
    moved = kj.book_arrays(book.with_positions(q))[0]
    assert moved is not arrays
    assert float(moved.quantity.sum() - arrays.quantity.sum()) == 1.0
    assert kj.book_arrays(book.with_settings(horizon_days=2.0))[0] is not arrays
    with jax.enable_x64():
        wide = kj.book_arrays(book, jnp.float64)[0]
        assert wide.price.dtype == jnp.float64
    assert kj.book_arrays(book)[0].price.dtype == jnp.float32

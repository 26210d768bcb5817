"""JSON schemas for the OpenAPI document (/openapi.json, rendered at /docs).

They describe the wire format; the authority on validity is
``kinetic_jax.parse_book``, whose errors the service returns as 4xx JSON
naming the field.
"""

from __future__ import annotations

import dataclasses

import kinetic_jax as kj

from . import _service as service

_NUM = {"type": "number"}

# The bounds the engine enforces (kinetic_jax.Settings and Book validation),
# written once: the OpenAPI schema, /api/config and the page are built from
# this table, and tests/test_dashboard_hardening.py checks every bound against
# the engine itself. Each entry: (JSON type, low, high, low_open, high_open).
# A setting of kinetic_jax.Settings missing here is served with its type only.
SETTING_BOUNDS: dict[str, tuple] = {
    "confidence": ("number", 0, 1, True, True),
    "scenarios": ("integer", 2, 1 << 24, False, False),  # and scenarios * (1 - alpha) >= 1
    "seed": ("integer", 0, 2**32 - 1, False, False),
    "ladder_tolerance": ("number", 0, 0.5, False, False),
    "outcome_overround": ("number", 1, 1.05, False, False),
    "mc_error": ("boolean", None, None, False, False),
    "mc_error_z": ("number", 0, 10, False, False),
    "liquidity": ("boolean", None, None, False, False),
    "liquidity_threshold": ("number", 0, 1, False, False),
    "liquidity_rate": ("number", 0, 10, False, False),
    "horizon_days": ("number", 0, 365, True, False),  # None: to resolution (SPEC-horizon §6.1)
    "pnl_points": ("integer", 2, 10001, False, False),  # spots on each PnL curve (§6.7)
}
# Settings that are not scalars: their JSON schema, written out (checked against
# kinetic_jax.Settings in tests/test_dashboard_perps.py).
SETTING_SCHEMAS: dict[str, dict] = {
    # [lo, hi] multiples of spot, 0 < lo < hi <= 1000 (the order is checked by the
    # engine).
    "pnl_range": {"type": ["array", "null"], "minItems": 2, "maxItems": 2,
                  "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}},
}
# The [[underlyings]] tables (SPEC-horizon §6.3; kinetic_jax._underlyings
# validate_underlyings): key -> (low, high, low_open, high_open).
UNDERLYING_BOUNDS: dict[str, tuple] = {
    "spot": (1e-8, 1e12, False, False),
    "vol": (1e-4, 5, False, False),
    "lot_size": (1e-8, 1e12, False, False),
}
# A binary's strike on an underlying, a future's price F0 (kinetic_jax._underlyings
# validate_contract): (low, high, low_open, high_open).
STRIKE_BOUNDS = (0, 1e15, True, False)
FUTURE_PRICE_BOUNDS = (0, 1e12, True, False)
# Per-contract and per-position amounts (kinetic_jax._book: MAX_AMOUNT, MIN_OPEN_INTEREST,
# MIN_PRICE: a contract's price and probability lie in [MIN_PRICE, 1 - MIN_PRICE]).
MAX_AMOUNT = 1e15
MIN_OPEN_INTEREST = 1e-6
MIN_PRICE = 1e-6
CONTRACT_TYPES = ("above", "below", "binary", "outcome", "parlay", "perp", "future")
LINEAR_TYPES = ("perp", "future")
KEYS_OF_TYPE = {"above": ["event", "threshold"], "below": ["event", "threshold"],
                "binary": [], "outcome": ["event", "outcome"], "parlay": ["legs"],
                "perp": ["underlying"], "future": ["underlying", "expiry"]}
# The keys of a contract written on an underlying (SPEC-horizon §6.3-6.4): binaries
# above/below with a strike and an expiry, perps (no price, no date) and futures.
KEYS_ON_UNDERLYING = {"above": ["underlying", "strike", "expiry"],
                      "below": ["underlying", "strike", "expiry"],
                      "perp": ["underlying"], "future": ["underlying", "expiry"]}
CONFIDENCE_CHOICES = (0.9, 0.95, 0.975, 0.99, 0.995, 0.999)
# The page's horizon control: resolution (None) or these liquidation horizons in
# days (OCC STANS margins over 2 days, CME SPAN 2 over 1). A book may set any
# value in the bounds above; the page shows it as an extra choice.
HORIZON_CHOICES = (1, 2, 5, 10)
# Formats of the string settings (JSON schema "format").
SETTING_FORMATS = {"as_of": "date"}
SETTING_DESCRIPTIONS = {
    "confidence": "ES level alpha", "scenarios": "Monte-Carlo draws",
    "seed": "PRNG seed", "ladder_tolerance": "accepted ladder nesting violation",
    "outcome_overround": "largest accepted sum of outcome prices on one event",
    "mc_error": "Monte-Carlo error add-on", "mc_error_z": "z of the MC error add-on",
    "liquidity": "liquidity add-on", "liquidity_threshold": "|q| / open interest threshold",
    "liquidity_rate": "liquidity add-on rate",
    "stress_addon": "stress add-on: the worst stress-scenario loss above max(base, floor)",
    "sampler": "scenario sampler (null: exact_block for margins and what-ifs)",
    "horizon_days": "liquidation horizon in calendar days (SPEC-horizon.md §6): the loss over "
                    "the horizon, positions marked at it; absent or null: to resolution (v1)",
    "as_of": "the date (YYYY-MM-DD) contract dates (`resolves`, `expiry`) count from",
    "pnl_range": "[lo, hi]: each underlying's PnL curve spans lo * spot .. hi * spot "
                 "(0 < lo < hi; null: [0.5, 1.5])",
    "pnl_points": "spots on each underlying's PnL curve (null: 101)",
}


def setting_defaults() -> dict:
    """Defaults of every setting, from ``kinetic_jax.Settings``."""
    return {f.name: f.default for f in dataclasses.fields(kj.Settings)}


def setting_tables() -> dict[str, str]:
    """Setting name -> its book table (``model`` or ``addons``), for every field
    of ``kinetic_jax.Settings``: as ``kinetic_jax.book_to_dict`` writes them.
    It always writes the ``[addons]`` table whole, and leaves out the ``[model]``
    settings that are unset (None: `horizon_days`, `as_of`), so a setting it
    does not write for the default book is a ``[model]`` one."""
    empty = kj.book_to_dict(kj.Book(()))
    written = {name: table for table in ("model", "addons") for name in empty[table]}
    return {f.name: written.get(f.name, "model") for f in dataclasses.fields(kj.Settings)}


def setting_bounds(name: str) -> tuple:
    """(JSON type, low, high, low_open, high_open) of a setting."""
    if name in SETTING_BOUNDS:
        return SETTING_BOUNDS[name]
    if name in SETTING_SCHEMAS:
        return ("array", None, None, False, False)
    default = setting_defaults()[name]
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(default), "string")
    return (kind, None, None, False, False)


def _bound_schema(name: str, limits: service.Limits) -> dict:
    kind, low, high, low_open, high_open = setting_bounds(name)
    default = setting_defaults()[name]
    # A setting that is None by default may be given as null (= not given).
    out: dict = {"type": kind if default is not None else [kind, "null"], "default": default,
                 "description": SETTING_DESCRIPTIONS.get(name, name.replace("_", " "))}
    out.update(SETTING_SCHEMAS.get(name, {}))
    if name in SETTING_FORMATS:
        out["format"] = SETTING_FORMATS[name]
    if low is not None:
        out["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        out["exclusiveMaximum" if high_open else "maximum"] = high
    if name == "horizon_days":
        out["examples"] = list(HORIZON_CHOICES)
    if name == "sampler":  # null: the engine's default for margin calls
        out["enum"] = [*kj.SAMPLERS, None]
    if name == "scenarios":  # the service's own, narrower set
        out["enum"] = list(limits.scenarios)
        out["minimum"], out["maximum"] = min(limits.scenarios), max(limits.scenarios)
        out["description"] += " (the service accepts these powers of two)"
    return out


def _bounded(bounds: tuple, **extra) -> dict:
    low, high, low_open, high_open = bounds
    return {"type": "number", "exclusiveMinimum" if low_open else "minimum": low,
            "exclusiveMaximum" if high_open else "maximum": high, **extra}


def underlying_schema() -> dict:
    """One ``[[underlyings]]`` table, with the engine's bounds."""
    props = {"id": {"type": "string", "minLength": 1, "description": "unique in the book"},
             "cluster": {"type": "string", "description": "its cluster: the cluster's loaded "
                                                          "latent is its return over h"}}
    notes = {"spot": "S0", "vol": "annualised lognormal volatility",
             "lot_size": "the lot hedges are counted in (default 1)"}
    props.update({k: _bounded(b, description=notes[k]) for k, b in UNDERLYING_BOUNDS.items()})
    props["lot_size"]["default"] = 1
    return {"type": "object", "additionalProperties": False,
            "required": ["id", "cluster", "spot", "vol"], "properties": props}


def contract_schema() -> dict:
    """One contract: a plain one (SPEC.md §3: `cluster`, `price` in (0, 1)) or one
    written on an underlying (`underlying`; perps have no price, futures a price
    F0 > 0, binaries a `strike` and an `expiry`)."""
    on_underlying = {"anyOf": [{"required": ["underlying"]},
                               {"required": ["type"],
                                "properties": {"type": {"enum": list(LINEAR_TYPES)}}}]}
    is_type = lambda *types: {"required": ["type"],  # noqa: E731
                              "properties": {"type": {"enum": list(types)}}}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type"],
        "properties": {
            "id": {"type": "string"},
            "cluster": {"type": "string", "description": "required, except on an underlying "
                                                         "(whose cluster it must then equal)"},
            "type": {"enum": list(CONTRACT_TYPES)},
            "price": {"type": "number", "exclusiveMinimum": 0,
                      "description": f"in [{MIN_PRICE:g}, {1 - MIN_PRICE:g}] (a binary on "
                                     "an underlying: in (0, 1); a future: its price F0 > 0, "
                                     "default the spot; a perp: none)"},
            "event": {"type": "string", "description": "above/below/outcome"},
            "threshold": {**_NUM, "description": "above/below (required)"},
            "outcome": {"type": "string", "description": "outcome (required)"},
            "legs": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                     "description": "parlay (required)"},
            "open_interest": {"type": "number", "minimum": MIN_OPEN_INTEREST,
                              "maximum": MAX_AMOUNT},
            "probability": {"type": "number", "minimum": MIN_PRICE, "maximum": 1 - MIN_PRICE},
            "resolves": {"type": "string", "format": "date",
                         "description": "the event's resolution date, after model.as_of "
                                        "(one date per event; not on a parlay)"},
            "resolves_in": {"type": "number", "exclusiveMinimum": 0, "maximum": 100,
                            "description": "or the time to resolution in years"},
            "underlying": {"type": "string", "description": "an underlyings[].id: a binary "
                                                            "(above/below), perp or future on "
                                                            "it"},
            "strike": _bounded(STRIKE_BOUNDS, description="a binary on an underlying "
                                                          "(required)"),
            "expiry": {"type": "string", "format": "date",
                       "description": "a binary on an underlying or a future: its expiry, "
                                      "after model.as_of (required)"},
            "expiry_in": {"type": "number", "exclusiveMinimum": 0,
                          "description": "or the time to expiry in years"},
        },
        "allOf": [
            {"if": on_underlying, "else": {"required": ["cluster", "price"]}},
            {"if": is_type("future"),
             "then": {"properties": {"price": _bounded(FUTURE_PRICE_BOUNDS)}},
             "else": {"properties": {"price": {"exclusiveMaximum": 1}}}},
            {"if": is_type("perp"), "then": {"not": {"required": ["price"]}}},
        ],
    }


def book_schema(limits: service.Limits) -> dict:
    """The JSON schema of a book, with the service's `limits`."""
    tables = setting_tables()
    table = {t: {"type": "object", "additionalProperties": False,
                 "properties": {n: _bound_schema(n, limits) for n in tables if tables[n] == t}}
             for t in ("model", "addons")}
    return {
        "title": "Book",
        "description": "A book in the structure of SPEC.md §3 (the TOML book file as JSON), "
                       "with SPEC-horizon.md §6.8's additions (`underlyings`, contracts on "
                       "them, `model.horizon_days`, `as_of`, `pnl_range`, `pnl_points`). "
                       "Unknown keys are errors. Give `hierarchy` and `clusters` together, "
                       "or neither for the default hierarchy.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **table,
            "hierarchy": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["node", "rho"],
                    "properties": {
                        "node": {"type": "string"},
                        "parent": {"type": "string", "description": "absent only for 'root'"},
                        "rho": {"type": "number", "minimum": 0, "exclusiveMaximum": 1,
                                "description": "never below the parent's rho"},
                    },
                },
            },
            "clusters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "parent", "loading"],
                    "properties": {
                        "name": {"type": "string"},
                        "parent": {"type": "string"},
                        "loading": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    },
                },
            },
            "contracts": {
                "type": "array",
                "maxItems": limits.max_contracts,
                "description": f"at most {limits.max_contracts:,} contracts, "
                               f"{limits.max_contracts_per_event:,} on one event, "
                               f"{limits.max_parlays:,} parlays of at most "
                               f"{limits.max_parlay_legs:,} legs",
                "items": contract_schema(),
            },
            "underlyings": {
                "type": "array",
                "description": "assets that binaries (above/below with `underlying`, "
                               "`strike`, `expiry`), perps and futures are written on "
                               "(SPEC-horizon.md §6.3-6.4)",
                "items": underlying_schema(),
            },
            "positions": {
                "type": "array",
                "maxItems": limits.max_positions,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["contract", "quantity"],
                    "properties": {
                        "contract": {"type": "string"},
                        "quantity": {**_NUM, "minimum": -MAX_AMOUNT, "maximum": MAX_AMOUNT,
                                     "description": "signed: > 0 long YES, < 0 short YES; "
                                                    f"sum of |quantity| at most {MAX_AMOUNT:g}"},
                    },
                },
            },
            "stress": {
                "type": "array",
                "description": "deterministic stress scenarios (SPEC.md §5.2): exact losses, "
                               "reported in the margin's `stress`; `model.stress_addon` adds "
                               "the worst one above max(base, floor)",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "description": "unique in the book"},
                        "factors": {"type": "object", "additionalProperties": _NUM,
                                    "description": "hierarchy node or cluster -> factor value "
                                                   "(standard deviations); none: every "
                                                   "factor at 0"},
                        "resolve": {"type": "object",
                                    "additionalProperties": {"enum": ["YES", "NO"]},
                                    "description": "non-parlay contract id -> YES or NO"},
                    },
                },
            },
        },
    }


def config(limits: service.Limits, max_body_bytes: int) -> dict:
    """What the page needs to know (GET /api/config): enums, defaults, bounds
    and limits, all from the tables above and ``kinetic_jax.Settings``."""
    settings = {}
    defaults = setting_defaults()
    for name, table in setting_tables().items():
        kind, low, high, low_open, high_open = setting_bounds(name)
        settings[name] = {"table": table, "type": kind, "default": defaults[name],
                          "min": low, "max": high, "min_open": low_open, "max_open": high_open}
    settings["scenarios"]["choices"] = list(limits.scenarios)
    settings["confidence"]["choices"] = list(CONFIDENCE_CHOICES)
    settings["horizon_days"]["choices"] = list(HORIZON_CHOICES)
    return {
        "contract_types": list(CONTRACT_TYPES),
        "linear_types": list(LINEAR_TYPES),
        "keys_of_type": KEYS_OF_TYPE,
        "keys_on_underlying": KEYS_ON_UNDERLYING,
        "underlying_bounds": {k: dict(zip(("min", "max", "min_open", "max_open"), b))
                              for k, b in {**UNDERLYING_BOUNDS, "strike": STRIKE_BOUNDS,
                                           "future_price": FUTURE_PRICE_BOUNDS}.items()},
        "settings": settings,
        "clusters": list(kj.default_hierarchy().cluster_names),
        "amounts": {"max_quantity": MAX_AMOUNT, "max_total_quantity": MAX_AMOUNT,
                    "min_open_interest": MIN_OPEN_INTEREST, "max_open_interest": MAX_AMOUNT,
                    "min_price": MIN_PRICE, "max_price": 1 - MIN_PRICE},
        "limits": {**limits.to_dict(), "max_body_bytes": max_body_bytes,
                   "max_bins": service.MAX_BINS, "default_bins": service.DEFAULT_BINS},
    }


BOOK_EXAMPLE: dict = {
    "model": {"confidence": 0.99, "scenarios": 131072, "seed": 0, "as_of": "2026-06-01"},
    "contracts": [
        {"id": "BTC-100K-DEC", "cluster": "BTC", "type": "above", "event": "BTC-DEC",
         "threshold": 100000, "price": 0.55, "resolves": "2026-12-31"},
        {"id": "BTC-110K-DEC", "cluster": "BTC", "type": "above", "event": "BTC-DEC",
         "threshold": 110000, "price": 0.33, "resolves": "2026-12-31"},
        {"id": "PRES-A", "cluster": "Election", "type": "outcome", "event": "PRES-2028",
         "outcome": "A", "price": 0.40, "resolves": "2028-11-07"},
        {"id": "PRES-B", "cluster": "Election", "type": "outcome", "event": "PRES-2028",
         "outcome": "B", "price": 0.30, "resolves": "2028-11-07"},
    ],
    "positions": [
        {"contract": "BTC-100K-DEC", "quantity": 1000},
        {"contract": "BTC-110K-DEC", "quantity": -1000},
        {"contract": "PRES-A", "quantity": -1000},
        {"contract": "PRES-B", "quantity": -1000},
    ],
}

ERROR_SCHEMA: dict = {
    "title": "Error",
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "field": {"type": "string",
                          "description": "the offending field, e.g. "
                                         "\"contracts[3] (id 'X').price\""},
                "path": {"type": "array", "items": {"type": ["string", "integer"]},
                         "description": "the field as a JSON path, e.g. "
                                        "[\"contracts\", 3, \"price\"]"},
                "event": {"type": "string",
                          "description": "the event, for an error about a whole event"},
                "detail": {"type": "string"},
                "message": {"type": "string", "description": "field: detail"},
            },
        }
    },
}


def json_body(schema: dict, example: dict | None = None, description: str = "") -> dict:
    """An ``openapi_extra`` entry declaring a JSON request body."""
    content: dict = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": content}}}


def error_responses(*codes: int) -> dict:
    text = {400: "The body is not valid JSON/TOML", 403: "Cross-origin request",
            409: "Superseded by a newer request from the same page",
            413: "The body is too large",
            415: "The body is not application/json (application/toml for /api/import)",
            422: "Invalid book or parameter (the field is named)",
            500: "Internal error (message only, no traceback)",
            503: "The engine queue is full: retry after Retry-After seconds"}
    return {c: {"description": text.get(c, "Error"),
                "content": {"application/json": {"schema": ERROR_SCHEMA}}} for c in codes}

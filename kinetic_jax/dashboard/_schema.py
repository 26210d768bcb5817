"""JSON schemas for the OpenAPI document (/openapi.json, rendered at /docs).

They describe the wire format; the authority on validity is
``kinetic_jax.parse_book``, whose errors the service returns as 4xx JSON
naming the field.
"""

from __future__ import annotations

_NUM = {"type": "number"}

BOOK_SCHEMA: dict = {
    "title": "Book",
    "description": "A book in the structure of SPEC.md §3 (the TOML book file as JSON). "
                   "Unknown keys are errors. Give `hierarchy` and `clusters` together, "
                   "or neither for the default hierarchy.",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "model": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "confidence": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                               "default": 0.99, "description": "ES level alpha"},
                "scenarios": {"type": "integer", "minimum": 1, "maximum": 1 << 20,
                              "default": 131072,
                              "description": "Monte-Carlo draws (service limit 1,048,576)"},
                "seed": {"type": "integer", "minimum": 0, "default": 0},
                "ladder_tolerance": {"type": "number", "minimum": 0, "maximum": 0.5,
                                     "default": 0.02},
                "outcome_overround": {"type": "number", "minimum": 1, "maximum": 1.5,
                                      "default": 1.05},
            },
        },
        "addons": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mc_error": {"type": "boolean", "default": True},
                "mc_error_z": {"type": "number", "minimum": 0, "maximum": 10, "default": 2.0},
                "liquidity": {"type": "boolean", "default": True},
                "liquidity_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                                        "default": 0.1},
                "liquidity_rate": {"type": "number", "minimum": 0, "maximum": 10,
                                   "default": 1.0},
            },
        },
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
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "cluster", "type", "price"],
                "properties": {
                    "id": {"type": "string"},
                    "cluster": {"type": "string"},
                    "type": {"enum": ["above", "below", "binary", "outcome", "parlay"]},
                    "price": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    "event": {"type": "string", "description": "above/below/outcome"},
                    "threshold": {**_NUM, "description": "above/below (required)"},
                    "outcome": {"type": "string", "description": "outcome (required)"},
                    "legs": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                             "description": "parlay (required)"},
                    "open_interest": {"type": "number", "exclusiveMinimum": 0},
                    "probability": {"type": "number", "exclusiveMinimum": 0,
                                    "exclusiveMaximum": 1},
                },
            },
        },
        "positions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["contract", "quantity"],
                "properties": {
                    "contract": {"type": "string"},
                    "quantity": {**_NUM, "description": "signed: > 0 long YES, < 0 short YES"},
                },
            },
        },
    },
}

BOOK_EXAMPLE: dict = {
    "model": {"confidence": 0.99, "scenarios": 131072, "seed": 0},
    "contracts": [
        {"id": "BTC-100K-DEC", "cluster": "BTC", "type": "above", "event": "BTC-DEC",
         "threshold": 100000, "price": 0.55},
        {"id": "BTC-110K-DEC", "cluster": "BTC", "type": "above", "event": "BTC-DEC",
         "threshold": 110000, "price": 0.33},
        {"id": "PRES-A", "cluster": "Election", "type": "outcome", "event": "PRES-2028",
         "outcome": "A", "price": 0.40},
        {"id": "PRES-B", "cluster": "Election", "type": "outcome", "event": "PRES-2028",
         "outcome": "B", "price": 0.30},
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
    text = {400: "The body is not valid JSON/TOML", 413: "The body is too large",
            422: "Invalid book or parameter (the field is named)",
            500: "Internal error (message only, no traceback)"}
    return {c: {"description": text.get(c, "Error"),
                "content": {"application/json": {"schema": ERROR_SCHEMA}}} for c in codes}

"""Errors raised for bad input."""

from __future__ import annotations


class BookError(ValueError):
    """A book (or a model setting) is invalid.

    The message names the offending field and value, e.g.
    ``contracts[3] (id 'BTC-100K').price: 1.2 is outside (0, 1)``. Raised before
    anything is computed, so no partial result ever exists.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}" if field else message)


class EngineError(RuntimeError):
    """The engine failed on input that passed validation (a non-finite figure, a
    diverged optimiser): a fault of the engine, not of the book. The command line
    exits 1 for it (2 is kept for input errors) and the service answers 500 with
    a JSON message."""

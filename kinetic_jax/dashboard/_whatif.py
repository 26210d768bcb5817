"""``POST /api/what-if``: the margin of a book after some trades, from a session
kept per book (``kinetic_jax.margin_session``), so previews of edits to the same
book reuse one simulation.

Body::

    {"book": {...},                                   # SPEC.md §3 as JSON
     "trades": [{"contract": "ID", "quantity": 100}],  # added to the positions
     "new_contracts": [{...contract...}]}              # optional: contracts new to the book

Errors name the field as a JSON path: ``book.contracts[3] (id 'X').price``,
``trades[0].quantity``, ``new_contracts[1] (id 'Y').price``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
import threading
import time

import kinetic_jax as kj
from kinetic_jax import Book, BookError

from . import _service as service

MAX_AMOUNT = 1e15
SESSIONS = 4  # books whose simulation is kept (each holds its (C, N) outcome matrix)
# ... and at most this many bytes of them: a book at a horizon keeps float32 marks,
# 4 bytes a cell (2,000 contracts x 32,768 scenarios: 262 MB), and four such
# sessions took the server from 0.27 to 1.9 GB.
SESSION_BYTES = 384 << 20
_KEYS = {"book", "trades", "new_contracts"}


def parse_what_if_body(raw: bytes, limits: service.Limits) -> tuple[Book, dict]:
    """``(book, trades)`` from a request body; trades map a contract id (or a
    ``kj.Contract`` new to the book) to the quantity traded."""
    from ._app import decode_json_body

    data = decode_json_body(raw)
    if not isinstance(data, dict):
        raise BookError("body", 'expected an object {"book": {...}, "trades": [...]}')
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise BookError(unknown[0], "unknown key (allowed: book, trades, new_contracts)")
    for key in ("book", "trades"):
        if key not in data:
            raise BookError(key, "missing")
    book = _book(data["book"], limits)
    new = _new_contracts(data["book"], data.get("new_contracts", []), book, limits)
    return book, _trades(data["trades"], book, new, limits)


def _book(data, limits: service.Limits) -> Book:
    try:
        book = kj.parse_book(data)
        service.check_limits(book, limits)
    except BookError as e:
        raise BookError(f"book.{e.field}" if e.field and e.field != "book" else "book",
                        e.detail) from None
    return book


_CONTRACT = re.compile(r"^contracts\[(\d+)\]")


def _new_contracts(book_data, new, book: Book, limits: service.Limits) -> list[kj.Contract]:
    """The contracts new to the book, validated as part of the extended book
    (errors renamed to ``new_contracts[j]``)."""
    if not isinstance(new, list):
        raise BookError("new_contracts", f"{type(new).__name__} is not a list")
    if not new:
        return []
    n = len(book.contracts)
    extended = {**book_data, "contracts": [*book_data.get("contracts", []), *new]}
    try:
        ext = kj.parse_book(extended)
        service.check_limits(ext, limits)
    except BookError as e:
        m = _CONTRACT.match(e.field)
        if m and int(m.group(1)) >= n:
            raise BookError(f"new_contracts[{int(m.group(1)) - n}]{e.field[m.end():]}",
                            e.detail) from None
        raise BookError(f"new_contracts ({e.field})" if e.field else "new_contracts",
                        e.detail) from None
    return list(ext.contracts[n:])


def _trades(trades, book: Book, new: list[kj.Contract], limits: service.Limits) -> dict:
    if not isinstance(trades, list):
        raise BookError("trades", f"{type(trades).__name__} is not a list")
    if len(trades) > limits.max_positions:
        raise BookError("trades", f"{len(trades):,} trades, over the limit of "
                                  f"{limits.max_positions:,}")
    known = set(book.contract_ids)
    held = book.net_quantities()
    fresh = {c.id: c for c in new}
    out: dict = {c: 0.0 for c in new}  # new contracts join the book, traded or not
    for i, t in enumerate(trades):
        if not isinstance(t, dict):
            raise BookError(f"trades[{i}]", 'expected {"contract": ID, "quantity": Q}')
        extra = sorted(set(t) - {"contract", "quantity"})
        if extra:
            raise BookError(f"trades[{i}].{extra[0]}", "unknown key (allowed: contract, "
                                                       "quantity)")
        cid, q = t.get("contract"), t.get("quantity")
        if not isinstance(cid, str):
            raise BookError(f"trades[{i}].contract", f"{cid!r} is not a contract id")
        if cid not in known and cid not in fresh:
            raise BookError(f"trades[{i}].contract", f"unknown contract {cid!r} (a contract "
                                                     "new to the book goes in new_contracts)")
        if not isinstance(q, (int, float)) or isinstance(q, bool):
            raise BookError(f"trades[{i}].quantity", f"{q!r} is not a number")
        if not math.isfinite(q) or abs(q) > MAX_AMOUNT:
            raise BookError(f"trades[{i}].quantity", f"{q!r} is not a finite number in "
                                                     f"[-{MAX_AMOUNT:g}, {MAX_AMOUNT:g}]")
        key = fresh.get(cid, cid)
        out[key] = out.get(key, 0.0) + float(q)
        after = held.get(cid, 0.0) + out[key]
        if abs(after) > MAX_AMOUNT:
            raise BookError(f"trades[{i}].quantity",
                            f"the position in {cid!r} after the trades, {after:g}, is "
                            f"outside [-{MAX_AMOUNT:g}, {MAX_AMOUNT:g}]")
    return out


def book_key(book: Book) -> str:
    """A digest of the book as its JSON (sessions are per book)."""
    text = json.dumps(kj.book_to_dict(book), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Sessions:
    """An LRU of `kinetic_jax.margin_session`s, one per book, so that what-ifs on
    the same book (the page previewing edits) share one simulation: at most
    `capacity` books and `max_bytes` of kept simulations (the newest is kept
    whatever its size). Before a book is simulated, the oldest sessions are
    dropped until its estimated size (4 bytes a cell) fits, so that the old ones
    and the new one are never held together beyond the budget."""

    def __init__(self, capacity: int = SESSIONS, max_bytes: int = SESSION_BYTES):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._lru: collections.OrderedDict[str, kj.MarginSession] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.opened = 0

    def get(self, book: Book) -> tuple[kj.MarginSession, bool]:
        key = book_key(book)
        with self._lock:
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key], False
            estimate = 4 * len(book.contracts) * book.settings.scenarios
            while self._lru and self._bytes() + estimate > self.max_bytes:
                self._lru.popitem(last=False)
        session = kj.margin_session(book)
        with self._lock:
            self._lru[key] = session
            self.opened += 1
            while len(self._lru) > self.capacity or (
                    len(self._lru) > 1 and self._bytes() > self.max_bytes):
                self._lru.popitem(last=False)
        return session, True

    def _bytes(self) -> int:
        return sum(s.nbytes for s in self._lru.values())

    def snapshot(self) -> dict:
        with self._lock:
            return {"sessions": len(self._lru), "capacity": self.capacity,
                    "bytes": self._bytes(), "max_bytes": self.max_bytes,
                    "opened": self.opened}

    def response(self, book: Book, trades: dict) -> dict:
        """``what_if`` (margin before and after, incremental, binding, clusters),
        the traded book's `report`, and timings."""
        t0 = time.perf_counter()
        session, opened = self.get(book)
        t1 = time.perf_counter()
        report = session.what_if(trades)
        t2 = time.perf_counter()
        return service.finite({
            "what_if": report.summary(),
            "report": report.to_dict(),
            "waterfall": report.waterfall(),
            "timing": {"session": "opened" if opened else "reused",
                       "session_ms": round((t1 - t0) * 1e3, 1),
                       "what_if_ms": round((t2 - t1) * 1e3, 1)},
        })

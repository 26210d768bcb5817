"""Persistence of the dashboard: the book being edited and the page's settings.

The state is one JSON file (default ``~/.kinetic_jax/dashboard.json``)::

    {"version": 1, "saved_at": "2025-01-01T12:00:00+00:00",
     "source": {"path": "/abs/book.toml" | "reference", "sha256": "..."},
     "book": {... SPEC.md §3 structure, as kinetic_jax.book_to_dict writes it ...},
     "ui": {"auto": true, "bins": 60, ...}}

Writes are atomic: the new content goes to a temporary file in the same
directory, is flushed and fsync'ed, and replaces the old file with
``os.replace`` (atomic on POSIX and Windows); the directory is then fsync'ed
where the platform allows. A crash at any point leaves either the old file or
the new one, never a torn one. A state file that cannot be read is set aside
(renamed ``*.corrupt-<time>``) rather than overwritten, so nothing is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kinetic_jax import Book, BookError, book_to_dict, loads_json, parse_book

STATE_VERSION = 1
MAX_STATE_BYTES = 32 * 1024 * 1024
MAX_UI_KEYS = 64
REFERENCE = "reference"

logger = logging.getLogger("kinetic_jax.dashboard")


def default_state_path() -> Path:
    """``$KINETIC_JAX_STATE`` if set, else ``~/.kinetic_jax/dashboard.json``."""
    env = os.environ.get("KINETIC_JAX_STATE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".kinetic_jax" / "dashboard.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (temp file in the same directory,
    flush + fsync, ``os.replace``, fsync of the directory). On any error the
    previous file is untouched and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse; the rename stands
        pass
    finally:
        os.close(fd)


def clean_ui(ui: Any) -> dict:
    """The page's own settings: a flat mapping of short names to JSON scalars."""
    if ui is None:
        return {}
    if not isinstance(ui, Mapping):
        raise BookError("ui", f"expected an object, got {type(ui).__name__}")
    if len(ui) > MAX_UI_KEYS:
        raise BookError("ui", f"{len(ui)} keys, at most {MAX_UI_KEYS}")
    out = {}
    for k, v in ui.items():
        if not isinstance(k, str) or not 0 < len(k) <= 64:
            raise BookError("ui", f"key {k!r} is not a short string")
        if isinstance(v, str):
            if len(v) > 256:
                raise BookError(f"ui.{k}", "string longer than 256 characters")
        elif isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise BookError(f"ui.{k}", f"{v!r} is not finite")
        elif not (v is None or isinstance(v, (bool, int))):
            raise BookError(f"ui.{k}", f"{v!r} is not a string, number, boolean or null")
        out[k] = v
    return out


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the dashboard's book came from: a file (path and content hash) or
    the reference book shipped with the package."""

    path: str
    sha256: str

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


@dataclasses.dataclass(frozen=True)
class State:
    book: Book
    ui: dict
    source: Source
    saved_at: str | None = None

    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "saved_at": self.saved_at,
            "source": self.source.to_dict(),
            "book": book_to_dict(self.book),
            "ui": dict(self.ui),
        }


class StateStore:
    """The dashboard state on disk, behind a lock (one writer at a time)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()

    def load(self) -> State | None:
        """The saved state, or None if there is none or it cannot be used (a
        corrupt file is renamed aside and logged)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            logger.warning("cannot read dashboard state %s: %s", self.path, e)
            return None
        try:
            if size > MAX_STATE_BYTES:
                raise ValueError(f"{size} bytes, over the {MAX_STATE_BYTES} limit")
            # A BookError (a ValueError) if it is not JSON as a book file takes it
            # (nesting, duplicate keys, lone surrogates): set aside.
            data = loads_json(self.path.read_bytes(), name=str(self.path))
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"not a version-{STATE_VERSION} dashboard state")
            src = data.get("source") or {}
            if not isinstance(src, dict) or not all(
                    isinstance(src.get(k, ""), str) for k in ("path", "sha256")):
                raise ValueError(f"source {src!r:.80} is not {{path, sha256}} strings")
            saved_at = data.get("saved_at")
            if not (saved_at is None or isinstance(saved_at, str) and len(saved_at) <= 64):
                raise ValueError(f"saved_at {saved_at!r:.80} is not a time")
            return State(
                book=parse_book(data["book"]),
                ui=clean_ui(data.get("ui")),
                source=Source(src.get("path", ""), src.get("sha256", "")),
                saved_at=saved_at,
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError,
                RecursionError) as e:  # e.g. nested too deeply to decode
            self._set_aside(e)
            return None

    def _set_aside(self, error: Exception) -> None:
        """Renames the unusable file to ``<name>.corrupt-<time>`` (``-2``, ``-3``,
        ... after it when a file set aside in the same second has that name:
        nothing set aside is overwritten)."""
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        k = 1
        while aside.exists() or aside.is_symlink():
            k += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{k}")
        try:
            os.replace(self.path, aside)
            logger.warning("dashboard state %s is unusable (%s); moved to %s",
                           self.path, error, aside)
        except OSError:
            logger.warning("dashboard state %s is unusable (%s)", self.path, error)

    def save(self, state: State) -> State:
        """Writes `state` atomically and returns it with its `saved_at` time."""
        stamped = dataclasses.replace(
            state, saved_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        )
        data = json.dumps(stamped.to_dict(), indent=1, allow_nan=False).encode("utf-8")
        with self._lock:
            atomic_write_bytes(self.path, data)
        return stamped

"""The engine's jitted entry points, and their programs kept across processes.

Every jitted entry point of the engine (`margin_jit`, `sensitivity_jit`, the
sweep, batch, what-if and hedge programs) is a [`Program`][]: called like
``eqx.filter_jit(fn)``, and the same thing as long as no program store is set.

With a store (the persistent compilation cache's ``programs/`` directory, set by
[`enable_compilation_cache`][]), a call of a new signature in this process
(argument shapes, dtypes, static arguments) looks for the program on disk before
tracing it: the function exported with ``jax.export`` (its StableHLO, serialized)
under a key of the signature and of everything else the traced program depends
on (the engine's source, the versions of jax, jaxlib, equinox, optax and numpy,
JAX's tracing configuration, ``XLA_FLAGS``, the platform and device count). Found,
it is deserialized and called: no Python tracing or lowering of the engine; the
compile of the call then comes from JAX's persistent cache as before. Not found,
the function is exported, written, and called the same way, so a program
computes the same whether it came from disk or not. (A fresh process's first
reference-book margin and sensitivities: 2.3x and 2.9x faster warm, 6-8 %
slower cold; experiments/bench_program_store.py.)

The stored path is taken only where it is sound, and the call falls back to
``eqx.filter_jit`` otherwise: under a transformation (any argument a tracer),
arguments placed on other than the default device or sharded, more than one
device in the process (the engine then spreads scenarios itself), static
arguments that are not plain values (numbers, strings, ``None``, tuples of
them), and programs JAX cannot export (host callbacks). A store that cannot be
written, or an entry that cannot be read, costs the saving and nothing else.
What the key cannot see is a module constant changed at run time (a test's
monkeypatch of a value the trace reads): such a caller clears the store or runs
without one, as it would clear JAX's in-memory caches.

The entries are pickles beside JAX's own cache entries, which are executables:
the directory is as trusted as the code it holds, the user's own.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

try:  # what jax.jit keys its traces on; private, so a jax without it gets no store
    from jax._src.config import trace_context as _jax_trace_context
except ImportError:  # pragma: no cover - a jax that moved it
    _jax_trace_context = None

FORMAT = 1  # bumped when an entry's layout changes
_PLAIN = (bool, int, float, str, type(None), np.bool_, np.integer, np.floating)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

_store: Path | None = None
_environment: str | None = None  # digest of what every program depends on
_programs: list[Program] = []


def set_store(directory: Path | None) -> None:
    """Keeps the engine's programs in `directory` (created on first write), or
    nowhere (None). Programs already in memory stay there."""
    global _store
    _store = None if directory is None else Path(directory)


def store() -> Path | None:
    """The directory the programs are kept in, or None."""
    return _store


def clear() -> None:
    """Forgets the programs held in memory (``clear_caches``)."""
    for p in _programs:
        p.forget()


def _source_digest() -> str:
    """The engine's modules (the package's top level: the dashboard, which no
    program traces, may change without making the stored programs stale)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _versions() -> str:
    out = []
    for name in ("jax", "jaxlib", "equinox", "optax", "numpy"):
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=?")
    return " ".join(out)


def _environment_digest() -> str:
    """What every program depends on beyond its signature, once per process
    (the tracing configuration is read per call: it can change in a block)."""
    global _environment
    if _environment is None:
        devices = jax.devices()
        parts = [f"format={FORMAT}", _source_digest(), _versions(),
                 f"python={sys.version_info[:2]}", f"platform={devices[0].platform}",
                 f"device={devices[0].device_kind}", f"devices={len(devices)}",
                 f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}"]
        _environment = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return _environment


def _trace_context() -> str:
    """JAX's configuration that a trace depends on (x64, dtype promotion,
    precision, ...), thread-local settings included: what ``jax.jit`` keys its
    own cache on."""
    return _ADDRESS.sub("", repr(_jax_trace_context()))


def _plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


@functools.cache
def _one_device() -> jax.Device | None:
    """The process's only device, or None when it has several."""
    devices = jax.devices()
    return devices[0] if len(devices) == 1 else None


def _on_the_device(leaf, device) -> bool:
    if isinstance(leaf, np.ndarray | np.generic):
        return True
    if isinstance(leaf, jax.core.Tracer):
        return False
    sharding = getattr(leaf, "sharding", None)
    return (isinstance(sharding, jax.sharding.SingleDeviceSharding)
            and sharding.device_set == {device})


class _Entry(eqx.Module):
    """One exported program in memory: the jitted call and how to rebuild the
    function's output from the call's flat outputs."""

    call: Any = eqx.field(static=True)
    out_tree: Any = eqx.field(static=True)
    out_static: Any = eqx.field(static=True)


class Program:
    """``eqx.filter_jit(fn)``, with the programs kept in the store (module doc).

    Attributes other than the call (``lower``, ...) are the jitted function's.
    """

    def __init__(self, fn):
        self.fn = fn
        self.jitted = eqx.filter_jit(fn)
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self._memory: dict = {}  # signature -> _Entry, or None: use `jitted`
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)
        _programs.append(self)

    def __getattr__(self, name):
        if name == "jitted":  # not set yet (an instance being built or unpickled)
            raise AttributeError(name)
        return getattr(self.jitted, name)

    def forget(self) -> None:
        with self._lock:
            self._memory.clear()

    def __call__(self, *args, **kwargs):
        device = None if _store is None or _jax_trace_context is None else _one_device()
        if device is None:
            return self.jitted(*args, **kwargs)
        dynamic, static = eqx.partition((args, kwargs), eqx.is_array)
        leaves, tree = jax.tree.flatten(dynamic)
        if not all(_on_the_device(x, device) for x in leaves):
            return self.jitted(*args, **kwargs)
        static_leaves, static_tree = jax.tree.flatten(static)
        avals = tuple((x.shape, x.dtype, bool(getattr(x, "weak_type", False)))
                      for x in leaves)
        try:
            signature = (tree, static_tree, tuple(static_leaves), avals,
                         _jax_trace_context())
            entry = self._memory.get(signature, False)
        except TypeError:  # an unhashable static argument: filter_jit says so
            return self.jitted(*args, **kwargs)
        if entry is False:
            with self._lock:
                entry = self._memory.get(signature, False)
                if entry is False:
                    entry = self._load_or_export(leaves, tree, static, static_leaves,
                                                 static_tree, avals)
                    self._memory[signature] = entry
        if entry is None:
            return self.jitted(*args, **kwargs)
        outs = entry.call(*leaves)
        return eqx.combine(jax.tree.unflatten(entry.out_tree, list(outs)), entry.out_static)

    def _key(self, tree, static_tree, static_leaves, avals) -> str | None:
        structure = f"{tree}\n{static_tree}"
        if not all(_plain(v) for v in static_leaves) or _ADDRESS.search(structure):
            return None  # an object without a stable printed form: no stable key
        text = "\n".join([self.name, _environment_digest(), _trace_context(), structure,
                          repr(static_leaves), repr(avals)])
        return hashlib.sha256(text.encode()).hexdigest()

    def _load_or_export(self, leaves, tree, static, static_leaves, static_tree, avals):
        key = self._key(tree, static_tree, static_leaves, avals)
        if key is None:
            return None
        path = _store / f"{self.fn.__name__}-{key[:40]}.pkl"
        entry = _read(path, self.fn.__name__)
        if entry is None:
            entry, payload = self._export(leaves, tree, static)
            if payload is not None:
                _write(path, payload)
        return entry

    def _export(self, leaves, tree, static):
        fn = self.fn
        outputs = {}

        def flat(*dynamic_leaves):
            args, kwargs = eqx.combine(jax.tree.unflatten(tree, dynamic_leaves), static)
            out_dynamic, out_static = eqx.partition(fn(*args, **kwargs), eqx.is_array)
            out_leaves, out_tree = jax.tree.flatten(out_dynamic)
            outputs["tree"], outputs["static"] = out_tree, out_static
            return out_leaves

        flat.__name__ = flat.__qualname__ = fn.__name__
        specs = [jax.ShapeDtypeStruct(x.shape, x.dtype,
                                      weak_type=bool(getattr(x, "weak_type", False)))
                 for x in leaves]
        try:
            exported = jax.export.export(jax.jit(flat))(*specs)
            blob = exported.serialize()
        except Exception:  # host callbacks and the like: not exportable
            return None, None
        skeleton = jax.tree.unflatten(outputs["tree"], [0] * outputs["tree"].num_leaves)
        try:
            payload = pickle.dumps({"format": FORMAT, "exported": bytes(blob),
                                    "skeleton": skeleton, "static": outputs["static"]})
        except Exception:
            payload = None
        return _entry(exported, fn.__name__, outputs["tree"], outputs["static"]), payload


def _entry(exported, name: str, out_tree, out_static) -> _Entry:
    def call(*leaves):
        return exported.call(*leaves)

    call.__name__ = call.__qualname__ = name  # compile events name the function
    return _Entry(call=jax.jit(call), out_tree=out_tree, out_static=out_static)


def _read(path: Path, name: str) -> _Entry | None:
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
        if payload.get("format") != FORMAT:
            return None
        exported = jax.export.deserialize(bytearray(payload["exported"]))
        return _entry(exported, name, jax.tree.structure(payload["skeleton"]),
                      payload["static"])
    except Exception:  # missing, truncated, or from another layout: export anew
        return None


def _write(path: Path, payload: bytes) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)  # atomic: a concurrent reader sees all or nothing
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def program(fn) -> Program:
    """Decorator: `fn` as a [`Program`][]."""
    return Program(fn)

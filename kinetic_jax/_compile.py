"""Counting JAX traces and compilations: the proof that a value change does not
recompile (tests, the dashboard's status, benchmarks); clearing what the engine
holds in memory."""

from __future__ import annotations

import contextlib
import threading

import jax
import jax.monitoring

from ._arrays import clear_layouts
from ._block import clear_laws


class CompileCounter(contextlib.AbstractContextManager):
    """Counts jaxpr traces and XLA backend compilations process-wide, from
    ``jax.monitoring`` duration events.

    A compilation here is a miss of JAX's in-memory cache of executables: an
    XLA compile, or a load from the persistent compilation cache (JAX times
    both as one event). A value change that compiles nothing leaves the count
    where it was, cache or no cache.

    As a context manager it listens inside the block only (``with CompileCounter()
    as c: ...; assert c.compiles == 0``); `listen` registers it for the life of
    the process instead. Thread-safe: the service counts from worker threads.
    """

    TRACE = "/jax/core/compile/jaxpr_trace_duration"
    COMPILE = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.traces = 0
        self.compiles = 0
        self.compile_seconds = 0.0
        self.recent: list[str] = []  # names of the last compiled programs (at most 8)
        self._lock = threading.Lock()

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == self.TRACE:
            with self._lock:
                self.traces += 1
        elif event == self.COMPILE:
            with self._lock:
                self.compiles += 1
                self.compile_seconds += duration
                self.recent.append(str(kwargs.get("fun_name", "?")))
                del self.recent[:-8]

    def listen(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __enter__(self) -> CompileCounter:
        return self.listen()

    def __exit__(self, *exc) -> bool:
        jax.monitoring.unregister_event_duration_listener(self)
        return False

    def snapshot(self) -> dict:
        with self._lock:
            return {"traces": self.traces, "compiles": self.compiles,
                    "compile_seconds": round(self.compile_seconds, 3),
                    "recent_compiles": list(self.recent)}


def clear_caches() -> None:
    """Clears what the engine holds in memory: JAX's compiled programs and traces
    (``jax.clear_caches``), and the books [`book_arrays`][] and the laws of the
    exact-block sampler it keeps.

    After it, every margin call runs all of its programs again, whether or not
    its book was margined before. ``jax.clear_caches`` alone leaves the kept
    layouts: the next call of a book laid out earlier skips the programs that
    lay a book out (the exact-block law's `atom_cuts`), and the first new book
    after it compiles them. A counter of compilations then sees one where no
    shape changed. The dashboard's program cache clears this way.
    """
    clear_layouts()
    clear_laws()
    jax.clear_caches()

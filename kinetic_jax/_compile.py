"""Counting JAX traces and compilations: the proof that a value change does not
recompile (tests, the dashboard's status, benchmarks); clearing what the engine
holds in memory, and how close the process is to the kernel's limit on memory
maps that every compiled program draws on."""

from __future__ import annotations

import contextlib
import threading
import warnings

import jax
import jax.monitoring

from ._arrays import clear_layouts
from ._block import clear_laws
from ._programs import clear as clear_programs


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
    (``jax.clear_caches``), the engine's programs read from the compilation
    cache's store, and the books [`book_arrays`][] and the laws of the
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
    clear_programs()
    jax.clear_caches()
    _map_watch.rearm()


# Linux: the mappings of this process, and the most one process may hold.
_MAPS = "/proc/self/maps"
_MAP_LIMIT = "/proc/sys/vm/max_map_count"


def memory_maps() -> tuple[int, int] | None:
    """``(count, limit)``: the memory mappings this process holds, and the most
    the kernel lets one process hold (Linux's ``vm.max_map_count``, 65,530 by
    default); None where ``/proc`` does not say (not Linux).

    Every XLA CPU program holds mappings of its own for as long as JAX keeps it,
    and JAX keeps every program it compiles or loads from the persistent cache
    until [`clear_caches`][], which gives them back. A process at the limit
    cannot map memory, and XLA then dies with a segmentation fault, not an
    exception. At XLA's default flags a margin call of a new shape adds about
    390 mappings (plain sampler) to 870 (exact-block), a sensitivity call about
    1,600, so about 80 new margin shapes reach the default limit
    (experiments/memory_maps.py; docs/scaling.md, 'A long-running process'). A
    long-running process that compiles for many shapes (margin calls over many
    book sizes, scenario counts and samplers; a service) should clear the caches
    before that ([`near_map_limit`][]); the dashboard does (docs/dashboard.md).
    """
    try:
        with open(_MAP_LIMIT) as f:
            limit = int(f.read())
        with open(_MAPS, "rb") as f:
            count = f.read().count(b"\n")
    except (OSError, ValueError):
        return None
    return count, limit


def near_map_limit(fraction: float = 0.5) -> bool:
    """Whether this process holds more than `fraction` of the memory mappings the
    kernel allows it ([`memory_maps`][]); False where that is not known. The
    test session and the dashboard call [`clear_caches`][] when it is True;
    a process past three quarters of the limit is warned (`MapWatch`)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: {fraction!r} is not in (0, 1)")
    maps = memory_maps()
    return maps is not None and maps[0] > fraction * maps[1]


class MapWatch:
    """After XLA compiles (or loads from the persistent cache) in this process,
    warns once (`RuntimeWarning`) when the process holds more than `fraction` of
    the memory maps the kernel allows it: past the limit XLA dies with a
    segmentation fault (see [`memory_maps`][]), and the warning names the way
    out. [`clear_caches`][] re-arms it. Importing kinetic_jax registers one for
    the process: a listener on ``jax.monitoring`` events, nothing else. It does
    not clear the caches itself: clearing under a computation that another
    thread is tracing or compiling is not safe, and only the caller knows.

    Reading the maps costs about 1 ms per 1,000 of them (the kernel formats
    every line), so the count is not read after every compile: after a reading
    of `count`, the next one comes `(fraction * limit - count) // per_program`
    compiles later (at least 1), where `per_program` bounds the maps one
    compile adds: the engine's largest, the sensitivity program, adds 1,574 at
    XLA's default flags (646 at the test session's; experiments/memory_maps.py).
    A compile adding up to 4/3 of `per_program` still cannot carry a process from
    below the threshold past the limit before the next reading (the last quarter
    of the limit is at least a third of the threshold). Far from the limit the
    maps are read every couple of dozen compiles."""

    def __init__(self, fraction: float = 0.75, per_program: int = 2_000):
        self.fraction = fraction
        self.per_program = per_program
        self.warned = False
        self.countdown = 0  # compiles until the next reading
        self._lock = threading.Lock()

    def rearm(self) -> None:
        with self._lock:
            self.warned = False
            self.countdown = 0

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event != CompileCounter.COMPILE or self.warned:
            return
        with self._lock:
            self.countdown -= 1
            if self.countdown > 0:
                return
            maps = memory_maps()
            if maps is None:  # not Linux: never again
                self.warned = True
                return
            count, limit = maps
            headroom = self.fraction * limit - count
            if headroom >= 0:
                self.countdown = max(1, int(headroom) // self.per_program)
                return
            self.warned = True
        warnings.warn(
            f"kinetic_jax: this process holds {count:,} memory maps of the {limit:,} the "
            f"kernel allows one process (vm.max_map_count); each compiled XLA program "
            f"holds its own, and at the limit the process dies with a segmentation "
            f"fault. Call kinetic_jax.clear_caches() between computations "
            f"(docs/scaling.md, 'A long-running process').", RuntimeWarning, stacklevel=2)


_map_watch = MapWatch()
jax.monitoring.register_event_duration_secs_listener(_map_watch)

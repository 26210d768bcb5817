"""Memory maps held by compiled programs (docs/scaling.md, 'A long-running process').

Margins the reference book at new shapes (scenario counts, then samplers) in one
process and prints the memory mappings each call adds (``kj.memory_maps``), the
count after ``kj.clear_caches``, the most one compile added, and what one
reading of ``/proc/self/maps`` costs. Run at the XLA flags of interest, e.g. the default::

    .venv/bin/python experiments/memory_maps.py
    XLA_FLAGS="--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false" \\
        .venv/bin/python experiments/memory_maps.py

Linux only (elsewhere ``kj.memory_maps`` is None).
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

import jax.monitoring

import kinetic_jax as kj

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--book", default=str(ROOT / "examples" / "reference_book.toml"))
    parser.add_argument("--powers", type=int, nargs=2, default=(10, 14),
                        help="scenario counts 2**a .. 2**(b-1)")
    args = parser.parse_args()
    if kj.memory_maps() is None:
        raise SystemExit("memory_maps: /proc does not say on this platform")
    book = kj.load_book(args.book)
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; limit {kj.memory_maps()[1]:,}")
    kj.portfolio_margin(book, scenarios=256, sampler="plain")  # the shared eager programs
    start = previous = kj.memory_maps()[0]
    # The most maps one compile (or load from the persistent cache) adds: what
    # MapWatch's `per_program` must bound.
    steps = {"last": start, "largest": 0}

    def after_compile(event: str, duration: float, **kwargs) -> None:
        if event == kj.CompileCounter.COMPILE:
            count = kj.memory_maps()[0]
            steps["largest"] = max(steps["largest"], count - steps["last"])
            steps["last"] = count

    jax.monitoring.register_event_duration_secs_listener(after_compile)
    rows = []
    for sampler in ("plain", "exact_block"):
        for power in range(*args.powers):
            kj.portfolio_margin(book, scenarios=2**power, sampler=sampler)
            count = kj.memory_maps()[0]
            rows.append((f"margin {sampler}", 2**power, count - previous))
            previous = count
    kj.sensitivities(book, scenarios=4096)
    count = kj.memory_maps()[0]
    rows.append(("sensitivities", 4096, count - previous))
    print(f"{'call':<22}{'scenarios':>10}{'maps added':>12}")
    for name, scenarios, added in rows:
        print(f"{name:<22}{scenarios:>10,}{added:>12,}")
    jax.monitoring.unregister_event_duration_listener(after_compile)
    print(f"largest addition by one compile: {steps['largest']:,}")
    t = time.perf_counter()
    for _ in range(10):
        kj.memory_maps()
    read_ms = (time.perf_counter() - t) / 10 * 1e3
    print(f"held {count:,} maps ({count - start:,} added); one reading {read_ms:.1f} ms")
    kj.clear_caches()
    gc.collect()
    print(f"after kj.clear_caches: {kj.memory_maps()[0]:,}")


if __name__ == "__main__":
    main()

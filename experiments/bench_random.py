"""Random-number generation on this machine: the normals a margin call draws.

The engine draws one (1,024,) block of normals per (event, block) key, vmapped
over the keys (kinetic_jax/_simulation.py). Timed here for 64 keys x 131,072
draws (8.4 M float32 normals), medians of interleaved repeats, each after a
0.2 s pause (see bench_margin.py), in one process:

- ``jax.random.normal`` with threefry (JAX's CPU lowering: a rolled loop),
  ``rbg`` and ``unsafe_rbg`` keys;
- ``kj.threefry_normal``: the same threefry normals, bit for bit, the hash
  written out so that XLA fuses it (what the engine uses), and its raw bits;
- NumPy's PCG64 ``standard_normal`` (ziggurat) and ``random``, the baseline's,
  on one thread and on two (two PCG64 streams from ``SeedSequence.spawn``, each
  filling half of the rows with ``out=`` on its own thread: NumPy's documented
  multithreaded-generation pattern; XLA uses both cores of this machine, so the
  two-thread rows are the fair comparison).

    .venv/bin/python experiments/bench_random.py [--repeats 7]
        [--out experiments/results/bench_random.json]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from bench_margin import median_time  # same directory: the 0.2 s pause before each call

import kinetic_jax as kj

KEYS, DRAWS = 64, 131072


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="experiments/results/bench_random.json")
    args = ap.parse_args()

    def keys(impl):
        return jax.random.split(jax.random.key(0, impl=impl), KEYS)

    def vmapped(draw, impl):
        ks = keys(impl)
        f = jax.jit(jax.vmap(draw))
        return lambda: f(ks)

    rng = np.random.default_rng(0)
    pool = ThreadPoolExecutor(2)
    gens = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(0).spawn(2)]

    def two_threads(method):
        def draw():
            out = np.empty((KEYS, DRAWS), np.float32)
            half = KEYS // 2
            list(pool.map(lambda t: getattr(gens[t], method)(
                dtype=np.float32, out=out[t * half:(t + 1) * half]), range(2)))
            return out
        return draw

    cases = {
        "jax.random.normal, threefry": vmapped(lambda k: jax.random.normal(k, (DRAWS,)),
                                               "threefry2x32"),
        "jax.random.normal, rbg": vmapped(lambda k: jax.random.normal(k, (DRAWS,)), "rbg"),
        "jax.random.normal, unsafe_rbg": vmapped(lambda k: jax.random.normal(k, (DRAWS,)),
                                                 "unsafe_rbg"),
        "kj.threefry_normal (engine)": vmapped(lambda k: kj.threefry_normal(k, (DRAWS,)),
                                               "threefry2x32"),
        "jax.random.bits, threefry": vmapped(lambda k: jax.random.bits(k, (DRAWS,)),
                                             "threefry2x32"),
        "NumPy PCG64 standard_normal": lambda: rng.standard_normal((KEYS, DRAWS), np.float32),
        "NumPy PCG64 random (uniform)": lambda: rng.random((KEYS, DRAWS), np.float32),
        "NumPy PCG64 standard_normal, 2 thr": two_threads("standard_normal"),
        "NumPy PCG64 random (uniform), 2 thr": two_threads("random"),
    }
    same = jax.jit(jax.vmap(lambda k: kj.threefry_normal(k, (DRAWS,))))(keys("threefry2x32"))
    ref = jax.vmap(lambda k: jax.random.normal(k, (DRAWS,), jnp.float32))(keys("threefry2x32"))
    print(f"{KEYS} x {DRAWS:,} float32 draws, {jax.devices()[0].platform}; "
          f"kj.threefry_normal == jax.random.normal bit for bit: "
          f"{bool(jnp.array_equal(same, ref))}")
    for fn in cases.values():
        jax.block_until_ready(fn())  # compile
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(median_time(fn, 1) * 1e3)
    base = np.median(times["jax.random.normal, threefry"])
    out = {"keys": KEYS, "draws": DRAWS, "repeats": args.repeats,
           "platform": jax.devices()[0].platform, "median_ms": {}, "vs_jax_random_normal": {}}
    for name, ts in times.items():
        t = float(np.median(ts))
        out["median_ms"][name], out["vs_jax_random_normal"][name] = t, float(base / t)
        print(f"  {name:36s} {t:8.1f} ms   {base / t:5.2f}x jax.random.normal")
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

"""Wall time of one margin call, compile time separately, against baselines run
in the same process.

Baselines:
- a vectorised NumPy implementation of the same hard margin pieces
  (`NumpyMargin`: float32 normal draws with scenarios on the minor axis, event
  latents, 0/1 outcomes by one broadcast compare against each contract's cuts,
  per-cluster losses by one float32 matmul, ES by np.partition) — what the
  engine replaces; and the same with the normals drawn on two threads (two
  PCG64 streams from SeedSequence.spawn, NumPy's documented pattern): XLA's CPU
  backend uses both cores of the machine, so a two-thread NumPy is the fair
  comparison. Until 2026-12-03 the baseline upcast the latents to float64 and
  wrote the outcomes one strided column per contract (NumPy / engine 3.18; the
  vectorised float32 version gives the same figure bit for bit on the same
  draws in about half its time, 70 vs 144 ms);
- margining 64 accounts: 64 separate jitted calls vs one vmapped call of
  `margin_from_outcomes` over quantity vectors on a shared simulation.

    .venv/bin/python experiments/bench_margin.py [--repeats 7] [--seeds 32]

Timings are medians of interleaved repeats (the machines are shared and noisy);
ratios are what to compare. Each timed call follows a 0.2 s pause: OpenBLAS's
worker threads spin for a while after NumPy's matmul and would otherwise take
the cores from whichever call comes next (measured: the engine's call right
after the baseline's took 1.6x as long as after a pause).

To the same standard error: the base's seed-to-seed variance of the baseline
(plain Monte Carlo) over that of one of the engine's variance-reduced samplers
(``importance``; ``exact_block``, importance sampling with the independent
block's exact law), at equal scenarios, is the variance-reduction factor VRF;
the baseline needs VRF times the scenarios (and time) to match, so the speed-up
at equal standard error is VRF x t_baseline / t_sampler. The exact-block
sampler's time is timed two ways: the jitted call given the block's law, and
`portfolio_margin` end to end (the law computed on the host each call, with the
layout and the report). VRF is given three ways: from the baseline's
spread over `--seeds` seeds (an F-ratio: noisy), from the baseline's and the
engine's plain spreads pooled (the same estimator on independent draws: twice the
degrees of freedom), and from the engine's reported standard errors (the plain
estimator's is the baseline's; the importance sampler's is conservative,
docs/benchmarks.md), averaged over the same seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri

import kinetic_jax as kj


class NumpyMargin:
    """The base ES of the book by NumPy, written as a strong engineer would.

    Prepared once per book (the engine's layout is likewise prepared outside its
    timed call): the Cholesky factor, each event's loading, each plain
    contract's cuts (lo, hi] on its event's latent, the parlays' legs, and the
    (K + 1) x C matrix of quantities by cluster (the last row the total). A call
    draws the normals in float32 with scenarios on the minor axis, forms the
    event latents (one float32 matmul, a row gather, a fused multiply-add),
    every plain contract's outcome by one broadcast compare against its cuts,
    the parlays as ANDs of their legs' rows, the loss rows by one float32 matmul
    and the ES by ``np.partition``. ``threads=2``: the normals drawn by two
    PCG64 generators from ``SeedSequence(seed).spawn(2)``, each filling half of
    the rows on its own thread (NumPy's documented multithreaded-generation
    pattern; the rest is as with one thread, NumPy's matmuls on OpenBLAS's
    threads either way). No parlays' AND beyond legs.
    """

    def __init__(self, book: kj.Book, threads: int = 1):
        h = book.hierarchy
        self.chol = np.linalg.cholesky(kj.correlation_of(h)).astype(np.float32)
        events = book.events()
        names = list(events)
        cl = {c: k for k, c in enumerate(h.cluster_names)}
        self.ev_cluster = np.array([cl[book.contracts[events[e][0]].cluster] for e in names])
        a = np.asarray(h.loadings, np.float64)[self.ev_cluster]
        self.a = a.astype(np.float32)[:, None]
        self.b = np.sqrt(1 - a * a).astype(np.float32)[:, None]
        probs = book.simulation_probabilities()
        q = book.net_quantities()
        ev_of = {i: k for k, e in enumerate(names) for i in events[e]}
        n = len(book.contracts)
        lo = np.full(n, -np.inf, np.float32)
        hi = np.full(n, np.inf, np.float32)
        cum: dict[int, float] = {}
        plain = []
        for i, c in enumerate(book.contracts):
            if c.type == "parlay":
                continue
            plain.append(i)
            p = probs[i]
            if c.type in ("above", "binary"):
                lo[i] = ndtri(1 - p)
            elif c.type == "below":
                hi[i] = ndtri(p)
            else:
                low = cum.get(ev_of[i], 0.0)
                cum[ev_of[i]] = low + p
                lo[i] = ndtri(low) if low > 0 else -np.inf
                hi[i] = ndtri(min(low + p, 1))
        self.plain = np.array(plain)
        self.ev = np.array([ev_of[i] for i in plain])
        self.lo, self.hi = lo[self.plain][:, None], hi[self.plain][:, None]
        ids = book.contract_ids
        self.parlays = [(i, [ids.index(leg) for leg in c.legs])
                        for i, c in enumerate(book.contracts) if c.type == "parlay"]
        price = np.array([c.price for c in book.contracts], np.float32)
        qty = np.array([q[c] for c in ids], np.float32)
        cl_of = np.array([cl[c.cluster] for c in book.contracts])
        w = (np.eye(len(cl), dtype=np.float32)[cl_of] * qty[:, None]).T
        self.w = np.vstack([w, w.sum(0, keepdims=True)])  # (K + 1, C)
        self.const = (self.w @ price)[:, None]
        self.n, self.k, self.e = n, len(cl), len(names)
        self.confidence = book.settings.confidence
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def normals(self, scenarios: int, seed: int) -> np.ndarray:
        rows = self.k + self.e
        if self.pool is None:
            return np.random.default_rng(seed).standard_normal((rows, scenarios), np.float32)
        out = np.empty((rows, scenarios), np.float32)
        gens = [np.random.Generator(np.random.PCG64(s))
                for s in np.random.SeedSequence(seed).spawn(self.threads)]
        cut = np.linspace(0, rows, self.threads + 1).astype(int)
        list(self.pool.map(lambda t: gens[t].standard_normal(dtype=np.float32,
                                                            out=out[cut[t]:cut[t + 1]]),
                           range(self.threads)))
        return out

    def __call__(self, scenarios: int, seed: int) -> float:
        draws = self.normals(scenarios, seed)
        z, eta = draws[:self.k], draws[self.k:]
        x = (self.chol @ z)[self.ev_cluster] * self.a + self.b * eta  # (E, S) float32
        xs = x[self.ev]
        yes = np.empty((self.n, scenarios), np.float32)
        yes[self.plain] = (xs > self.lo) & (xs <= self.hi)
        for i, legs in self.parlays:
            yes[i] = np.logical_and.reduce(yes[legs] > 0, axis=0)
        losses = self.const - self.w @ yes  # (K + 1, S)
        k = scenarios * (1 - self.confidence)
        m = int(np.floor(k)) + 1
        tail = -np.sort(-np.partition(losses, -m, axis=1)[:, -m:], axis=1)
        wts = np.clip(k - np.arange(m), 0, 1)
        return float((tail @ wts / k)[-1])


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        time.sleep(0.2)
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--book", default="examples/reference_book.toml")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--accounts", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--out", default="experiments/results/bench_margin.json")
    args = ap.parse_args()
    book = kj.load_book(args.book)
    s = book.settings
    arrays, layout, params = kj.margin_inputs(book)
    top = kj.tail_size(s.scenarios, s.confidence)
    key = jax.random.key(s.seed)

    t0 = time.perf_counter()
    jax.block_until_ready(kj.margin_jit(arrays, params, key, s.scenarios, top))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    kj.portfolio_margin(book, sampler="plain")
    first_report_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    jax.block_until_ready(kj.margin_jit(arrays, params, key, s.scenarios, top, "importance"))
    compile_is = time.perf_counter() - t0
    t0 = time.perf_counter()
    law, exact_positions = kj.sampler_law(arrays)
    law_first_s = time.perf_counter() - t0  # compiles the cuts' program once
    law_s = median_time(lambda: kj.sampler_law(arrays)[0].probs, args.repeats)
    t0 = time.perf_counter()
    jax.block_until_ready(kj.margin_jit(arrays, params, key, s.scenarios, top, "exact_block",
                                        law=law))
    compile_block = time.perf_counter() - t0

    def sampled(sampler, k=key):
        return kj.margin_jit(arrays, params, k, s.scenarios, top, sampler,
                             law=law if sampler == "exact_block" else None)

    engine = lambda: kj.margin_jit(arrays, params, key, s.scenarios, top).margin  # noqa: E731
    importance = lambda: sampled("importance").margin  # noqa: E731
    block = lambda: sampled("exact_block").margin  # noqa: E731
    # host layout + call + report; the default sampler is exact_block
    report = lambda: kj.portfolio_margin(book, sampler="plain")  # noqa: E731
    block_report = lambda: kj.portfolio_margin(book)  # noqa: E731
    numpy_1t, numpy_2t = NumpyMargin(book), NumpyMargin(book, threads=2)
    baseline = lambda: numpy_1t(s.scenarios, s.seed)  # noqa: E731
    baseline_2t = lambda: numpy_2t(s.scenarios, s.seed)  # noqa: E731
    baseline(), baseline_2t()  # warm (thread pool, page faults)
    timed = {"numpy": baseline, "numpy_2t": baseline_2t, "engine": engine, "importance": importance,
             "exact_block": block, "report": report, "exact_block_report": block_report}
    times = {name: [] for name in timed}
    for _ in range(args.repeats):
        for name, fn in timed.items():
            times[name].append(median_time(fn, 1))
    times = {name: float(np.median(t)) for name, t in times.items()}
    t_engine, t_is, t_report, t_numpy = (times[n] for n in ("engine", "importance", "report",
                                                             "numpy"))
    t_block, t_block_report = times["exact_block"], times["exact_block_report"]
    t_numpy_2t = times["numpy_2t"]

    # The base's spread over seeds: the baseline, the engine plain, importance and
    # exact-block.
    base = {n: [] for n in ("numpy", "numpy_2t", "plain", "importance", "exact_block")}
    se = {n: [] for n in ("plain", "importance", "exact_block")}
    for seed in range(args.seeds):
        k = jax.random.key(seed)
        base["numpy"].append(numpy_1t(s.scenarios, seed))
        base["numpy_2t"].append(numpy_2t(s.scenarios, seed))
        for sampler in se:
            r = sampled(sampler, k)
            base[sampler].append(float(r.base))
            se[sampler].append(float(r.base_se))
    var = {n: float(np.var(x, ddof=1)) for n, x in base.items()}
    # NumPy's and the engine's plain runs are the same estimator on independent
    # draws: their pooled variance is the steadier plain-sampling reference.
    vrf = {n: {"spread": var["numpy"] / var[n],
               "pooled": 0.5 * (var["numpy"] + var["plain"]) / var[n],
               "reported": float(np.mean(np.square(se["plain"])) / np.mean(np.square(se[n])))}
           for n in ("importance", "exact_block")}
    vrf_spread, vrf_pooled, vrf_reported = (vrf["importance"][w] for w in ("spread", "pooled",
                                                                            "reported"))
    base_np, base_plain, base_is = base["numpy"], base["plain"], base["importance"]
    se_plain, se_is = se["plain"], se["importance"]
    var_np, var_plain, var_is = var["numpy"], var["plain"], var["importance"]
    # Correctness against the engine: each NumPy baseline's mean base over the
    # seeds against the engine's plain mean, in combined standard errors of the
    # two means (independent draws: the same estimator).
    check = {n: float((np.mean(base[n]) - np.mean(base_plain))
                      / np.sqrt((var[n] + var_plain) / args.seeds))
             for n in ("numpy", "numpy_2t")}

    # Many accounts on one simulation.
    rng = np.random.default_rng(0)
    qs = jnp.asarray(arrays.quantity[None, :] * rng.uniform(0.5, 1.5, (args.accounts, 1)),
                     arrays.quantity.dtype)

    @eqx.filter_jit
    def shared(arrays, qs):
        yes = kj.outcomes(key, arrays, s.scenarios)
        one = lambda q: kj.margin_from_outcomes(  # noqa: E731
            eqx.tree_at(lambda a: a.quantity, arrays, q), params, yes, top).margin
        return jax.lax.map(one, qs)

    t0 = time.perf_counter()
    jax.block_until_ready(shared(arrays, qs))
    shared_compile = time.perf_counter() - t0
    t_shared = median_time(lambda: shared(arrays, qs), 3)
    t_separate = median_time(lambda: [kj.margin_jit(eqx.tree_at(lambda a: a.quantity, arrays, q),
                                                 params, key, s.scenarios, top).margin
                                      for q in qs], 3)
    out = {
        "scenarios": s.scenarios, "contracts": len(book.contracts),
        "compile_seconds": compile_s, "first_portfolio_margin_seconds": first_report_s,
        "importance_compile_seconds": compile_is,
        "engine_call_seconds": t_engine, "portfolio_margin_seconds": t_report,
        "importance_call_seconds": t_is,
        "numpy_baseline": "NumpyMargin: vectorised, float32, scenarios on the minor axis",
        "numpy_baseline_seconds": t_numpy, "numpy_over_engine": t_numpy / t_engine,
        "numpy_2t_baseline_seconds": t_numpy_2t, "numpy_2t_over_engine": t_numpy_2t / t_engine,
        "seeds": args.seeds,
        "numpy_mean_minus_engine_plain_mean_in_se": check,
        "base_sd": {"numpy": var_np ** 0.5, "numpy_2t": var["numpy_2t"] ** 0.5,
                    "plain": var_plain ** 0.5, "importance": var_is ** 0.5},
        "base_mean": {"numpy": float(np.mean(base_np)),
                      "numpy_2t": float(np.mean(base["numpy_2t"])),
                      "plain": float(np.mean(base_plain)),
                      "importance": float(np.mean(base_is))},
        "reported_se_mean": {"plain": float(np.mean(se_plain)),
                             "importance": float(np.mean(se_is))},
        "vrf_spread": vrf_spread, "vrf_pooled": vrf_pooled, "vrf_reported": vrf_reported,
        "equal_se_speedup_spread": vrf_spread * t_numpy / t_is,
        "equal_se_speedup_pooled": vrf_pooled * t_numpy / t_is,
        "equal_se_speedup_reported": vrf_reported * t_numpy / t_is,
        "equal_se_speedup_vs_numpy_2t": {w: vrf["importance"][w] * t_numpy_2t / t_is
                                         for w in ("spread", "pooled", "reported")},
        "exact_block": {
            "positions": exact_positions, "law_host_seconds": law_s,
            "law_host_first_seconds": law_first_s,
            "compile_seconds": compile_block, "call_seconds": t_block,
            "portfolio_margin_seconds": t_block_report,
            "base_sd": var["exact_block"] ** 0.5,
            "base_mean": float(np.mean(base["exact_block"])),
            "reported_se_mean": float(np.mean(se["exact_block"])),
            "vrf": vrf["exact_block"],
            "equal_se_speedup": {w: v * t_numpy / t_block for w, v in vrf["exact_block"].items()},
            "equal_se_speedup_end_to_end": {w: v * t_numpy / t_block_report
                                            for w, v in vrf["exact_block"].items()},
            "equal_se_speedup_vs_numpy_2t": {w: v * t_numpy_2t / t_block
                                             for w, v in vrf["exact_block"].items()},
            "equal_se_speedup_end_to_end_vs_numpy_2t": {
                w: v * t_numpy_2t / t_block_report for w, v in vrf["exact_block"].items()},
        },
        "accounts": args.accounts, "accounts_shared_seconds": t_shared,
        "accounts_separate_seconds": t_separate, "shared_compile_seconds": shared_compile,
        "separate_over_shared": t_separate / t_shared,
        "devices": [str(d) for d in jax.devices()],
    }
    print(f"reference book: {len(book.contracts)} contracts, {s.scenarios} scenarios, "
          f"{jax.devices()[0].platform}")
    print(f"  compile (first jitted call)          {compile_s:8.2f} s")
    print(f"  first portfolio_margin incl. layout  {first_report_s:8.3f} s")
    print(f"  jitted margin call (median)          {t_engine * 1e3:8.1f} ms")
    print(f"  portfolio_margin, host + call        {t_report * 1e3:8.1f} ms")
    print(f"  importance sampler call (median)     {t_is * 1e3:8.1f} ms   "
          f"(compile {compile_is:.2f} s)")
    print(f"  NumPy baseline (vectorised, float32) {t_numpy * 1e3:8.1f} ms   "
          f"ratio NumPy / engine = {t_numpy / t_engine:.2f}   (goal >= 2)")
    print(f"  NumPy, normals on two threads        {t_numpy_2t * 1e3:8.1f} ms   "
          f"ratio NumPy / engine = {t_numpy_2t / t_engine:.2f}   (goal >= 2)")
    print(f"  NumPy's mean base - engine plain mean, in combined s.e.: "
          f"{check['numpy']:+.2f} (one thread), {check['numpy_2t']:+.2f} (two threads)")
    print(f"  base over {args.seeds} seeds: sd NumPy {var_np ** 0.5:.1f}, engine plain "
          f"{var_plain ** 0.5:.1f}, importance {var_is ** 0.5:.1f}; mean reported s.e. plain "
          f"{np.mean(se_plain):.1f}, importance {np.mean(se_is):.1f}")
    print(f"  VRF (plain / importance): {vrf_spread:.2f} from NumPy's spread, {vrf_pooled:.2f} "
          f"from NumPy's and the engine's plain spreads pooled, {vrf_reported:.2f} from the "
          f"reported s.e.")
    print(f"  to the same standard error: NumPy / engine = {vrf_spread * t_numpy / t_is:.1f} "
          f"(NumPy's spread), {vrf_pooled * t_numpy / t_is:.1f} (pooled), "
          f"{vrf_reported * t_numpy / t_is:.1f} (reported s.e.)   (goal >= 10); against two-thread "
          f"NumPy " + ", ".join(f"{v:.1f}" for v in out["equal_se_speedup_vs_numpy_2t"].values()))
    b = out["exact_block"]
    print(f"  exact-block sampler ({exact_positions} positions by their exact law): call "
          f"{t_block * 1e3:.1f} ms (compile {compile_block:.2f} s), portfolio_margin end to "
          f"end {t_block_report * 1e3:.1f} ms (the law on the host {law_s * 1e3:.1f} ms; "
          f"{law_first_s:.2f} s the first time)")
    print(f"  base sd {b['base_sd']:.1f} (mean {b['base_mean']:,.1f}), mean reported s.e. "
          f"{b['reported_se_mean']:.1f}; VRF {vrf['exact_block']['spread']:.2f} (NumPy's "
          f"spread), {vrf['exact_block']['pooled']:.2f} (pooled), "
          f"{vrf['exact_block']['reported']:.2f} (reported s.e.)")
    print("  to the same standard error, NumPy / exact-block: "
          + ", ".join(f"{b['equal_se_speedup'][w]:.1f} ({w})" for w in vrf["exact_block"])
          + "; end to end: "
          + ", ".join(f"{b['equal_se_speedup_end_to_end'][w]:.1f} ({w})"
                      for w in vrf["exact_block"]) + "   (goal >= 10)")
    print("  against two-thread NumPy: "
          + ", ".join(f"{b['equal_se_speedup_vs_numpy_2t'][w]:.1f} ({w})"
                      for w in vrf["exact_block"])
          + "; end to end: "
          + ", ".join(f"{b['equal_se_speedup_end_to_end_vs_numpy_2t'][w]:.1f} ({w})"
                      for w in vrf["exact_block"]))
    print(f"  {args.accounts} accounts, shared simulation  {t_shared * 1e3:8.1f} ms   "
          f"vs separate calls {t_separate * 1e3:.1f} ms: ratio {t_separate / t_shared:.2f}"
          f" (compile {shared_compile:.1f} s)")
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

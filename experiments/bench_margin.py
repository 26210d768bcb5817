"""Wall time of one margin call, compile time separately, against baselines run
in the same process.

Baselines:
- a straightforward NumPy implementation of the same hard margin pieces
  (normal draws, event latents, 0/1 outcomes, per-cluster losses, ES by
  np.partition) — what the engine replaces;
- margining 64 accounts: 64 separate jitted calls vs one vmapped call of
  `margin_from_outcomes` over quantity vectors on a shared simulation.

    .venv/bin/python experiments/bench_margin.py [--repeats 7]

Timings are medians of interleaved repeats (the machines are shared and noisy);
ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtri

import kinetic_jax as kj


def numpy_margin_pieces(book: kj.Book, scenarios: int, seed: int) -> float:
    """The base ES of the book by plain NumPy (no parlays' AND beyond legs)."""
    rng = np.random.default_rng(seed)
    h = book.hierarchy
    corr = kj.correlation_of(h)
    chol = np.linalg.cholesky(corr)
    events = book.events()
    names = list(events)
    cl = {c: k for k, c in enumerate(h.cluster_names)}
    ev_cluster = np.array([cl[book.contracts[events[e][0]].cluster] for e in names])
    a = h.loadings[ev_cluster]
    z = rng.standard_normal((scenarios, len(cl)), dtype=np.float32)
    eta = rng.standard_normal((scenarios, len(names)), dtype=np.float32)
    x = (z @ chol.T.astype(np.float32))[:, ev_cluster] * a + np.sqrt(1 - a * a) * eta
    probs = book.simulation_probabilities()
    q = book.net_quantities()
    ev_of = {i: k for k, e in enumerate(names) for i in events[e]}
    yes = np.ones((scenarios, len(book.contracts)), np.float32)
    cum: dict[int, float] = {}
    for i, c in enumerate(book.contracts):
        if c.type == "parlay":
            continue
        col = x[:, ev_of[i]]
        p = probs[i]
        if c.type in ("above", "binary"):
            yes[:, i] = col > ndtri(1 - p)
        elif c.type == "below":
            yes[:, i] = col <= ndtri(p)
        else:
            lo = cum.get(ev_of[i], 0.0)
            cum[ev_of[i]] = lo + p
            yes[:, i] = (col > ndtri(lo) if lo > 0 else True) & (col <= ndtri(min(lo + p, 1)))
    ids = book.contract_ids
    for i, c in enumerate(book.contracts):
        if c.type == "parlay":
            yes[:, i] = np.prod(yes[:, [ids.index(leg) for leg in c.legs]], axis=1)
    price = np.array([c.price for c in book.contracts], np.float32)
    qty = np.array([q[c] for c in ids], np.float32)
    cl_of = np.array([cl[c.cluster] for c in book.contracts])
    onehot = np.eye(len(cl), dtype=np.float32)[cl_of] * qty[:, None]
    losses = (price - yes) @ onehot
    stacked = np.concatenate([losses, losses.sum(1, keepdims=True)], axis=1).T
    k = scenarios * (1 - book.settings.confidence)
    m = int(np.floor(k)) + 1
    tail = -np.sort(-np.partition(stacked, -m, axis=1)[:, -m:], axis=1)
    w = np.clip(k - np.arange(m), 0, 1)
    return float((tail @ w / k)[-1])


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--book", default="examples/reference_book.toml")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--accounts", type=int, default=64)
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
    kj.portfolio_margin(book)
    first_report_s = time.perf_counter() - t0

    engine = lambda: kj.margin_jit(arrays, params, key, s.scenarios, top).margin  # noqa: E731
    report = lambda: kj.portfolio_margin(book)  # noqa: E731  (host layout + call + report)
    baseline = lambda: numpy_margin_pieces(book, s.scenarios, s.seed)  # noqa: E731
    t_engine, t_report, t_numpy = [], [], []
    for _ in range(args.repeats):
        t_numpy.append(median_time(baseline, 1))
        t_engine.append(median_time(engine, 1))
        t_report.append(median_time(report, 1))
    t_engine, t_report, t_numpy = map(np.median, (t_engine, t_report, t_numpy))

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
        "engine_call_seconds": t_engine, "portfolio_margin_seconds": t_report,
        "numpy_baseline_seconds": t_numpy, "numpy_over_engine": t_numpy / t_engine,
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
    print(f"  NumPy baseline (same pieces)         {t_numpy * 1e3:8.1f} ms   "
          f"ratio NumPy / engine = {t_numpy / t_engine:.2f}")
    print(f"  {args.accounts} accounts, shared simulation  {t_shared * 1e3:8.1f} ms   "
          f"vs separate calls {t_separate * 1e3:.1f} ms: ratio {t_separate / t_shared:.2f}"
          f" (compile {shared_compile:.1f} s)")
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

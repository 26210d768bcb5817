"""How much of the base's Monte-Carlo noise an independent block of the book carries.

A contract whose every leg resolves off an event of a cluster with loading 0
(the default hierarchy's Sports) is independent of everything else in the
model: its event noise touches no factor. The whole book's loss then splits as
L = R + S with R (the rest) and S (the independent block's loss) independent,
and the base ES_alpha(R + S) can be estimated from *all pairs* (R_i, S_j) instead
of the N simulated pairs (R_i, S_i): conditional Monte Carlo over S. This script
measures the variance-reduction factor (VRF: plain variance / variance, same
seeds, equal scenarios) of three estimators of the reference book's base, all
on the plain sampler's draws (`kj.outcomes`):

- ``direct``: the engine's estimator, ES of the N losses R_i + S_i;
- ``pairs``: ES of the N^2 pairs R_i + S_j (S from the same N scenarios);
- ``pairs_big_s``: ES of the pairs R_i + S_j with S from M = `--big` draws of
  their own stream (nearly S's exact law; the block's events only);
- ``pairs_exact_s``: ES of R + S with S's *exact* law (`kj.block_law`, the
  engine's, which the exact-block sampler uses): with
  integer quantities, S = S0 - g K with K an integer, and K's law is the
  convolution of the laws of the block's components (events joined by a
  parlay), each enumerated over the intervals between its events' cuts; the
  variance left is R's alone.

ES of the pairs (`pairs_es`, JAX, float32): VaR v solves P(R + S > v) = 1 - alpha
by bisection (sorted S, one binary search per R_i), then
ES = v + E[(R + S - v)^+] / (1 - alpha).

`lattice_pairs_es` does the same against the exact law on its lattice: one index
computation and gather per R_i per step instead of a binary search into M draws.

With ``--timing``, the cost of those estimators in JAX (jitted, float32, the R
draws weighted as importance sampling would weight them) at the reference
book's 131,072 draws against M = `--big` block draws, beside the engine's
importance-sampled margin call on the same book, in the same process (medians
of 7 calls after a compiling one): whether the estimator fits in a margin call.

    .venv/bin/python experiments/independent_block_study.py [--seeds 48]
        [--scenarios 32768] [--big 1048576] [--timing]
        [--out experiments/results/independent_block_study.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import kinetic_jax as kj


def direct_es(losses: np.ndarray, alpha: float) -> float:
    """ES of equally likely losses, the boundary draw taken fractionally."""
    tail = np.sort(losses)[::-1]
    k = losses.size * (1 - alpha)
    m = int(np.floor(k))
    return float((tail[:m].sum() + (k - m) * tail[m]) / k)


def _es_of_sum(r, w, alpha, steps, bracket, tail):
    """ES_alpha of R + S, R and S independent, from R draws `r` with likelihood-ratio
    weights `w` and S's survival `tail(x)` = (P(S > x), E[S; S > x]) per draw:
    `steps` bisection steps on the VaR v inside `bracket` = (lowest, highest) value
    of S, then ES = v + E[(R + S - v)^+] / (1 - alpha)."""
    mass = w / r.size

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        high = jnp.sum(mass * tail(mid - r)[0]) > 1 - alpha
        return jnp.where(high, mid, lo), jnp.where(high, hi, mid)

    lowest, highest = bracket
    lo, hi = jax.lax.fori_loop(0, steps, step, (jnp.min(r) + lowest - 1,
                                                jnp.max(r) + highest + 1))
    p, m = tail(hi - r)
    return hi + jnp.sum(mass * (m + p * (r - hi))) / (1 - alpha)


@functools.partial(jax.jit, static_argnames="steps")
def pairs_es(r, w, s, alpha, steps: int = 40):
    """ES_alpha of R + S, R and S independent, from every pair (r_i, s_j): R draws
    `r` with likelihood-ratio weights `w` (ones for plain draws), block draws `s`
    (any order), `steps` bisection steps on the VaR (a binary search per draw)."""
    s = jnp.sort(s)
    upper = jnp.concatenate([jnp.zeros(1, s.dtype), jnp.cumsum(s[::-1])])

    def tail(x):
        count = s.size - jnp.searchsorted(s, x, side="right")
        return count / s.size, upper[count] / s.size

    return _es_of_sum(r, w, alpha, steps, (s[0], s[-1]), tail)


@functools.partial(jax.jit, static_argnames="steps")
def lattice_pairs_es(r, w, origin, spacing, probs, alpha, steps: int = 40):
    """ES_alpha of R + S, R and S independent: R draws `r` with likelihood-ratio
    weights `w`, S's exact law on the lattice origin + spacing * j (`probs[j]`);
    `steps` bisection steps on the VaR. Each step is one index computation and
    gather per draw (no search): the first lattice point above x is
    floor((x - origin) / spacing) + 1."""
    size = probs.shape[0]
    values = origin + spacing * jnp.arange(size, dtype=probs.dtype)
    p_above = jnp.concatenate([jnp.cumsum(probs[::-1])[::-1], jnp.zeros(1, probs.dtype)])
    m_above = jnp.concatenate([jnp.cumsum((probs * values)[::-1])[::-1],
                               jnp.zeros(1, probs.dtype)])

    def tail(x):  # a rounding slip at a tie moves no ES (the pair's excess is 0)
        j = jnp.clip(jnp.floor((x - origin) / spacing).astype(jnp.int32) + 1, 0, size)
        return p_above[j], m_above[j]

    return _es_of_sum(r, w, alpha, steps, (values[0], values[-1]), tail)


def _median_seconds(fn, *args, repeats: int = 7) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        time.sleep(0.2)  # let BLAS threads settle (see bench_margin.py)
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def timing(book: kj.Book, big: int, origin: float, spacing: float, probs) -> dict:
    arrays, _, params = kj.margin_inputs(book)
    n = book.settings.scenarios
    top = kj.tail_size(n, book.settings.confidence)
    key = jax.random.key(0)
    margin = kj.margin_jit
    call = _median_seconds(lambda k: margin(arrays, params, k, n, top, "importance"), key)
    rng = np.random.default_rng(0)
    r = jnp.asarray(rng.normal(0, 5000, n), jnp.float32)
    w = jnp.asarray(rng.exponential(1.0, n), jnp.float32)
    s = jnp.asarray(rng.normal(0, 3000, big), jnp.float32)
    alpha = book.settings.confidence
    sorted_s = jnp.sort(s)
    out = {"scenarios": n, "big": big, "importance_margin_call_s": call,
           "pairs_es_s": _median_seconds(pairs_es, r, w, s, alpha),
           "pairs_es_presorted_s": _median_seconds(pairs_es, r, w, sorted_s, alpha),
           "lattice_pairs_es_s": _median_seconds(lattice_pairs_es, r, w, origin, spacing, probs,
                                                 alpha)}
    print(f"importance margin call {call * 1e3:.0f} ms; pairs ES over {n:,} x {big:,}: "
          f"{out['pairs_es_s'] * 1e3:.0f} ms ({out['pairs_es_presorted_s'] * 1e3:.0f} ms "
          f"with S already sorted); against the exact law ({probs.size} lattice points): "
          f"{out['lattice_pairs_es_s'] * 1e3:.0f} ms")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=48)
    ap.add_argument("--scenarios", type=int, default=32768)
    ap.add_argument("--big", type=int, default=1 << 20)
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--out", default="experiments/results/independent_block_study.json")
    args = ap.parse_args()

    book = kj.load_book("examples/reference_book.toml")
    arrays, layout, params = kj.margin_inputs(book)
    alpha = book.settings.confidence
    law, _ = kj.block_law(arrays)  # the engine's block and law (see kinetic_jax/_block.py)
    if law is None:
        raise SystemExit("the block's exact law needs lattice quantities and small components")
    block = np.asarray(law.rest) == 0
    q = np.asarray(arrays.quantity, np.float64)
    p = np.asarray(arrays.price, np.float64)
    held = q != 0
    clusters = sorted({layout.cluster_names[c] for c in np.asarray(arrays.cluster)[block & held]})
    print(f"independent block: {int((block & held).sum())} of {int(held.sum())} positions "
          f"({', '.join(clusters)})")

    def split(key, n):
        loss = (p - np.asarray(kj.outcomes(key, arrays, n), np.float64)) * q
        return loss[:, ~block].sum(axis=1), loss[:, block].sum(axis=1)

    _, s_big = split(jax.random.key(0x5EED), args.big)
    # The lattice without the law's zero padding above its highest point.
    points = int(np.flatnonzero(np.asarray(law.probs))[-1]) + 1
    origin, spacing = float(law.origin), float(law.spacing)
    probs = law.probs[:points]
    values = origin + spacing * np.arange(points)
    alone = kj.exact_expected_shortfall(values, np.asarray(probs, np.float64), alpha)
    print(f"the block's exact law: {probs.size} lattice points {spacing:g} apart "
          f"(its ES alone {alone:,.2f})")
    ones = jnp.ones(args.scenarios, jnp.float32)

    def pairs(r, s):
        return float(pairs_es(jnp.asarray(r, jnp.float32), ones, jnp.asarray(s, jnp.float32),
                              alpha))

    rows = []
    for seed in range(args.seeds):
        r, s = split(jax.random.key(1000 + seed), args.scenarios)
        exact = lattice_pairs_es(jnp.asarray(r, jnp.float32), ones, origin, spacing, probs,
                                 alpha)
        rows.append((direct_es(r + s, alpha), pairs(r, s), pairs(r, s_big), float(exact)))
    figures = np.array(rows)
    names = ("direct", "pairs", "pairs_big_s", "pairs_exact_s")
    plain_var = figures[:, 0].var(ddof=1)
    out = {"book": "examples/reference_book.toml", "seeds": args.seeds,
           "scenarios": args.scenarios, "big": args.big,
           "independent_positions": int((block & held).sum()),
           "positions": int(held.sum()), "estimators": {}}
    print(f"{'estimator':<13}{'mean':>11}{'sd':>9}{'VRF':>7}")
    for k, name in enumerate(names):
        col = figures[:, k]
        vrf = float(plain_var / col.var(ddof=1))
        out["estimators"][name] = {"mean": float(col.mean()), "sd": float(col.std(ddof=1)),
                                   "vrf": vrf}
        print(f"{name:<13}{col.mean():>11,.1f}{col.std(ddof=1):>9.1f}{vrf:>7.2f}")
    out["block_law_points"] = int(probs.size)
    if args.timing:
        out["timing"] = timing(book, args.big, origin, spacing, probs)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

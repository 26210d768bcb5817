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
  their own stream (nearly S's exact law; the block's events only).

ES of the pairs: VaR v solves P(R + S > v) = 1 - alpha by bisection (sorted S,
one binary search per R_i), then ES = v + E[(R + S - v)^+] / (1 - alpha).

    .venv/bin/python experiments/independent_block_study.py [--seeds 48]
        [--scenarios 32768] [--big 1048576]
        [--out experiments/results/independent_block_study.json]
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

import kinetic_jax as kj


def independent_slots(arrays: kj.BookArrays) -> np.ndarray:
    """Slots whose every atom (its own, or each parlay leg's) lies on an event of a
    cluster with loading 0 (padding slots included: their quantity is 0)."""
    loading = np.asarray(arrays.loading)[np.asarray(arrays.event_cluster)]  # per event
    atom_free = np.append(loading[np.asarray(arrays.event)] == 0, True)  # + "always YES"
    return np.all(atom_free[np.asarray(arrays.legs)], axis=1)


def direct_es(losses: np.ndarray, alpha: float) -> float:
    """ES of equally likely losses, the boundary draw taken fractionally."""
    tail = np.sort(losses)[::-1]
    k = losses.size * (1 - alpha)
    m = int(np.floor(k))
    return float((tail[:m].sum() + (k - m) * tail[m]) / k)


def pairs_es(r: np.ndarray, s: np.ndarray, alpha: float, steps: int = 80) -> float:
    """ES of R + S with R and S independent, from every pair (r_i, s_j)."""
    s = np.sort(s)
    upper = np.concatenate([[0.0], np.cumsum(s[::-1])])  # sums of the j largest S

    def above(v):  # count of S_j > v - r_i, per i
        return s.size - np.searchsorted(s, v - r, side="right")

    lo, hi = r.min() + s.min() - 1.0, r.max() + s.max() + 1.0
    for _ in range(steps):  # invariant: P(> lo) > 1 - alpha >= P(> hi)
        mid = 0.5 * (lo + hi)
        if above(mid).sum() / (r.size * s.size) > 1 - alpha:
            lo = mid
        else:
            hi = mid
    count = above(hi)
    excess = (upper[count] + count * (r - hi)).sum() / (r.size * s.size)
    return float(hi + excess / (1 - alpha))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=48)
    ap.add_argument("--scenarios", type=int, default=32768)
    ap.add_argument("--big", type=int, default=1 << 20)
    ap.add_argument("--out", default="experiments/results/independent_block_study.json")
    args = ap.parse_args()

    book = kj.load_book("examples/reference_book.toml")
    arrays, layout, params = kj.margin_inputs(book)
    alpha = book.settings.confidence
    block = independent_slots(arrays)
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
    rows = []
    for seed in range(args.seeds):
        r, s = split(jax.random.key(1000 + seed), args.scenarios)
        rows.append((direct_es(r + s, alpha), pairs_es(r, s, alpha), pairs_es(r, s_big, alpha)))
    figures = np.array(rows)
    names = ("direct", "pairs", "pairs_big_s")
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
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()

"""Bias and variance of the smoothed sensitivity estimators, by temperature.

Reference: central common-random-number finite differences of the *hard*
margin at 4x the scenarios, averaged over seeds. Candidates: the
straight-through and the fully smoothed estimators at several temperatures,
each over independent seeds at the default scenario count. Prints, per
parameter, the mean, bias (in reference standard errors and relative) and the
seed-to-seed standard deviation.

    .venv/bin/python experiments/smoothing_study.py [--seeds 6] [--scenarios 131072]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import kinetic_jax as kj


def parameters(layout):
    node = {n: i for i, n in enumerate(layout.node_names)}
    clus = {n: i for i, n in enumerate(layout.cluster_names)}
    ids = {n: i for i, n in enumerate(layout.contract_ids)}
    return [
        ("rho[risk]", "rho", node["risk"], 0.02),
        ("rho[crypto]", "rho", node["crypto"], 0.02),
        ("loading[BTC]", "loading", clus["BTC"], 0.02),
        ("loading[SPX]", "loading", clus["SPX"], 0.02),
        ("price[BTC-100K-DEC]", "price", ids["BTC-100K-DEC"], 0.01),
        ("price[SPX-6000-DEC]", "price", ids["SPX-6000-DEC"], 0.01),
        ("price[PRES-2028-A]", "price", ids["PRES-2028-A"], 0.01),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--book", default="examples/reference_book.toml")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--scenarios", type=int, default=131072)
    ap.add_argument("--reference-factor", type=int, default=4)
    ap.add_argument("--temperatures", default="0.01,0.02,0.05,0.1,0.2")
    ap.add_argument("--out", default="experiments/results/smoothing_study.json")
    args = ap.parse_args()
    book = kj.load_book(args.book)
    arrays, layout, params = kj.margin_inputs(book)
    n = args.scenarios
    nref = n * args.reference_factor
    top, topref = kj.tail_size(n, 0.99), kj.tail_size(nref, 0.99)
    specs = parameters(layout)

    def hard(a, seed):
        return float(kj.margin_jit(a, params, jax.random.key(seed), nref, topref).margin)

    reference = {}
    t0 = time.perf_counter()
    for name, field, i, h in specs:
        fds = []
        for seed in range(args.seeds):
            base = getattr(arrays, field)
            up = eqx_set(arrays, field, base.at[i].add(h))
            down = eqx_set(arrays, field, base.at[i].add(-h))
            fds.append((hard(up, 1000 + seed) - hard(down, 1000 + seed)) / (2 * h))
        reference[name] = (float(np.mean(fds)), float(np.std(fds, ddof=1) / np.sqrt(len(fds))))
    print(f"reference FD ({nref} scenarios, {args.seeds} seeds): {time.perf_counter() - t0:.0f}s")
    rows = []
    for estimator in ("straight_through", "smooth"):
        for t in map(float, args.temperatures.split(",")):
            grads = {name: [] for name, *_ in specs}
            for seed in range(args.seeds):
                res = kj.sensitivity_jit(arrays, params, jax.random.key(seed), n, top,
                                      jnp.float32(t), estimator)
                for name, field, i, _ in specs:
                    grads[name].append(float(getattr(res.jacobian, field)[0, i]))
            for name in grads:
                g = np.array(grads[name])
                ref, ref_se = reference[name]
                rows.append({
                    "estimator": estimator, "temperature": t, "parameter": name,
                    "mean": float(g.mean()), "sd": float(g.std(ddof=1)),
                    "reference": ref, "reference_se": ref_se,
                    "bias": float(g.mean() - ref),
                })
    print(f"{'estimator':<17}{'t':>6} {'parameter':<22}{'mean':>11}{'ref':>11}{'±ref':>9}"
          f"{'bias':>10}{'sd':>10}")
    for r in rows:
        print(f"{r['estimator']:<17}{r['temperature']:>6g} {r['parameter']:<22}{r['mean']:>11.1f}"
              f"{r['reference']:>11.1f}{r['reference_se']:>9.1f}{r['bias']:>10.1f}{r['sd']:>10.1f}")
    summary = {}
    for r in rows:
        key = (r["estimator"], r["temperature"])
        scale = max(abs(r["reference"]), 100.0)
        summary.setdefault(key, []).append((r["bias"] / scale) ** 2 + (r["sd"] / scale) ** 2)
    print("\nroot-mean-square relative error (bias and sd, scale max(|ref|, 100)):")
    for (est, t), errs in summary.items():
        print(f"  {est:<17} t={t:<5g} {np.sqrt(np.mean(errs)):.3f}")
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "reference": reference, "rows": rows}, fh, indent=1)


def eqx_set(arrays, field, value):
    import equinox as eqx

    return eqx.tree_at(lambda a: getattr(a, field), arrays, value)


if __name__ == "__main__":
    main()

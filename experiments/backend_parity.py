"""The reference book's figures on two backends (e.g. a GPU against the CPU), and
what TF32 matmuls would cost in accuracy on this one.

    JAX_PLATFORMS=cpu .venv/bin/python experiments/backend_parity.py --out cpu.json
    .venv/bin/python experiments/backend_parity.py --out gpu.json --tf32
    .venv/bin/python experiments/backend_parity.py --compare cpu.json gpu.json

Each run writes, for the reference book (its own settings), the margin report's
figures in float32 and in float64 (``dtype="float64"`` under
``jax.enable_x64``; the draws are the same in both precisions, see
docs/methodology.md, "Precision"), and the sensitivity report's per-position
``d_quantity``, ``d_quantity_buy`` and ``d_quantity_sell`` (float32). `--compare`
prints each figure's difference between the two runs: the same draws on both
backends (threefry is specified bit for bit), so the differences are float32
arithmetic alone.

`--tf32` measures the loss matmul the engine pins to HIGHEST precision: the whole
book's loss in each of N scenarios, sum_i q_i (p_i - YES_i), YES_i independent
Bernoulli(p_i), computed in float32 at HIGHEST and at DEFAULT precision against
float64 NumPy; prints the largest and mean absolute error per scenario, the
bound 2^-11 sum_i |q_i| max(p_i, 1 - p_i) (docs/methodology.md, "Matmul precision
HIGHEST"), the 99% ES of each, and the two matmuls' times (median of 20, after a
warm-up). On a CPU both precisions are float32 and agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import kinetic_jax as kj

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"
FIGURES = ("margin", "base", "floor", "var", "standard_error", "base_standard_error",
           "worst_case_loss")


def _report_figures(report: kj.MarginReport) -> dict:
    out = {name: float(getattr(report, name)) for name in FIGURES
           if getattr(report, name) is not None}
    out["cluster_es"] = {c.name: float(c.es) for c in report.clusters}
    return out


def figures(book: kj.Book) -> dict:
    out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "jax": jax.__version__}
    out["float32"] = _report_figures(kj.portfolio_margin(book))
    with jax.enable_x64(True):
        out["float64"] = _report_figures(kj.portfolio_margin(book, dtype="float64"))
    sens = kj.sensitivities(book)
    out["sensitivities"] = {
        cid: {k: float(p[k]) for k in ("d_quantity", "d_quantity_buy", "d_quantity_sell")}
        for cid, p in sens.positions.items()}
    return out


def tf32(book: kj.Book, scenarios: int) -> dict:
    q = np.array([book.net_quantities()[c.id] for c in book.contracts])
    p = np.array([c.price for c in book.contracts])
    rng = np.random.default_rng(0)
    yes = (rng.random((scenarios, len(p))) < p).astype(np.float32)
    a = jnp.asarray(p.astype(np.float32)[None, :] - yes)
    w = jnp.asarray(q.astype(np.float32))
    exact = (p[None, :] - yes.astype(np.float64)) @ q
    bound = 2.0 ** -11 * np.sum(np.abs(q) * np.maximum(p, 1 - p))
    mass = np.full(scenarios, 1.0 / scenarios)
    out = {"scenarios": scenarios, "bound_per_scenario": bound,
           "es99_exact": kj.exact_expected_shortfall(exact, mass, 0.99)}
    for name, precision in (("highest", jax.lax.Precision.HIGHEST),
                            ("default", jax.lax.Precision.DEFAULT)):
        f = jax.jit(lambda a, w, precision=precision: jnp.matmul(a, w, precision=precision))
        losses = np.asarray(jax.block_until_ready(f(a, w)), np.float64)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            jax.block_until_ready(f(a, w))
            times.append(time.perf_counter() - t0)
        err = np.abs(losses - exact)
        out[name] = {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
                     "es99": kj.exact_expected_shortfall(losses, mass, 0.99),
                     "matmul_s": statistics.median(times)}
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, float):
            flat[name] = value
    return flat


def compare(a_path: str, b_path: str) -> None:
    a, b = (json.loads(Path(x).read_text()) for x in (a_path, b_path))
    print(f"{a['backend']} ({a['device_kind']}) against {b['backend']} ({b['device_kind']})")
    fa, fb = _flatten(a), _flatten(b)
    worst = {}
    for name in sorted(set(fa) & set(fb)):
        if name.startswith("tf32"):
            continue
        diff = abs(fa[name] - fb[name])
        group = name.split(".")[0]
        rel = diff / max(abs(fa[name]), 1e-12)
        if not name.startswith("sensitivities"):
            print(f"  {name:40s} {fa[name]:16.6f} {fb[name]:16.6f}  diff {diff:.3g} "
                  f"(rel {rel:.2g})")
        worst[group] = max(worst.get(group, 0.0), diff)
    for group, diff in worst.items():
        print(f"largest difference, {group}: {diff:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write this run's figures (JSON) here")
    parser.add_argument("--tf32", action="store_true", help="also measure TF32 matmuls")
    parser.add_argument("--tf32-scenarios", type=int, default=131072)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    book = kj.load_book(REFERENCE)
    out = figures(book)
    if args.tf32:
        out["tf32"] = tf32(book, args.tf32_scenarios)
        t = out["tf32"]
        print(f"TF32 check ({t['scenarios']:,} scenarios, bound {t['bound_per_scenario']:.2f} "
              f"per scenario, exact ES99 {t['es99_exact']:.3f}):")
        for name in ("highest", "default"):
            r = t[name]
            print(f"  {name:8s} max |error| {r['max_abs_error']:.4g}  "
                  f"mean {r['mean_abs_error']:.4g}  ES99 {r['es99']:.3f}  "
                  f"matmul {r['matmul_s'] * 1e3:.3f} ms")
    print(json.dumps({k: out[k] for k in ("backend", "device_kind", "jax")}),
          "margin", out["float32"]["margin"], "float64", out["float64"]["margin"])
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

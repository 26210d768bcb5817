"""Variance reduction and sensitivity noise, measured over many seeds (issue 7).

Part 1, samplers (``importance``; ``exact_block``, importance sampling with
the independent block's exact law, its law computed once per book on the host
and passed to the jitted call). For each book and sampler: the
variance-reduction factor VRF = Var_plain / Var_sampler over `--seeds`
independent seeds at equal scenario counts, of the base, the floor and each
cluster ES; the cost per call (median wall time after compilation, same
process); the efficiency VRF x cost_plain / cost_sampler; and a bias check
against plain Monte Carlo at 16x the scenarios (z = difference / combined
standard error). Books (`--books`, default the first four): the reference book,
sports and parlays only, a long/short crypto pair, a large ladder book; and by
name the books with marks instead of 0/1 outcomes, ``reference_2day`` (the
reference book at a 2-day horizon) and ``perps_and_strip`` (no exact block:
the exact-block sampler runs on the empty law).

Part 2, sensitivities of the reference book's margin: mean, seed-to-seed
standard deviation and coefficient of variation of every dM/drho and
dM/dloading over `--sens-seeds` seeds, for the default configuration (the
conditional estimator on its own importance-sampled run of 8x the margin's
draws) and the ones it replaced (conditional on 1x draws, importance or plain;
the smoothed "hybrid" estimator); the mean reported standard error of the
conditional estimator beside its spread, and the seconds per call.

    .venv/bin/python experiments/variance_study.py [--seeds 32] [--scenarios 32768]
        [--sens-seeds 8] [--sens-scenarios 131072] [--skip-samplers | --skip-sensitivities]
        [--books reference,...] [--ref-seeds 4] [--out experiments/results/variance_study.json]
"""

from __future__ import annotations

import argparse
import json
import time

import equinox as eqx
import jax
import numpy as np

import kinetic_jax as kj


def _sports_book(n_games: int = 24, seed: int = 3) -> kj.Book:
    rng = np.random.default_rng(seed)
    contracts, positions = [], []
    for g in range(n_games):
        gid = f"GAME-{g}"
        price = float(round(rng.uniform(0.2, 0.8), 2))
        contracts.append(kj.Contract(gid, "Sports", "binary", price))
        positions.append(kj.Position(gid, float(rng.choice([-1, 1]) * rng.integers(200, 2000))))
    for k in range(0, n_games - 1, 3):
        pid = f"PARLAY-{k}"
        contracts.append(kj.Contract(pid, "Parlays", "parlay", 0.2,
                                     legs=(f"GAME-{k}", f"GAME-{k + 1}")))
        positions.append(kj.Position(pid, float(rng.choice([-1, 1]) * rng.integers(500, 3000))))
    return kj.Book(tuple(contracts), tuple(positions), kj.default_hierarchy(), kj.Settings())


def _pair_book() -> kj.Book:
    contracts = (kj.Contract("BTC-100K", "BTC", "above", 0.55, event="BTC-DEC", threshold=1e5),
                 kj.Contract("ETH-5K", "ETH", "above", 0.38, event="ETH-DEC", threshold=5e3))
    positions = (kj.Position("BTC-100K", 1000.0), kj.Position("ETH-5K", -1000.0))
    return kj.Book(contracts, positions, kj.default_hierarchy(), kj.Settings())


def _books(large_events: int) -> dict[str, kj.Book]:
    """The default four, then the books with marks instead of 0/1 outcomes (no
    exact block: the default sampler runs on the empty law), by ``--books``."""
    return {
        "reference": kj.load_book("examples/reference_book.toml"),
        "sports_parlays": _sports_book(),
        "crypto_pair": _pair_book(),
        f"ladders_{large_events * 10}": kj.ladder_book(large_events, 10),
        "reference_2day": kj.load_book("examples/reference_book.toml").with_settings(
            horizon_days=2.0),
        "perps_and_strip": kj.load_book("examples/perps_and_strip.toml"),
    }


DEFAULT_BOOKS = 4  # the first four of _books


def _timed(fn, *args):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


SAMPLERS = kj.SAMPLERS  # plain first: the others' VRF is against it


def sampler_study(book: kj.Book, seeds: int, scenarios: int, ref_seeds: int = 4) -> dict:
    arrays, layout, params = kj.margin_inputs(book)
    top = kj.tail_size(scenarios, book.settings.confidence)
    out: dict = {"clusters": list(layout.cluster_names)}
    figures = {}
    law, out["exact_positions"] = kj.sampler_law(arrays)
    for sampler in SAMPLERS:
        given = law if sampler == "exact_block" else None  # an argument, not a constant
        run = eqx.filter_jit(lambda k, g, s=sampler, n=scenarios, t=top:
                             kj.margin_arrays(arrays, params, k, n, t, s, law=g))
        cost = _timed(run, jax.random.key(0), given)
        rows = []
        for seed in range(seeds):
            r = run(jax.random.key(1000 + seed), given)
            rows.append(np.concatenate([[float(r.base), float(r.floor), float(r.base_se)],
                                        np.asarray(r.cluster_es, np.float64)]))
        figures[sampler] = np.array(rows)
        out[sampler] = {"seconds_per_call": cost,
                        "base_mean": float(figures[sampler][:, 0].mean()),
                        "base_sd": float(figures[sampler][:, 0].std(ddof=1)),
                        "base_mean_reported_se": float(figures[sampler][:, 2].mean())}
    # Reference: plain Monte Carlo at 16x the scenarios, `ref_seeds` seeds.
    big = 16 * scenarios
    ref_run = eqx.filter_jit(lambda k: kj.margin_arrays(
        arrays, params, k, big, kj.tail_size(big, book.settings.confidence)))
    ref = np.array([[float((r := ref_run(jax.random.key(7 + s))).base), float(r.base_se)]
                    for s in range(ref_seeds)])
    ref_mean, ref_se = ref[:, 0].mean(), ref[:, 1].mean() / np.sqrt(ref_seeds)
    p = figures["plain"]

    def vrf(q, col):
        # A figure exact at any N under plain sampling (a tail inside one atom) has
        # sd 0; importance weights then leave only float32 rounding (sd < 1e-5
        # relative): reported as None ("exact under both"), not as a ratio of noise.
        vp, vq = p[:, col].var(ddof=1), q[:, col].var(ddof=1)
        tiny = (1e-5 * max(abs(p[:, col].mean()), 1.0)) ** 2
        if vp <= tiny and vq <= tiny:
            return None
        return float("inf") if vq == 0 else float(vp / vq)

    for sampler in SAMPLERS[1:]:
        q = figures[sampler]
        v = {"base": vrf(q, 0), "floor": vrf(q, 1),
             **{name: vrf(q, 3 + k) for k, name in enumerate(layout.cluster_names)}}
        ratio = out["plain"]["seconds_per_call"] / out[sampler]["seconds_per_call"]
        suffix = "" if sampler == "importance" else f"_{sampler}"  # v1.2's keys kept
        out["vrf" + suffix] = v
        out["efficiency_base" + suffix] = None if v["base"] is None else v["base"] * ratio
    for sampler, f in figures.items():
        se = np.hypot(f[:, 0].std(ddof=1) / np.sqrt(seeds), ref_se)
        diff = f[:, 0].mean() - ref_mean
        out[sampler]["bias_z_vs_16x_plain"] = float(diff / se) if se > 0 else None
        out[sampler]["bias_vs_16x_plain"] = float(diff)
    out["plain_16x_base"] = float(ref_mean)
    out["plain_16x_seeds"] = ref_seeds
    return out


# (label, estimator, jump_scenarios factor or None, jump sampler): the default
# first, then what it replaced.
SENSITIVITY_CONFIGS = (
    ("conditional, default (importance, 8x draws)", "conditional", None, None),
    ("conditional, importance, 1x draws", "conditional", 1, "importance"),
    ("conditional, plain, 1x draws (v1.2 default)", "conditional", 1, "plain"),
    ("hybrid (smoothed, v1.1 default)", "hybrid", None, None),
)


def sensitivity_study(seeds: int, scenarios: int, configs=SENSITIVITY_CONFIGS) -> dict:
    """Seed-to-seed spread of every dM/drho and dM/dloading of the reference book
    under each configuration; seconds per call after the first (compiled) one."""
    book = kj.load_book("examples/reference_book.toml").with_settings(scenarios=scenarios)
    out = {}
    for label, estimator, factor, sampler in configs:
        rows, errs, times = [], [], []
        jump = None if factor is None else factor * scenarios
        kw = {"estimator": estimator, "jump_scenarios": jump, "sampler": sampler}
        kj.sensitivities(book, seed=999, **kw)  # compiles; not counted
        for seed in range(seeds):
            start = time.perf_counter()
            s = kj.sensitivities(book, seed=seed, **kw)
            times.append(time.perf_counter() - start)
            rows.append({**{f"rho.{k}": v for k, v in s.rho.items()},
                         **{f"loading.{k}": v for k, v in s.loading.items()}})
            errs.append({**{f"rho.{k}": v for k, v in s.rho_standard_error.items()},
                         **{f"loading.{k}": v for k, v in s.loading_standard_error.items()}})
        margin = s.margin
        table = {}
        for name in rows[0]:
            v = np.array([r[name] for r in rows])
            mean, sd = float(v.mean()), float(v.std(ddof=1))
            entry = {"mean": mean, "sd": sd, "cv": abs(sd / mean) if mean else None,
                     "above_1pct_of_margin": abs(mean) > 0.01 * margin}
            if errs[0]:
                entry["mean_reported_se"] = float(np.mean([e[name] for e in errs]))
            table[name] = entry
        gated = [e["cv"] for e in table.values() if e["above_1pct_of_margin"]]
        out[label] = {"seconds_per_call": float(np.median(times)),
                      "jump_scenarios": s.jump_scenarios, "jump_sampler": s.jump_sampler,
                      "max_cv_above_1pct": max(gated) if gated else None,
                      "figures": table}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--scenarios", type=int, default=32768)
    ap.add_argument("--sens-seeds", type=int, default=8)
    ap.add_argument("--sens-scenarios", type=int, default=131072)
    ap.add_argument("--large-events", type=int, default=100)
    ap.add_argument("--skip-sensitivities", action="store_true")
    ap.add_argument("--skip-samplers", action="store_true",
                    help="only the sensitivity part (part 2)")
    ap.add_argument("--ref-seeds", type=int, default=4,
                    help="seeds of the bias check's plain run at 16x the scenarios")
    ap.add_argument("--books", default=None,
                    help="comma-separated subset of the sampler part's books")
    ap.add_argument("--out", default="experiments/results/variance_study.json")
    args = ap.parse_args()
    result = {"seeds": args.seeds, "scenarios": args.scenarios, "books": {}}
    books = {}
    if not args.skip_samplers:
        every = _books(args.large_events)
        wanted = args.books.split(",") if args.books else list(every)[:DEFAULT_BOOKS]
        unknown = sorted(set(wanted) - set(every))
        if unknown:
            raise SystemExit(f"--books: {', '.join(unknown)} not among {', '.join(every)}")
        books = {name: every[name] for name in wanted}
    for name, book in books.items():
        r = sampler_study(book, args.seeds, args.scenarios, args.ref_seeds)
        result["books"][name] = r
        print(f"\n{name} ({r['exact_positions']} positions in the independent block): cost "
              + ", ".join(f"{s} {r[s]['seconds_per_call'] * 1e3:.0f} ms" for s in SAMPLERS))
        for suffix in ("", "_exact_block"):
            v = r["vrf" + suffix]
            print(f"  {suffix[1:] or 'importance'}: base VRF {v['base']}, floor VRF "
                  f"{v['floor']}, efficiency {r['efficiency_base' + suffix]}")
            print("    cluster VRF: " + ", ".join(
                f"{k} {'exact' if x is None else f'{x:.2f}'}" for k, x in v.items()
                if k not in ("base", "floor")))
        for s in SAMPLERS:
            z = r[s]["bias_z_vs_16x_plain"]
            print(f"  {s:10s} base {r[s]['base_mean']:.1f} sd {r[s]['base_sd']:.1f} "
                  f"(reported se {r[s]['base_mean_reported_se']:.1f}); vs 16x plain "
                  f"{r[s]['bias_vs_16x_plain']:+.1f}" + ("" if z is None else f" (z {z:+.2f})"))
    if not args.skip_sensitivities:
        result["sensitivities"] = sensitivity_study(args.sens_seeds, args.sens_scenarios)
        for est, r in result["sensitivities"].items():
            print(f"\nsensitivities, {est}: {r['seconds_per_call']:.2f} s/call, largest cv "
                  f"{r['max_cv_above_1pct']:.1%} (goal <= 5%)")
            for name, e in r["figures"].items():
                if e["above_1pct_of_margin"]:
                    se = (f", reported se {e['mean_reported_se']:.1f}"
                          if "mean_reported_se" in e else "")
                    print(f"  {name:18s} mean {e['mean']:9.1f} sd {e['sd']:7.1f} "
                          f"cv {e['cv']:.1%}{se}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=lambda x: None)
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()

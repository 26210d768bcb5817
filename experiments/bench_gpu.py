"""Throughput on whatever JAX runs on (GPU, TPU or CPU), over every local device.

    .venv/bin/python experiments/bench_gpu.py [--contracts 1024] [--scenarios 1048576]
        [--margin-scenarios 131072] [--repeats 5] [--devices N] [--sweep-count 16]
        [--no-sweep] [--json]

Three figures, each the median of REPEATS timed calls after one untimed call
(compilation reported separately), timed with ``block_until_ready``:

- contract-scenarios per second: a synthetic book of about CONTRACTS contracts
  (`kj.random_book`) margined at SCENARIOS scenarios by `kj.margin_arrays`
  (jitted), spread over DEVICES devices (default: all); CONTRACTS x SCENARIOS /
  seconds per call.
- margin calls per second: `kj.portfolio_margin` of the reference book at
  MARGIN_SCENARIOS scenarios (host layout and report included).
- sweep points per second: `kj.sweep` of the reference book over a
  SWEEP_COUNT x SWEEP_COUNT rho.risk x rho.crypto grid at MARGIN_SCENARIOS
  scenarios (when the installed kinetic_jax has `kj.sweep`).

Loss matmuls run at HIGHEST precision (no TF32). On a CPU use small sizes, e.g.
``--contracts 128 --scenarios 65536 --margin-scenarios 16384 --sweep-count 4
--repeats 3``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax

import kinetic_jax as kj

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "reference_book.toml"


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of `repeats` later calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contracts", type=int, default=1024)
    parser.add_argument("--scenarios", type=int, default=1 << 20)
    parser.add_argument("--margin-scenarios", type=int, default=131072)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", type=int, default=None,
                        help="devices to spread scenarios over (default: all)")
    parser.add_argument("--sweep-count", type=int, default=16)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in ("contracts", "scenarios", "margin_scenarios", "repeats", "sweep_count"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)} is not positive")
    mesh = kj.scenario_mesh(args.devices)
    out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
           "devices": mesh.size, "jax": jax.__version__}

    # 1. Contract-scenarios per second on a large synthetic book.
    book = kj.random_book(args.contracts, seed=0)
    n_contracts = len(book.contracts)
    arrays, _, params = kj.margin_inputs(book)
    key = jax.random.key(0)
    top = kj.tail_size(args.scenarios, 0.99)
    use_mesh = mesh if mesh.size > 1 else None
    if use_mesh is not None:
        arrays, params, key = kj.replicate((arrays, params, key), mesh)
    first, per_call = timed(
        lambda: kj.margin_jit(arrays, params, key, args.scenarios, top, "plain", None, use_mesh),
        args.repeats)
    out["throughput"] = {
        "contracts": n_contracts, "scenarios": args.scenarios,
        "first_call_s": first, "call_s": per_call,
        "contract_scenarios_per_s": n_contracts * args.scenarios / per_call,
    }

    # 2. Margin calls per second: the reference book, host-level entry point.
    ref = kj.load_book(REFERENCE)
    first, per_call = timed(
        lambda: kj.portfolio_margin(ref, scenarios=args.margin_scenarios, devices=mesh),
        args.repeats)
    out["margin_calls"] = {"scenarios": args.margin_scenarios, "first_call_s": first,
                           "call_s": per_call, "calls_per_s": 1.0 / per_call}

    # 3. Sweep points per second (when kj.sweep exists).
    if not args.no_sweep and hasattr(kj, "sweep"):
        c = args.sweep_count
        axes = [f"rho.risk=0:0.6:{c}", f"rho.crypto=0.35:0.95:{c}"]
        first, per_call = timed(
            lambda: kj.sweep(ref, axes, scenarios=args.margin_scenarios, progress=False),
            max(1, args.repeats // 2))
        out["sweep"] = {"points": c * c, "scenarios": args.margin_scenarios,
                        "first_call_s": first, "call_s": per_call,
                        "points_per_s": c * c / per_call}

    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['backend']} ({out['device_kind']}), {out['devices']} device(s), "
          f"JAX {out['jax']}")
    t = out["throughput"]
    print(f"contract-scenarios per second: {t['contract_scenarios_per_s']:,.0f}  "
          f"({t['contracts']} contracts x {t['scenarios']:,} scenarios in "
          f"{t['call_s'] * 1e3:,.1f} ms; first call {t['first_call_s']:.2f} s)")
    m = out["margin_calls"]
    print(f"margin calls per second:       {m['calls_per_s']:,.2f}  (reference book, "
          f"{m['scenarios']:,} scenarios, {m['call_s'] * 1e3:,.1f} ms per call; first "
          f"{m['first_call_s']:.2f} s)")
    if "sweep" in out:
        s = out["sweep"]
        print(f"sweep points per second:       {s['points_per_s']:,.1f}  ({s['points']} points "
              f"at {s['scenarios']:,} scenarios in {s['call_s']:.2f} s; first "
              f"{s['first_call_s']:.2f} s)")


if __name__ == "__main__":
    main()

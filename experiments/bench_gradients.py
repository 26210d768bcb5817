"""What a full gradient of the margin costs, against one forward margin call.

On the reference book (and optionally a larger ``random_book``) at 131,072
scenarios, every candidate is compiled ahead of time (its compile time is
reported on its own) and then timed in interleaved rounds, each round timing the
baseline and every candidate once, with ``block_until_ready``:

- ``forward``: one hard margin call (``kj.margin_jit``), the
  baseline;
- ``grad smooth`` / ``grad hard``: value and gradient of the margin with respect
  to every quantity, price, rho and loading (``jax.value_and_grad`` of
  ``differentiable_margin`` with that estimator);
- ``jacobian hybrid``: the whole sensitivity report's Jacobian
  (``sensitivity_arrays``, estimator ``"hybrid"``: margin, base, floor and every
  cluster ES, i.e. 3 + K rows, from a hard and a smoothed forward pass);
- ``finite differences``: central differences of the hard margin over all
  parameters, 2 forward calls per parameter (same compiled forward). Timed on a
  rotating subset of parameters each round and scaled to all of them (the cost is
  exactly linear in the count); ``--full-fd`` also times one complete sweep and
  checks the quantity derivatives against the gradient.

Ratios are taken within each round (candidate / forward of the same round) and
the median over rounds is reported, so slow drifts in machine load cancel.

    .venv/bin/python experiments/bench_gradients.py [--rounds 7] [--large 255] [--full-fd]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import kinetic_jax as kj

FIELDS = ("quantity", "price", "rho", "loading")
STEPS = {"quantity": 10.0, "price": 1e-3, "rho": 1e-2, "loading": 1e-2}  # central-FD steps


def _value_and_grad(variables, arrays, params, key, scenarios, top, temperature, estimator):
    def margin(v):
        return kj.differentiable_margin(v, arrays, params, key, scenarios, top, temperature,
                                        estimator).margin

    return jax.value_and_grad(margin)(variables)


grad_jit = eqx.filter_jit(_value_and_grad)


def parameters(arrays, layout):
    """(field, index) of every real parameter: quantities and prices of the book's
    contracts (not the padding slots), every hierarchy node's rho, every loading."""
    n = layout.n_contracts
    out = [("quantity", i) for i in range(n)] + [("price", i) for i in range(n)]
    out += [("rho", j) for j in range(arrays.rho.shape[0])]
    out += [("loading", j) for j in range(arrays.loading.shape[0])]
    return out


def perturbed(arrays, field, i, h):
    value = getattr(arrays, field)
    return eqx.tree_at(lambda a: getattr(a, field), arrays, value.at[i].add(h))


def _fd_sweep(forward, pick, arrays, params, key, scenarios, top):
    """Central differences of the hard margin over `pick`: two forward calls per
    parameter, dispatched asynchronously (the caller blocks on the result).
    Returns {(field, i): (margin up, margin down, step)}."""
    fd = {}
    for field, i in pick:
        h = STEPS[field]
        up = forward(perturbed(arrays, field, i, h), params, key, scenarios, top)
        dn = forward(perturbed(arrays, field, i, -h), params, key, scenarios, top)
        fd[(field, i)] = (up.margin, dn.margin, h)
    return fd


def timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, out


def compile_timed(jitted, *args):
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - t0, compiled


def bench_book(label, book, *, scenarios, rounds, fd_subset, full_fd, temperature):
    book = book.with_settings(scenarios=scenarios)
    s = book.settings
    arrays, layout, params = kj.margin_inputs(book)
    key = jax.random.key(s.seed)
    top = kj.tail_size(s.scenarios, s.confidence)
    variables = kj.MarginVars.of(arrays)
    temp = jnp.asarray(temperature, arrays.price.dtype)
    params_list = parameters(arrays, layout)
    n_params = len(params_list)
    print(f"\n== {label}: {layout.n_contracts} contracts ({arrays.quantity.shape[0]} slots), "
          f"{arrays.event_cluster.shape[0]} event slots, {arrays.rho.shape[0]} nodes, "
          f"{arrays.loading.shape[0]} clusters; {n_params} parameters; N = {s.scenarios}")

    fwd_args = (arrays, params, key, s.scenarios, top)
    cand_args = {
        "grad smooth": (variables, arrays, params, key, s.scenarios, top, temp, "smooth"),
        "grad hard": (variables, arrays, params, key, s.scenarios, top, temp, "hard"),
        "jacobian hybrid": (arrays, params, key, s.scenarios, top, temp, "hybrid"),
    }
    jitted = {"grad smooth": grad_jit, "grad hard": grad_jit, "jacobian hybrid": kj.sensitivity_jit}
    compile_s, compiled = {}, {}
    compile_s["forward"], compiled["forward"] = compile_timed(kj.margin_jit, *fwd_args)
    for name, args in cand_args.items():
        compile_s[name], compiled[name] = compile_timed(jitted[name], *args)
    compile_s["finite differences"] = 0.0  # reuses the compiled forward
    for name, t in compile_s.items():
        print(f"  compile {name:<20}{t:8.2f} s")

    # Warm-up (first execution allocates buffers) and values for the record.
    _, fwd = timed(compiled["forward"], *fwd_args)
    values = {"margin": float(fwd.margin), "binding": kj.BINDING[int(fwd.binding)]}
    grads = {}
    for name, args in cand_args.items():
        _, out = timed(compiled[name], *args)
        if name.startswith("grad"):
            value, g = out
            grads[name] = g
            values[f"{name} value"] = float(value)
        else:
            values[f"{name} margin"] = float(out.result.margin)
            jac = out.jacobian
    for name, g in grads.items():
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g)), name

    # Warm up the eager perturbation ops (one small compile per field shape).
    warm = [next(p for p in params_list if p[0] == f) for f in FIELDS]
    jax.block_until_ready(_fd_sweep(compiled["forward"], warm, arrays, params, key,
                                    s.scenarios, top))

    times = {name: [] for name in ["forward", *cand_args, "finite differences"]}
    ratios = {name: [] for name in times if name != "forward"}
    rng = np.random.default_rng(0)
    order = rng.permutation(n_params)
    subset = min(fd_subset, n_params)
    for r in range(rounds):
        t_fwd, _ = timed(compiled["forward"], *fwd_args)
        times["forward"].append(t_fwd)
        for name, args in cand_args.items():
            t, _ = timed(compiled[name], *args)
            times[name].append(t)
        # A rotating subset of FD parameters, scaled to all of them.
        pick = [params_list[i] for i in np.roll(order, -r * subset)[:subset]]
        t0 = time.perf_counter()
        jax.block_until_ready(_fd_sweep(compiled["forward"], pick, arrays, params, key,
                                        s.scenarios, top))
        times["finite differences"].append((time.perf_counter() - t0) * n_params / subset)
        for name in ratios:
            ratios[name].append(times[name][-1] / t_fwd)
        print(f"  round {r + 1}/{rounds}: forward {t_fwd * 1e3:.0f} ms, "
              + ", ".join(f"{n} {ratios[n][-1]:.2f}x" for n in ratios), flush=True)

    med = {name: float(np.median(v)) for name, v in times.items()}
    med_ratio = {name: float(np.median(v)) for name, v in ratios.items()}
    fd_over_grad = [fd / g for fd, g in zip(times["finite differences"], times["grad smooth"])]
    fd_over_jac = [fd / g for fd, g in zip(times["finite differences"], times["jacobian hybrid"])]
    out = {
        "label": label,
        "contracts": layout.n_contracts,
        "contract_slots": int(arrays.quantity.shape[0]),
        "event_slots": int(arrays.event_cluster.shape[0]),
        "nodes": int(arrays.rho.shape[0]),
        "clusters": int(arrays.loading.shape[0]),
        "parameters": n_params,
        "jacobian_rows": 3 + int(arrays.loading.shape[0]),
        "scenarios": s.scenarios,
        "rounds": rounds,
        "fd_subset_per_round": subset,
        "values": values,
        "compile_s": compile_s,
        "median_s": med,
        "all_s": times,
        "median_ratio_to_forward": med_ratio,
        "median_fd_over_grad_smooth": float(np.median(fd_over_grad)),
        "median_fd_over_jacobian_hybrid": float(np.median(fd_over_jac)),
    }

    if full_fd:
        # One complete central-FD sweep, timed, and a check of the quantity
        # derivatives: the hard margin is piecewise linear in quantities, so the
        # CRN difference quotient should match the exact (hybrid) derivative.
        t0 = time.perf_counter()
        fd = jax.block_until_ready(_fd_sweep(compiled["forward"], params_list, arrays, params,
                                             key, s.scenarios, top))
        sweep = time.perf_counter() - t0
        t_fwd, t_grad = med["forward"], med["grad smooth"]  # medians of the rounds
        dq_fd = np.array([(float(u) - float(d)) / (2 * h) for (f, _), (u, d, h) in fd.items()
                          if f == "quantity"])
        dq_exact = np.asarray(jac.quantity[0, : layout.n_contracts], np.float64)
        err = np.abs(dq_fd - dq_exact)
        out["full_fd"] = {
            "sweep_s": sweep,
            "forward_calls": 2 * n_params,
            "sweep_s_per_call": sweep / (2 * n_params),
            "sweep_over_forward": sweep / t_fwd,
            "sweep_over_grad_smooth": sweep / t_grad,
            "quantity_check_max_abs_error": float(err.max()),
            "quantity_check_max_abs_derivative": float(np.abs(dq_exact).max()),
        }
        print(f"  full FD sweep: {sweep:.1f} s = {sweep / t_fwd:.0f}x forward (median), "
              f"{sweep / t_grad:.0f}x grad; |dM/dq FD - exact| <= {err.max():.3g} "
              f"(max |dM/dq| {np.abs(dq_exact).max():.3g})")
    return out


def table(results) -> str:
    lines = []
    for res in results:
        lines.append(f"\n{res['label']}: {res['contracts']} contracts, {res['parameters']} "
                     f"parameters, N = {res['scenarios']}, median of {res['rounds']} rounds")
        lines.append(f"  {'candidate':<22}{'compile s':>10}{'run ms':>10}{'x forward':>11}")
        for name in res["median_s"]:
            ratio = 1.0 if name == "forward" else res["median_ratio_to_forward"][name]
            extra = " (scaled from subsets)" if name == "finite differences" else ""
            lines.append(f"  {name:<22}{res['compile_s'][name]:>10.2f}"
                         f"{res['median_s'][name] * 1e3:>10.0f}{ratio:>11.2f}{extra}")
        lines.append(f"  finite differences / grad smooth: "
                     f"{res['median_fd_over_grad_smooth']:.0f}x; "
                     f"/ jacobian hybrid: {res['median_fd_over_jacobian_hybrid']:.0f}x")
        if "full_fd" in res:
            f = res["full_fd"]
            lines.append(f"  full FD sweep measured once: {f['sweep_s']:.1f} s "
                         f"({f['forward_calls']} calls, {f['sweep_s_per_call'] * 1e3:.0f} ms each) "
                         f"= {f['sweep_over_forward']:.0f}x median forward = "
                         f"{f['sweep_over_grad_smooth']:.0f}x median grad smooth")
            lines.append(f"  quantity check: max |central FD - autodiff dM/dq| = "
                         f"{f['quantity_check_max_abs_error']:.3g} (max |dM/dq| "
                         f"{f['quantity_check_max_abs_derivative']:.3g}; FD straddles kinks)")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--book", default="examples/reference_book.toml")
    ap.add_argument("--scenarios", type=int, default=131072)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--fd-subset", type=int, default=8, help="FD parameters timed per round")
    ap.add_argument("--full-fd", action="store_true", help="also time one complete FD sweep")
    ap.add_argument("--large", type=int, default=0,
                    help="also a random_book of this many contracts (0: skip)")
    ap.add_argument("--large-rounds", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=kj.DEFAULT_TEMPERATURE)
    ap.add_argument("--out", default="experiments/results/bench_gradients.json")
    args = ap.parse_args()
    load0 = os.getloadavg()
    started = time.time()
    results = [bench_book("reference book", kj.load_book(args.book), scenarios=args.scenarios,
                          rounds=args.rounds, fd_subset=args.fd_subset, full_fd=args.full_fd,
                          temperature=args.temperature)]
    if args.large:
        results.append(bench_book(f"random_book({args.large}, seed=1)",
                                  kj.random_book(args.large, seed=1), scenarios=args.scenarios,
                                  rounds=args.large_rounds, fd_subset=args.fd_subset,
                                  full_fd=False, temperature=args.temperature))
    text = table(results)
    print(text)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "dtype": "float32",
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "wall_s": time.time() - started,
    }
    print(f"\nmachine: {machine['cpu_count']} CPUs, load average {load0[0]:.1f} at start, "
          f"{machine['loadavg_end'][0]:.1f} at end (shared; timings are noisy)")
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "machine": machine, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()

"""Benchmark of the dashboard's margin service (kinetic_jax/dashboard).

Starts the real server (uvicorn, in a thread, on a free loopback port) with a
temporary state file and measures, on the reference book:

1. warm-up: the first POST /api/margin (JAX traces and compiles the margin and
   the loss-distribution programs), and the first POST /api/sensitivities;
2. recompute, after warm-up, while a "slider" moves (rho_within, a loading and
   a quantity change each time: values only, so nothing may recompile; the JAX
   compile counter is checked): the tiles alone (POST
   /api/margin?histogram=false), the histogram alone (POST /api/losses), and
   what the page sends on a change, the one-request POST /api/margin (report
   and histogram from one simulation);
3. baseline, in the same run and process, interleaved with the recomputes: a
   bare ``kinetic_jax.portfolio_margin`` call on the same books, and
   ``portfolio_margin`` + ``book_losses`` (the two engine calls the endpoint
   makes).

Reports medians and ratios against the baseline. Timings are wall-clock with
the results fully materialised (the engine returns host floats, so every call
has blocked on the device). The machine's load average is printed too: on a
shared 2-core machine, other work inflates every number alike, and the ratios
are the figures to compare.

Run:  python experiments/bench_dashboard.py [--scenarios 131072] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

import kinetic_jax as kj
from kinetic_jax.dashboard import create_app

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "examples" / "reference_book.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a background thread, on loopback only."""

    def __init__(self, app, port: int):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def slider_books(book: dict, n: int) -> list[dict]:
    """`n` books that differ from `book` in values only (as a slider moves)."""
    crypto = next(i for i, x in enumerate(book["hierarchy"]) if x["node"] == "crypto")
    out = []
    for k in range(n):
        b = copy.deepcopy(book)
        b["hierarchy"][crypto]["rho"] = round(0.40 + 0.5 * k / max(1, n - 1), 4)
        b["clusters"][k % len(b["clusters"])]["loading"] = 0.5 + 0.02 * k
        b["positions"][0]["quantity"] = 4000.0 + 100.0 * k
        out.append(b)
    return out


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=131072)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    book = kj.book_to_dict(kj.load_book(REFERENCE))
    book["model"]["scenarios"] = args.scenarios
    books = slider_books(book, args.repeats)
    load_before = os.getloadavg()
    results: dict = {"scenarios": args.scenarios, "repeats": args.repeats,
                     "cpus": os.cpu_count(), "jax": __import__("jax").__version__}

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(None, Path(tmp) / "state.json")
        port = free_port()
        with Server(app, port), httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                             timeout=600) as client:
            def counters():
                return client.get("/api/health").json()["jax"]

            c0 = counters()
            t = time.perf_counter()
            r = client.post("/api/margin", params={"sensitivities": False}, json=book)
            r.raise_for_status()
            results["warmup_margin_s"] = time.perf_counter() - t
            c1 = counters()
            results["warmup_compiles"] = c1["compiles"] - c0["compiles"]
            results["warmup_compile_s"] = c1["compile_seconds"] - c0["compile_seconds"]
            # Compile the baseline's own programs (same process, same counter)
            # before the slider window, so that window counts the service only.
            warm = kj.parse_book(book)
            kj.portfolio_margin(warm)
            kj.book_losses(warm)
            c1 = counters()

            # Recompute while the "slider" moves, interleaved with the baseline
            # (bare engine calls on the same book, same process, already
            # compiled), so that both see the same load.
            samples, tiles, hist, engine_ms, bare, both = [], [], [], [], [], []
            for b in books:
                # What the page does on a change: the margin (tiles, waterfall,
                # clusters, correlation), then the loss histogram.
                t = time.perf_counter()
                r = client.post("/api/margin", params={"sensitivities": False,
                                                       "histogram": False}, json=b)
                tiles.append(time.perf_counter() - t)
                r.raise_for_status()
                engine_ms.append(r.json()["timing"]["margin_ms"])
                t = time.perf_counter()
                client.post("/api/losses", json=b).raise_for_status()
                hist.append(time.perf_counter() - t)
                # The whole result in one request (an API client's default).
                t = time.perf_counter()
                client.post("/api/margin", params={"sensitivities": False},
                            json=b).raise_for_status()
                samples.append(time.perf_counter() - t)
                parsed = kj.parse_book(b)
                t = time.perf_counter()
                kj.portfolio_margin(parsed)
                bare.append(time.perf_counter() - t)
                t = time.perf_counter()
                kj.portfolio_margin(parsed)
                kj.book_losses(parsed)
                both.append(time.perf_counter() - t)
            c2 = counters()
            results["tiles_ms"] = median_ms(tiles)
            results["tiles_min_ms"] = 1e3 * min(tiles)
            results["tiles_max_ms"] = 1e3 * max(tiles)
            results["tiles_engine_ms"] = statistics.median(engine_ms)
            results["histogram_ms"] = median_ms(hist)
            results["recompute_ms"] = median_ms(samples)
            results["recompute_min_ms"] = 1e3 * min(samples)
            results["recompute_max_ms"] = 1e3 * max(samples)
            results["recompute_compiles"] = c2["compiles"] - c1["compiles"]
            results["baseline_portfolio_margin_ms"] = median_ms(bare)
            results["baseline_margin_plus_losses_ms"] = median_ms(both)

            # Sensitivities (a separate request from the page).
            has_sens = client.get("/api/health").json()["sensitivities"]
            if has_sens:
                t = time.perf_counter()
                client.post("/api/sensitivities", json=book).raise_for_status()
                results["warmup_sensitivities_s"] = time.perf_counter() - t
                c_sens = counters()
                s_samples = []
                for b in books[: max(3, args.repeats // 3)]:
                    t = time.perf_counter()
                    client.post("/api/sensitivities", json=b).raise_for_status()
                    s_samples.append(time.perf_counter() - t)
                results["sensitivities_ms"] = median_ms(s_samples)
                c3 = counters()
                results["sensitivities_compiles"] = c3["compiles"] - c_sens["compiles"]
                results["recent_compiles"] = c3["recent_compiles"]

    results["ratio_tiles_to_portfolio_margin"] = (
        results["tiles_ms"] / results["baseline_portfolio_margin_ms"])
    results["ratio_recompute_to_portfolio_margin"] = (
        results["recompute_ms"] / results["baseline_portfolio_margin_ms"])
    results["ratio_recompute_to_engine_calls"] = (
        results["recompute_ms"] / results["baseline_margin_plus_losses_ms"])
    results["ratio_warmup_to_tiles"] = 1e3 * results["warmup_margin_s"] / results["tiles_ms"]
    results["loadavg_before"] = [round(x, 2) for x in load_before]
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r = results
    print(f"kinetic_jax dashboard benchmark: reference book, {r['scenarios']:,} scenarios, "
          f"{r['repeats']} recomputes, {r['cpus']} CPUs, jax {r['jax']}")
    print(f"  load average before/after:         {r['loadavg_before']} / {r['loadavg_after']}")
    print(f"  warm-up, first POST /api/margin:   {r['warmup_margin_s']:8.2f} s   "
          f"({r['warmup_compiles']} compilations, {r['warmup_compile_s']:.2f} s compiling)")
    print("  recompute, page (margin, then histogram), while a slider moves:")
    print(f"    POST /api/margin?histogram=false:  {r['tiles_ms']:8.1f} ms median "
          f"(min {r['tiles_min_ms']:.1f}, max {r['tiles_max_ms']:.1f}; "
          f"engine {r['tiles_engine_ms']:.1f} ms)")
    print(f"    POST /api/losses (histogram):      {r['histogram_ms']:8.1f} ms median")
    print(f"  recompute, POST /api/margin (all but sensitivities): {r['recompute_ms']:8.1f} ms "
          f"median (min {r['recompute_min_ms']:.1f}, max {r['recompute_max_ms']:.1f})")
    print(f"  compilations while the slider moved: {r['recompute_compiles']}")
    if "sensitivities_ms" in r:
        print(f"  warm-up, first POST /api/sensitivities: {r['warmup_sensitivities_s']:6.2f} s")
        print(f"  recompute, POST /api/sensitivities: {r['sensitivities_ms']:7.1f} ms median "
              f"({r['sensitivities_compiles']} compilations)")
    print(f"  baseline portfolio_margin:           {r['baseline_portfolio_margin_ms']:8.1f} ms")
    print(f"  baseline portfolio_margin + book_losses: "
          f"{r['baseline_margin_plus_losses_ms']:6.1f} ms")
    print(f"  ratio page margin request / portfolio_margin:   "
          f"{r['ratio_tiles_to_portfolio_margin']:5.2f}x")
    print(f"  ratio full request / portfolio_margin:          "
          f"{r['ratio_recompute_to_portfolio_margin']:5.2f}x")
    print(f"  ratio full request / (margin + book_losses):    "
          f"{r['ratio_recompute_to_engine_calls']:5.2f}x")
    print(f"  ratio warm-up / page margin request:            {r['ratio_warmup_to_tiles']:5.1f}x")
    return 0 if r["recompute_compiles"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

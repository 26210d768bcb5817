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

With ``--probes`` it measures the hostile-client probes of issue 10 instead,
each in a fresh process (wall time of the request, and the peak resident set
of the process that serves it, VmHWM): the 10,000-outcome event at 128
scenarios, the 5,000-strike ladder, a 13,000-strike ladder (just under the
2 MiB body limit), deep nesting and a 5,000-digit integer — under the default
limits (all answered 4xx), then a 2,000-contract event computed with the
limits raised (the engine's own cost of a large event); and /api/health's
latency while 40 margin requests (1,024 scenarios) hit the server at once.

Run:  python experiments/bench_dashboard.py [--scenarios 131072] [--repeats 15]
      python experiments/bench_dashboard.py --probes
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


def peak_rss_mb() -> float:
    """The peak resident set of this process (VmHWM), in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def outcome_book(n: int, scenarios: int) -> dict:
    contracts = [{"id": f"O{i}", "cluster": "Election", "type": "outcome", "event": "E",
                  "outcome": f"o{i}", "price": 1.0 / (n + 1)} for i in range(n)]
    return {"model": {"scenarios": scenarios}, "contracts": contracts,
            "positions": [{"contract": c["id"], "quantity": 10 * (i % 7 - 3)}
                          for i, c in enumerate(contracts)]}


def ladder_book(n: int, scenarios: int) -> dict:
    contracts = [{"id": f"L{i}", "cluster": "BTC", "type": "above", "event": "E",
                  "threshold": 1000 + i, "price": 0.99 - 0.98 * i / n} for i in range(n)]
    return {"model": {"scenarios": scenarios}, "contracts": contracts,
            "positions": [{"contract": c["id"], "quantity": 5} for c in contracts]}


def events_book(events: int, n: int, scenarios: int) -> dict:
    """`events` outcome events of `n` outcomes each."""
    books = [outcome_book(n, scenarios) for _ in range(events)]
    contracts, positions = [], []
    for e, b in enumerate(books):
        for c in b["contracts"]:
            contracts.append({**c, "id": f"E{e}-{c['id']}", "event": f"E{e}"})
        positions += [{**p, "contract": f"E{e}-{p['contract']}"} for p in b["positions"]]
    return {"model": {"scenarios": scenarios}, "contracts": contracts, "positions": positions}


PROBES = {
    "outcomes-10000@128": lambda: json.dumps(outcome_book(10_000, 128)),
    "outcomes-10000@131072": lambda: json.dumps(outcome_book(10_000, 131072)),
    "ladder-5000@131072": lambda: json.dumps(ladder_book(5_000, 131072)),
    "ladder-13000@1024 (2 MiB)": lambda: json.dumps(ladder_book(13_000, 1024)),
    "nested-json-100000": lambda: "[" * 100_000 + "]" * 100_000,
    "quantity-5000-digits": lambda: json.dumps(ladder_book(3, 1024)).replace(
        '"quantity": 5', '"quantity": ' + "9" * 5000, 1),
    "quantity-1e39": lambda: json.dumps(ladder_book(3, 1024)).replace(
        '"quantity": 5', '"quantity": 1e39', 1),
    # The largest book the default limits admit at 32,768 scenarios: 4 events x 500.
    "allowed: 4x500 outcomes@32768": lambda: json.dumps(events_book(4, 500, 32768)),
    # Over the default limits; served with them raised: the engine's cost.
    "raised: outcomes-2000@1024": lambda: json.dumps(outcome_book(2_000, 1024)),
    "raised: ladder-2000@1024": lambda: json.dumps(ladder_book(2_000, 1024)),
}


def run_probe(name: str) -> dict:
    """One probe against a fresh server in this process: status, seconds, peak RSS."""
    from kinetic_jax.dashboard import Limits

    body = PROBES[name]()
    limits = None
    if name.startswith("raised"):
        limits = Limits(max_contracts=20_000, max_contracts_per_event=20_000,
                        max_positions=20_000)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(None, Path(tmp) / "state.json", limits=limits)
        port = free_port()
        with Server(app, port), httpx.Client(base_url=f"http://127.0.0.1:{port}",
                                             timeout=600) as client:
            def post():
                return client.post("/api/margin", params={"sensitivities": False},
                                   content=body, headers={"Content-Type": "application/json"})

            before = peak_rss_mb()
            t = time.perf_counter()
            r = post()
            elapsed = time.perf_counter() - t
            first_status, retries = r.status_code, 0
            while r.status_code == 503:  # still computing: the page's retries, as it sends them
                time.sleep(float(r.headers.get("Retry-After", 1)))
                r, retries = post(), retries + 1
            to_result = time.perf_counter() - t
            t = time.perf_counter()  # the same request again: compiled programs reused
            post()
            again = time.perf_counter() - t
            alive = client.get("/api/health").status_code == 200
    err = r.json().get("error", {}) if r.status_code >= 400 else {}
    return {"probe": name, "status": r.status_code, "first_status": first_status,
            "seconds": round(elapsed, 3), "retries": retries,
            "seconds_to_result": round(to_result, 3), "seconds_again": round(again, 3),
            "body_bytes": len(body), "peak_rss_mb_before": round(before),
            "peak_rss_mb": round(peak_rss_mb()), "alive": alive,
            "field": err.get("field"), "detail": (err.get("detail") or "")[:90]}


def health_under_load(concurrent: int = 40) -> dict:
    """/api/health latency while `concurrent` margin requests arrive at once."""
    import asyncio

    book = kj.book_to_dict(kj.load_book(REFERENCE))
    book["model"]["scenarios"] = 1024
    body = json.dumps(book)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(None, Path(tmp) / "state.json")
        port = free_port()
        with Server(app, port):
            async def load():
                url = f"http://127.0.0.1:{port}"
                async with httpx.AsyncClient(base_url=url, timeout=600,
                                             limits=httpx.Limits(max_connections=64)) as c:
                    while (await c.post("/api/margin?sensitivities=false", content=body,
                                        headers={"Content-Type": "application/json"})
                           ).status_code == 503:  # compiling past the 4 s answer limit
                        await asyncio.sleep(1)
                    tasks = [asyncio.create_task(c.post(
                        "/api/margin?sensitivities=false", content=body,
                        headers={"Content-Type": "application/json"}))
                        for _ in range(concurrent)]
                    lat = []
                    while not all(t.done() for t in tasks):
                        t0 = time.perf_counter()
                        await c.get("/api/health")
                        lat.append(time.perf_counter() - t0)
                        await asyncio.sleep(0.05)
                    codes = [t.result().status_code for t in tasks]
                    return lat, codes

            lat, codes = asyncio.run(load())
    return {"concurrent": concurrent, "health_max_s": round(max(lat), 4),
            "health_median_s": round(statistics.median(lat), 4), "health_samples": len(lat),
            "ok": codes.count(200), "busy_503": codes.count(503)}


def probes_main(as_json: bool) -> int:
    import subprocess

    rows = []
    for name in PROBES:
        out = subprocess.run([sys.executable, __file__, "--probe", name], capture_output=True,
                             text=True, timeout=900)
        if out.returncode != 0:
            rows.append({"probe": name, "error": out.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(out.stdout))
    load = health_under_load()
    if as_json:
        print(json.dumps({"probes": rows, "health_under_load": load}, indent=2))
        return 0
    print(f"kinetic_jax dashboard probes ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    for r in rows:
        if "error" in r:
            print(f"  {r['probe']:30s} failed: {r['error']}")
            continue
        first = (f"{r['first_status']} at {r['seconds']:.3f} s, then " if r["retries"] else "")
        print(f"  {r['probe']:30s} {first}{r['status']}  {r['seconds_to_result']:7.3f} s "
              f"(again {r['seconds_again']:6.3f} s)  "
              f"peak RSS {r['peak_rss_mb']:5d} MB (server up: {r['peak_rss_mb_before']} MB)  "
              f"{r['body_bytes']:>9,} B  {r['field'] or ''}")
    print(f"  /api/health under {load['concurrent']} concurrent margins: max "
          f"{load['health_max_s']:.3f} s, median {load['health_median_s']:.3f} s over "
          f"{load['health_samples']} calls; {load['ok']} answered 200, "
          f"{load['busy_503']} got 503")
    return 0


def median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=131072)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--probes", action="store_true", help="the hostile-client probes")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # one probe, in this process
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(run_probe(args.probe)))
        return 0
    if args.probes:
        return probes_main(args.json)

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

"""Peak memory of one streamed margin call on a large ladder book (issue 7, goal:
a 10,000-contract book at 2**18 scenarios within 4 GB peak RSS).

    .venv/bin/python experiments/memory_bound.py [--events 1000] [--strikes 10]
        [--scenarios 262144] [--sampler plain]

Prints the figures, the wall time and the process's peak resident set size
(VmHWM of /proc/self/status: this process image's high-water mark, which
includes the Python interpreter, JAX and XLA themselves; ru_maxrss where /proc
is missing — but that one also counts a parent's pages inherited across fork and
exec, which is why it is not the first choice).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import kinetic_jax as kj


def peak_rss_gib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--strikes", type=int, default=10)
    ap.add_argument("--scenarios", type=int, default=1 << 18)
    ap.add_argument("--sampler", default="plain", choices=["plain", "importance"])
    args = ap.parse_args()
    book = kj.ladder_book(args.events, args.strikes).with_settings(
        scenarios=args.scenarios, sampler=args.sampler)
    start = time.perf_counter()
    report = kj.portfolio_margin(book)
    wall = time.perf_counter() - start
    peak = peak_rss_gib()
    print(json.dumps({"contracts": len(book.contracts), "scenarios": args.scenarios,
                      "sampler": args.sampler, "margin": report.margin, "base": report.base,
                      "wall_s_including_compile": round(wall, 1),
                      "peak_rss_gib": round(peak, 3)}))


if __name__ == "__main__":
    main()

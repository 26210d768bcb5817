"""A minimal progress bar on stderr (no dependency), for long sweeps and batches."""

from __future__ import annotations

import sys
import time


def want_progress(progress: bool | None) -> bool:
    """`progress` as given, or (None) on when both stdout and stderr are terminals."""
    if progress is not None:
        return bool(progress)
    return sys.stdout.isatty() and sys.stderr.isatty()


class Progress:
    """``with Progress(total, "sweep", on) as bar: bar.update(n)`` draws
    ``sweep  [#####.....]  512/4,096 points  3.1 s`` on one stderr line, redrawn at
    most 10 times a second; nothing at all when `on` is False."""

    def __init__(self, total: int, label: str, on: bool, unit: str = "points"):
        self.total, self.label, self.on, self.unit = max(int(total), 0), label, on, unit
        self.done = 0
        self._start = self._last = time.perf_counter()

    def __enter__(self) -> Progress:
        self._draw(force=True)
        return self

    def update(self, n: int) -> None:
        self.done = min(self.total, self.done + int(n))
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        width = 30
        filled = width * self.done // self.total if self.total else width
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r{self.label}  [{bar}]  {self.done:,}/{self.total:,} {self.unit}"
                         f"  {now - self._start:.1f} s")
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self.on:
            self._draw(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()

"""A minimal progress bar for long work (DVC passes, FEM generation, training).

Writes one updating line to stderr; ``enabled=False`` silences it. No dependency."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "DVC pass 1") as p: ... p.update(n)``."""

    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None, min_interval_s: float = 0.2):
        self.total = max(int(total), 1)
        self.desc = desc
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.min_interval_s = min_interval_s

    def update(self, n: int = 1, note: str = "") -> None:
        self.n = min(self.n + n, self.total)
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.min_interval_s or self.n == self.total):
            self._last = now
            el = now - self.t0
            eta = el / self.n * (self.total - self.n) if self.n else 0.0
            bar = "#" * int(24 * self.n / self.total)
            self.stream.write(f"\r{self.desc}: [{bar:<24}] {self.n}/{self.total} {el:5.1f}s eta {eta:5.1f}s {note}   ")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
        return False

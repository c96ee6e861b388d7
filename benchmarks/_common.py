"""What every benchmark script shares: progress logging, failing loudly, percentiles, timing."""

from __future__ import annotations

import gc
import math
import sys
import time

__all__ = ["Timer", "fail", "log", "log_start", "pct", "set_log_start"]

_start = [time.monotonic()]


def set_log_start(t0: float) -> None:
    """Start the log's clock at ``t0`` (a child process is handed its parent's, so the log reads as one)."""
    _start[0] = t0


def log_start() -> float:
    """When the log's clock started (``time.monotonic()``)."""
    return _start[0]


def log(message: str) -> None:
    """A progress line on stderr, stamped with seconds since the start."""
    print(f"[{time.monotonic() - _start[0]:7.1f}s] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    """Stop the benchmark with exit status 1: a check failed, so its figures mean nothing."""
    print(f"FAILED: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def pct(seconds: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 3)


class Timer:
    """Collect the garbage and freeze it before timing, so no pool is rescanned while timed."""

    def __enter__(self) -> Timer:
        gc.collect()
        gc.freeze()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start
        gc.unfreeze()

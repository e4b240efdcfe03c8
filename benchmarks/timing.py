"""Side-by-side timing: every mode warmed up, then timed in turn, best of `repeats`."""

from __future__ import annotations

import time
from collections.abc import Callable


def wall_seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_best(
    runs: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    timer: Callable[[Callable[[], object]], float] = wall_seconds,
) -> dict[str, float]:
    """Best `timer` reading of each run; the modes alternate, so drifts (clocks, heat, other
    load) hit them alike."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            best[name] = min(best[name], timer(fn))
    return best

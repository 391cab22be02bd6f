"""The benchmarks' timing loop: variants run alternately, in a fresh random order per repetition.

Alternating keeps a slow spell of a shared machine from landing on one variant only; the medians of wall
time and of CPU time (``time.process_time`` or ``time.thread_time``, less disturbed by other jobs) are kept.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping


def alternate_samples(
    variants: Mapping[str, Callable[[], object]], reps: int, cpu_clock: Callable[[], float] = time.process_time
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every repetition's ``(wall seconds, CPU seconds)`` per variant, after one warm-up run of each."""
    for run in variants.values():
        run()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name in random.sample(list(variants), len(variants)):
            start, start_cpu = time.perf_counter(), cpu_clock()
            variants[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_clock() - start_cpu)
    return wall, cpu


def alternate(
    variants: Mapping[str, Callable[[], object]], reps: int, cpu_clock: Callable[[], float] = time.process_time
) -> tuple[dict[str, float], dict[str, float]]:
    """``(median wall seconds, median CPU seconds)`` per variant, after one warm-up run of each."""
    wall, cpu = alternate_samples(variants, reps, cpu_clock)
    return (
        {name: statistics.median(times) for name, times in wall.items()},
        {name: statistics.median(times) for name, times in cpu.items()},
    )

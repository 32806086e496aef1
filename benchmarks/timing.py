"""Timing shared by the benchmark scripts (no framework imports)."""

import time


def time_steps(step, warmup: int, steps: int) -> list[float]:
    """Runs ``step()`` (which must wait for the device) warmup + steps times; the timed seconds."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times

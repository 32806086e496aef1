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


def peak_bytes(compiled) -> int | None:
    """XLA's memory analysis of a compiled step: arguments + outputs (less what they share) +
    temporaries; None where the backend gives none."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    return (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )

"""A pytest plugin: how much of each test's time is XLA compiling. Prints, at the end of the run, each
test's CPU seconds (its own, and that of the processes it started and waited for), wall-clock
seconds and the seconds XLA's backend spent compiling in the test's own process (JAX's
``/jax/core/compile/backend_compile_duration`` events), by CPU, and the totals.

  PYTHONPATH=benchmarks python -m pytest -q -n 0 -p compile_profile tests/test_towers.py

In one process only (``-n 0``).
"""

import collections
import os
import time

import pytest

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_current = ["(between tests)"]
_seconds = collections.defaultdict(lambda: collections.Counter())


def _listen(event: str, duration: float, **kwargs):
    if event == COMPILE_EVENT:
        _seconds[_current[0]]["compile"] += duration


def pytest_sessionstart(session):
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    cpu, children, wall = time.process_time(), _children_cpu(), time.perf_counter()
    yield
    _seconds[item.nodeid]["cpu"] += time.process_time() - cpu
    _seconds[item.nodeid]["children"] += _children_cpu() - children
    _seconds[item.nodeid]["wall"] += time.perf_counter() - wall
    _current[0] = "(between tests)"


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def pytest_terminal_summary(terminalreporter):
    rows = sorted(_seconds.items(), key=lambda item: -(item[1]["cpu"] + item[1]["children"]))
    write = terminalreporter.write_line
    write("\n| test | CPU s | its processes' CPU s | wall s | XLA compile s |\n|---|---:|---:|---:|---:|")
    for name, s in [*rows, ("total", sum((seconds for _, seconds in rows), collections.Counter()))]:
        write(f"| {name} | {s['cpu']:.1f} | {s['children']:.1f} | {s['wall']:.1f} | {s['compile']:.1f} |")

"""A pytest plugin: how much of each test's time is XLA compiling. Prints, at the end of the run, each
test's CPU and wall-clock seconds and the seconds XLA's backend spent compiling for it (JAX's
``/jax/core/compile/backend_compile_duration`` events), slowest first, and the totals.

  PYTHONPATH=benchmarks python -m pytest -q -n 0 -p compile_profile tests/test_towers.py

In-process only (``-n 0``): what subprocesses a test starts compile is not counted.
"""

import collections
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
    cpu, wall = time.process_time(), time.perf_counter()
    yield
    _seconds[item.nodeid]["cpu"] += time.process_time() - cpu
    _seconds[item.nodeid]["wall"] += time.perf_counter() - wall
    _current[0] = "(between tests)"


def pytest_terminal_summary(terminalreporter):
    rows = sorted(_seconds.items(), key=lambda item: -item[1]["cpu"])
    write = terminalreporter.write_line
    write("\n| test | CPU s | wall s | XLA compile s |\n|---|---:|---:|---:|")
    for name, seconds in rows:
        write(f"| {name} | {seconds['cpu']:.1f} | {seconds['wall']:.1f} | {seconds['compile']:.1f} |")
    total = sum((seconds for _, seconds in rows), collections.Counter())
    write(f"| total | {total['cpu']:.1f} | {total['wall']:.1f} | {total['compile']:.1f} |")

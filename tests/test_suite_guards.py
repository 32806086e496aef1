"""The suite's own guards: a pytest-xdist worker that crashes (with a process it forked still
running) or a test that hangs past the per-test limit ends the run with a failure, never a hang;
and the harness's driver server serves every test of its worker that sees the same environment."""

import os
import subprocess
import sys
import time

import harness
from conftest import ROOT

FAULTY_TESTS = """
import multiprocessing, os, signal, time

def sleep():
    time.sleep(600)

def test_a_crash_with_a_forked_process_alive():
    multiprocessing.get_context("fork").Process(target=sleep, daemon=True).start()
    os.kill(os.getpid(), signal.SIGSEGV)

def test_a_hang():
    time.sleep(600)

def test_a_pass():
    pass
"""


def test_a_crashed_or_stuck_worker_ends_the_run_with_failures(tmp_path):
    (tmp_path / "test_faulty.py").write_text(FAULTY_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONPATH"] = os.path.join(ROOT, "tests")
    command = [sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "-p", "worker_guard"]
    command += ["-o", "timeout=3", "-o", "timeout_method=thread", "--rootdir", str(tmp_path), str(tmp_path)]
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 100, done.stdout[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 1 and "2 failed, 1 passed" in summary, done.stdout[-3000:]
    assert "crashed while running 'test_faulty.py::test_a_crash_with_a_forked_process_alive'" in done.stdout
    assert "crashed while running 'test_faulty.py::test_a_hang'" in done.stdout


def test_the_driver_server_outlives_its_test_and_not_a_change_of_environment(monkeypatch):
    """A server imports JAX and the training code (seconds): the next test reuses it, unless the
    environment its children would inherit changed (the test's name, which pytest keeps there, aside)."""

    class Running:  # a stand-in for the server's process, which never ends: nothing imported here
        def __init__(self, *args, **kwargs):
            self.poll, self.kill = lambda: None, lambda: None

    monkeypatch.setattr(harness._DriverServer, "_running", None)
    monkeypatch.setattr(harness.subprocess, "Popen", Running)
    first = harness._DriverServer.running()
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_other.py::test_next (call)")
    assert harness._DriverServer.running() is first
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2")
    assert harness._DriverServer.running() is not first

"""The faults long runs meet, each injected into real processes: a second run on a busy workdir, a
full disk during a checkpoint save, a damaged checkpoint, a killed prepare, a dead input worker."""

import os
import signal
import subprocess

from conftest import MAIN, ROOT, TINY, assert_same_final_state, process_env


def _start_training(workdir) -> subprocess.Popen:
    """``main.py`` with ``TINY`` in a subprocess, returned once its train step is compiled (the
    workdir is held by then)."""
    command = [*MAIN, *TINY, f"--workdir={workdir}"]
    process = subprocess.Popen(command, env=process_env(8), cwd=ROOT, text=True, stdout=-1, stderr=-1)
    for line in process.stdout:
        if line.startswith("compiled the train step"):
            return process
    raise AssertionError(process.communicate(timeout=60)[1][-3000:])


def test_a_second_run_on_a_busy_workdir_refuses_and_the_first_goes_on(straight_run, tmp_path, cli):
    workdir = tmp_path / "run"
    first = _start_training(workdir)
    try:
        os.kill(first.pid, signal.SIGSTOP)  # still training while the second one starts
        before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
        lock = (workdir / "lock").read_text()
        code, out, err = cli(*TINY, f"--workdir={workdir}")
        assert code == 2 and err.count("\n") == 1, err[-3000:]
        assert f"{workdir} is in use by another run (process {first.pid} on " in err
        assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
        assert (workdir / "lock").read_text() == lock
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert_same_final_state(workdir, straight_run[0])
    code, out, err = cli(*TINY, f"--workdir={workdir}")  # the lock went with the first run
    assert code == 0 and "has finished all" in out, err[-3000:]

"""What only several processes can get wrong, with real local processes on 127.0.0.1: a peer that
dies, processes started with different configs, code or devices, a process count that does not
divide the batch, a workdir they do not share, a coordinator that does not answer. Each ends
every process with one line, or for a dead peer with JAX's own message, within a bounded time."""

import pathlib
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY
from harness import MAIN, distributed_run, free_port, launch_processes, process_env

# Two processes that join through distributed.initialize and then all-gather in a loop, printing
# each round, until one of them is killed.
_GATHER_FOREVER = """
import sys, time
sys.path.insert(0, {root!r})
from alexnet_jax import distributed
flags = dict(arg[2:].split("=") for arg in sys.argv[1:])
distributed.initialize(distributed.Launch(
    flags["coordinator_address"], int(flags["num_processes"]), int(flags["process_id"]), 60, {heartbeat}))
import numpy as np
from jax.experimental import multihost_utils
while True:
    multihost_utils.process_allgather(np.ones(1))
    print("gathered", flush=True)
    time.sleep(0.05)
"""
HEARTBEAT = 3
REFUSED_WITHIN = 60  # seconds: refusals come before any training


def test_a_dead_peer_stops_the_other_within_the_heartbeat_timeout(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    script = _GATHER_FOREVER.format(root=ROOT, heartbeat=HEARTBEAT)
    logs = [(tmp_path / f"{i}.out").open("w+") for i in range(2)]
    started = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=process_env(1),
            text=True,
            stdout=subprocess.PIPE if i else subprocess.DEVNULL,
            stderr=logs[i],
        )
        for i in range(2)
    ]
    survivor, victim = started
    try:
        while (line := victim.stdout.readline()) != "gathered\n":  # the two have run collectives together
            assert line, (tmp_path / "1.out").read_text()[-3000:]
        victim.kill()
        killed = time.monotonic()
        survivor.wait(timeout=REFUSED_WITHIN)
        waited = time.monotonic() - killed
    finally:
        for process in started:
            process.kill()
    assert survivor.returncode != 0
    assert "another task died" in (tmp_path / "0.out").read_text()  # JAX's own message, on the survivor's stderr
    # JAX declares a process dead after HEARTBEAT seconds without a heartbeat; allow one more
    # timeout for when the heartbeats are checked and a few seconds for the process to end.
    assert waited < 2 * HEARTBEAT + 5, waited


def refused(argvs, tmp_path, devices=1, preload=False) -> list[dict]:
    """Two processes of one distributed run (forked, see conftest.run_forked), both refused with
    exit code 2; ``preload`` for refusals that come after the training code is imported."""
    started = distributed_run(argvs, tmp_path / "outputs", devices, preload=preload, timeout=REFUSED_WITHIN)
    assert [p["status"] for p in started] == [2, 2], [p["err"][-3000:] for p in started]
    return started


def test_processes_started_with_different_configs_refuse_to_start(tmp_path):
    flags = [*TINY, f"--workdir={tmp_path / 'run'}"]
    started = refused([[*flags, "--config.seed=0"], [*flags, "--config.seed=1"]], tmp_path)
    for process in started:
        assert process["err"].strip().splitlines()[-1] == (
            "error: process 1 was started differently from process 0: --config.seed is 1 there, 0 on process 0; "
            "start every process with the same command, code and packages"
        )
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.tier2  # the first tier: different configs, the same check of the processes' descriptions
def test_processes_running_different_code_refuse_to_start(tmp_path):
    other = tmp_path / "other_checkout"  # process 1 runs a copy of the code with one file changed
    for package in ("alexnet_jax", "configs"):
        shutil.copytree(pathlib.Path(ROOT) / package, other / package)
    shutil.copy(pathlib.Path(ROOT) / "main.py", other / "main.py")
    with (other / "alexnet_jax" / "optim.py").open("a") as f:
        f.write("# changed on one host\n")
    flags = [*TINY, f"--workdir={tmp_path / 'run'}"]
    started = launch_processes(
        [[*MAIN, *flags], [sys.executable, str(other / "main.py"), *flags]],
        [process_env(1)] * 2,
        timeout=REFUSED_WITHIN,
    )
    assert [p.returncode for p in started] == [2, 2], started[0].stderr[-3000:]
    assert "error: process 1 was started differently from process 0: alexnet_jax/optim.py is " in started[0].stderr


@pytest.mark.tier2  # the first tier: one process's device count (test_train_step.py)
def test_a_process_count_that_does_not_divide_the_batch_is_refused(tmp_path):
    flags = [*TINY, f"--workdir={tmp_path / 'run'}"]  # batches of 64
    started = refused([flags, flags], tmp_path, devices=3, preload=True)
    assert started[0]["err"].strip().splitlines()[-1] == (
        "error: --config.batch_size=64 is not divisible by the 6 devices (2 processes x 3); "
        "use a multiple of 6, e.g. 66"
    )


@pytest.mark.tier2  # the first tier: different configs, refused the same way before any collective
def test_processes_with_different_numbers_of_devices_refuse_to_start(tmp_path):
    flags = [*TINY, f"--workdir={tmp_path / 'run'}"]
    started = refused([flags, flags], tmp_path, devices=[2, 3])
    assert "error: the processes have different numbers of devices (process 0: 2, process 1: 3)" in started[0]["err"]


def test_a_workdir_that_not_every_process_sees_is_refused(tmp_path):
    started = refused([[*TINY, f"--workdir={tmp_path / 'a'}"], [*TINY, f"--workdir={tmp_path / 'b'}"]], tmp_path)
    assert f"error: process 1 cannot see what process 0 writes in {tmp_path / 'a'}" in started[0]["err"]
    assert not list((tmp_path / "a").iterdir())  # the check leaves nothing behind


@pytest.mark.tier2  # the first tier: a dead peer, the other bounded wait (above)
def test_a_coordinator_that_does_not_answer_is_a_clear_error_within_the_timeout(tmp_path):
    command = [*MAIN, *TINY, f"--workdir={tmp_path}", f"--coordinator_address=127.0.0.1:{free_port()}"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--num_processes=2", "--process_id=1", "--initialization_timeout=2"],
        env=process_env(1),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: the coordinator 127.0.0.1:")
    assert "did not answer within 2 s" in done.stderr
    assert time.monotonic() - started < 2 + 15  # the timeout, plus starting Python and JAX

"""What only several processes can get wrong, with real local processes on 127.0.0.1: a peer that
dies, processes started with different configs or devices, a workdir they do not share, a
coordinator that does not answer. Each ends every process with one line, or for a dead peer with
JAX's own message, within a bounded time."""

import subprocess
import sys
import time

from conftest import MAIN, ROOT, TINY, free_port, launch_processes, process_env

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
        survivor.wait(timeout=60)
        waited = time.monotonic() - killed
    finally:
        for process in started:
            process.kill()
    assert survivor.returncode != 0
    assert "another task died" in (tmp_path / "0.out").read_text()  # JAX's own message, on the survivor's stderr
    # JAX declares a process dead after HEARTBEAT seconds without a heartbeat; allow one more
    # timeout for when the heartbeats are checked and a few seconds for the process to end.
    assert waited < 2 * HEARTBEAT + 5, waited


def test_processes_started_with_different_configs_refuse_to_start(tmp_path):
    flags = [*MAIN, *TINY, f"--workdir={tmp_path}"]
    started = launch_processes([[*flags, "--config.seed=0"], [*flags, "--config.seed=1"]], [process_env(1)] * 2)
    assert [p.returncode for p in started] == [2, 2], started[0].stderr[-3000:]
    for process in started:
        assert process.stderr.strip().splitlines()[-1] == (
            "error: process 1 was started differently from process 0: --config.seed is 1 there, 0 on process 0; "
            "start every process with the same command, code and packages"
        )
    assert not list(tmp_path.iterdir())  # nothing written


def test_processes_with_different_numbers_of_devices_refuse_to_start(tmp_path):
    flags = [*MAIN, *TINY, f"--workdir={tmp_path}"]
    started = launch_processes([flags, flags], [process_env(2), process_env(3)])
    assert [p.returncode for p in started] == [2, 2], started[0].stderr[-3000:]
    assert "error: the processes have different numbers of devices (process 0: 2, process 1: 3)" in started[0].stderr


def test_a_workdir_that_not_every_process_sees_is_refused(tmp_path):
    flags = [*MAIN, *TINY]
    started = launch_processes(
        [[*flags, f"--workdir={tmp_path / 'a'}"], [*flags, f"--workdir={tmp_path / 'b'}"]], [process_env(1)] * 2
    )
    assert [p.returncode for p in started] == [2, 2], started[0].stderr[-3000:]
    assert f"error: process 1 cannot see what process 0 writes in {tmp_path / 'a'}" in started[0].stderr
    assert not list((tmp_path / "a").iterdir())  # the check leaves nothing behind


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

"""launch/slurm.sbatch, unchanged, on a one-node SLURM cluster started on this machine: two tasks on
CPU devices train a tiny float64 run that must end as the one-process run does; a second submission
is preempted (``scontrol requeue``) once it has evaluated, and must resume and end bitwise equal to
the first. Outside CI (it starts daemons and needs root); prints what it checked, with the times.

  apt-get install slurm-wlm munge         # Debian's SLURM (22.05 on Debian 12)
  python benchmarks/slurm_rehearsal.py    # about 2 minutes on 2 cores; --keep=DIR keeps the cluster's files

Each task gets 2 fake CPU devices (2 processes x 2 devices); float64, so that the two-process run
and the one-process run of 4 devices differ only in the order of sums (tests/test_multihost.py).
"""

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RUN = [
    "--config=configs/smoke.py",
    "--config.dataset.synthetic_examples=256",
    "--config.dataset.synthetic_image_size=16",
    "--config.model.width=0.125",
    "--config.model.fc_features=256",
    "--config.model.dtype=float64",
    "--config.model.dropout_rate=0",
    "--config.batch_size=64",
    "--config.eval_batch_size=64",
    "--config.num_epochs=4",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.optimizer.learning_rate=0.01",
]
STEPS = 16  # 4 epochs x 4 steps
ENV = {"JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
MUNGE_PID = "/run/munge/munged.pid"
SLURM_CONF = """ClusterName=rehearsal
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmdSpoolDir={dir}/slurmd
StateSaveLocation={dir}/state
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=rehearsal Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(folder: pathlib.Path) -> dict:
    """munge and SLURM's two daemons, with their files in ``folder``; returns the clients' environment."""
    host = socket.gethostname().split(".")[0]
    for sub in ("slurmd", "state"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, dir=folder, cpus=os.cpu_count()))
    subprocess.run(["mkdir", "-p", "/run/munge"], check=True)
    subprocess.run(["chown", "munge:munge", "/run/munge"], check=True)
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode:  # not running: ours to stop
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
        (folder / "munged.pid").symlink_to(MUNGE_PID)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True)
    subprocess.run(["slurmd", "-f", str(conf)], env=env, check=True)
    deadline = time.monotonic() + 60
    while _out(["sinfo", "-h", "-o", "%T"], env).strip() not in ("idle", "mixed"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the node did not come up: {_out(['sinfo'], env)}")
        time.sleep(1)
    return env


def stop_cluster(folder: pathlib.Path):
    for daemon in ("slurmd", "slurmctld", "munged"):
        pid = folder / f"{daemon}.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)


def _out(command, env) -> str:
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False).stdout


def submit(env, workdir: pathlib.Path, log: pathlib.Path) -> str:
    """launch/slurm.sbatch as it is, its layout given on sbatch's command line: 2 tasks on this node."""
    layout = [
        "--nodes=1",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--gpus-per-node=0",
        f"--output={log}",
        "--open-mode=append",
    ]  # fmt: skip  (a requeued job appends to its log)
    command = ["sbatch", "--parsable", *layout, "launch/slurm.sbatch", *RUN, f"--workdir={workdir}"]
    done = subprocess.run(command, env={**env, **ENV}, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"sbatch refused: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def job_state(env, job: str) -> str:
    fields = dict(f.split("=", 1) for f in _out(["scontrol", "show", "job", job], env).split() if "=" in f)
    return fields.get("JobState", "GONE")


def wait_for(env, job: str, timeout: float, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE")) -> str:
    deadline = time.monotonic() + timeout
    while (state := job_state(env, job)) not in until:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job} still {state} after {timeout:.0f} s")
        time.sleep(1)
    return state


def evaluated_steps(workdir: pathlib.Path) -> list[int]:
    metrics = workdir / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "eval"]


def one_process_run(workdir: pathlib.Path):
    env = {**os.environ, **ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run([sys.executable, "main.py", *RUN, f"--workdir={workdir}"], env=env, cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip


def _quiet_orbax():
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # Orbax's note that a state's own metadata file is absent


def largest_difference(a: pathlib.Path, b: pathlib.Path) -> float:
    """The largest relative difference between two float64 runs' final states, each float array
    within 1e-10 relative (tests/test_multihost.py's bound) and every other one equal."""
    import numpy as np
    from harness import final_arrays

    _quiet_orbax()
    want, got = final_arrays(a, STEPS), final_arrays(b, STEPS)
    assert want.keys() == got.keys() and len(want) > 10
    worst = 0.0
    for key in want:
        if not isinstance(want[key], np.ndarray) or not np.issubdtype(want[key].dtype, np.floating):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        else:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-13, err_msg=key)
            scale = np.abs(want[key]).max() or 1.0
            worst = max(worst, float(np.abs(got[key] - want[key]).max() / scale))
    return worst


def main():
    from harness import assert_same_final_state

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", default=None, help="a directory for the cluster's files and the runs, kept")
    args = parser.parse_args()
    folder = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="slurm_rehearsal_")).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    env = start_cluster(folder / "cluster")
    try:
        print(_out(["sinfo", "--version"], env).strip(), "| node:", _out(["sinfo", "-h", "-o", "%N %c CPUs %T"], env))
        started = time.monotonic()
        first = submit(env, folder / "first", folder / "first.log")
        assert wait_for(env, first, 600) == "COMPLETED", (folder / "first.log").read_text()[-3000:]
        first_s = time.monotonic() - started
        one_process_run(folder / "one")
        worst = largest_difference(folder / "one", folder / "first")
        print(f"job {first}: 2 tasks x 2 CPU devices, {STEPS} steps in {first_s:.0f} s; its final state against one "
              f"process of 4 devices: largest relative difference {worst:.1e} (bound 1e-10, float64)")  # fmt: skip

        started = time.monotonic()
        second = submit(env, folder / "second", folder / "second.log")
        while not evaluated_steps(folder / "second"):
            assert job_state(env, second) in ("PENDING", "RUNNING", "CONFIGURING"), (folder / "second.log").read_text()
            time.sleep(0.2)
        subprocess.run(["scontrol", "requeue", second], env=env, check=True)
        requeued, preempted_at = time.monotonic(), evaluated_steps(folder / "second")
        print(f"job {second}: requeued (scontrol requeue) {requeued - started:.0f} s after it was submitted, after "
              f"its evaluation of step {preempted_at[-1]}")  # fmt: skip
        while "resuming from step" not in (folder / "second.log").read_text():
            assert time.monotonic() - requeued < 900, "the requeued job did not start again"
            time.sleep(1)
        print(f"job {second}: resumed {time.monotonic() - requeued:.0f} s after the requeue (SLURM's own delay)")
        assert wait_for(env, second, 900) == "COMPLETED", (folder / "second.log").read_text()[-3000:]
        log = (folder / "second.log").read_text()
        stopped = [line for line in log.splitlines() if "stopped by a signal" in line]
        resumed = [line for line in log.splitlines() if "resuming from step" in line]
        print(f"job {second}: {stopped[0] if stopped else 'no graceful stop logged'}; {resumed[0] if resumed else ''}")
        _quiet_orbax()
        assert_same_final_state(folder / "second", folder / "first", STEPS)
        print(f"job {second}: preempted, requeued and resumed, {time.monotonic() - started:.0f} s in all; its final "
              f"state equals job {first}'s bit for bit")  # fmt: skip
    finally:
        stop_cluster(folder / "cluster")
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

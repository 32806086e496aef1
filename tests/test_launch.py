"""The launch recipes: ``launch/local.sh`` shares a machine's GPUs between its processes and stops
every process it started when it is stopped. Its ``nvidia-smi`` and ``python`` are stand-ins on
PATH (a GPU machine is not at hand in the suite): the stand-in records what each process was
given and waits to be stopped, as ``main.py`` would. shellcheck and the Kubernetes schemas check
the recipes in ``.ci/run``."""

import os
import pathlib
import signal
import stat
import subprocess
import time

import pytest
from conftest import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
record="$RECORDS/$$"
echo "${CUDA_VISIBLE_DEVICES-unset} ${XLA_FLAGS-} $*" > "$record"
trap 'echo stopped >> "$record"; exit 130' TERM
while true; do sleep 0.1; done
"""


def _stand_ins(tmp_path, gpus: int) -> dict:
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    scripts = {"python": FAKE_PYTHON}
    if gpus:
        lines = "".join(f'echo "GPU {i}: NVIDIA H100 (UUID: GPU-{i})"\n' for i in range(gpus))
        scripts["nvidia-smi"] = f"#!/usr/bin/env bash\n{lines}"
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORDS": str(records)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _records(tmp_path, count: int, timeout=30) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while len(list((tmp_path / "records").iterdir())) < count:
        assert time.monotonic() < deadline, "the processes did not start"
        time.sleep(0.05)
    time.sleep(0.2)  # each has written its line
    return [p.read_text().splitlines() for p in sorted((tmp_path / "records").iterdir())]


@pytest.mark.parametrize("gpus", [4, 0])
def test_local_sh_gives_each_process_its_devices_and_stops_them_all_when_stopped(tmp_path, gpus):
    env = _stand_ins(tmp_path, gpus)
    script = subprocess.Popen(["bash", "launch/local.sh", "2", "--config=x.py"], cwd=ROOT, env=env, text=True,
                              stderr=subprocess.PIPE)  # fmt: skip
    started = _records(tmp_path, 2)
    given = sorted(lines[0] for lines in started)
    if gpus:
        assert [line.split()[0] for line in given] == ["0,1", "2,3"]  # each process its own half
    else:
        assert all(line.startswith("unset ") and "--xla_force_host_platform_device_count=2" in line for line in given)
    assert [line.split()[-1] for line in given] == ["--process_id=0", "--process_id=1"]
    script.send_signal(signal.SIGTERM)
    assert script.wait(timeout=30) == 130
    assert all(lines[-1] == "stopped" for lines in _records(tmp_path, 2))  # each process was told to stop


def test_local_sh_refuses_gpus_that_do_not_divide_between_its_processes(tmp_path):
    env = _stand_ins(tmp_path, 4)
    done = subprocess.run(["bash", "launch/local.sh", "3", "--config=x.py"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=30)  # fmt: skip
    assert done.returncode == 2 and not list(pathlib.Path(tmp_path / "records").iterdir())
    assert done.stderr == "error: 4 GPUs do not divide between 3 processes; start a divisor of 4\n"


FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORDS/gcloud"
for arg in "$@"; do
  case "$arg" in --command=*) cd "$HOME" && bash -c "${arg#--command=}" ;; esac
done
"""

FAKE_WORKER_PYTHON = """#!/usr/bin/env bash
{ echo "activated=${ACTIVATED-no} session_leader=$([ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && echo yes)"
  printf '%s\\n' "$@"; } > "$RECORDS/worker"
"""


def test_tpu_pod_sh_gives_every_worker_the_arguments_as_given_detached_in_the_environment(tmp_path):
    """What ``gcloud ... ssh --worker=all --command=...`` runs on a worker, run here by a stand-in
    gcloud in a stand-in home: the README's environment activated, the arguments as they were
    given (spaces and quotes included), the run in a session of its own (it outlives ssh)."""
    env = _stand_ins(tmp_path, 0)
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    for name, text in (("gcloud", FAKE_GCLOUD), ("python", FAKE_WORKER_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    (home / "alexnet_jax" / ".venv" / "bin").mkdir(parents=True)
    (home / "alexnet_jax" / ".venv" / "bin" / "activate").write_text("export ACTIVATED=yes\n")
    args = ["--config=configs/cifar10.py", "--workdir=/shared/my runs/a", "--config.augment.custom=it's"]
    done = subprocess.run(["bash", "launch/tpu-pod.sh", "my-tpu", "us-central2-b", *args], cwd=ROOT,
                          env={**env, "HOME": str(home)}, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--worker=all" in (tmp_path / "records" / "gcloud").read_text().splitlines()
    deadline = time.monotonic() + 30
    while not (tmp_path / "records" / "worker").exists():
        assert time.monotonic() < deadline, (home / "alexnet_jax" / "run.log").read_text()
        time.sleep(0.05)
    time.sleep(0.2)
    recorded = (tmp_path / "records" / "worker").read_text().splitlines()
    assert recorded == ["activated=yes session_leader=yes", "main.py", *args]
    assert (home / "alexnet_jax" / "run.log").exists()

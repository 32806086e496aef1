"""The faults long runs meet, each injected into real processes: a second run on a busy workdir, a
full disk during a checkpoint save, a damaged checkpoint, a killed prepare, a dead input worker."""

import os
import random
import re
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, TINY
from harness import MAIN, assert_same_final_state, process_env, run_forked

from alexnet_jax.workdir import _lock as workdir_lock


def _start_training(workdir) -> subprocess.Popen:
    """``main.py`` with ``TINY`` in a subprocess, returned once its train step is compiled (the
    workdir is held by then)."""
    command = [*MAIN, *TINY, f"--workdir={workdir}"]
    process = subprocess.Popen(command, env=process_env(8), cwd=ROOT, text=True, stdout=-1, stderr=-1)
    for line in process.stdout:
        if line.startswith("compiled the train step"):
            return process
    raise AssertionError(process.communicate(timeout=60)[1][-3000:])


# A process that holds a workdir as a run does (its lock, signed), until it is killed.
HOLD_THE_WORKDIR = """
import pathlib, sys, time
from alexnet_jax import workdir
with workdir._locked(pathlib.Path(sys.argv[1])) as sign:
    sign()
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_second_run_on_a_busy_workdir_refuses_in_one_line_and_touches_nothing(tmp_path, cli):
    workdir = tmp_path / "run"
    command = [sys.executable, "-c", HOLD_THE_WORKDIR, str(workdir)]
    holder = subprocess.Popen(command, env=process_env(1), cwd=ROOT, text=True, stdout=-1)
    try:
        assert holder.stdout.readline() == "held\n"
        lock = (workdir / "lock").read_text()
        code, out, err = cli(*TINY, f"--workdir={workdir}")
        assert code == 2 and err.count("\n") == 1, err[-3000:]
        assert f"{workdir} is in use by another run (process {holder.pid} on " in err
        assert sorted(p.name for p in workdir.iterdir()) == ["lock"] and (workdir / "lock").read_text() == lock
    finally:
        holder.kill()
        holder.wait()
    os.close(workdir_lock(workdir))  # a holder killed outright leaves the workdir free


@pytest.mark.tier2  # the first tier: the refusal while another process holds the workdir (above)
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


def _can_mount_a_small_disk(tmp_path) -> bool:
    """Whether this machine lets a process mount a tmpfs in a mount namespace of its own (as root,
    or where unprivileged user namespaces are allowed)."""
    probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path)]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# A real full disk: a 4 MB tmpfs with 1.4 MB left, then freed. A checkpoint of TINY takes ~0.5 MB
# and the run keeps two or three, so some save runs out of space. Where mounting is not allowed,
# the write of checkpoint 6 fails with ENOSPC instead.
FULL_DISK = (
    'mount -t tmpfs -o size=4000k tmpfs "$0" && head -c 2600000 /dev/zero > "$0/filler" && "$@"; '
    'status=$?; cp -a "$0/run" "$0.copy"; exit $status'
)


# A large array written to a 1 MB tmpfs (or, where mounting is not allowed, posix_fallocate failing
# with ENOSPC on the real disk, whatever its free space): refused in one line before anything is
# written, nothing left behind.
WRITE_LARGE_ARRAY = """
import errno, os, sys
from alexnet_jax import files
if sys.argv[2] == "simulated":
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.posix_fallocate = full
try:
    with files.writing_npy(os.path.join(sys.argv[1], "f.npy"), (4096, 4096), "float32"):
        print("not refused")
except files.UserError as error:
    print(error, os.listdir(sys.argv[1]))
"""


def test_an_array_larger_than_the_free_disk_is_refused_before_it_is_written(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    python = ["python", "-c", WRITE_LARGE_ARRAY, str(disk)]
    if _can_mount_a_small_disk(disk):
        mount = 'mount -t tmpfs -o size=1000k tmpfs "$0" && exec "$@"'
        command = ["unshare", "-rm", "bash", "-c", mount, str(disk), *python, "real"]
    else:
        command = [*python, "simulated"]
    done = subprocess.run(command, env=process_env(1), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(
        rf"{disk / 'f.npy'} needs 0\.07 GB of disk and \d+\.\d\d GB are free; make space \[\]\n", done.stdout
    )


LATE_WRITE_LINE = re.compile(
    r"Traceback \(most recent call last\):|  File \".*asyncio/base_events.py\".*|    self\._check_closed\(\)"
    r"|    raise RuntimeError\('Event loop is closed'\)|RuntimeError: Event loop is closed"
)


def test_a_full_disk_during_a_save_stops_in_one_line_and_the_run_resumes_once_freed(straight_run, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if _can_mount_a_small_disk(disk):
        prefix, first = ["unshare", "-rm", "bash", "-c", FULL_DISK, str(disk)], {}
    else:
        prefix, first = [], {"signal": ["disk_full", 6, 0]}
    argv = [*TINY, f"--workdir={disk / 'run'}"]
    runs = [{"argv": argv, **first}, {"argv": argv, "remove": [str(disk / "filler")] if prefix else []}]
    full, freed = run_forked(runs, tmp_path / "outputs", prefix=prefix)
    workdir = disk.with_name("disk.copy") if prefix else disk / "run"
    # The last line says it all. Above it, TensorStore may print a traceback per write still in
    # flight when Orbax closed the failed save's event loop ("Event loop is closed", from its own
    # threads, past Python's hooks; docs/troubleshooting.md): nothing else may be printed.
    *library, line = full["err"].splitlines()
    assert full["status"] == 2 and all(LATE_WRITE_LINE.fullmatch(text) for text in library), full["err"][-3000:]
    committed = [int(name) for name in full["checkpoints"] if name.isdigit()]
    resumed = max(committed)
    assert re.search(
        # the checkpoint in flight, or a file written while it fills the disk
        rf"^error: no space left on the device for (checkpoint \d+ in {disk / 'run' / 'checkpoints'}|"
        rf"{disk / 'run'}/\S+) \([\d,.]+ MB "
        rf"free, a checkpoint takes 0\.\d MB\); make room for a few, then run the same command: it resumes from "
        rf"step {resumed}\n$",
        line + "\n",
    ), full["err"]
    assert freed["status"] == 0, freed["err"][-3000:]
    assert f"resuming from step {resumed} of" in freed["out"]
    assert_same_final_state(workdir, straight_run[0])


def test_a_damaged_checkpoint_is_named_set_aside_and_the_run_resumes_from_the_newest_intact_one(
    straight_run, tmp_path, cli
):
    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    newest = workdir / "checkpoints" / "12"
    largest = max((f for f in (newest / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    size = largest.stat().st_size
    os.truncate(largest, size // 2)
    damaged = f"{largest.relative_to(newest)} holds {size // 2:,} of its {size:,} bytes"

    code, _, err = cli(*TINY, f"--workdir={workdir}", "--mode=evaluate", "--checkpoint=latest")
    assert code == 2 and err.count("\n") == 1, err[-3000:]
    assert f"checkpoint 12 in {workdir / 'checkpoints'} is damaged ({damaged}); use another: --checkpoint=" in err

    code, out, err = cli(*TINY, f"--workdir={workdir}")
    assert code == 0, err[-3000:]
    assert f"checkpoint 12 in {workdir / 'checkpoints'} is damaged ({damaged}); kept as 12.damaged\n" in out
    assert "resuming from step 10 of 12" in out
    assert_same_final_state(workdir, straight_run[0])
    assert (workdir / "checkpoints" / "12.damaged" / largest.relative_to(newest)).stat().st_size == size // 2

    # Damaged again at the same step: set aside beside the first copy, and the run resumes again.
    again = max((f for f in (newest / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    os.truncate(again, again.stat().st_size // 2)
    code, out, err = cli(*TINY, f"--workdir={workdir}")
    assert code == 0 and "is damaged" in out and "; kept as 12.damaged.2\n" in out, err[-3000:]
    assert "resuming from step 10 of 12" in out and (workdir / "checkpoints" / "12.damaged").is_dir()
    assert_same_final_state(workdir, straight_run[0])

    (workdir / "checkpoints" / "10" / "data" / "metadata").unlink()
    code, _, err = cli(*TINY, f"--workdir={workdir}", "--mode=evaluate", "--checkpoint=10")
    assert code == 2 and "checkpoint 10 in" in err and "(data/metadata is missing); use another: --checkpoint=" in err


def _records(data_dir) -> dict:
    """Every record of the ``tiny_folder`` dataset under ``data_dir``, in order, images as stored."""
    import tensorflow_datasets as tfds

    read = {"image": tfds.decode.SkipDecoding()}
    sources = {
        split: tfds.data_source("tiny_folder", data_dir=str(data_dir), split=split, decoders=read)
        for split in ("train", "val")
    }
    return {
        split: [(r["file_name"], int(r["label"]), bytes(r["image"])) for r in source]
        for split, source in sources.items()
    }


# What a prepare imports, TensorFlow included (TFDS imports it to write): once, in the driver.
PREPARE = ["alexnet_jax.prepare", "tensorflow"]


@pytest.mark.parametrize("kills", [1, pytest.param(2, marks=pytest.mark.tier2)])
def test_a_prepare_killed_at_random_moments_then_run_again_equals_an_uninterrupted_one(kills, prepared, tmp_path):
    """Killed while writing an example (the second tier: then around the final rename too), then
    run to the end."""
    rng = random.Random(19)
    examples = sum(len(v) for v in _records(prepared).values())
    plan = [("example", rng.randrange(1, examples + 1)), rng.choice([("before_rename", 0), ("after_rename", 0)])]
    plan = plan[:kills]
    data_dir = tmp_path / "tfds"
    argv = ["--mode=prepare", f"--image_folder={prepared.parent / 'images'}", "--dataset_name=tiny_folder"]
    argv += [f"--data_dir={data_dir}", "--workers=1"]
    runs = [{"argv": argv, "signal": [moment, number, signal.SIGKILL]} for moment, number in plan]
    ended = run_forked([*runs, {"argv": argv}], tmp_path / "outputs", preload=PREPARE)
    for run in ended[:-1]:
        assert run["status"] == -signal.SIGKILL, (run["signal"], run["err"][-3000:])
    assert ended[-1]["status"] == 0, ended[-1]["err"][-3000:]
    assert sorted(p.name for p in (data_dir / "tiny_folder").iterdir()) == ["1.0.0"]  # nothing half-written left
    assert _records(data_dir) == _records(prepared)

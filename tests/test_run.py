"""main.py end to end: outputs, resume after SIGKILL with identical state, one-line errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).parent.parent
TINY = [
    "--config=configs/smoke.py",
    "--config.dataset.synthetic_examples=512",
    "--config.model.width=0.125",
    "--config.model.fc_features=256",
    "--config.batch_size=64",
    "--config.eval_batch_size=64",
    "--config.num_epochs=6",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
]
TOTAL_STEPS = 6 * 512 // 64


def command(workdir, *extra):
    return [sys.executable, str(ROOT / "main.py"), *TINY, f"--workdir={workdir}", *extra]


def environment(devices=1):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run(args, devices=1):
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=environment(devices), timeout=300)


def saved_steps(workdir):
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def final_arrays(workdir):
    restored = ocp.StandardCheckpointer().restore((workdir / "checkpoints" / str(TOTAL_STEPS) / "state").absolute())
    return {"/".join(map(str, path)): np.asarray(x) for path, x in _flatten(restored)}


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, (*prefix, key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _flatten(value, (*prefix, i))
    else:
        yield prefix, tree


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    done = run(command(workdir))
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, done


def test_a_run_leaves_metrics_events_checkpoints_and_plots(straight_run):
    workdir, done = straight_run
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["step"] == summary["total_steps"] == TOTAL_STEPS
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(2, TOTAL_STEPS + 1, 2))
    assert {"epoch", "loss", "accuracy", "learning_rate", "images_per_s"} <= set(train[0])
    assert [r["epoch"] for r in evals] == [1, 2, 3, 4, 5, 6]
    assert {"val_top1", "val_top5", "val_loss"} <= set(evals[0])
    assert evals[-1]["val_top1"] > 0.3  # 10 synthetic classes: chance is 0.1
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    # Kept: the latest two checkpoints, plus one with the best validation top-1 (ties allowed).
    kept = saved_steps(workdir)
    assert {TOTAL_STEPS - 2, TOTAL_STEPS} <= set(kept) and len(kept) <= 3
    val_at = {r["step"]: r["val_top1"] for r in evals}
    assert max(val_at.values()) in {val_at[s] for s in kept if s in val_at}
    for png in ("curves", "validation_confusion", "validation_per_class", "validation_predictions"):
        assert (workdir / f"{png}.png").stat().st_size > 5000
    assert json.loads((workdir / "config.json").read_text())["model"]["width"] == 0.125


def test_running_a_finished_run_again_only_reports(straight_run):
    workdir, _ = straight_run
    before = (workdir / "metrics.jsonl").read_text()
    again = run(command(workdir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"has finished all {TOTAL_STEPS} steps" in again.stdout
    assert (workdir / "metrics.jsonl").read_text() == before


def test_kill_and_resume_gives_the_same_final_state(straight_run, tmp_path):
    process = subprocess.Popen(
        command(tmp_path), cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not saved_steps(tmp_path) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = saved_steps(tmp_path)[-1]
    assert 0 < killed_at < TOTAL_STEPS

    resumed = run(command(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {killed_at} of {TOTAL_STEPS}" in resumed.stdout
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in line
    ]
    assert steps == list(range(2, TOTAL_STEPS + 1, 2))  # nothing logged twice, nothing missing

    want, got = final_arrays(straight_run[0]), final_arrays(tmp_path)
    assert want.keys() == got.keys() and len(want) > 10
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--config.batch_size=100",
            "--config.batch_size=100 is not divisible by the 8 devices; use a multiple of 8, e.g. 104",
        ),
        (
            "--config.model.name=resnet50",
            "--config.model.name='resnet50' is not one of ('alexnet2012', 'alexnet_owt', 'alexnet_cifar')",
        ),
        ("--config.schedule.name=poly", "--config.schedule.name='poly' is not one of"),
        ("--config.optimizer.momentum=1.5", "--config.optimizer.momentum=1.5 must be in [0, 1)"),
        ("--config.parallel=xmap", "--config.parallel='xmap' is not one of ('pmap', 'shard_map')"),
    ],
)
def test_bad_config_values_give_one_line_errors(tmp_path, flag, message):
    failed = run(command(tmp_path, flag), devices=8)
    assert failed.returncode == 2
    lines = [
        line
        for line in failed.stderr.splitlines()
        if line.strip() and "WARNING" not in line and not line.startswith("W")
    ]
    assert lines[-1].startswith("error: ") and message in lines[-1], failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "checkpoints").exists()  # nothing started, nothing to clean up


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_saves_a_checkpoint_exits_and_resumes(tmp_path, signum):
    process = subprocess.Popen(
        command(tmp_path), cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    metrics = tmp_path / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.02)  # the first log line: training has started
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    stopped_at = json.loads(stdout.strip().splitlines()[-1])["step"]
    assert f"stopped by a signal at step {stopped_at}; checkpoint saved" in stdout
    assert 0 < stopped_at < TOTAL_STEPS and saved_steps(tmp_path)[-1] == stopped_at

    resumed = run(command(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {stopped_at} of {TOTAL_STEPS}" in resumed.stdout
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["step"] == TOTAL_STEPS

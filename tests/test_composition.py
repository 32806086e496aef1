"""Features where they meet: each pair works as a user of both expects, or is refused by one line
before any work (the one-line refusals are in test_errors.py's catalogue)."""

import errno
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from conftest import TINY, tiny_run_config
from harness import final_arrays

from alexnet_jax import config_checks, ensemble, files, metrics_log, models, plots
from alexnet_jax.checkpointing import read_variables
from alexnet_jax.train import train_and_evaluate
from configs import imagenet2012_paper


def test_a_moving_average_of_fine_tuned_weights_starts_at_the_loaded_weights(straight_run, tmp_path):
    """``ema_decay`` x ``init_from``: after one step at a tiny rate, the average is the loaded
    weights but for (1 - decay) x a step; the head, new for other classes, starts where it does."""
    source = straight_run[0] / "checkpoints" / "12"
    overrides = [f"--config.init_from={source}", "--config.ema_decay=0.9999", "--config.max_steps=1"]
    train_and_evaluate(tiny_run_config(*overrides, "--config.optimizer.learning_rate=1e-6"), str(tmp_path))
    loaded = final_arrays(straight_run[0], 12)
    tuned = final_arrays(tmp_path, 1)
    kernels = [key for key in loaded if key.startswith("params/") and key.endswith("kernel")]
    assert len(kernels) == 8
    for key in kernels:
        average, weights = tuned["ema/" + key], loaded[key]
        # 1e-4 of a step of 1e-6 x a gradient: nothing next to a random start (the norms' own size).
        assert np.linalg.norm(average - weights) <= 1e-6 * np.linalg.norm(weights), key


def test_the_paper_config_accumulates_micro_batches(monkeypatch):
    """``grad_accum_steps`` x the paper's model: alexnet2012 has no batch norm (the defaults' ``norm``
    is alexnet_cifar's), so the paper's batch of 128 runs as 4 micro-batches of 32."""
    config = imagenet2012_paper.get_config()
    config.grad_accum_steps = 4
    config_checks.validate(config, num_devices=1)
    config.model.name, config.model.norm = "alexnet_cifar", "batch"
    with pytest.raises(config_checks.ConfigError, match="with batch norm would take statistics over micro-batches"):
        config_checks.validate(config, num_devices=1)


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_a_full_disk_at_start_up_is_one_line(name, monkeypatch, tmp_path, cli):
    """The first files a run writes, before any step: a full disk there is the one line it is later."""
    write = files.write_text

    def full(path, text):
        if pathlib.Path(path).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, text)

    monkeypatch.setattr(files, "write_text", full)
    code, out, err = cli(*TINY, f"--workdir={tmp_path / 'run'}")
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith(f"error: no space left on the device for {tmp_path / 'run' / name} ("), lines[-1]
    assert "make room for a few, then run the same command: it resumes from the start" in lines[-1]


SWEEP = ["--config.ensemble_size=2", "--config.members.learning_rate=(0.01, 1e12)", "--config.ema_decay=0.5"]
SWEEP += ["--config.nonfinite_updates=skip", "--config.num_epochs=1"]


@pytest.fixture(scope="module")
def diverged_sweep(tmp_path_factory):
    """A sweep of two rates with a moving average, whose second member diverges (a rate of 1e12),
    skipping its non-finite steps: (workdir, summary, printed)."""
    import contextlib
    import io

    workdir = tmp_path_factory.mktemp("sweep") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = train_and_evaluate(tiny_run_config(*SWEEP), str(workdir))
    return workdir, summary, printed.getvalue()


def test_a_diverged_member_is_named_and_left_out_of_the_ensemble(diverged_sweep):
    """``nonfinite_updates=skip`` x a sweep: the member that diverges is named in the log and the
    report, and the ensemble's numbers (and so the best checkpoint) are those of the others."""
    workdir, summary, printed = diverged_sweep
    report = json.loads((workdir / "validation_report.json").read_text())
    assert not np.isfinite(report["member1_loss"]) and np.isfinite(report["member0_loss"])
    assert report["diverged_members"] == [1]
    assert "(diverged, left out of the ensemble: member 1)" in printed
    # The ensemble of one finite member is that member, example by example.
    assert report["top1"] == report["member0_top1"] and report["loss"] == pytest.approx(report["member0_loss"])
    evals = [r for r in metrics_log.read_metrics(workdir) if r["kind"] == "eval"]
    assert all(np.isfinite(r["val_top1"]) and np.isfinite(r["val_loss"]) for r in evals)
    assert summary["best_val_top1"] == max(r["val_top1"] for r in evals)  # the best: of finite numbers


def test_a_members_filters_and_their_moving_average_are_drawn_or_refused(diverged_sweep, cli, tmp_path):
    """``--mode=filters`` x an ensemble x ``--ema``: a member's filters, of its weights' moving
    average with ``--ema``; a member the workdir does not hold is one line."""
    workdir = diverged_sweep[0]
    folder = workdir / "checkpoints" / "4"
    for weights, flags in (("raw", []), ("ema", ["--ema"])):
        out = tmp_path / f"{weights}.png"
        code, _, err = cli("--mode=filters", f"--workdir={workdir}", "--checkpoint=latest", f"--output={out}", *flags)
        assert code == 0, err[-3000:]
        kernel = models.first_layer_kernel(ensemble.member(read_variables(folder, weights)[0], 0))
        plots.plot_first_layer(kernel, tmp_path / "want.png")
        assert out.read_bytes() == (tmp_path / "want.png").read_bytes(), weights
    for member in (2, -1):
        code, _, err = cli("--mode=filters", f"--workdir={workdir}", f"--member={member}")
        assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: --member={member}: "), err[-3000:]
        assert "holds 2 model(s); choose one of 0 to 1" in err


def test_a_moving_average_removed_on_resume_is_one_line(diverged_sweep, cli):
    workdir = diverged_sweep[0]
    flags = [*TINY, *SWEEP, "--config.num_epochs=2", f"--workdir={workdir}", "--config.ema_decay=0"]
    before = sorted(p.stat().st_mtime_ns for p in workdir.rglob("*"))
    code, _, err = cli(*flags)
    assert code == 2 and "was trained with a moving average of the weights (--config.ema_decay=0.0 now)" in err, err
    assert sorted(p.stat().st_mtime_ns for p in workdir.rglob("*")) == before
    assert jax.device_count() == 8

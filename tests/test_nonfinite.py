"""A step whose loss is not finite (a NaN pixel in one training image, at a known step): the update is
never applied; the run stops there with one line and exit code 3, keeping its last good checkpoint,
or, when told to skip, goes on and counts such steps."""

import json

import jax
import numpy as np
import pytest
from conftest import TINY, input_blind_cross_entropy, tiny_run_config
from harness import final_arrays

from alexnet_jax import datasets, metrics_log
from alexnet_jax.input_pipeline import epoch_order
from alexnet_jax.train import train_and_evaluate

BAD_STEP = 3  # the step (counted from 1) whose batch holds the poisoned image; TINY saves every 2 steps


def poison(monkeypatch, bad_step=BAD_STEP):
    """The synthetic training split as float32, with one NaN pixel in an image of batch ``bad_step``
    of the first epoch (it appears once in every epoch)."""
    original = datasets.synthetic_split

    def split_with_a_nan(dataset_config, split):
        clean = original(dataset_config, split)
        if split != "train":
            return clean
        images = clean.images.astype(np.float32)
        batch = tiny_run_config().batch_size
        images[epoch_order(0, 0, len(clean))[(bad_step - 1) * batch], 5, 5, 1] = np.nan
        return datasets.ArraySplit(images, clean.labels, clean.class_names)

    monkeypatch.setattr(datasets, "synthetic_split", split_with_a_nan)


# Step 3's flag is read one step late; step 4's (the second tier) before step 4 would be saved.
@pytest.mark.parametrize("bad_step", [3, pytest.param(4, marks=pytest.mark.tier2)])
def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(monkeypatch, cli, tmp_path, bad_step):
    poison(monkeypatch, bad_step)
    code, out, err = cli(*TINY, f"--workdir={tmp_path}", "--config.keep_checkpoints=1")
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 3, err[-2000:]
    assert lines[-1].startswith(f"error: the loss or the gradients were not finite at step {bad_step};")
    assert f"the last good checkpoint: step 2 in {tmp_path / 'checkpoints'}" in lines[-1]
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2]  # nothing saved after it, and keep_checkpoints=1 rotated nothing out
    assert max(r["step"] for r in metrics_log.read_metrics(tmp_path)) <= bad_step  # stopped at it, not later
    arrays = final_arrays(tmp_path, 2)
    assert all(np.isfinite(a).all() for a in arrays.values() if np.issubdtype(a.dtype, np.floating))


def test_skipping_goes_on_counts_the_skipped_steps_and_leaves_the_parameters_finite(monkeypatch, tmp_path):
    poison(monkeypatch)
    config = tiny_run_config()
    config.nonfinite_updates = "skip"
    summary = train_and_evaluate(config, str(tmp_path))
    assert summary["step"] == summary["total_steps"]
    train = [r for r in metrics_log.read_metrics(tmp_path) if r["kind"] == "train"]
    assert sum(r["skipped_updates"] for r in train) == config.num_epochs  # the image comes once an epoch
    first_window = next(r for r in train if r["step"] >= BAD_STEP)
    assert first_window["skipped_updates"] == 1 and np.isnan(first_window["loss"])
    arrays = final_arrays(tmp_path, summary["total_steps"])
    assert all(np.isfinite(a).all() for a in arrays.values() if np.issubdtype(a.dtype, np.floating))
    report = json.loads((tmp_path / "validation_report.json").read_text())
    assert report["loss"] < input_blind_cross_entropy(tmp_path) and jax.device_count() == 8  # learned, 8 devices

"""Fine-tuning from a checkpoint with another number of classes: the head starts afresh, frozen
layers stay bit-identical, the others train."""

import re

import numpy as np
import pytest
from conftest import tiny_run_config
from harness import final_arrays

from alexnet_jax import finetune
from alexnet_jax.checkpointing import CheckpointError, Checkpoints
from alexnet_jax.evaluate import evaluate_checkpoint
from alexnet_jax.train import train_and_evaluate


def test_fine_tuning_on_other_classes_keeps_frozen_layers(straight_run, tmp_path, capsys):
    source, _, _ = straight_run  # 10 synthetic classes, trained for TOTAL_STEPS steps
    overrides = [
        "--config.dataset.synthetic_classes=3",
        f"--config.init_from={source}",
        "--config.finetune.freeze_convs=True",
        "--config.num_epochs=1",
    ]
    train_and_evaluate(tiny_run_config(*overrides), str(tmp_path / "tuned"), stop_after=2)  # 2 steps
    said = capsys.readouterr().out
    assert "every layer but fc8 (10 other classes there), which starts afresh" in said
    # A workdir gives its best checkpoint. Which step ranks best in a tiny float32 run differs from
    # machine to machine: compare with the one the run says it loaded, and check that it is the best.
    loaded = int(re.search(rf"initialised from {re.escape(str(source))}/checkpoints/(\d+): ", said).group(1))
    assert loaded == best_step(source)
    pretrained = final_arrays(source, loaded)
    tuned = final_arrays(tmp_path / "tuned", 2)
    assert tuned["params/fc8/kernel"].shape[-1] == 3 and pretrained["params/fc8/kernel"].shape[-1] == 10
    convs = [key for key in pretrained if key.startswith(("params/conv", "params/bn"))]
    assert len(convs) >= 5
    for key in convs:
        np.testing.assert_array_equal(tuned[key], pretrained[key], err_msg=key)
    # Evaluated from the workdir with a config that knows nothing of the fine-tuning (its optimizer differs).
    plain = tiny_run_config("--config.dataset.synthetic_classes=3", "--config.num_epochs=1")
    assert evaluate_checkpoint(plain, str(tmp_path / "tuned"), "latest")["checkpoint_step"] == 2
    for key in ("params/fc6/kernel", "params/fc7/kernel"):  # loaded, then trained
        # Trained: moved. Loaded: nearer than a fresh initialisation, about sqrt(2) x the norm away.
        moved = np.linalg.norm(tuned[key] - pretrained[key])
        assert 0 < moved < 0.5 * np.linalg.norm(pretrained[key]), key


def best_step(workdir) -> int:
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1, async_save=False)
    try:
        return checkpoints.best_step()
    finally:
        checkpoints.close()


def test_the_head_starts_afresh_for_other_classes_only(tmp_path):
    layer = lambda value, classes=3: {"kernel": np.full((4, classes), value), "bias": np.full(classes, value)}
    fresh = {"fc6": layer(0.0), "fc8": layer(0.0)}
    same = {"fc6": layer(1.0), "fc8": layer(1.0)}
    merged, afresh = finetune.merge(fresh, same, "fc8", tmp_path, new_head=False)
    assert afresh == [] and merged["fc8"]["kernel"].min() == 1.0  # the same classes: all loaded
    merged, afresh = finetune.merge(fresh, same, "fc8", tmp_path, new_head=True)
    assert afresh == ["fc8"] and merged["fc8"]["kernel"].max() == 0.0 and merged["fc6"]["bias"].min() == 1
    more = {"fc6": layer(1.0), "fc8": layer(1.0, classes=10)}
    assert finetune.merge(fresh, more, "fc8", tmp_path, new_head=False)[1] == ["fc8"]


def test_a_checkpoint_without_a_tensor_this_model_has_is_one_line(tmp_path):
    """A batch-norm run's convolutions have no bias: loading them into a model with biases names the tensor."""
    fresh = {"conv1": {"kernel": np.zeros((3, 3, 3, 8)), "bias": np.zeros(8)}}
    batch_norm_run = {"conv1": {"kernel": np.ones((3, 3, 3, 8))}}
    with pytest.raises(CheckpointError, match="conv1/bias is not in that checkpoint, whose conv1 holds kernel"):
        finetune.merge(fresh, batch_norm_run, "fc8", tmp_path, new_head=False)

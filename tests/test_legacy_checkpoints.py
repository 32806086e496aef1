"""A workdir written by an earlier version, whose models had Flax's automatic layer names
(``Conv_0`` ... ``Conv_4``, ``BatchNorm_0`` ..., ``Dense_0`` ... ``Dense_2``), works with this one:
its checkpoint restores under the paper's names (``conv1`` ... ``fc8``, ``bn1`` ...), momentum and
moving average included; it is evaluated to the numbers the earlier version logged (prediction,
features and figures read the same way), resumed, and fine-tuned from.

``tests/data/legacy_workdir.tar.gz`` was written by commit 83bf5ef (the version before the layers
were named) with ``LEGACY`` below and ``--compilation_cache=`` on one CPU device, then
``tar -czf legacy_workdir.tar.gz checkpoints config.json metrics.jsonl`` in its workdir.
"""

import json
import pathlib
import tarfile

import jax
import numpy as np
import pytest
from conftest import ROOT
from harness import final_arrays

import main
from alexnet_jax import models
from alexnet_jax.checkpointing import Checkpoints
from alexnet_jax.experiment import create_state

LEGACY = [
    "--config=configs/smoke.py",
    "--config.dataset.synthetic_examples=64",
    "--config.model.width=1",
    "--config.model.channels=(4, 4, 8, 8, 8)",
    "--config.model.fc_features=8",
    "--config.batch_size=32",
    "--config.eval_batch_size=32",
    "--config.num_epochs=1",
    "--config.ema_decay=0.5",
    "--config.model.norm=batch",
    "--config.keep_checkpoints=1",
]


@pytest.fixture
def legacy(tmp_path) -> pathlib.Path:
    with tarfile.open(pathlib.Path(ROOT, "tests", "data", "legacy_workdir.tar.gz")) as archive:
        archive.extractall(tmp_path / "legacy", filter="data")
    return tmp_path / "legacy"


def test_an_earlier_versions_checkpoint_restores_under_the_papers_names(legacy):
    saved = final_arrays(legacy, 2)
    assert "params/Conv_0/kernel" in saved and "opt_state/inner_state/inner_state/2/trace/Dense_2/kernel" in saved
    config = main.parse_args(["main.py", *LEGACY]).config
    state = create_state(config, 10, (32, 32, 3), steps_per_epoch=2)
    checkpoints = Checkpoints(legacy / "checkpoints", keep=1, async_save=False)
    restored, _, _ = checkpoints.restore(2, state, jax.random.key(0))
    checkpoints.close()
    items = {"params": restored.params, "opt_state": restored.opt_state, "batch_stats": restored.batch_stats}
    got = dict(jax.tree_util.tree_leaves_with_path({**items, "ema": restored.ema}))
    got = {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path): v
           for path, v in got.items()}  # fmt: skip
    renamed = {"/".join(map(models._from_flax, key.split("/"))): value for key, value in saved.items()}
    assert {key for key in got if "bn1" in key} and len(got) > 40
    for key, value in got.items():
        np.testing.assert_array_equal(np.asarray(value), renamed[key], err_msg=key)


@pytest.mark.tier2  # the first tier: the checkpoint restores under the paper's names (above), momentum and EMA included
def test_an_earlier_versions_workdir_evaluates_resumes_and_fine_tunes(legacy, cli, tmp_path):
    logged = [json.loads(line) for line in (legacy / "metrics.jsonl").read_text().splitlines()][-1]
    code, out, err = cli(*LEGACY, f"--workdir={legacy}", "--mode=evaluate", "--checkpoint=2")
    assert code == 0, err[-3000:]
    evaluated = json.loads(out.strip().splitlines()[-1])
    # Each weight in its layer: the loss the earlier version logged, to float32 rounding (a layer's
    # weights in another's place move it by far more).
    assert evaluated["loss"] == pytest.approx(logged["val_loss"], rel=1e-5)
    code, out, err = cli(*LEGACY, f"--workdir={legacy}", "--mode=evaluate", "--checkpoint=2", "--ema")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["loss"] == pytest.approx(
        logged["val_ema_loss"], rel=1e-5
    )

    tuned = [*LEGACY, f"--config.init_from={legacy / 'checkpoints' / '2'}", "--config.max_steps=1"]
    code, out, err = cli(*tuned, "--config.dataset.synthetic_classes=3", f"--workdir={tmp_path / 'tuned'}")
    assert code == 0 and "every layer but fc8 (10 other classes there), which starts afresh" in out, err[-3000:]

    code, out, err = cli(*LEGACY, f"--workdir={legacy}", "--config.num_epochs=2")
    assert code == 0 and "resuming from step 2 of 4" in out, err[-3000:]
    assert "params/fc8/kernel" in final_arrays(legacy, 4)  # saved under the paper's names from then on

"""Several processes on JAX's distributed runtime, as real local processes on 127.0.0.1 with CPU
collectives (gloo): training in step, a stop agreed by all, a checkpoint that resumes in another
layout (a dead peer and the mistakes only several hosts can make: test_cross_host_errors.py).

Agreement is checked in float64, as in test_train_step.py: 2 processes x 2 devices and 1 process
x 8 devices differ only in the order of sums, ~1e-15 relative after these steps in float64 (measured
5e-15), while any real difference (a process training on another's block of the batch, an
example scored twice) moves the results by far more than 1e-6. Dropout draws its masks per
device, so the float64 runs leave it off.
"""

import json
import signal

import jax
import numpy as np
import pytest
from conftest import STEPS_PER_EPOCH, TINY, tiny_run_config
from harness import distributed_run, final_arrays, run_forked

from alexnet_jax import metrics_log
from alexnet_jax.train import train_and_evaluate

RTOL, ATOL = 1e-10, 1e-13
FLOAT64 = ["--config.model.dtype=float64", "--config.model.dropout_rate=0", "--config.dataset.synthetic_image_size=16"]
EPOCHS = 2
STEPS = EPOCHS * STEPS_PER_EPOCH
STOP_REQUESTED_AT = STEPS_PER_EPOCH - 2  # right after that step's checkpoint starts


def records(workdir, kind):
    return [r for r in metrics_log.read_metrics(workdir) if r["kind"] == kind]


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def test_two_processes_train_in_step_stop_together_and_resume_in_one(tmp_path, cli, x64):
    """2 x 2 devices train until process 1 alone is sent SIGTERM; both stop at the same step (one
    step after the request: the end of epoch 1, evaluated and saved), and equal there a 1-process
    run; one process of 8 devices then resumes their checkpoint to the end."""
    flags = [
        *TINY,
        *FLOAT64,
        f"--config.num_epochs={EPOCHS}",
        "--heartbeat_timeout=30",
        f"--workdir={tmp_path / 'two'}",
    ]
    sigterm_after_save = ["save_started", STOP_REQUESTED_AT, signal.SIGTERM]
    two = distributed_run([flags, flags], tmp_path / "outputs", devices=2, x64=True, signals=[None, sigterm_after_save])
    for i, process in enumerate(two):
        assert process["status"] == 130 and "Traceback" not in process["err"], f"process {i}: {process['err'][-3000:]}"
    assert json.loads(two[0]["out"].strip().splitlines()[-1])["step"] == STEPS_PER_EPOCH
    assert f"stopped by a signal at step {STEPS_PER_EPOCH}; checkpoint saved" in two[0]["out"]
    assert "4 x cpu (cpu), 2 processes" in two[0]["out"] and "epoch" not in two[1]["out"]  # process 0 prints
    assert [r["step"] for r in records(tmp_path / "two", "eval")] == [STEPS_PER_EPOCH]  # logged once

    one_process = tiny_run_config(*FLOAT64, f"--config.num_epochs={EPOCHS}")
    train_and_evaluate(one_process, str(tmp_path / "one"), stop_after=STEPS_PER_EPOCH)
    for kind in ("train", "eval"):
        assert [r["step"] for r in records(tmp_path / "two", kind)] == [
            r["step"] for r in records(tmp_path / "one", kind)
        ]
    (got,), (want,) = records(tmp_path / "two", "eval"), records(tmp_path / "one", "eval")
    assert got["val_top1"] == want["val_top1"]  # every validation example scored once, across processes
    np.testing.assert_allclose(got["val_loss"], want["val_loss"], rtol=RTOL)
    assert_same_checkpoint(tmp_path / "two", tmp_path / "one", STEPS_PER_EPOCH)

    code, out, err = cli(*flags)
    assert code == 0, err[-3000:]
    assert f"resuming from step {STEPS_PER_EPOCH} of {STEPS}" in out
    assert [r["step"] for r in records(tmp_path / "two", "eval")] == [STEPS_PER_EPOCH, STEPS]
    assert json.loads((tmp_path / "two" / "validation_report.json").read_text())["step"] == STEPS


@pytest.mark.tier2  # the first tier: towers in one process (test_towers.py) and shard_map across two (above)
def test_towers_across_two_processes_train_as_one_process_does(tmp_path, x64, cli):
    """The paper's towers composed with several hosts: 2 processes x 1 pair of towers train an epoch
    of alexnet2012 (1/32 of its width, on few 224x224 images) and evaluate it; their checkpoint of
    step 2 is 1 process of 4 pairs'. The run's filter figure shows both towers' filters, whole, and
    a process of one device evaluates the run (evaluation runs the grouped model)."""
    towers = [
        *FLOAT64,
        "--config.parallel=towers",
        "--config.model.name=alexnet2012",
        "--config.model.width=0.03125",
        "--config.dataset.synthetic_image_size=224",
        "--config.dataset.synthetic_examples=32",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        "--config.augment.crop_padding=0",
        "--config.num_epochs=1",
    ]
    flags = [*TINY, *towers, f"--workdir={tmp_path / 'two'}"]
    two = distributed_run([flags, flags], tmp_path / "outputs", devices=2, x64=True)
    for i, process in enumerate(two):
        assert process["status"] == 0, f"process {i}: {process['err'][-3000:]}"
    assert "4 x cpu (cpu), 2 processes; 2 pairs of towers" in two[0]["out"]
    train_and_evaluate(tiny_run_config(*towers), str(tmp_path / "one"), stop_after=2)  # saved, not evaluated
    assert_same_checkpoint(tmp_path / "two", tmp_path / "one", 2)

    filters = tmp_path / "filters.png"
    code, out, err = cli(
        "--mode=filters", f"--workdir={tmp_path / 'two'}", "--checkpoint=latest", f"--output={filters}"
    )
    assert code == 0, err[-3000:]
    assert filters.read_bytes() == (tmp_path / "two" / "conv1_filters.png").read_bytes()
    evaluate = [*flags, "--mode=evaluate", "--checkpoint=latest"]
    (one_device,) = run_forked([{"argv": evaluate, "devices": 1, "x64": True}], tmp_path / "evaluate")
    assert one_device["status"] == 0 and "1 x cpu (cpu), 1 process" in one_device["out"], one_device["err"][-3000:]
    assert json.loads(one_device["out"].strip().splitlines()[-1])["checkpoint_step"] == 4


def test_the_mesh_holds_each_process_devices_as_its_block_of_the_batch():
    import collections

    from alexnet_jax.parallel import by_process, check_process_blocks

    device = collections.namedtuple("Device", "id process_index")
    interleaved = [device(i, i % 2) for i in range(8)]  # as jax.devices() may list a TPU slice's
    with pytest.raises(ValueError, match="device 1 of the mesh belongs to process 1, not to process 0"):
        check_process_blocks(interleaved)
    ordered = by_process(interleaved)
    check_process_blocks(ordered)
    assert [d.id for d in ordered] == [0, 2, 4, 6, 1, 3, 5, 7]  # each process's own order kept


def assert_same_checkpoint(got_workdir, want_workdir, step):
    """Checkpoint ``step`` of the two runs holds the same float64 arrays, within the bound."""
    want, got = final_arrays(want_workdir, step), final_arrays(got_workdir, step)
    floats = [key for key, value in want.items() if value.dtype.kind == "f"]
    assert len(floats) > 10 and all(want[key].dtype == np.float64 for key in floats)
    for key in floats:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)

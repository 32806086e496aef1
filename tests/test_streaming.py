"""The streaming input pipeline: batches are a function of (seed, step) alone, the same as the
resident path's, split between processes without overlap, and a streamed run resumes exactly after SIGKILLs."""

import contextlib
import itertools
import json
import re
import shutil
import signal

import jax
import ml_collections
import numpy as np
import pytest
from conftest import TINY, tiny_run_config
from harness import assert_survived_the_kills, kill_plan, run_forked

from alexnet_jax import datasets, input_pipeline, metrics_log
from alexnet_jax.feeds import ResidentFeed, StreamingFeed
from alexnet_jax.input_pipeline import ProcessShare, TrainBatch
from alexnet_jax.parallel import DataParallel
from alexnet_jax.report import confusion_from_report
from alexnet_jax.train import train_and_evaluate


def synthetic(examples=40):
    config = ml_collections.ConfigDict(
        {"name": "synthetic", "synthetic_examples": examples, "synthetic_classes": 4, "synthetic_image_size": 8}
    )
    split = datasets.load_split(config, "train")
    # Label each example by its index, so a batch's labels say which examples it holds.
    return datasets.ArraySplit(split.images, np.arange(len(split), dtype=np.int32), split.class_names)


def labels(batch_fn, start, stop, workers=0):
    return [batch["label"].tolist() for batch in input_pipeline.pipeline(batch_fn, start, stop, workers)]


def test_batches_are_a_function_of_seed_and_step():
    split = synthetic()  # 40 examples, batches of 8: 5 steps per epoch
    batches = TrainBatch(split.read, len(split), 8, seed=3, share=ProcessShare())
    straight = labels(batches, 0, 12)
    for epoch in range(2):  # each epoch visits every example once, in its own order
        visited = sorted(sum(straight[epoch * 5 : (epoch + 1) * 5], []))
        assert visited == list(range(40))
    assert straight[:5] != straight[5:10]
    # A resumed run starts the pipeline at its step; worker processes do not change the batches.
    assert labels(batches, 7, 12, workers=2) == straight[7:]
    other_seed = TrainBatch(split.read, len(split), 8, seed=4, share=ProcessShare())
    assert labels(other_seed, 0, 5) != straight[:5]


def test_each_process_reads_its_own_block_of_the_global_batch():
    split = synthetic()
    whole = labels(TrainBatch(split.read, len(split), 8, 0, ProcessShare(0, 1)), 0, 5)
    shares = [labels(TrainBatch(split.read, len(split), 8, 0, ProcessShare(i, 2)), 0, 5) for i in range(2)]
    assert [a + b for a, b in zip(*shares, strict=True)] == whole


def test_eval_batches_cover_the_split_once_and_mask_the_padding():
    split = synthetic(examples=20)  # 20 examples in batches of 8: 3 batches, the last 4 short
    batches = input_pipeline.EvalBatch(split.read, len(split), 8, ProcessShare())
    out = list(input_pipeline.pipeline(batches, 0, 3, workers=0))
    masks = np.concatenate([b["mask"] for b in out])
    assert masks.tolist() == [1] * 20 + [0] * 4
    assert np.concatenate([b["label"] for b in out])[:20].tolist() == list(range(20))


def stream_flags(prepared) -> list[str]:
    """``TINY``'s run on the prepared folder, streamed: 27 training images, 3 steps per epoch, 2 epochs,
    the paper's plateau rule for the rate."""
    return [
        *TINY,
        "--config.dataset.name=tiny_folder",
        f"--config.dataset.data_dir={prepared}",
        "--config.dataset.train_split=train",
        "--config.dataset.eval_split=val",
        "--config.dataset.download=False",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        "--config.num_epochs=2",
        "--config.log_every_steps=1",
        "--config.schedule.name=plateau",
        "--config.schedule.patience=1",
        "--config.input.pipeline=streaming",
    ]


def stream_config(prepared):
    return tiny_run_config(*stream_flags(prepared)[len(TINY) :])


def test_streaming_and_resident_feeds_give_the_same_batches(prepared):
    config = stream_config(prepared)
    resident_split = datasets.load_split(config.dataset, "train")
    stream_split = datasets.load_split(config.dataset, "train", stream=True)
    assert len(resident_split) == len(stream_split) == 27  # 3 steps of 8 per epoch
    parallel, seed = DataParallel("shard_map"), config.seed
    resident = ResidentFeed(parallel, resident_split, config.batch_size, [seed])
    streaming = StreamingFeed(parallel, stream_split, config.batch_size, seed, 6, config.input.workers)
    with contextlib.closing(streaming.batches(0)) as streamed:
        for want, got in zip(itertools.islice(resident.batches(0), 6), streamed, strict=True):
            for key in ("image", "label"):
                np.testing.assert_array_equal(jax.device_get(got[key]), jax.device_get(want[key]))
    # The order and the batches from a later step on (a resumed run's) are those of the same steps.
    with contextlib.closing(streaming.batches(4)) as streamed:
        for want, got in zip(itertools.islice(resident.batches(4), 2), streamed, strict=True):
            np.testing.assert_array_equal(jax.device_get(got["label"]), jax.device_get(want["label"]))


@pytest.fixture(scope="module")
def straight_stream_run(prepared, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stream")
    return workdir, train_and_evaluate(stream_config(prepared), str(workdir))


def test_a_streamed_run_trains_evaluates_and_reports(straight_stream_run, prepared, tmp_path):
    workdir, summary = straight_stream_run
    assert summary["step"] == summary["total_steps"] == 6
    report = json.loads((workdir / "validation_report.json").read_text())
    assert report["examples"] == 15 and confusion_from_report(report).sum() == 15
    assert [r["step"] for r in metrics_log.read_metrics(workdir) if r["kind"] == "eval"] == [3, 6]
    # Trained to the end, its report not written (a death while writing it): run again, it writes it
    # and streams nothing more.
    again = tmp_path / "run"
    shutil.copytree(workdir, again)
    (again / "validation_report.json").unlink()
    assert train_and_evaluate(stream_config(prepared), str(again))["step"] == 6
    assert json.loads((again / "validation_report.json").read_text()) == report


@pytest.mark.parametrize("kills", [0, pytest.param(2, marks=pytest.mark.tier2)])
def test_a_dead_input_worker_then_sigkills_at_random_moments_end_as_an_uninterrupted_run(
    kills, prepared, straight_stream_run, tmp_path
):
    """First an input worker dies (one worker process, which sends itself SIGKILL, as the
    out-of-memory killer would, when asked for batch 2): one line, the last step saved, no hang.
    In the second tier, then SIGKILLs at seeded moments (checkpoints every 2 steps and at the epoch
    ends; the kill after a step is test_run.py's); a last run to the end."""
    workdir, flags = tmp_path / "run", [*stream_flags(prepared), f"--workdir={tmp_path / 'run'}"]
    dying = {"argv": [*flags, "--config.input.workers=1"], "signal": ["input_worker", 2, signal.SIGKILL]}
    plan = kill_plan(1, [2, 3, 4, 6], [3, 6], 6, after_a_step=False)[:kills]  # after step 2: save 3, evaluation 3
    killed = [{"argv": flags, "signal": [moment, step, signal.SIGKILL]} for moment, step in plan]
    died, *runs = run_forked([dying, *killed, {"argv": flags}], tmp_path / "outputs", timeout=180)
    said = re.fullmatch(
        r"error: an input worker process died \(killed by signal 9 \(as by the out-of-memory killer\)\); stopped "
        r"with (step (\d)|nothing) saved: run the same command to resume \(with fewer --config.input.workers if "
        r"memory is short\)\n",
        died["err"].split("\r")[-1],  # after the progress bar
    )
    assert died["status"] == 4 and said, died["err"][-3000:]
    saved = int(said.group(2) or 0)  # the step whose batch was asked for when the death was seen
    assert saved <= 2 and [name for name in died["checkpoints"] if name.isdigit()] == ([str(saved)] if saved else [])
    assert (f"resuming from step {saved} of 6" in runs[0]["out"]) == (saved > 0), runs[0]["out"]
    assert_survived_the_kills(runs, workdir, straight_stream_run[0], 6)


class EncodedRecords(list):
    """A stand-in TFDS data source of encoded records (what ``StreamSplit`` reads)."""

    def __getitems__(self, keys):
        return [self[k] for k in keys]


def test_streamed_images_of_another_size_are_named_and_jpegs_decode_in_place():
    import io

    from PIL import Image

    def encoded(size, fmt):
        buffer = io.BytesIO()
        Image.fromarray(np.full((size, size, 3), 100, np.uint8)).save(buffer, format=fmt)
        return {"image": buffer.getvalue(), "label": 1}

    source = EncodedRecords([encoded(8, "JPEG"), encoded(8, "PNG"), encoded(9, "JPEG")])
    split = datasets.StreamSplit(source, ("a", "b"), (8, 8, 3), "photos train")
    batch = split.read(np.array([0, 1]))
    assert batch["image"].shape == (2, 8, 8, 3) and np.abs(batch["image"].astype(int) - 100).max() <= 2
    with pytest.raises(datasets.DatasetError, match=r"photos train has images of size \(9, 9, 3\) besides"):
        split.read(np.array([0, 2]))

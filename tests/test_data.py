"""Image folder -> TFDS -> training and evaluation; TFDS cifar10 through mock_data; data errors."""

import io
import json
import logging
import pathlib
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import CLASSES, datasets_config, write_image_folder
from PIL import Image

from alexnet_jax import datasets
from alexnet_jax.prepare import prepare_image_folder, read_cifar10_archive
from alexnet_jax.report import confusion_from_report

ROOT = pathlib.Path(__file__).parent.parent


def test_prepared_folder_reads_back_with_labels_and_slicing(prepared):
    config = datasets_config("tiny_folder", prepared)
    train = datasets.load_split(config, "train")
    assert train.images.shape == (27, 16, 16, 3) and train.images.dtype == np.uint8
    assert train.class_names == CLASSES
    assert np.bincount(train.labels).tolist() == [9, 9, 9]
    # Each class has its own brightness, so labels must line up with pixels.
    for label in range(3):
        assert abs(train.images[train.labels == label][..., 1].mean() - (80 * label + 40)) < 25
    assert len(datasets.load_split(config, "train[:50%]")) + len(datasets.load_split(config, "train[50%:]")) == 27


def test_reading_does_not_import_tensorflow(prepared):
    code = (
        "import sys; from alexnet_jax import datasets; import ml_collections as m;"
        f"c = m.ConfigDict(dict(name='tiny_folder', data_dir={str(prepared)!r}, download=False));"
        "s = datasets.load_split(c, 'val'); assert len(s) == 15, len(s);"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_prepare_train_evaluate_predict_from_the_command_line(tmp_path, cli):
    """An image folder prepared, trained on and evaluated; then --mode=predict on the same image
    files (colour and greyscale), plus a CMYK JPEG and a corrupt file, gives what the evaluation gave."""
    folder = write_image_folder(tmp_path / "images")
    prepare = ("--mode=prepare", f"--image_folder={folder}", "--dataset_name=cli_folder", f"--data_dir={tmp_path}")
    code, out, err = cli(*prepare)
    assert code == 0 and f"prepared cli_folder in {tmp_path}" in out, err[-3000:]
    written = {path: path.stat().st_mtime_ns for path in (tmp_path / "cli_folder").rglob("*")}
    code, out, err = cli(*prepare)  # again, as a user will: it says so and touches nothing
    assert code == 0 and f"cli_folder is already prepared in {tmp_path / 'cli_folder' / '1.0.0'}" in out, err
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "cli_folder").rglob("*")} == written
    workdir = tmp_path / "run"
    data = [
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        "--config.dataset.name=cli_folder",
        f"--config.dataset.data_dir={tmp_path}",
        "--config.dataset.train_split=train",
        "--config.dataset.eval_split=val",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        "--config.num_epochs=2",
        "--config.model.width=0.125",
        "--config.model.fc_features=256",
    ]
    code, out, err = cli(*data)
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["step"] == 6 and summary["total_steps"] == 6  # 27 // 8 = 3 steps per epoch
    code, out, err = cli(*data, "--mode=evaluate", "--checkpoint=latest", "--config.dataset.eval_split=val[:100%]")
    assert code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    # Named by the split they were computed on, not as validation metrics.
    assert result["split"] == "val[:100%]" and result["dataset"] == "cli_folder"
    assert {"loss", "top1", "top5"} <= set(result) and not any(k.startswith("val_") for k in result)
    assert result["checkpoint_step"] == 6 and result["examples"] == 15  # 4 colour, 1 greyscale per class
    for name in ("confusion", "per_class", "predictions"):
        assert (workdir / f"eval_cli_folder_val_100_{name}.png").stat().st_size > 1000
    evaluated = json.loads((workdir / "eval_cli_folder_val_100_report.json").read_text())
    _check_predictions_match(cli, workdir, folder / "val", evaluated, tmp_path)


def _check_predictions_match(cli, workdir, val, evaluated, tmp_path):
    extras = tmp_path / "extras"
    extras.mkdir()
    Image.open(val / "dog" / "0.png").convert("CMYK").save(extras / "dog_cmyk.jpg")
    (extras / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "predictions.jsonl"
    predict = ("--mode=predict", f"--workdir={workdir}", "--checkpoint=latest", f"--output={out}", f"--images={val}")
    code, stdout, err = cli(*predict, str(extras / "*"))
    assert code == 0, err[-2000:]
    assert f"skipped {extras / 'corrupt.png'}" in err and "dog_cmyk.jpg" in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    index = {name: i for i, name in enumerate(evaluated["per_class_accuracy"])}
    confusion, losses, near_ties = np.zeros((len(index), len(index)), int), [], 0
    for row in rows:
        path = pathlib.Path(row["image"])
        if path.parent.parent == val:
            confusion[index[path.parent.name], index[row["top5"][0]["class"]]] += 1
            losses += [-np.log(c["probability"]) for c in row["top5"] if c["class"] == path.parent.name]
            first, second = row["top5"][0]["probability"], row["top5"][1]["probability"]
            near_ties += first - second < 1e-4  # float32 sums in another order could swap these two
    # Equal, but for an image whose top two are within float32 noise (each moves 2 cells at most).
    assert np.abs(confusion - confusion_from_report(evaluated)).sum() <= 2 * near_ties
    # A real check: the predictions depend on the image (what the tiny run learned differs by machine).
    assert len({tuple(c["probability"] for c in row["top5"]) for row in rows}) > 1
    # The same inputs, so the same cross-entropy (3 classes: all in the top 5), up to float32 sums in
    # another order (batches of another size): ~1e-6 relative; any other preprocessing moves it more.
    assert np.mean(losses) == pytest.approx(evaluated["loss"], rel=1e-4)
    assert (workdir / "predictions.png").stat().st_size > 1000


def test_bad_image_is_reported_with_its_path(tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=2)
    bad = folder / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(datasets.DatasetError, match=f"cannot decode image {bad}.*--skip_bad_images"):
        prepare_image_folder(str(folder), "bad_folder", str(tmp_path / "tfds"))
    skipped = prepare_image_folder(str(folder), "bad_folder_skip", str(tmp_path / "tfds"), skip_bad_images=True)
    assert skipped == [str(bad)]


def test_empty_or_missing_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(datasets.DatasetError, match="does not exist"):
        prepare_image_folder(str(tmp_path / "nope"), "x", str(tmp_path))
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(datasets.DatasetError, match="no images under"):
        prepare_image_folder(str(tmp_path / "empty"), "x", str(tmp_path))


def test_tfds_cifar10_path_with_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: [])  # as if online; mock_data downloads
    with tfds.testing.mock_data(num_examples=40):
        split = datasets.load_split(datasets_config("cifar10", tmp_path, download=True), "train[:90%]")
    assert split.images.shape == (40, 32, 32, 3) and split.images.dtype == np.uint8
    assert len(split.class_names) == 10 and split.labels.max() < 10  # the mock has no label names


def test_missing_dataset_errors_say_how_to_prepare_offline(tmp_path, caplog):
    with pytest.raises(
        datasets.DatasetError, match="not prepared.*--mode=prepare --image_folder=DIR --dataset_name=my_cifar10"
    ):
        datasets.load_split(datasets_config("cifar10", tmp_path, download=False), "train")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # the error line alone, no TFDS warning
    with pytest.raises(datasets.DatasetError, match="no TFDS dataset 'my_photos'.*--dataset_name=my_photos"):
        datasets.load_split(datasets_config("my_photos", tmp_path), "train")


def test_offline_download_fails_fast_without_retrying(tmp_path, monkeypatch):
    def unresolvable(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    def must_not_download(self, **kwargs):
        raise AssertionError("download attempted although the host does not resolve")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", must_not_download)
    with pytest.raises(
        datasets.DatasetError, match=r"www.cs.toronto.edu does not resolve \(no internet\?\); to work offline"
    ):
        datasets.load_split(datasets_config("cifar10", tmp_path, download=True), "train")


def test_failed_download_says_how_to_prepare_offline(tmp_path, monkeypatch):
    def no_network(self, **kwargs):
        raise ConnectionError("Failed to connect to www.cs.toronto.edu\nretrying")

    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: [])  # the host resolves...
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)  # ...but fails
    with pytest.raises(
        datasets.DatasetError,
        match=r"could not download TFDS dataset 'cifar10' \(Failed to connect to www.cs.toronto.edu\); to work offline",
    ):
        datasets.load_split(datasets_config("cifar10", tmp_path, download=True), "train")


def test_prepare_refuses_a_tfds_catalog_name(tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=2)
    with pytest.raises(datasets.DatasetError, match="--dataset_name=cifar10 is a TFDS catalog dataset.*my_cifar10"):
        prepare_image_folder(str(folder), "cifar10", str(tmp_path / "tfds"))


def test_bad_split_is_a_clear_error(prepared):
    with pytest.raises(datasets.DatasetError, match="bad split 'test'.*splits: .*train"):
        datasets.load_split(datasets_config("tiny_folder", prepared), "test")


def test_worker_processes_read_the_same_arrays(prepared):
    """The resident path's parallel read (Grain workers, a chunk of examples each) gives what one
    process reads; 27 chunks of one image: 2 workers."""
    source = datasets.tfds_source(datasets_config("tiny_folder", prepared), "train", decoders=datasets._encoded())
    alone = datasets.read_all(source, "tiny_folder train", workers=0, chunk=1)
    together = datasets.read_all(source, "tiny_folder train", workers=2, chunk=1)
    np.testing.assert_array_equal(together.images, alone.images)
    np.testing.assert_array_equal(together.labels, alone.labels)
    assert len(alone) == 27 and alone.images.std() > 10


def write_cifar10_archive(path: pathlib.Path, per_batch=3) -> dict:
    """A CIFAR-10 binary archive (cifar-10-binary.tar.gz's layout) of random images, ``per_batch`` a
    batch file; returns split -> (images, labels) as written."""
    rng, written = np.random.default_rng(3), {}
    with tarfile.open(path, "w:gz") as archive:

        def add(name, data):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        add("batches.meta.txt", "\n".join(f"class{i}" for i in range(10)).encode() + b"\n\n")
        for split, batches in (("train", [f"data_batch_{i}.bin" for i in range(1, 6)]), ("test", ["test_batch.bin"])):
            images = rng.integers(0, 256, (len(batches) * per_batch, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, len(images), dtype=np.uint8)
            written[split] = (images, labels)
            planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
            records = np.concatenate([labels[:, None], planes], axis=1)
            for i, batch in enumerate(batches):
                add(batch, records[i * per_batch : (i + 1) * per_batch].tobytes())
    return written


def test_cifar10s_official_archive_prepares_pixel_for_pixel(tmp_path, cli):
    written = write_cifar10_archive(tmp_path / "cifar-10-binary.tar.gz")
    flags = ["--mode=prepare", "--dataset_name=cifar10_archive", f"--data_dir={tmp_path}", "--workers=1"]
    code, out, err = cli(*flags, f"--cifar10_archive={tmp_path / 'cifar-10-binary.tar.gz'}")
    assert code == 0 and "prepared cifar10_archive" in out, err[-3000:]
    for split, (images, labels) in written.items():
        source = tfds.data_source("cifar10_archive", data_dir=str(tmp_path), split=split)
        assert source.dataset_info.features["label"].names == [f"class{i}" for i in range(10)]
        records = sorted(source, key=lambda r: r["file_name"])  # batch files, then the images in each, as written
        np.testing.assert_array_equal(np.stack([r["image"] for r in records]), images)
        np.testing.assert_array_equal([r["label"] for r in records], labels)
    (tmp_path / "short.tar.gz").write_bytes(b"not a tar")
    with tarfile.open(tmp_path / "cut.tar.gz", "w:gz") as archive:  # one batch file, the rest missing
        info, data = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin"), b"\x01" * 3000
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    for archive, said in (
        ("short.tar.gz", "cannot be read as CIFAR-10's archive (file could not be opened successfully)"),
        ("cut.tar.gz", "has no batches.meta.txt: it is not CIFAR-10's binary archive"),
    ):
        code, _, err = cli(
            flags[0], "--dataset_name=x", f"--data_dir={tmp_path}", f"--cifar10_archive={tmp_path / archive}"
        )
        assert code == 2 and said in err and err.count("\n") == 1, err
    written = tmp_path / "cut_batch"  # every file there, the test batch cut short
    written.mkdir()
    write_cifar10_archive(written / "a.tar.gz")
    with tarfile.open(written / "a.tar.gz") as a, tarfile.open(written / "b.tar.gz", "w:gz") as b:
        for member in a.getmembers():
            data = a.extractfile(member).read()
            data = data[:-5] if member.name.endswith("test_batch.bin") else data
            member.size = len(data)
            b.addfile(member, io.BytesIO(data))
    with pytest.raises(datasets.DatasetError, match=r"test_batch.bin holds 9214 bytes, not whole images"):
        read_cifar10_archive(str(written / "b.tar.gz"))

"""--mode=predict on image files: the same top-1 as --mode=evaluate on the same images, whatever
their format; unreadable files are reported and skipped."""

import json
import pathlib

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

FOLDER_RUN = [
    *TINY,
    "--config.dataset.name=tiny_folder",
    "--config.dataset.train_split=train",
    "--config.dataset.eval_split=val",
    "--config.dataset.download=False",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.num_epochs=2",
    "--config.optimizer.learning_rate=0.05",
]


def test_predict_gives_evaluates_top1_on_the_same_images(prepared, cli, tmp_path):
    workdir, flags = tmp_path / "run", [*FOLDER_RUN, f"--config.dataset.data_dir={prepared}"]
    code, _, err = cli(*flags, f"--workdir={workdir}")
    assert code == 0, err[-2000:]
    code, _, err = cli("--mode=evaluate", *flags, f"--workdir={workdir}", "--checkpoint=latest")
    assert code == 0, err[-2000:]
    evaluated = json.loads((workdir / "eval_tiny_folder_val_report.json").read_text())

    val = prepared.parent / "images" / "val"  # what the prepared split was made from
    extras = tmp_path / "extras"
    extras.mkdir()
    Image.open(val / "dog" / "0.png").convert("CMYK").save(extras / "dog_cmyk.jpg")
    (extras / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "predictions.jsonl"
    code, stdout, err = cli(
        "--mode=predict",
        f"--workdir={workdir}",
        "--checkpoint=latest",
        f"--output={out}",
        f"--images={val}",
        str(extras / "*"),
    )
    assert code == 0, err[-2000:]
    assert f"skipped {extras / 'corrupt.png'}" in err and "dog_cmyk.jpg" in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = evaluated["per_class_accuracy"].keys()
    index = {name: i for i, name in enumerate(names)}
    confusion, losses = np.zeros((len(names), len(names)), int), []
    for row in rows:
        path = pathlib.Path(row["image"])
        if path.parent.parent == val:
            confusion[index[path.parent.name], index[row["top5"][0]["class"]]] += 1
            losses += [-np.log(c["probability"]) for c in row["top5"] if c["class"] == path.parent.name]
    assert confusion.sum() == evaluated["examples"] == 15  # 4 colour and 1 greyscale image per class
    np.testing.assert_array_equal(confusion, evaluated["confusion_matrix"])
    # The same inputs, so the same cross-entropy (3 classes: all in the top 5), up to float32 sums in
    # another order (batches of another size): ~1e-6 relative; any other preprocessing moves it more.
    assert np.mean(losses) == pytest.approx(evaluated["loss"], rel=1e-4)
    assert (np.diag(confusion) > 0).sum() >= 2  # the model tells classes apart: a real check
    assert (workdir / "predictions.png").exists()

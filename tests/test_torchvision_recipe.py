"""torchvision's recipe on full-size photos: kept as they are by prepare, random resized crops and
centre squares made on the host, the config run from the command line with a ten-crop evaluation."""

import io
import json
import math
import pathlib

import numpy as np
import pytest
from conftest import SMALL_IMAGENET_RUN, datasets_config, write_imagenet_style_folder
from PIL import Image

from alexnet_jax import datasets
from alexnet_jax.experiment import load_split
from alexnet_jax.images import CentreSquare, RandomResizedCrop, example_rng


def jpeg(width, height) -> bytes:
    """A smooth photo stand-in: horizontal and vertical ramps, so any sound resampling agrees closely."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    pixels = np.stack([x, y, (x + y) / 2], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_random_resized_crop_boxes_follow_torchvisions_distribution():
    view = RandomResizedCrop(224)
    boxes = np.array([view.box(500, 375, example_rng(0, 0, i)) for i in range(2000)])
    left, top, width, height = boxes.T
    assert (left >= 0).all() and (top >= 0).all() and (left + width <= 500).all() and (top + height <= 375).all()
    # Rounding moves a side by at most half a pixel: bounds on area and aspect with that slack.
    area, aspect = width * height / (500 * 375), width / height
    slack = 0.5 / height.min() + 0.5 / width.min()
    assert area.min() > 0.08 * (1 - 2 * slack) and area.max() <= 1
    assert aspect.min() > 3 / 4 * (1 - 2 * slack) and aspect.max() < 4 / 3 * (1 + 2 * slack)
    # Where every draw fits (a square image, areas up to half of it), the area is uniform and the
    # aspect log-uniform: the fraction below the middle is 1/2 and the mean log-aspect 0, within 4.5
    # standard errors of 2,000 draws (0.011 and 0.0037).
    fitting = RandomResizedCrop(224, area=(0.08, 0.5))
    _, _, width, height = np.array([fitting.box(500, 500, example_rng(1, 0, i)) for i in range(2000)]).T
    assert abs(np.mean(width * height / 500**2 < 0.29) - 0.5) < 0.05
    assert abs(np.mean(np.log(width / height))) < 0.017
    # Too narrow for any draw: the whole height, cut to the widest allowed aspect, centred.
    assert view.box(1000, 10, example_rng(0, 0, 0)) == (493, 0, 13, 10)


def test_views_decode_at_a_reduced_scale_and_match_full_decoding():
    encoded = jpeg(1600, 1200)
    view = RandomResizedCrop(64)
    rng_a, rng_b = example_rng(3, 7, 1), example_rng(3, 7, 1)
    left, top, width, height = view.box(1600, 1200, rng_a)
    crop = view(encoded, rng_b)  # decoded at 1/8 scale or so, then resized
    full = Image.open(io.BytesIO(encoded)).convert("RGB")
    box = (left, top, left + width, top + height)
    reference = np.asarray(full.resize((64, 64), Image.Resampling.BILINEAR, box=box))
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    # A ramp of 256 levels over 1200 pixels changes by < 1 level per pixel: a box misplaced by up to
    # one scaled pixel (8 pixels) moves values by < 8 levels; JPEG's own error is smaller at quality 95.
    assert np.abs(crop.astype(int) - reference).max() < 8 + 4
    assert not np.array_equal(crop, view(encoded, example_rng(3, 7, 2)))  # another example, another box
    square = CentreSquare(40)(jpeg(90, 60))
    assert square.shape == (40, 40, 3)
    # The centre square's left edge lies a quarter of the way into the ramp: (90 - 60) / 2 / 90 of 255.
    assert abs(int(square[:, 0, 0].mean()) - 255 * 15 / 89) < 8


def test_full_size_prepare_keeps_rgb_jpegs_byte_for_byte(tmp_path):
    from alexnet_jax.prepare import prepare_image_folder

    folder = write_imagenet_style_folder(tmp_path / "imagenet")
    skipped = prepare_image_folder(
        str(folder), "full", str(tmp_path / "tfds"), skip_bad_images=True, workers=1, image_format="jpeg"
    )
    assert [pathlib.Path(p).name for p in skipped] == ["n01440764_broken.JPEG"]
    split = datasets.load_split(datasets_config("full", tmp_path / "tfds"), "train", stream=True)
    records = split.source.__getitems__(list(range(len(split))))
    for record in records:
        name = record["file_name"].decode()
        original = (folder / name).read_bytes()
        converted = any(kind in name for kind in ("cmyk", "png", "grey"))
        assert (record["image"] == original) != converted, name  # only the non-RGB ones were re-encoded
        with Image.open(io.BytesIO(record["image"])) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
    sizes = {Image.open(io.BytesIO(r["image"])).size for r in records}
    assert {(300, 200), (40, 60), (1200, 900), (80, 80)} == sizes


# the first tier: its boxes, views and schedule (here and test_optim.py), its step (test_train_step.py),
# a folder prepared, trained on, evaluated and predicted from the command line (test_data.py)
@pytest.mark.tier2
def test_the_torchvision_config_runs_from_the_command_line(tmp_path, cli):
    """prepare (full size) -> host random resized crops -> training with the step schedule -> a ten-crop
    evaluation of centre squares (``--mode=evaluate`` itself: see the paper config's test)."""
    folder = write_imagenet_style_folder(tmp_path / "imagenet")
    prepare = ["--mode=prepare", f"--image_folder={folder}", "--dataset_name=tiny_imagenet_full", "--workers=1"]
    code, out, err = cli(*prepare, f"--data_dir={tmp_path / 'tfds'}", "--image_format=jpeg", "--skip_bad_images")
    assert code == 0 and "skipped 1 bad images" in out, err[-2000:]
    run = [
        "--config=configs/imagenet_torchvision.py",
        f"--workdir={tmp_path / 'run'}",
        "--config.dataset.name=tiny_imagenet_full",
        f"--config.dataset.data_dir={tmp_path / 'tfds'}",
        *SMALL_IMAGENET_RUN,
        "--config.input.random_resized_crop=32",
        "--config.input.eval_resize=40",
        "--config.augment.crop_size=32",
        "--config.schedule.step_epochs=(1,)",
        "--config.eval_crops=10",
    ]
    code, out, err = cli(*run)
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["step"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["learning_rate"] for r in records if r["kind"] == "train"]
    assert np.allclose(rates, [0.01, 0.001]) and not math.isnan(records[-1]["val_top1"])
    report = json.loads((tmp_path / "run" / "validation_report.json").read_text())
    assert report["examples"] == 12  # every validation image, through the host's centre squares


def test_predict_feeds_a_large_jpeg_to_the_model_exactly_as_evaluation_does(tmp_path):
    """A 2000x1500 photo prepared (full size; the paper's format) and read as evaluation reads it
    equals, pixel for pixel, what --mode=predict makes of the same file, for both ImageNet configs."""
    import ml_collections

    from alexnet_jax.predict import _evaluation_input
    from alexnet_jax.prepare import prepare_image_folder
    from configs import imagenet2012_paper, imagenet_torchvision

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(0, 200, 2000), np.linspace(0, 200, 1500))
    pixels = np.clip(np.stack([x, y, x + y], -1) / 2 + rng.normal(0, 30, (1500, 2000, 3)), 0, 255).astype(np.uint8)
    photo = tmp_path / "folder" / "validation" / "n01440764" / "big.JPEG"
    photo.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(photo, quality=90)
    for module, prepared in (
        (imagenet_torchvision, {"image_format": "jpeg"}),
        (imagenet2012_paper, {"image_size": 64}),
    ):
        config, data_dir = module.get_config(), tmp_path / f"tfds_{module.__name__}"
        prepare_image_folder(str(photo.parents[2]), "one_photo", str(data_dir), workers=1, **prepared)
        config.dataset = ml_collections.ConfigDict({"name": "one_photo", "data_dir": str(data_dir), "download": False})
        config.augment.crop_size = 56
        evaluated = load_split(config, "validation", train=False).read(np.arange(1))["image"][0]
        predicted = _evaluation_input(config, {"image_shape": [64, 64, 3]})(photo.read_bytes())
        np.testing.assert_array_equal(predicted, evaluated)
        # Decoding the photo at full size and scaling it (what predict did) gives other pixels.
        full = CentreSquare(evaluated.shape[0])(np.asarray(Image.open(photo).convert("RGB")))
        assert not np.array_equal(full, evaluated), module.__name__

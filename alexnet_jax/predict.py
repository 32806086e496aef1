"""``--mode=predict``: the top-5 classes of image files, from a workdir's checkpoint.

Each image goes through exactly what a validation image of the checkpoint's config goes through:
``--mode=prepare``'s encoding (the paper's 256x256 JPEG; full size for torchvision's recipe; the
size trained on, losslessly, for CIFAR), then evaluation's host view (torchvision's: the shorter
side scaled to ``eval_resize``, the centre square) or plain decoding (``images.EvaluationInput``).
On the accelerator, the centre ``crop_size`` crop (or the paper's ten crops) is scored with the
config's normalisation, in batches of ``eval_batch_size``.
"""

import concurrent.futures
import csv
import dataclasses
import functools
import glob
import io
import json
import os
import pathlib
import sys

import jax
import ml_collections
import numpy as np
import tqdm
from PIL import Image

from alexnet_jax import config_checks, cpus, ensemble, files, models, plots, runtime
from alexnet_jax.checkpointing import CheckpointError, read_model
from alexnet_jax.evaluation import View, scorer
from alexnet_jax.images import CentreSquare, Encoding, EvaluationInput
from alexnet_jax.torchvision_weights import readable_class_names

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
TOP = 5
GRID_IMAGES = 32


def find_images(patterns: list[str]) -> list[pathlib.Path]:
    """Files, folders (searched recursively for image suffixes) and globs, in the order given, each once."""
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) or [pattern]
        for match in map(pathlib.Path, matches):
            if match.is_dir():
                found += sorted(p for p in match.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            else:
                found.append(match)
    return list(dict.fromkeys(found))


def load_image(path: pathlib.Path, evaluation_input) -> np.ndarray | str:
    """``path`` as evaluation feeds it to the model (``images.EvaluationInput``); an error message if
    it cannot be read."""
    try:
        return evaluation_input(path.read_bytes())
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def saved_config(workdir: pathlib.Path):
    """The config a workdir was trained (or converted) with, from its ``config.json``."""
    path = workdir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; predict from a workdir of a training run or of --mode=convert")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (ValueError, TypeError):
        raise CheckpointError(
            f"{path} is damaged (not a config); run the training command again: it writes it again"
        ) from None


def _evaluation_input(config, data: dict) -> EvaluationInput:
    """How the config's validation images reach the model: torchvision's recipe (``eval_resize``)
    keeps full-size photos and scales each on the host; the configs that crop (the paper's) were
    trained on prepare's 256x256 JPEGs; the others (CIFAR) on images as they are, losslessly."""
    if config.input.get("eval_resize"):
        return EvaluationInput(Encoding(None, "jpeg"), CentreSquare(config.input.eval_resize))
    if "image_shape" not in data:
        raise CheckpointError("the checkpoint does not say the image size it was trained on; retrain with this version")
    size = data["image_shape"][0]
    return EvaluationInput(Encoding(size, "jpeg" if config.augment.get("crop_size") else "png"))


class Predictor:
    """A checkpoint's model on the accelerator: uint8 images -> class probabilities."""

    def __init__(
        self, workdir: pathlib.Path, which: str, ten_crop: bool, member: int | None = None, weights: str = "raw"
    ):
        self.config = saved_config(workdir)
        if ten_crop and self.config.augment.get("crop_size") is None:
            raise config_checks.ConfigError(
                "--ten_crop needs a config that crops (augment.crop_size: the ImageNet configs); "
                "this one scores whole images"
            )
        _, data, variables = read_model(workdir, which, weights)  # the model's variables, not the optimizer's
        num_classes = data["num_classes"]
        self.class_names = readable_class_names(data.get("class_names") or [f"class {i}" for i in range(num_classes)])
        self.input = _evaluation_input(self.config, data)
        self.variables, members = ensemble.chosen(self.config, variables, member, workdir)
        self.apply_fn = models.create_model(self.config.model, num_classes).apply
        self.batch = self.config.eval_batch_size
        # Centre crop, or the paper's ten crops (which hold the mirrors: no extra mirror then).
        view = View.from_config(self.config)
        view = dataclasses.replace(view, crops=10, flip=False) if ten_crop else dataclasses.replace(view, crops=1)
        scored = scorer(self.apply_fn, view, members)  # an ensemble's softmax averaged, or one member's
        self._probabilities = jax.jit(lambda variables, images: jax.numpy.exp(scored(variables, images)[""]))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes] of uint8 images [N, size, size, 3], in batches of fixed size."""
        if not len(images):
            return np.zeros((0, len(self.class_names)))
        return in_fixed_batches(functools.partial(self._probabilities, self.variables), images, self.batch)


def in_fixed_batches(fn, images: np.ndarray, batch: int) -> np.ndarray:
    """``fn`` (compiled for ``batch`` images) over any number of images: the last batch padded with
    zeros, its padding's results dropped."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(fn(padded))[: len(chunk)])
    return np.concatenate(out)


def predict(
    workdir: str,
    which: str,
    patterns: list[str],
    output: str | None,
    ten_crop: bool,
    grid: str | None,
    member: int | None = None,
    weights: str = "raw",
):
    """Predicts the top-5 classes of the images ``patterns`` name; prints a table, writes ``output``
    (.csv or .jsonl) and a PNG grid. Returns the rows (one per readable image). An ensemble's
    workdir predicts with the ensemble, or with ``member`` alone; ``weights="ema"``, with the
    weights' moving average."""
    if output and pathlib.Path(output).suffix not in (".csv", ".jsonl"):
        raise config_checks.ConfigError(f"--output={output} must end in .csv or .jsonl")
    paths = find_images(patterns)
    if not paths:
        raise config_checks.ConfigError("--mode=predict needs --images=FILE_FOLDER_OR_GLOB (one or more)")
    workdir = pathlib.Path(workdir)
    print(runtime.platform_line(), flush=True)
    predictor = Predictor(workdir, which, ten_crop, member, weights)
    rows, shown = _predict_all(predictor, paths)
    if not rows:
        raise config_checks.ConfigError(f"none of the {len(paths)} files could be read as an image")
    print(_table(rows))
    if output:
        _write(rows, pathlib.Path(output))
    labels = [f"{row['top5'][0]['class']} {row['top5'][0]['probability']:.0%}" for row in rows[: len(shown)]]
    plots.plot_labelled_grid(np.stack(shown), labels, pathlib.Path(grid or workdir / "predictions.png"))
    return rows


def _predict_all(predictor: Predictor, paths: list[pathlib.Path]) -> tuple[list[dict], list[np.ndarray]]:
    """The top-5 rows of the readable images, a batch at a time, and the first ``GRID_IMAGES``
    images, for the grid."""
    rows, shown = [], []
    for readable, images in readable_batches(paths, predictor.input, predictor.batch, "predicting"):
        probabilities = predictor(images)
        rows += [_top(str(path), p, predictor.class_names) for path, p in zip(readable, probabilities, strict=True)]
        shown += list(images[: GRID_IMAGES - len(shown)])
    return rows, shown


def readable_batches(paths: list[pathlib.Path], evaluation_input, batch: int, description: str):
    """(paths, uint8 images) of the readable files among ``paths``, ``batch`` files at a time, read on
    all cores as evaluation reads them, so memory stays flat however many there are. Unreadable
    files are reported on stderr and skipped."""
    load = lambda path: load_image(path, evaluation_input)
    with (
        concurrent.futures.ThreadPoolExecutor(cpus.usable_cpus()) as pool,
        tqdm.tqdm(total=len(paths), desc=description, unit="image", leave=False, disable=None) as bar,
    ):
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            loaded = [(path, pixels) for path, pixels in zip(chunk, pool.map(load, chunk), strict=True)]
            for path, error in ((p, x) for p, x in loaded if isinstance(x, str)):
                tqdm.tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
            readable = [(path, pixels) for path, pixels in loaded if not isinstance(pixels, str)]
            if readable:
                yield [path for path, _ in readable], np.stack([pixels for _, pixels in readable])
            bar.update(len(chunk))


def _top(path: str, probabilities: np.ndarray, class_names) -> dict:
    order = np.argsort(-probabilities, kind="stable")[:TOP]
    top = [{"class": class_names[i], "index": int(i), "probability": float(probabilities[i])} for i in order]
    return {"image": path, "top5": top}


def _table(rows: list[dict], max_width: int = 60) -> str:
    """One line per image: its path (long ones shortened from the left) and the top 5 with probabilities."""
    shorten = lambda path: path if len(path) <= max_width else "..." + path[3 - max_width :]
    width = max(len(shorten(r["image"])) for r in rows)
    header = f"{'image':<{width}}  " + "  ".join(f"{'top-' + str(k + 1):<24}" for k in range(TOP))
    lines = [header.rstrip()]
    for row in rows:
        cells = [f"{c['class'][:16]} {c['probability']:6.1%}" for c in row["top5"]]
        lines.append(f"{shorten(row['image']):<{width}}  " + "  ".join(f"{cell:<24}" for cell in cells).rstrip())
    return "\n".join(lines)


def _write(rows: list[dict], path: pathlib.Path):
    """The rows as JSON lines or CSV, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        files.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        return
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["image", *[f"{field}{k + 1}" for k in range(TOP) for field in ("class", "probability")]])
    for row in rows:
        writer.writerow([row["image"], *[v for c in row["top5"] for v in (c["class"], f"{c['probability']:.6f}")]])
    files.write_text(path, table.getvalue())

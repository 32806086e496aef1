"""An evaluation's report: a JSON file and three figures, bounded in size whatever the number of classes.

``<name>_report.json`` holds the metrics, the accuracy of every class, the most-confused pairs and
the confusion matrix as its non-zero cells (at most one per example, so 1,000 classes cost no more
than 10); the figures (``plots.py``) name every class up to ``plots.NAMED_CLASSES`` and summarise
at a fixed size above it. ImageNet's WordNet ids are shown by their names in the figures. Every
file is written whole or not at all (``files.py``).
"""

import json
import pathlib

import numpy as np

from alexnet_jax import files
from alexnet_jax.torchvision_weights import readable_class_names

MOST_CONFUSED = 20  # pairs named in the JSON report


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return confusion


def confusion_from_report(report: dict) -> np.ndarray:
    """The dense confusion matrix (rows: true class) from a report's ``confusion_cells``."""
    size = len(report["per_class_accuracy"])
    confusion = np.zeros((size, size), np.int64)
    for true, predicted, count in report["confusion_cells"]:
        confusion[true, predicted] = count
    return confusion


def _json_lines(report: dict) -> str:
    """JSON with one line per top-level key: readable, and compact where a value is long."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in report.items()) + "\n}\n"


def write_report(
    out_dir: pathlib.Path,
    name: str,
    split,
    predictions: np.ndarray,
    labels: np.ndarray,
    metrics: dict,
    grid: int = 32,
    figures: bool = True,
) -> dict:
    """Writes ``<name>_report.json`` and (``figures``) ``<name>_confusion.png``,
    ``<name>_per_class.png``, ``<name>_predictions.png`` (the split's first ``grid`` images);
    returns the report."""
    names = list(split.class_names)
    confusion = confusion_matrix(labels, predictions, len(names))
    per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    if figures:
        _draw(out_dir, name, split, confusion, readable_class_names(names), labels[:grid], predictions[:grid])
    true, predicted = np.nonzero(confusion)
    report = {
        **metrics,
        "examples": len(split),
        "per_class_accuracy": dict(zip(names, per_class.round(4).tolist(), strict=True)),
        "most_confused": [
            {"true": names[t], "predicted": names[p], "examples": n}
            for t, p, n in most_confused(confusion, MOST_CONFUSED)
        ],
        # [true, predicted, examples] per non-zero cell; indices in per_class_accuracy's order.
        "confusion_cells": np.stack([true, predicted, confusion[true, predicted]], 1).tolist(),
    }
    files.write_text(out_dir / f"{name}_report.json", _json_lines(report))
    return report


def _draw(out_dir: pathlib.Path, name: str, split, confusion, shown_names, labels, predictions):
    """The report's three figures; the predictions' grid shows the split's first ``len(labels)`` images."""
    from alexnet_jax import plots  # matplotlib: imported when the first figure is drawn

    plots.plot_confusion(confusion, shown_names, out_dir / f"{name}_confusion.png")
    plots.plot_per_class(confusion, shown_names, out_dir / f"{name}_per_class.png")
    shown = split.read(np.arange(len(labels)))["image"]
    plots.plot_predictions(shown, labels, predictions, shown_names, out_dir / f"{name}_predictions.png")


def most_confused(confusion: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """The ``count`` largest off-diagonal cells as (true, predicted, examples), largest first."""
    off_diagonal = confusion * (1 - np.eye(len(confusion), dtype=confusion.dtype))
    flat = np.argsort(-off_diagonal, axis=None, kind="stable")[:count]
    cells = zip(*np.unravel_index(flat, confusion.shape), strict=True)
    return [(int(t), int(p), int(off_diagonal[t, p])) for t, p in cells if off_diagonal[t, p] > 0]

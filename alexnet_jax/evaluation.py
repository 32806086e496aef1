"""Evaluation on a device-resident split: every example scored exactly once, plus reports."""

import functools
import json
import pathlib

import jax
import numpy as np

from alexnet_jax import plots
from alexnet_jax.datasets import ArraySplit
from alexnet_jax.parallel import REPLICATED, SHARDED, DataParallel
from alexnet_jax.train_step import StepConstants, resident_eval_step


def pad_to_batches(split: ArraySplit, global_batch: int) -> dict[str, np.ndarray]:
    """Pads a split to whole global batches; ``mask`` is 1 for real examples, 0 for padding."""
    padding = -len(split) % global_batch
    pad = lambda x: np.concatenate([x, np.zeros((padding, *x.shape[1:]), x.dtype)])  # noqa: E731
    mask = np.concatenate([np.ones(len(split), np.int32), np.zeros(padding, np.int32)])
    return {"image": pad(split.images), "label": pad(split.labels), "mask": mask}


class Evaluator:
    """Holds one split on the devices and scores parameters on it."""

    def __init__(
        self, parallel: DataParallel, apply_fn, constants: StepConstants, split: ArraySplit, global_batch: int
    ):
        self.parallel, self.split, self.global_batch = parallel, split, global_batch
        padded = pad_to_batches(split, global_batch)
        self.num_batches = len(padded["label"]) // global_batch
        self._data = parallel.replicate(padded)
        self._order = parallel.replicate(np.arange(len(padded["label"]), dtype=np.int32))
        self._starts = [parallel.replicate(np.int32(i * global_batch)) for i in range(self.num_batches)]
        step = functools.partial(
            resident_eval_step, apply_fn=apply_fn, local_batch=global_batch // parallel.num_devices, constants=constants
        )
        self._step = parallel.wrap(step, (REPLICATED,) * 4, (REPLICATED, SHARDED))

    def __call__(self, params) -> tuple[dict[str, float], np.ndarray]:
        """Returns mean ``loss`` (cross-entropy), ``top1``, ``top5`` and every example's predicted class."""
        totals, predictions = None, []
        for start in self._starts:
            sums, batch_predictions = self._step(params, self._data, self._order, start)
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            predictions.append(self.parallel.unshard(batch_predictions))
        totals = jax.device_get(self.parallel.unreplicate(totals))
        count = float(totals["count"])
        metrics = {k: float(totals[k]) / count for k in ("loss", "top1", "top5")}
        return metrics, np.concatenate(jax.device_get(predictions))[: len(self.split)]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return confusion


def write_report(
    out_dir: pathlib.Path, name: str, split: ArraySplit, predictions: np.ndarray, metrics: dict, grid: int = 32
):
    """Writes ``<name>_confusion.png``, ``<name>_per_class.png``, ``<name>_predictions.png`` and
    ``<name>_report.json`` (metrics, per-class accuracy, confusion matrix)."""
    names = split.class_names
    confusion = confusion_matrix(split.labels, predictions, len(names))
    per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    plots.plot_confusion(confusion, names, out_dir / f"{name}_confusion.png")
    plots.plot_per_class(confusion, names, out_dir / f"{name}_per_class.png")
    plots.plot_predictions(
        split.images[:grid], split.labels[:grid], predictions[:grid], names, out_dir / f"{name}_predictions.png"
    )
    report = {
        **metrics,
        "examples": len(split),
        "per_class_accuracy": dict(zip(names, per_class.round(4).tolist(), strict=True)),
        "confusion_matrix": confusion.tolist(),
    }
    (out_dir / f"{name}_report.json").write_text(json.dumps(report, indent=1))
    return report

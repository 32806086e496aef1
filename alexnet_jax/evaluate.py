"""Evaluates the latest, best or a given checkpoint of a workdir on any dataset split."""

import copy
import functools
import json
import pathlib
import re

import jax
import numpy as np

from alexnet_jax import config_checks, datasets, ensemble, models, parallel, runtime
from alexnet_jax.checkpointing import CheckpointError, Checkpoints, check_shapes, check_signature, read_variables
from alexnet_jax.distributed import is_main_process
from alexnet_jax.evaluation import create_evaluator
from alexnet_jax.experiment import load_split, model_input_shape, model_signature
from alexnet_jax.parallel import DataParallel
from alexnet_jax.report import write_report
from alexnet_jax.train_step import model_variables


def evaluate_checkpoint(
    config, workdir: str, which: str = "best", member: int | None = None, weights: str = "raw"
) -> dict:
    """Scores checkpoint ``which`` ('latest', 'best' or a step) on ``config.dataset.eval_split``.

    Writes ``eval_<dataset>_<split>_*`` plots and a JSON report into the workdir and returns the
    report. Metrics are named neutrally (``loss``, ``top1``, ``top5``): the split may be any; a
    split with ReaL labels (``imagenet2012_real``, or a dataset prepared from it) adds ``real_top1``.
    An ensemble's workdir is scored as the ensemble (each member too), or ``member`` alone;
    ``weights="ema"`` scores the weights' moving average. A run trained in towers is scored by the
    grouped model, data parallel, on any number of devices.
    """
    workdir, config = pathlib.Path(workdir), copy.deepcopy(config)
    config.parallel = parallel.for_evaluation(config.parallel)
    config_checks.validate(config, jax.device_count())
    if is_main_process():
        print(runtime.platform_line(), flush=True)
    step, saved = _chosen_checkpoint(config, workdir, which)
    split = load_split(config, config.dataset.eval_split, train=False)
    expected = {"model": model_signature(config.model), "num_classes": len(split.class_names)}
    expected["ensemble_size"] = ensemble.size(config)
    check_signature(saved, expected, workdir, "evaluate with the config it was trained with")
    model = models.create_model(config.model, len(split.class_names))
    variables = _checked_variables(config, model, workdir / "checkpoints" / str(step), split.image_shape, weights)
    variables, members = ensemble.chosen(config, variables, member, workdir)
    data_parallel = DataParallel(config.parallel)
    evaluator = create_evaluator(data_parallel, model.apply, split, config, members)
    metrics, predictions, labels = evaluator(data_parallel.place_model(variables))
    name, header = _report_name(config, step, member, weights)
    if not is_main_process():
        return {**header, **metrics, "examples": len(split)}
    real = datasets.real_labels(config.dataset, config.dataset.eval_split)
    if real is not None:
        metrics["real_top1"], metrics["real_examples"] = real_top1(predictions, real)
    report = write_report(workdir, name, split, predictions, labels, {**header, **metrics})
    print(json.dumps({k: report[k] for k in (*header, *metrics, "examples")}))
    return report


def _chosen_checkpoint(config, workdir: pathlib.Path, which: str) -> tuple[int, dict]:
    """The step ``which`` names in ``workdir``, checked intact, and its data (the run's signature)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoints in {directory}; train first with --mode=train and the same --workdir")
    checkpoints = Checkpoints(directory, config.keep_checkpoints, async_save=False)
    try:
        step = checkpoints.resolve(which)
        return step, checkpoints.read_data(step)
    finally:
        checkpoints.close()


def _checked_variables(config, model, folder: pathlib.Path, image_shape, weights: str) -> dict:
    """The checkpoint's model variables (``weights``: trained or ``ema``; not the optimizer: any will
    do), checked against the shapes the config's model (an ensemble's, stacked) has."""
    variables = model_variables(*read_variables(folder, weights))
    inputs = np.zeros((1, *model_input_shape(config, image_shape)), np.float32)
    expected = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), inputs)
    remedy = "evaluate with the config and images it was trained on"
    check_shapes(variables, ensemble.stacked(dict(expected), config), folder, remedy)
    return variables


def _report_name(config, step: int, member: int | None, weights: str) -> tuple[str, dict]:
    """The report's file prefix and the header saying what was scored."""
    dataset, split_name = config.dataset.name, config.dataset.eval_split
    name = "eval_" + re.sub("[^0-9A-Za-z]+", "_", f"{dataset}_{split_name}").strip("_")
    header = {"checkpoint_step": step, "dataset": dataset, "split": split_name}
    if member is not None and ensemble.size(config) > 1:
        header["member"] = member
        name += f"_member{member}"
    if weights == "ema":
        header["weights"] = "ema"
        name += "_ema"
    return name, header


def real_top1(predictions: np.ndarray, real_labels: list[np.ndarray]) -> tuple[float, int]:
    """ReaL top-1 accuracy (Beyer et al., 2020, "Are we done with ImageNet?"): the share of the
    examples that have real labels whose predicted class is one of them (examples with none are not
    counted); and how many were counted."""
    counted = [(predicted, real) for predicted, real in zip(predictions, real_labels, strict=True) if len(real)]
    if not counted:
        return float("nan"), 0
    return sum(int(predicted in real) for predicted, real in counted) / len(counted), len(counted)

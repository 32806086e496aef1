"""Evaluates the latest, best or a given checkpoint of a workdir on any dataset split."""

import json
import pathlib
import re

import jax

from alexnet_jax import config_checks, datasets
from alexnet_jax.checkpointing import CheckpointError, Checkpoints
from alexnet_jax.evaluation import Evaluator, write_report
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import create_state, step_options


def _resolve(checkpoints: Checkpoints, which: str, directory) -> int:
    step = {"latest": checkpoints.latest_step, "best": checkpoints.best_step}.get(which, lambda: int(which))()
    if step is None:
        raise CheckpointError(f"no checkpoints in {directory}; train first with the same --workdir")
    return step


def evaluate_checkpoint(config, workdir: str, which: str = "best") -> dict:
    """Scores checkpoint ``which`` ('latest', 'best' or a step) on ``config.dataset.eval_split``.

    Writes ``eval_<split>_*`` plots and a JSON report into the workdir and returns the metrics.
    """
    if which not in ("latest", "best") and not which.isdigit():
        raise config_checks.ConfigError(f"--checkpoint={which!r} must be 'latest', 'best' or a step number")
    workdir = pathlib.Path(workdir)
    config_checks.validate(config, jax.device_count())
    parallel = DataParallel(config.parallel)
    split = datasets.load_split(config.dataset, config.dataset.eval_split)
    checkpoints = Checkpoints(workdir / "checkpoints", config.keep_checkpoints, async_save=False)
    step = _resolve(checkpoints, which, workdir / "checkpoints")
    state, _ = create_state(config, len(split.class_names), split.images.shape[1:], steps_per_epoch=1)
    state, _, _ = checkpoints.restore(step, state, jax.random.key(0))
    checkpoints.close()
    evaluator = Evaluator(
        parallel, state.apply_fn, step_options(config, len(split.class_names)), split, config.eval_batch_size
    )
    metrics, predictions = evaluator(parallel.replicate(state.params))
    name = "eval_" + re.sub("[^0-9A-Za-z]+", "_", f"{config.dataset.name}_{config.dataset.eval_split}").strip("_")
    report = write_report(workdir, name, split, predictions, {"checkpoint_step": step, **metrics})
    print(json.dumps({k: report[k] for k in ("checkpoint_step", "val_loss", "val_top1", "val_top5", "examples")}))
    return report

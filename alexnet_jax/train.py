"""The training loop: device-resident data, data-parallel steps, evaluation, checkpoints, logs."""

import functools
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import tqdm

from alexnet_jax import config_checks, datasets, metrics_log, models, optim, plots
from alexnet_jax.checkpointing import CheckpointError, Checkpoints
from alexnet_jax.evaluation import Evaluator, write_report
from alexnet_jax.parallel import REPLICATED, DataParallel
from alexnet_jax.train_step import StepOptions, create_train_state, resident_train_step


def step_options(config, num_classes: int) -> StepOptions:
    return StepOptions(
        num_classes=num_classes,
        label_smoothing=config.optimizer.label_smoothing,
        crop_padding=config.augment.crop_padding,
        flip=config.augment.flip,
        normalization=config.dataset.normalization,
    )


def create_state(config, num_classes: int, image_shape, steps_per_epoch: int):
    """Model, optimizer and freshly initialised train state; returns (state, schedule)."""
    model = models.create_model(config.model, num_classes)
    schedule = optim.create_schedule(config, steps_per_epoch)
    tx = optim.create_optimizer(config, schedule)
    return create_train_state(model, tx, image_shape, jax.random.key(config.seed)), schedule


def compile_train_step(parallel: DataParallel, config, steps_per_epoch: int, options: StepOptions):
    """The resident train step for all devices: (state, data, epoch order, rng) -> (state, metrics)."""
    step = functools.partial(
        resident_train_step,
        local_batch=config.batch_size // parallel.num_devices,
        steps_per_epoch=steps_per_epoch,
        options=options,
    )
    return parallel.wrap(step, (REPLICATED,) * 4, (REPLICATED, REPLICATED), donate_argnums=(0,))


def epoch_order_fn(parallel: DataParallel, num_examples: int):
    """Compiled (rng, epoch) -> that epoch's permutation, computed on every device."""

    def order(rng, epoch):
        return jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)

    return parallel.wrap(order, (REPLICATED, REPLICATED), REPLICATED)


class StopRequests:
    """Turns SIGINT/SIGTERM into a request the loop honours between steps (save, then exit).

    Stopping only at step boundaries never interrupts a checkpoint write; a second signal stops
    at once. Handlers are installed only from the main thread and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _data_position(step: int, steps_per_epoch: int, config, num_examples: int) -> dict:
    return {
        "epoch": step // steps_per_epoch,
        "step_in_epoch": step % steps_per_epoch,
        "global_batch_size": config.batch_size,
        "train_examples": num_examples,
        "train_split": config.dataset.train_split,
    }


def _check_resumable(saved: dict, expected: dict, workdir):
    for key in ("global_batch_size", "train_examples"):
        if saved.get(key) != expected[key]:
            raise CheckpointError(
                f"{workdir} was trained with {key}={saved.get(key)}, this run has {expected[key]}; "
                "resume with the original settings or use a new --workdir"
            )


def _summary(workdir: pathlib.Path, total_steps: int) -> dict:
    records = metrics_log.read_metrics(workdir)
    evals = [r for r in records if r["kind"] == "eval"]
    last = evals[-1] if evals else {}
    best = max(evals, key=lambda r: r["val_top1"]) if evals else {}
    return {
        "step": last.get("step", 0),
        "total_steps": total_steps,
        "val_top1": last.get("val_top1"),
        "val_top5": last.get("val_top5"),
        "best_val_top1": best.get("val_top1"),
        "best_step": best.get("step"),
    }


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) in ``workdir`` and returns a summary of the validation results."""
    workdir = pathlib.Path(workdir)
    config_checks.validate(config, jax.device_count())
    parallel = DataParallel(config.parallel)
    train_split = datasets.load_split(config.dataset, config.dataset.train_split)
    val_split = datasets.load_split(config.dataset, config.dataset.eval_split)
    if config.batch_size > len(train_split):
        raise config_checks.ConfigError(
            f"--config.batch_size={config.batch_size} exceeds the {len(train_split)} training examples; lower it"
        )
    num_classes = len(train_split.class_names)
    steps_per_epoch = len(train_split) // config.batch_size
    total_steps = config.num_epochs * steps_per_epoch
    state, schedule = create_state(config, num_classes, train_split.images.shape[1:], steps_per_epoch)
    rng = jax.random.fold_in(jax.random.key(config.seed), 1)

    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(workdir / "checkpoints", config.keep_checkpoints, config.async_checkpointing)
    latest = checkpoints.latest_step()
    if latest is not None:
        state, rng, saved_position = checkpoints.restore(latest, state, rng)
        _check_resumable(saved_position, _data_position(0, steps_per_epoch, config, len(train_split)), workdir)
    step = int(state.step)
    if step >= total_steps:
        checkpoints.close()
        print(f"{workdir} has finished all {total_steps} steps; nothing to train (use --mode=evaluate to score it)")
        return _summary(workdir, total_steps)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    if step:
        print(f"resuming from step {step} of {total_steps} (epoch {step // steps_per_epoch})")

    log = metrics_log.MetricsLog(workdir, resume_step=step)
    options = step_options(config, num_classes)
    train_fn = compile_train_step(parallel, config, steps_per_epoch, options)
    epoch_order = epoch_order_fn(parallel, len(train_split))
    evaluator = Evaluator(parallel, state.apply_fn, options, val_split, config.eval_batch_size)
    device_state = parallel.replicate(state)
    device_rng = parallel.replicate(rng)
    train_data = parallel.replicate({"image": train_split.images, "label": train_split.labels})
    last_saved = step

    def save(metrics=None):
        nonlocal last_saved
        host_state = parallel.unreplicate(device_state)
        checkpoints.save(
            host_state, rng, _data_position(step, steps_per_epoch, config, len(train_split)), metrics, force=True
        )
        last_saved = step

    window_sums, window_steps, window_start = None, 0, time.perf_counter()
    bar = tqdm.tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=None, dynamic_ncols=True)
    with StopRequests() as stop:
        while step < total_steps and not stop.requested:
            epoch = step // steps_per_epoch
            order = epoch_order(device_rng, parallel.replicate(np.int32(epoch)))
            for _ in range(step % steps_per_epoch, steps_per_epoch):
                device_state, metrics = train_fn(device_state, train_data, order, device_rng)
                window_sums = metrics if window_sums is None else jax.tree.map(lambda a, b: a + b, window_sums, metrics)
                window_steps += 1
                step += 1
                bar.update(1)
                if step % config.log_every_steps == 0 or step % steps_per_epoch == 0:
                    means = jax.device_get(parallel.unreplicate(window_sums))
                    elapsed = time.perf_counter() - window_start
                    record = log.write(
                        "train",
                        step,
                        {
                            "epoch": step / steps_per_epoch,
                            "loss": means["loss"] / window_steps,
                            "accuracy": means["accuracy"] / window_steps,
                            "learning_rate": schedule(step - 1),
                            "images_per_s": window_steps * config.batch_size / elapsed,
                        },
                    )
                    bar.set_postfix(
                        epoch=f"{record['epoch']:.2f}",
                        loss=f"{record['loss']:.3f}",
                        img_s=f"{record['images_per_s']:.0f}",
                    )
                    window_sums, window_steps, window_start = None, 0, time.perf_counter()
                if stop.requested:
                    break
                if step % config.checkpoint_every_steps == 0 and step % steps_per_epoch:
                    save()  # epoch ends save below, with validation metrics when there are some
            if stop.requested:
                break
            if (epoch + 1) % config.eval_every_epochs == 0 or step == total_steps:
                val_metrics, _ = evaluator(device_state.params)
                log.write("eval", step, {"epoch": step / steps_per_epoch, **val_metrics})
                tqdm.tqdm.write(
                    f"epoch {epoch + 1}/{config.num_epochs} step {step}: "
                    f"validation top-1 {val_metrics['val_top1']:.4f} top-5 {val_metrics['val_top5']:.4f} "
                    f"loss {val_metrics['val_loss']:.4f}"
                )
                save({"val_top1": val_metrics["val_top1"]})
                window_start = time.perf_counter()  # evaluation time is not training throughput
            elif step % config.checkpoint_every_steps == 0:
                save()
        if last_saved != step:
            save()
        bar.close()
        log.close()
        checkpoints.wait()
        checkpoints.close()
    if stop.requested:
        print(f"\nstopped by a signal at step {step}; checkpoint saved, run the same command to resume")
        return {**_summary(workdir, total_steps), "step": step, "stopped": True}

    plots.plot_curves(metrics_log.read_metrics(workdir), workdir / "curves.png")
    val_metrics, predictions = evaluator(device_state.params)
    write_report(workdir, "validation", val_split, predictions, val_metrics)
    return _summary(workdir, total_steps)

"""The training loop: set up (the run, its state, its workdir), the steps with their periodic jobs,
the finish (the final report and figures).

After each step the loop runs its periodic jobs in order, each where its trigger reads
(``itstime(step, every)``, as in big_vision's loop): check the step was finite, log, evaluate at
evaluated epochs' ends, checkpoint; a stop request is honoured after them. A step whose loss or
gradients are not finite changes nothing but the step count (``optax.apply_if_finite``); by
default the run then stops with ``TrainingDiverged``, saving nothing after the last good
checkpoint, or it goes on counting such steps (``nonfinite_updates``).
A run is resumable at every checkpoint and ends, however often it was stopped, killed or run
again, with what an uninterrupted run leaves: an evaluation at every evaluated epoch (logged
once), the final report and the curves. One run at a time trains in a workdir (``workdir.py``);
a full disk or a dead input worker stops the run in one line, saying what was saved.

With several processes every one runs this loop in step with the others; process 0 alone writes
logs, plots and reports and prints, checkpoints are written by all together (Orbax), and a stop
requested on any process stops all of them at the same step.
"""

import contextlib
import errno
import functools
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import tqdm

from alexnet_jax import distributed, ema, ensemble, finetune, metrics_log, models, optim, runtime
from alexnet_jax.augment import Augmentation
from alexnet_jax.checkpointing import Checkpoints, DiskFull
from alexnet_jax.distributed import AgreedStop, is_main_process
from alexnet_jax.errors import InputWorkerDied, TrainingDiverged
from alexnet_jax.evaluation import create_evaluator
from alexnet_jax.experiment import Run, create_state, load_run, say
from alexnet_jax.feeds import create_feed
from alexnet_jax.report import write_report
from alexnet_jax.train_step import Training, state_variables, train_step
from alexnet_jax.workdir import (
    FILTERS,
    REPORT,
    finished,
    has_checkpoints,
    held,
    refuse_another_runs_checkpoints,
    write_config,
)


def train_and_evaluate(config, workdir: str, stop_after: int | None = None) -> dict:
    """Trains (or resumes, or completes) the run in ``workdir``; returns a summary of its validation
    results. A SIGINT or SIGTERM, or reaching step ``stop_after``, stops it at a step boundary
    with a checkpoint (the same call resumes it). Refuses a workdir another run is training in."""
    run = load_run(config, pathlib.Path(workdir))
    refuse_another_runs_checkpoints(run)  # before a state is built for nothing
    state, loaded = _starting_state(run)  # pretrained weights are read before anything is written
    with held(run) as checkpoints:
        if is_main_process():
            runtime.warn_if_accelerator_config_on_cpu(config, state.params)
        if loaded:
            say(loaded)
        state, rng, saved = _restore_latest(checkpoints, state, ensemble.train_key(config), run)
        if _finished_before(run, checkpoints, int(state.step)):
            return _summary(run)
        return _train(_Trainer(run, state, rng, saved, checkpoints), stop_after)


def compose_train_step(parallel, config, num_classes: int, vectorize_members: bool | None = None):
    """The run's train step for all devices, ``(state, batch, rng) -> (state, metrics)``: the pure
    step, with what each variant's module makes of it (nothing, when the variant is off)."""
    model = parallel.model(models.create_model(config.model, num_classes))  # one tower's half under towers
    augmentation, training = Augmentation.from_config(config), Training.from_config(config, num_classes)
    update = ema.updater(config)  # the weights' moving average moved, or nothing
    step = functools.partial(train_step, model=model, augmentation=augmentation, training=training, update=update)
    step = ensemble.over_members(step, config, vectorize_members)  # several models, or one
    return parallel.compile_step(step)  # pmap | shard_map | towers


def _starting_state(run: Run):
    """The fresh train state, or ``init_from``'s weights in it (a run with checkpoints resumes from
    them instead); returns (state, a line saying what was loaded, or None)."""
    config = run.config
    state = create_state(config, run.num_classes, run.train_split.image_shape, run.steps_per_epoch)
    if not config.get("init_from") or has_checkpoints(run.workdir):
        return state, None
    state, line = finetune.initialise_from(config, state, run.train_split.class_names)
    return ema.started(state, config), line  # the average starts at the loaded weights


def _restore_latest(checkpoints: Checkpoints, state, rng, run: Run):
    """The latest checkpoint's (state, rng, data), or the given ones and no data."""
    latest = checkpoints.latest_step()
    if latest is None:
        return state, rng, {}
    return checkpoints.restore(latest, state, rng, run.parallel.replicated_sharding)


def _finished_before(run: Run, checkpoints: Checkpoints, step: int) -> bool:
    """Writes ``config.json`` (kept if the run has finished); whether it has, saying so."""
    done = step >= run.total_steps and distributed.agree(is_main_process() and finished(run))
    with _disk_full_as_one_line(checkpoints):
        if is_main_process():
            write_config(run.workdir, run.config, replace=not done)
    if done:
        checkpoints.close()
        say(f"{run.workdir} has finished all {run.total_steps} steps; nothing to train (--mode=evaluate scores it)")
    elif step > 0:
        say(f"resuming from step {step} of {run.total_steps} (epoch {step // run.steps_per_epoch})")
    return done


class StopRequests:
    """Turns SIGINT/SIGTERM into a request the loop honours between steps.

    The loop asks ``poll()`` after each step; once a stop is requested it finishes the epoch's
    evaluation if the step ends one, saves, and returns. A second signal stops at once. Handlers
    are installed only from the main thread and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def poll(self) -> bool:
        return self.requested

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class _Trainer:
    """The loop's moving parts on the devices: state, keys, the feed, the compiled step, the evaluator."""

    def __init__(self, run: Run, state, rng, saved: dict, checkpoints: Checkpoints):
        parallel, config = run.parallel, run.config
        self.run, self.checkpoints, self.rng = run, checkpoints, rng
        plateau = config.schedule.name == "plateau"
        self.plateau = optim.Plateau.from_config(config, saved.get("plateau")) if plateau else None
        self.step = self.last_saved = int(state.step)
        self.state = parallel.place_model(state)
        self.device_rng = parallel.replicate(rng)
        with _disk_full_as_one_line(checkpoints):
            self.log = metrics_log.MetricsLog(run.workdir, resume_step=self.step, enabled=is_main_process())
        self.feed = create_feed(parallel, config, run.train_split, run.total_steps, ensemble.data_seeds(config))
        self.batches, self._batch = self.feed.batches(self.step), None
        self._compiled = compose_train_step(parallel, config, run.num_classes)
        model = parallel.model(models.create_model(config.model, run.num_classes))
        self.evaluator = create_evaluator(parallel, model.apply, run.val_split, config, ensemble.size(config))
        self._unchecked = []  # (step, metrics) of steps whose skipped_updates flag has not been read

    def compile(self) -> float:
        """Compiles the train step ahead of time (so no throughput window includes it); returns seconds."""
        started = time.perf_counter()
        self._batch = next(self.batches)
        self._compiled = self._compiled.lower(self.state, self._batch, self.device_rng).compile()
        return time.perf_counter() - started

    def train_step(self):
        batch, self._batch = self._batch or next(self.batches), None
        self.state, metrics = self._compiled(self.state, batch, self.device_rng)
        self.step += 1
        if self.run.config.nonfinite_updates == "stop":
            self._unchecked.append((self.step, metrics))
        return metrics

    def check_finite(self, latest: bool):
        """With ``nonfinite_updates="stop"``: raises ``TrainingDiverged`` for the first step whose update
        the optimizer skipped. Reads every step's flag but the latest's, so that the host stays one
        step ahead of the devices, or all of them with ``latest`` (before saving)."""
        unchecked, self._unchecked = self._unchecked, ([] if latest else self._unchecked[-1:])
        for step, metrics in unchecked[: len(unchecked) - len(self._unchecked)]:
            if float(np.max(jax.device_get(metrics["skipped_updates"]))) > 0:
                self._unchecked = []
                raise self._diverged(step)

    def _diverged(self, step: int) -> TrainingDiverged:
        latest = self.checkpoints.latest_step()
        where = self.checkpoints.manager.directory
        saved = f"step {latest} in {where}" if latest is not None else "none (a new run starts afresh)"
        return TrainingDiverged(
            f"the loss or the gradients were not finite at step {step}; training stopped there and saved nothing "
            f"after it; the last good checkpoint: {saved}. Lower the learning rate, or pass "
            "--config.nonfinite_updates=skip to skip such steps and go on"
        )

    def learning_rate(self) -> np.ndarray:
        """The rate of the last update (one per model of an ensemble)."""
        return np.asarray(jax.device_get(self.run.parallel.unreplicate(optim.learning_rate(self.state.opt_state))))

    def follow_plateau_rule(self, top1: float):
        """With the plateau rule: divides the rate if this evaluation says so."""
        if self.plateau is None or not self.plateau.observe(1.0 - top1):
            return
        parallel, opt_state = self.run.parallel, self.state.opt_state
        rate = np.asarray(jax.device_get(parallel.unreplicate(opt_state.hyperparams["learning_rate"])))
        rate = (rate.astype(np.float64) * self.plateau.factor).astype(rate.dtype)
        opt_state = optim.with_learning_rate(opt_state, parallel.replicate(rate))
        self.state = self.state.replace(opt_state=opt_state)
        say(f"validation error stopped improving: learning rate now {np.ravel(self.learning_rate())[0]:.3g}")

    def save(self, metrics: dict | None = None):
        self.check_finite(latest=True)  # a checkpoint never holds a step after a non-finite one
        data = self.run.checkpoint_data(self.step)
        if self.plateau is not None:
            data["plateau"] = self.plateau.to_json()
        self.checkpoints.save(self.run.parallel.unreplicate(self.state), self.rng, data, metrics, force=True)
        self.last_saved = self.step

    def evaluate(self, log: metrics_log.MetricsLog | None):
        """Scores the current parameters (and their moving average, ``ema_*``); logs the result
        unless ``log`` is None. A streaming feed's workers stop meanwhile (two sets of workers
        never hold memory at once). Returns (metrics, predictions, labels)."""
        self.batches.close()
        metrics, predictions, labels = self.evaluator(state_variables(self.state))
        if self.state.ema is not None:  # the moving average too, as ema_top1, ...
            averaged, _, _ = self.evaluator(self.state.ema)
            metrics = {**metrics, **{f"ema_{key}": value for key, value in averaged.items()}}
        self.batches = self.feed.batches(self.step)
        if log is not None:
            epoch = self.step / self.run.steps_per_epoch
            log.write("eval", self.step, {"epoch": epoch, **{f"val_{k}": v for k, v in metrics.items()}})
            say(validation_line(epoch, self.run.config.num_epochs, self.step, metrics))
        return metrics, predictions, labels


def validation_line(epoch: float, num_epochs: int, step: int, metrics: dict) -> str:
    """What the loop prints after each evaluation (benchmarks/time_to_accuracy.py reads it): the
    epoch (a fraction where ``max_steps`` ends a run inside one), the scores, and what the
    variants add (``ensemble.described``, ``ema.described``)."""
    return (
        f"epoch {epoch:.2f}".rstrip("0").rstrip(".") + f"/{num_epochs} step {step}: validation top-1 "
        f"{metrics['top1']:.4f} top-5 {metrics['top5']:.4f} cross-entropy {metrics['loss']:.4f}"
        + ensemble.described(metrics)
        + ema.described(metrics)
    )


class _ThroughputWindow:
    """Sums train metrics between log lines and measures images/s over training steps only."""

    def __init__(self, run: Run):
        self.parallel, self.batch_size = run.parallel, run.config.batch_size
        self.restart()

    def restart(self):
        self.sums, self.steps, self.started = None, 0, time.perf_counter()

    def add(self, metrics):
        self.sums = metrics if self.sums is None else jax.tree.map(lambda a, b: a + b, self.sums, metrics)
        self.steps += 1

    def means(self) -> dict:
        """Means over the window's steps, and ``skipped_updates`` as a count, as plain numbers
        (``ensemble.flatten``)."""
        sums = jax.device_get(self.parallel.unreplicate(self.sums))
        elapsed = time.perf_counter() - self.started
        values = {k: v if k == "skipped_updates" else v / self.steps for k, v in sums.items()}
        return {**ensemble.flatten(values), "images_per_s": self.steps * self.batch_size / elapsed}


def itstime(step: int, every: int, last_step: int | None = None) -> bool:
    """Whether a job run every ``every`` steps (and at ``last_step``) runs after ``step``."""
    return step % every == 0 or step == last_step


class _Profile:
    """A JAX profiler trace of the train steps ``start + 1 .. start + count`` (``profile_steps``),
    written to ``<workdir>/profile``; the devices finish the last one before the trace ends."""

    def __init__(self, workdir: pathlib.Path, profile_steps):
        self.folder = workdir / "profile"
        self.start, self.end = profile_steps if profile_steps else (None, None)
        self.end = None if self.start is None else self.start + self.end
        self.tracing = False

    def after(self, step: int, state):
        if step == self.start:
            jax.profiler.start_trace(str(self.folder))
            self.tracing = True
        elif self.tracing and step == self.end:
            self.stop(state)
            say(f"profiled steps {self.start + 1} to {self.end}: {self.folder} (tensorboard --logdir={self.folder})")

    def stop(self, state):
        if self.tracing:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False


def _log_train(trainer: _Trainer, window: _ThroughputWindow, bar: tqdm.tqdm):
    """The window's means and the rate to the log and the progress bar; a new window."""
    step, run = trainer.step, trainer.run
    values = {"epoch": step / run.steps_per_epoch, **window.means()}
    record = trainer.log.write(
        "train", step, {**values, **ensemble.flatten({"learning_rate": trainer.learning_rate()})}
    )
    postfix = {"epoch": f"{record['epoch']:.2f}", "loss": f"{record['loss']:.3f}"}
    bar.set_postfix(**postfix, img_s=f"{record['images_per_s']:.0f}")
    window.restart()


def _train_loop(trainer: _Trainer, stop: AgreedStop, stop_after: int | None) -> tuple | None:
    """Trains until the end, a stop request (agreed by all processes) or ``stop_after``, each
    periodic job after the step that triggers it; returns the last evaluation (metrics, predictions,
    labels)."""
    run, config = trainer.run, trainer.run.config
    say(f"compiled the train step in {trainer.compile():.1f} s")
    window = _ThroughputWindow(run)
    hidden = None if is_main_process() else True  # None: shown on a terminal
    bar = tqdm.tqdm(total=run.total_steps, initial=trainer.step, desc="train", unit="step", disable=hidden)
    last_eval, profile = None, _Profile(run.workdir, config.get("profile_steps"))
    profile.after(trainer.step, trainer.state)  # a trace from the step the run starts at
    while trainer.step < run.total_steps:
        window.add(trainer.train_step())
        bar.update(1)
        step = trainer.step
        stopping = stop.poll() or (stop_after is not None and step >= stop_after)
        profile.after(step, trainer.state)  # starts or ends the trace of profile_steps
        trainer.check_finite(latest=False)  # stops at a non-finite step (its flag read one step late)
        if itstime(step, config.log_every_steps, run.total_steps) or itstime(step, run.steps_per_epoch):
            _log_train(trainer, window, bar)
        if run.evaluates_at(step):  # even when stopping, so that no evaluated epoch is skipped
            last_eval = trainer.evaluate(trainer.log)
            trainer.follow_plateau_rule(last_eval[0]["top1"])
            trainer.save({"val_top1": last_eval[0]["top1"]})
            window.restart()  # evaluation time is not training throughput
        if itstime(step, config.checkpoint_every_steps) and trainer.last_saved != step:
            trainer.save()  # the step a run stops at is saved by the caller
        if stopping:
            break
    profile.stop(trainer.state)  # a run that ends inside the traced steps
    bar.close()
    return last_eval


def _train(trainer: _Trainer, stop_after: int | None) -> dict:
    """Trains, or completes, the run from the trainer's state; returns a summary of its validation results."""
    run, checkpoints, log = trainer.run, trainer.checkpoints, trainer.log
    with StopRequests() as requests:
        try:
            finishing = trainer.step >= run.total_steps  # trained: only the report is left to write
            last_eval = None if finishing else _train_loop(trainer, AgreedStop(requests, run.parallel), stop_after)
            trainer.check_finite(latest=True)
            if trainer.last_saved != trainer.step:
                trainer.save()
            checkpoints.close()  # waits for the save
        except (TrainingDiverged, InputWorkerDied, DiskFull, OSError) as e:
            raise _stopped_by(e, trainer) from None
        finally:
            trainer.batches.close()  # stops the streaming workers
        if trainer.step < run.total_steps:
            log.close()
            asked = stop_after is not None and trainer.step >= stop_after
            why = f"as asked (stop_after={stop_after})" if asked else "by a signal"  # on any process
            say(f"\nstopped {why} at step {trainer.step}; checkpoint saved, run the same command to resume")
            return {**_summary(run), "step": trainer.step, "stopped": True}
        _finish(trainer, last_eval)
    log.close()
    return _summary(run)


def _finish(trainer: _Trainer, last_eval: tuple | None):
    """The final report and figures; evaluates only if this process has not just done so."""
    run = trainer.run
    if last_eval is None:
        records = metrics_log.read_metrics(run.workdir) if is_main_process() else []
        logged = any(r["kind"] == "eval" and r["step"] == run.total_steps for r in records)
        last_eval = trainer.evaluate(None if distributed.agree(logged) else trainer.log)
    params = ensemble.first(run.parallel.unreplicate(trainer.state.params), run.config)  # an ensemble's first
    kernel = run.parallel.fetch(models.first_layer_kernel(params))  # whole, from every device and process
    if not is_main_process():
        return
    from alexnet_jax import plots  # matplotlib: imported when the first figure is drawn

    metrics, predictions, labels = last_eval
    if run.config.figures:
        plots.plot_curves(metrics_log.read_metrics(run.workdir), run.workdir / "curves.png")
    plots.plot_first_layer(kernel, run.workdir / FILTERS, models.towers(run.config.model.name))
    weights = "loss, top1, top5 and the figures: the trained weights" + ema.note(run.config)
    header = {"step": run.total_steps, "weights": weights + ensemble.note(run.config)}
    header.update(ensemble.report_fields(run.config, metrics))
    figures = run.config.figures
    write_report(run.workdir, REPORT, run.val_split, predictions, labels, {**header, **metrics}, figures=figures)


def _summary(run: Run) -> dict:
    evals = [r for r in metrics_log.read_metrics(run.workdir) if r["kind"] == "eval"]
    last = evals[-1] if evals else {}
    best = max(evals, key=lambda r: r["val_top1"]) if evals else {}
    return {
        "step": last.get("step", 0),
        "total_steps": run.total_steps,
        "val_top1": last.get("val_top1"),
        "val_top5": last.get("val_top5"),
        "best_val_top1": best.get("val_top1"),
        "best_step": best.get("step"),
    }


@contextlib.contextmanager
def _disk_full_as_one_line(checkpoints: Checkpoints):
    """A full disk met while the run writes its first files (``config.json``, the metrics log): the
    one line of ``DiskFull``, nothing else changed."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        error = checkpoints.out_of_space(e.filename or checkpoints.manager.directory)
        checkpoints.abandon()
        raise error from None


def _stopped_by(error: Exception, trainer: _Trainer) -> Exception:
    """What a run stopped by ``error`` raises, once it has saved what it can: a divergence keeps the
    last good checkpoint; a dead input worker saves the last completed step (unless its evaluation
    is not done: the checkpoint before it stands); a full disk (``DiskFull``, or ``ENOSPC`` from any
    other file) says how much space to make."""
    checkpoints, run, log = trainer.checkpoints, trainer.run, trainer.log
    if isinstance(error, OSError) and error.errno != errno.ENOSPC:
        return error
    if isinstance(error, (DiskFull, OSError)):
        log.close(quietly=True)  # what TensorBoard cannot write now is in metrics.jsonl
        error = error if isinstance(error, DiskFull) else checkpoints.out_of_space(error.filename)
        checkpoints.abandon()  # the failed save's writes end before the one line
        return error
    if isinstance(error, InputWorkerDied):
        if trainer.last_saved != trainer.step and not run.evaluates_at(trainer.step):
            trainer.save()
        checkpoints.close()
        log.close()
        saved = checkpoints.latest_step()
        return InputWorkerDied(
            f"{error}; stopped with {f'step {saved}' if saved else 'nothing'} saved: run the same command to resume "
            "(with fewer --config.input.workers if memory is short)"
        )
    checkpoints.close()  # the last good checkpoint may still be being written
    log.close()
    return error

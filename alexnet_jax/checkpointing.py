"""Orbax checkpoints holding everything a run needs to continue.

Each checkpoint has two items: ``state`` (step, params, optimizer state, batch-norm statistics if
any, the run's base PRNG key)
and ``data`` (JSON: the data position, and the run's signature: what the parameters and the batch
layout depend on, checked before a run resumes or is evaluated). Saves are asynchronous;
the manager keeps the latest ``keep`` checkpoints plus the one with the best validation top-1.
The training loop decides when to save.
"""

import contextlib
import errno
import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from alexnet_jax import files, models
from alexnet_jax.errors import ConfigError, UserError

BEST_METRIC = "val_top1"


class _DropOrbaxNoise(logging.Filter):
    """Drops two of Orbax's messages: its warning at each interval checkpoint saved without
    validation metrics (on purpose: only evaluated checkpoints compete for "best"), which would break
    the progress bar, and the tracebacks its writing threads log for a full disk, which the save
    raises again where ``Checkpoints`` turns it into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message, error = record.getMessage(), record.exc_info[1] if record.exc_info else None
        return "did not provide metrics" not in message and not _is_disk_full(f"{message} {error}")


def _is_disk_full(message: str) -> bool:
    """Whether an error message is the operating system's ENOSPC (TensorStore's wording included)."""
    return "No space left on device" in message or f"os_error_code='{errno.ENOSPC}'" in message


logging.getLogger("absl").addFilter(_DropOrbaxNoise())


class CheckpointError(UserError):
    """A checkpoint does not fit the run asking for it; the message says what to do."""


class DiskFull(UserError):
    """A checkpoint could not be written for want of space; the committed ones are intact."""


def _best_metric(metrics) -> float:
    return metrics[BEST_METRIC]


def check_signature(saved: dict, expected: dict, workdir, remedy: str, prefix: str = ""):
    """Raises ``CheckpointError`` naming the first signature field where ``saved`` differs.

    Fields one side lacks (written by an older version, or taken by another model only) are not
    compared; nested fields (the model's) are compared one by one."""
    for key, want in expected.items():
        there = saved.get(key, want)
        if isinstance(want, dict) and isinstance(there, dict):
            check_signature(there, want, workdir, remedy, f"{prefix}{key}.")
        elif there != want:
            raise CheckpointError(
                f"{workdir} holds checkpoints of a different run ({prefix}{key}: {there!r} there, {want!r} now); "
                + remedy
            )


# The train state is replicated on every device. Orbax's replica-parallel saving would split each
# array among the replicas, which on CPUs compiles a slice program per array and device (seconds
# at the first save); Orbax already leaves it off on GPUs. One replica writes each array whole.
_absl_logger, _level = logging.getLogger("absl"), logging.getLogger("absl").level
_absl_logger.setLevel(logging.ERROR)  # Orbax warns that the handler replaces its default: that is the point
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
)
_absl_logger.setLevel(_level)


def _items(state, rng) -> dict:
    """What a checkpoint's ``state`` item holds. The step and the key are host (numpy) values, which
    Orbax writes once, from process 0; the parameters and optimizer state are device arrays."""
    items = {
        "params": state.params,
        "opt_state": state.opt_state,
        "step": np.asarray(jax.device_get(state.step)),
        "rng": np.asarray(jax.random.key_data(rng)),
    }
    if state.batch_stats is not None:
        items["batch_stats"] = state.batch_stats
    if state.ema is not None:
        items["ema"] = state.ema
    return items


class Checkpoints:
    """Saves and restores train states under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, keep: int, async_save: bool = True):
        policy = preservation_policy.AnyPreservationPolicy(
            [
                preservation_policy.LatestN(n=keep),
                preservation_policy.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_best_metric,
            best_mode="max",
            enable_async_checkpointing=async_save,
        )
        self.manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)
        self._saving = (None, 0)  # the step and bytes of the latest save

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def resolve(self, which: str, best_or_latest: bool = False) -> int:
        """The step ``which`` ('latest', 'best' or a step number) names, checked intact; with
        ``best_or_latest``, 'best' is the latest where no checkpoint has a validation result (converted
        weights, a run stopped before its first evaluation). ``CheckpointError`` if none, or damaged."""
        directory = pathlib.Path(self.manager.directory)
        if which not in ("latest", "best") and not which.isdigit():
            raise ConfigError(f"--checkpoint={which!r} must be 'latest', 'best' or a step number")
        saved = self.all_steps()
        if not saved:
            raise CheckpointError(
                f"no checkpoints in {directory}; train first with --mode=train and the same --workdir"
            )
        listed = ", ".join(map(str, saved))
        step = saved[-1] if which == "latest" else self.best_step() if which == "best" else int(which)
        if which == "best" and step is None:
            if not best_or_latest:
                raise CheckpointError(
                    f"--checkpoint=best: none of the checkpoints in {directory} (steps {listed}) has a validation "
                    "result yet (they were saved between evaluations); use --checkpoint=latest or a step"
                )
            step = saved[-1]
        if step not in saved:
            raise CheckpointError(
                f"--checkpoint={which}: no checkpoint at step {which} in {directory}; saved: {listed}"
            )
        raise_if_damaged(directory, step, saved)
        return step

    def read_data(self, step: int) -> dict:
        """The JSON item of checkpoint ``step`` alone (position and signature), without the arrays."""
        return read_data(pathlib.Path(self.manager.directory) / str(step))

    def save(self, state, rng, data_position: dict, metrics: dict | None = None, force: bool = False) -> bool:
        """Starts saving ``state`` at its step (in the background); returns whether it saves.

        Raises ``DiskFull`` if this save, or the one before it, ran out of space."""
        self.wait()  # the previous save's errors are that save's
        items = _items(state, rng)
        self._saving = (int(state.step), sum(x.nbytes for x in jax.tree.leaves(items)))
        args = ocp.args.Composite(state=ocp.args.StandardSave(items), data=ocp.args.JsonSave(data_position))
        with self._saving_whole():
            return self.manager.save(int(state.step), args=args, metrics=metrics, force=force)

    @contextlib.contextmanager
    def _saving_whole(self):
        """Turns a full disk met while saving into ``DiskFull``, the half-written checkpoint removed
        (its space given back)."""
        try:
            yield
        except Exception as e:
            if not (_is_disk_full(str(e)) or getattr(e, "errno", None) == errno.ENOSPC):
                raise
            self.abandon()  # the run stops here: the save's other writes end first, quietly
            step, directory = self._saving[0], pathlib.Path(self.manager.directory)
            if jax.process_index() == 0:
                for partial in directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(partial, ignore_errors=True)
            raise self._disk_full(f"checkpoint {step} in {directory}") from None

    def out_of_space(self, path) -> DiskFull:
        """What to raise when writing ``path`` (any file of the run) met a full disk; waits for the
        save in flight first (which raises ``DiskFull`` itself if it ran out too)."""
        self.wait()
        return self._disk_full(str(path))

    def _disk_full(self, what: str) -> DiskFull:
        """One line: how much space to make, and where the same command will resume."""
        directory = pathlib.Path(self.manager.directory)
        committed = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
        size = self._saving[1]
        if committed:  # what one takes on this disk, block sizes and all
            size = max(size, sum(f.stat().st_blocks * 512 for f in (directory / str(committed[-1])).rglob("*")))
        return DiskFull(
            f"no space left on the device for {what} ({_megabytes(shutil.disk_usage(directory).free)} free, a "
            f"checkpoint takes {_megabytes(size)}); make room for a few, then run the same command: it resumes "
            + (f"from step {committed[-1]}" if committed else "from the start")
        )

    def restore(self, step: int, state, rng, sharding: jax.sharding.Sharding | None = None):
        """Restores checkpoint ``step`` into the structure of ``state``; returns (state, rng, data).
        A checkpoint of an earlier version, whose layers had Flax's automatic names, restores
        under the paper's (``models.renamed_from_flax``).

        The arrays come back with ``sharding`` (e.g. on every device of every process), or on this
        process's first device."""
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        as_target = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        target = _items(state, rng)
        abstract = {**jax.tree.map(as_target, target), "step": target["step"], "rng": target["rng"]}
        legacy = _has_flax_names(pathlib.Path(self.manager.directory) / str(step))
        abstract = models.renamed_to_flax(abstract) if legacy else abstract
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
            )
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"checkpoint {step} in {self.manager.directory} does not fit this model/optimizer "
                f"({str(e).splitlines()[0][:160]}); use the config it was trained with, or a new workdir"
            ) from None
        items = models.renamed_from_flax(restored["state"])
        state = state.replace(params=items["params"], opt_state=items["opt_state"], step=items["step"])
        if "batch_stats" in items:
            state = state.replace(batch_stats=items["batch_stats"])
        if "ema" in items:
            state = state.replace(ema=items["ema"])
        rng = jax.random.wrap_key_data(np.asarray(items["rng"]))
        return state, rng, dict(restored["data"])

    def wait(self):
        """Waits for the save in the background (raises ``DiskFull`` if it ran out of space), then
        records the sizes of the files it committed."""
        with self._saving_whole():
            self.manager.wait_until_finished()
        folder = pathlib.Path(self.manager.directory) / str(self._saving[0])
        if jax.process_index() == 0 and folder.is_dir() and not (folder / SIZES).exists():
            files.write_text(folder / SIZES, json.dumps(_file_sizes(folder), indent=0))

    def set_aside_damaged(self) -> list[str]:
        """Renames the newest checkpoints that are damaged to ``<step>.damaged`` (Orbax then ignores
        them, nothing is deleted) down to the newest intact one; returns what was wrong with each.
        Raises ``CheckpointError`` (renaming nothing) if every one is damaged."""
        directory = pathlib.Path(self.manager.directory)
        found = []
        for step in reversed(self.all_steps()):
            problem = damage(directory / str(step))
            if problem is None:
                break
            found.append((step, problem))
        else:
            if found:
                raise CheckpointError(
                    f"every checkpoint in {directory} is damaged (step {found[0][0]}: {found[0][1]}); nothing "
                    "resumes from them: move the directory away to start afresh"
                )
        notes = []
        for step, why in found:
            kept = _unused_name(directory, f"{step}.damaged")
            (directory / str(step)).rename(kept)
            notes.append(f"checkpoint {step} in {directory} is damaged ({why}); kept as {kept.name}")
        self.manager.reload()
        return notes

    def close(self):
        self.wait()
        self.manager.close()

    def abandon(self):
        """Closes the manager after a save that ran out of space (the run stops), its errors
        dropped: the run's one-line error says what happened."""
        with contextlib.suppress(Exception):
            self.manager.close()


def _unused_name(directory: pathlib.Path, name: str) -> pathlib.Path:
    """``directory / name``, or ``name.2``, ``name.3``, ... : the first that does not exist (a step
    damaged before keeps its earlier copy)."""
    path, number = directory / name, 1
    while path.exists():
        number += 1
        path = directory / f"{name}.{number}"
    return path


SIZES = "file_sizes.json"  # in each committed checkpoint: its files and their sizes in bytes


def _file_sizes(folder: pathlib.Path) -> dict[str, int]:
    """The sizes of the files of a checkpoint's items (Orbax may rewrite its own metadata beside them)."""
    found = sorted(f for item in ("state", "data") for f in (folder / item).rglob("*") if f.is_file())
    return {str(f.relative_to(folder)): f.stat().st_size for f in found}


def damage(folder: pathlib.Path) -> str | None:
    """What is wrong with the committed checkpoint in ``folder`` (a file missing or cut short since
    it was committed), or None: intact, or saved without ``SIZES`` (killed right after the commit)."""
    try:
        recorded = json.loads((folder / SIZES).read_text())
    except (OSError, ValueError):
        return None if folder.is_dir() else "its folder is missing"
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} holds {path.stat().st_size:,} of its {size:,} bytes"
    return None


def read_data(folder: pathlib.Path) -> dict:
    """The JSON item (position and signature) of the checkpoint in ``folder``, without its arrays."""
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
        return dict(checkpointer.restore(folder / "data"))


def newest_intact(directory: pathlib.Path) -> pathlib.Path | None:
    """The folder of the newest intact committed checkpoint under ``directory`` (Orbax names them by
    their step once committed), or None; read-only."""
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)
    return next((directory / str(step) for step in steps if damage(directory / str(step)) is None), None)


def raise_if_damaged(directory: pathlib.Path, step: int, saved: list[int]):
    """Raises ``CheckpointError`` naming what is wrong with checkpoint ``step``, and the intact ones."""
    problem = damage(directory / str(step))
    if problem is not None:
        intact = ", ".join(str(s) for s in saved if damage(directory / str(s)) is None) or "none"
        raise CheckpointError(
            f"checkpoint {step} in {directory} is damaged ({problem}); use another: --checkpoint=STEP "
            f"(intact: {intact})"
        )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax's warning that a step's item folder has no metadata of its own, silenced."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _saved_tree(folder: pathlib.Path) -> dict:
    """The tree of the train state that the checkpoint in ``folder`` holds, as metadata."""
    with _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.metadata(folder / "state").item_metadata


def saved_parts(folder: pathlib.Path) -> set[str]:
    """The parts of the train state that the checkpoint in ``folder`` holds (params, opt_state,
    batch_stats, ema, step, rng)."""
    return set(_saved_tree(folder))


def _has_flax_names(folder: pathlib.Path) -> bool:
    """Whether the checkpoint in ``folder`` names its layers as earlier versions did (``Conv_0``, ...)."""
    params = _saved_tree(folder)["params"]
    return models.renamed_from_flax(dict.fromkeys(params)).keys() != params.keys()


def read_variables(folder: pathlib.Path, weights: str = "raw") -> tuple[dict, dict | None]:
    """The parameters and batch-norm statistics (or None) of the checkpoint in ``folder``
    (``<workdir>/checkpoints/<step>``) as host arrays, without the optimizer state: what evaluation,
    prediction and fine-tuning need, whatever optimizer the run was trained with; ``weights="ema"``:
    their moving average instead (``ema_decay``)."""
    with _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
        saved = checkpointer.metadata(folder / "state").item_metadata
        if weights == "ema" and "ema" not in saved:
            raise CheckpointError(f"{folder} holds no averaged weights (trained without --config.ema_decay)")
        source = saved["ema"] if weights == "ema" else saved
        wanted = {key: source[key] for key in ("params", "batch_stats") if key in source}
        wanted = {"ema": wanted} if weights == "ema" else wanted
        target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), wanted)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        restore = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        restored = checkpointer.restore(folder / "state", args=restore)
    restored = models.renamed_from_flax(restored["ema"] if weights == "ema" else restored)
    return restored["params"], restored.get("batch_stats")


def read_model(workdir: pathlib.Path, which: str, weights: str = "raw") -> tuple[int, dict, dict]:
    """What prediction, features and figures read of a workdir: the step ``which`` names ('best'
    falling back to the latest where none was evaluated), its data, and its model variables
    (``read_variables``'s, as ``apply_fn`` takes them)."""
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1, async_save=False)
    try:
        step = checkpoints.resolve(which, best_or_latest=True)
        data = checkpoints.read_data(step)
    finally:
        checkpoints.close()
    params, batch_stats = read_variables(workdir / "checkpoints" / str(step), weights)
    variables = {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}
    return step, data, variables


def check_shapes(restored: dict, expected: dict, folder: pathlib.Path, remedy: str):
    """Raises ``CheckpointError`` naming the first tensor of ``expected`` (shapes, e.g. from
    ``jax.eval_shape``) that ``restored`` lacks or holds with another shape."""
    want, got = dict(jax.tree_util.tree_leaves_with_path(expected)), dict(jax.tree_util.tree_leaves_with_path(restored))
    for path, leaf in want.items():
        name = jax.tree_util.keystr(path)
        if path not in got or got[path].shape != leaf.shape:
            there = got[path].shape if path in got else "nothing"
            raise CheckpointError(f"{folder}: {name} is {there} there, {leaf.shape} in this model; {remedy}")

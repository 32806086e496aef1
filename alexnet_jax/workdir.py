"""A run's workdir: one run at a time trains in it (its lock), its checkpoints (damaged ones set
aside; the newest intact one resumes only a run of the same signature), ``config.json`` (what
predict reads) and whether the run there has finished (its final report written)."""

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket

from alexnet_jax import distributed, files
from alexnet_jax.checkpointing import (
    CheckpointError,
    Checkpoints,
    check_signature,
    newest_intact,
    read_data,
    saved_parts,
)
from alexnet_jax.distributed import is_main_process
from alexnet_jax.errors import ConfigError, UserError
from alexnet_jax.experiment import say

LOCK = "lock"  # the file in a workdir that the run training there holds locked
CONFIG = "config.json"
REPORT = "validation"  # the final report's file prefix: validation_report.json, validation_confusion.png, ...
FILTERS = "conv1_filters.png"  # the final model's first-layer filters (the paper's Figure 3)


class WorkdirInUse(UserError):
    """Another run is training in the workdir."""


def has_checkpoints(workdir: pathlib.Path) -> bool:
    """Whether ``workdir`` holds a committed checkpoint (Orbax names them by their step)."""
    directory = workdir / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


@contextlib.contextmanager
def held(run):
    """Holds ``run``'s workdir until the context ends: locked (by process 0; every process raises
    ``WorkdirInUse`` if another run holds it), its newest damaged checkpoints set aside, and checked
    to hold nothing another run made; yields its ``Checkpoints``. Nothing is written before the
    lock, and the lock is signed with this process only once the checks pass."""
    with _locked(run.workdir) as sign:
        checkpoints = Checkpoints(
            run.workdir / "checkpoints", run.config.keep_checkpoints, run.config.async_checkpointing
        )
        _set_aside_damaged(checkpoints)
        latest = checkpoints.latest_step()
        _check_resumable(run, None if latest is None else run.workdir / "checkpoints" / str(latest))
        sign()
        yield checkpoints


@contextlib.contextmanager
def _locked(workdir: pathlib.Path):
    """Process 0 holds the workdir's lock file (an advisory ``flock``, which the kernel releases when
    the process ends, however it ends); yields a function that signs it with this process."""
    fd, busy = None, None
    if is_main_process():
        try:
            fd = _lock(workdir)
        except WorkdirInUse as e:
            busy = e
    if distributed.agree(busy is not None):
        raise busy or WorkdirInUse(f"{workdir} is in use by another run (process 0 found it locked)")
    try:
        yield lambda: fd is not None and _sign(fd)
    finally:
        if fd is not None:
            os.close(fd)


def _lock(workdir: pathlib.Path) -> int:
    """Creates ``workdir`` and locks its ``lock`` file; returns the file descriptor to close when
    done. Raises ``WorkdirInUse`` naming the holder if another process holds it, ``UserError`` where
    the filesystem cannot lock files."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise WorkdirInUse(
            f"{workdir} is in use by another run ({holder}); wait for it to end or stop it, or use another --workdir"
        ) from None
    except OSError as e:
        os.close(fd)
        raise UserError(
            f"{workdir} cannot be locked ({e.strerror}): its filesystem does not support flock, which keeps two runs "
            "from training in one workdir; use a workdir on a filesystem that does (a local disk, NFS v4)"
        ) from None
    return fd


def _sign(fd: int):
    """Writes who holds the lock ``fd`` into its file, for the message of a run refused by it."""
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, since {since}\n".encode(), 0)


def _set_aside_damaged(checkpoints: Checkpoints):
    """Process 0 sets the newest damaged checkpoints aside (saying which), so that the run resumes
    from the newest intact one; every process refuses if none is intact."""
    error = None
    if is_main_process():
        try:
            for note in checkpoints.set_aside_damaged():
                say(note)
        except CheckpointError as e:
            error = e
    if distributed.agree(error is not None):
        raise error or CheckpointError(f"every checkpoint in {checkpoints.manager.directory} is damaged (process 0)")
    if not is_main_process():  # process 0's manager reloaded after its renames
        checkpoints.manager.reload()


def refuse_another_runs_checkpoints(run):
    """``held``'s refusal of another run's checkpoints, made early: before the run builds anything (a
    state initialised only to be refused takes seconds at ImageNet's size), read-only, by process 0
    on the newest intact checkpoint. ``held`` checks again, under the lock."""
    error = None
    if is_main_process() and has_checkpoints(run.workdir):
        try:
            _check_resumable(run, newest_intact(run.workdir / "checkpoints"))
        except ConfigError as e:
            error = e
    if distributed.agree(error is not None):
        raise error or ConfigError(f"{run.workdir} holds another run's checkpoints (refused by process 0)")


def _check_resumable(run, latest: pathlib.Path | None):
    """Refuses, before anything is built or written, a workdir whose latest checkpoint (in the
    folder ``latest``, if any) is another run's (another signature, or a moving average where this
    run keeps none, or the reverse), or has more steps than this run (its report would name a step
    its parameters are not from)."""
    if latest is None:
        return
    remedy = "resume with the config it was trained with, or use a new --workdir"
    check_signature(read_data(latest), run.signature(), run.workdir, remedy)
    averaged = "ema" in saved_parts(latest)
    if averaged != (run.config.get("ema_decay", 0.0) > 0):
        raise ConfigError(
            f"{run.workdir} was trained {'with' if averaged else 'without'} a moving average of the weights "
            f"(--config.ema_decay={run.config.get('ema_decay', 0.0)} now); resume with the ema_decay it was "
            "trained with, or use a new --workdir"
        )
    if int(latest.name) > run.total_steps:
        raise ConfigError(
            f"{run.workdir} has trained {latest.name} steps, more than this config's {run.total_steps} "
            "(num_epochs, max_steps); --mode=evaluate scores it, a larger value goes on training it"
        )


def finished(run) -> bool:
    """Whether the final report was written (the last thing a run does, after its figures), for the
    run's last step; a damaged report counts as not written, and is written again."""
    report = run.workdir / f"{REPORT}_report.json"
    if not report.exists():
        return False
    try:
        return json.loads(report.read_text()).get("step") == run.total_steps
    except (ValueError, AttributeError):  # not JSON, or not a report
        return False


def write_config(workdir: pathlib.Path, config, replace: bool):
    """Writes ``config.json`` (what predict reads); a finished run's is kept, unless it is damaged."""
    path = workdir / CONFIG
    if not replace:
        try:
            json.loads(path.read_text())
            return
        except (OSError, ValueError):
            pass
    files.write_text(path, config.to_json_best_effort(indent=1))

"""Runs main.py in children forked from this one process, which imports everything once (JAX's
backend is started by each child, not here).

    python tests/forked_main.py SPEC OUTDIR

SPEC is JSON: ``{"together": bool, "preload": bool, module or modules, "runs": [{"argv": [...], "devices": int,
"x64": bool, "signal": [moment, step, signum] or null}, ...]}`` (``preload``, default true: import
the training code, or the modules named, here, before forking). Runs start one after another (each waits
for the one before), or all at once with ``together`` (the processes of one distributed run).
Each child gets ``devices`` fake CPU devices, JAX's x64 mode if asked, and sends itself
``signum`` at ``moment`` of ``step``:

- ``step``: right after train step ``step`` is dispatched;
- ``evaluation``: right after the evaluation at ``step`` is logged (before the checkpoint save);
- ``save``: inside the asynchronous write of checkpoint ``step``: every file written, the
  checkpoint not yet committed (Orbax's rename of its temporary directory);
- ``save_started``: right after the save of checkpoint ``step`` has started;
- ``disk_full``: inside the write of checkpoint ``step``, the disk is full (``ENOSPC``; no signal);
- ``input_worker``: the streaming input's worker process asked for batch ``step`` sends the signal
  to itself;
- ``example``, ``before_rename``, ``after_rename``: moments of ``--mode=prepare`` (see ``_arm_prepare``).

A run's ``remove``, a list of paths, are deleted before it starts (to free space).

Writes OUTDIR/run<i>.out and .err, and OUTDIR/runs.json: for each run, its exit status (negative:
the signal) and the entries of its workdir's checkpoint directory right after it ended (one after
another) or once all ended (together). All children are in this process's group: killing the
group ends them all.

    python tests/forked_main.py --serve

is the same driver as a server for one pytest worker (``harness.run_forked``): it imports
everything once, then for each request on stdin (a JSON line: spec, outdir and environment) forks
a driver of its own session, answers its pid, and once it ends its exit status; it exits when
stdin closes (its worker has ended).
"""

import atexit
import errno
import importlib
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax

import main


def _after(cls, name: str, fires):
    """Wraps method ``name`` of ``cls``: ``fires(self, *args)`` is asked after each call."""
    original = getattr(cls, name)

    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        fires(self, *args)
        return result

    setattr(cls, name, wrapped)


def _arm_prepare(moment: str, number: int, send):
    """``--mode=prepare``'s moments: ``example`` (right after TFDS took example ``number``),
    ``before_rename`` (TFDS wrote everything, its folder is not yet renamed into place) and
    ``after_rename``."""
    import contextlib

    from tensorflow_datasets.core import utils as tfds_utils

    from alexnet_jax import prepare

    if moment == "example":  # counted over all splits
        examples, taken = prepare._Examples.__call__, itertools.count(1)

        def sending_at_the_example(self, jobs):
            for example in examples(self, jobs):
                yield example
                if next(taken) == number:
                    send()

        prepare._Examples.__call__ = sending_at_the_example
        return
    renaming = tfds_utils.incomplete_dir

    @contextlib.contextmanager
    def sending_around_the_rename(dirname, *args, **kwargs):
        with renaming(dirname, *args, **kwargs) as folder:
            yield folder
            if moment == "before_rename":
                send()
        send()

    tfds_utils.incomplete_dir = sending_around_the_rename


class _DyingAt:
    """A training batch function whose input worker process sends itself ``signum`` when asked
    for batch ``step`` (pickled by reference into the worker processes, which import this module)."""

    def __init__(self, batch_fn, step: int, signum: int):
        self.batch_fn, self.step, self.signum = batch_fn, step, signum

    def __call__(self, step: int):
        if step == self.step and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), self.signum)
        return self.batch_fn(step)


def _arm(moment: str, step: int, signum: int):
    """Makes this process send itself ``signum`` at ``moment`` of ``step``."""
    if moment in ("example", "before_rename", "after_rename"):
        return _arm_prepare(moment, step, lambda: os.kill(os.getpid(), signum))
    if moment == "input_worker":
        from alexnet_jax import input_pipeline

        batches = input_pipeline.TrainBatch
        input_pipeline.TrainBatch = lambda *args: _DyingAt(batches(*args), step, signum)
        return
    from orbax.checkpoint._src.path import atomicity

    from alexnet_jax import checkpointing, train

    send = lambda: os.kill(os.getpid(), signum)
    if moment == "step":
        _after(train._Trainer, "train_step", lambda trainer: trainer.step == step and send())
    elif moment == "evaluation":
        _after(train._Trainer, "evaluate", lambda trainer, log: trainer.step == step and log is not None and send())
    elif moment == "save_started":
        _after(checkpointing.Checkpoints, "save", lambda _, state, *rest: int(state.step) == step and send())
    elif moment == "save":
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def signal_before_commit(self):
            if self.get_final().name == str(step):
                send()
            return await finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = signal_before_commit
    elif moment == "disk_full":
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def full_before_commit(self):
            if self.get_final().name == str(step):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return await finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = full_before_commit
    else:
        raise ValueError(f"unknown moment {moment!r}")


def _child(run: dict, out: pathlib.Path, err: pathlib.Path):
    """In the forked child: output to files, devices and the signal set up, main.py run; never returns."""
    for stream, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), stream)
    code = 1
    try:
        flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={run.get('devices', 8)}"
        jax.config.update("jax_enable_x64", bool(run.get("x64")))
        if run.get("signal"):
            _arm(*run["signal"])
        code = main.main(["main.py", *run["argv"]])
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # as a process exits: JAX's shutdown waits there for the other processes
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start(run: dict, outdir: pathlib.Path, i: int) -> int:
    for path in run.get("remove", ()):
        os.remove(path)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(run, outdir / f"run{i}.out", outdir / f"run{i}.err")
    return pid


def _checkpoints(run: dict) -> list[str]:
    workdir = next((a.split("=", 1)[1] for a in run["argv"] if a.startswith("--workdir=")), None)
    if workdir is None:  # --mode=prepare
        return []
    folder = pathlib.Path(workdir) / "checkpoints"
    return sorted(os.listdir(folder)) if folder.exists() else []


def _ended(run: dict, status: int) -> dict:
    return {"signal": run.get("signal"), "status": os.waitstatus_to_exitcode(status), "checkpoints": _checkpoints(run)}


def run_all(spec: dict, outdir: pathlib.Path) -> list[dict]:
    preload = spec.get("preload", True)  # what training imports; runs refused at start need none of it
    if preload is True:  # training, and the figures of a run that ends (matplotlib: ~1 s a process)
        importlib.import_module("alexnet_jax.train")
        importlib.import_module("alexnet_jax.plots")
    else:  # a module, or a list of them
        for name in [preload] if isinstance(preload, str) else preload or []:
            importlib.import_module(name)
    runs = spec["runs"]
    if spec.get("together"):
        pids = [_start(run, outdir, i) for i, run in enumerate(runs)]
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
        return [_ended(run, status) for run, status in zip(runs, statuses, strict=True)]
    return [_ended(run, os.waitpid(_start(run, outdir, i), 0)[1]) for i, run in enumerate(runs)]


def drive(spec: dict, outdir: pathlib.Path):
    (outdir / "runs.json").write_text(json.dumps(run_all(spec, outdir), indent=1))


def serve():
    """Answers requests on stdin until it closes (see the module's docstring)."""
    importlib.import_module("alexnet_jax.train")
    importlib.import_module("alexnet_jax.plots")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the driver: a session of its own, killed with its children as one group
            os.setsid()
            outdir = pathlib.Path(request["outdir"])
            os.dup2(os.open(os.devnull, os.O_RDWR), 0)  # the requests and answers are the server's
            os.dup2(os.open(outdir / "driver.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(outdir / "driver.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            code = 1
            try:
                drive(request["spec"], outdir)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
    else:
        drive(json.loads(sys.argv[1]), pathlib.Path(sys.argv[2]))

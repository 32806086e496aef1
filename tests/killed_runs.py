"""Runs main.py over one workdir again and again, each run but the last SIGKILLed at a planned moment.

    python tests/killed_runs.py PLAN OUTDIR MAIN_FLAGS...

PLAN is JSON, a list of [moment, step] pairs, one per killed run; the moments:

- ``step``: right after train step ``step`` is dispatched;
- ``evaluation``: right after the evaluation at ``step`` is logged (before the checkpoint save);
- ``save``: inside the asynchronous write of checkpoint ``step``: every file written, the
  checkpoint not yet committed (Orbax's rename of its temporary directory).

Each run is a child forked from this process once the imports are done (JAX's backend is started
by each child, not here), so only the first pays for them. Writes OUTDIR/run<i>.out and .err, and
OUTDIR/runs.json: for each run, its exit status (negative: the signal) and the entries of the
checkpoint directory right after it ended.
"""

import json
import os
import pathlib
import signal
import sys
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from orbax.checkpoint._src.path import atomicity  # noqa: E402

import main  # noqa: E402
from alexnet_jax import train  # noqa: E402


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(moment: str, step: int):
    """Makes this process SIGKILL itself at ``moment`` of ``step``."""
    if moment == "step":
        train_step = train._Trainer.train_step

        def train_step_then_kill(self):
            metrics = train_step(self)
            if self.step == step:
                _kill_self()
            return metrics

        train._Trainer.train_step = train_step_then_kill
    elif moment == "evaluation":
        evaluate = train._Trainer.evaluate

        def evaluate_then_kill(self, log):
            result = evaluate(self, log)
            if self.step == step and log is not None:
                _kill_self()
            return result

        train._Trainer.evaluate = evaluate_then_kill
    elif moment == "save":
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def kill_before_commit(self):
            if self.get_final().name == str(step):
                _kill_self()
            return await finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = kill_before_commit
    else:
        raise ValueError(f"unknown moment {moment!r}")


def _child(plan_entry, argv: list[str], out: pathlib.Path, err: pathlib.Path):
    """In the forked child: output to files, the kill armed, main.py run; never returns."""
    for stream, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), stream)
    code = 1
    try:
        if plan_entry is not None:
            _arm(*plan_entry)
        code = main.main(["main.py", *argv])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _workdir(argv: list[str]) -> pathlib.Path:
    return pathlib.Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")))


def run_all(plan: list, outdir: pathlib.Path, argv: list[str]) -> list[dict]:
    checkpoints = _workdir(argv) / "checkpoints"
    runs = []
    for i, entry in enumerate([*plan, None]):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(entry, argv, outdir / f"run{i}.out", outdir / f"run{i}.err")
        _, status = os.waitpid(pid, 0)
        entries = sorted(os.listdir(checkpoints)) if checkpoints.exists() else []
        runs.append({"plan": entry, "status": os.waitstatus_to_exitcode(status), "checkpoints": entries})
    return runs


if __name__ == "__main__":
    plan, outdir, argv = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
    runs = run_all(plan, outdir, argv)
    (outdir / "runs.json").write_text(json.dumps(runs, indent=1))

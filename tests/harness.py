"""The harness for tests that run real processes: ``main.py`` in subprocesses or forked children
(``forked_main.py``), killed at chosen moments, several processes of one distributed run on
127.0.0.1; and the checks that a run so treated ends as an uninterrupted one did."""

import contextlib
import json
import os
import pathlib
import random
import select
import signal
import socket
import subprocess
import sys

from conftest import ROOT, TOTAL_STEPS


def final_arrays(workdir, step):
    """Every array of checkpoint ``step``'s train state, by path, as numpy arrays (whatever the
    devices and processes that wrote it)."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    checkpointer, path = ocp.StandardCheckpointer(), (workdir / "checkpoints" / str(step) / "state").absolute()
    saved = checkpointer.metadata(path).item_metadata
    restored = checkpointer.restore(path, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), saved))
    return {"/".join(map(str, path)): np.asarray(x) for path, x in _flatten(restored)}


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, (*prefix, key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _flatten(value, (*prefix, i))
    else:
        yield prefix, tree


def assert_same_final_state(workdir, reference, step=TOTAL_STEPS):
    """Bit for bit: on a CPU the same programs on the same inputs give the same bits."""
    import numpy as np

    want, got = final_arrays(reference, step), final_arrays(workdir, step)
    assert want.keys() == got.keys() and len(want) > 10
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


MAIN = [sys.executable, os.path.join(ROOT, "main.py")]


def kill_plan(seed: int, save_steps, evaluation_steps, total_steps: int, after_a_step=True) -> list[tuple[str, int]]:
    """Seeded moments for ``forked_main.py`` to SIGKILL a run at, in the order the run reaches them:
    one inside a checkpoint write, one right after an evaluation, and (``after_a_step``) one after
    a train step.

    Each kill leaves the latest committed checkpoint before its moment, so the restarted run
    reaches the next moment."""
    rng = random.Random(seed)
    plan = [("save", rng.choice(save_steps)), ("evaluation", rng.choice(evaluation_steps))]
    if after_a_step:
        plan.append(("step", rng.randrange(1, total_steps)))
    return sorted(plan, key=lambda moment: moment[1])


def run_forked(
    runs: list[dict], outdir: pathlib.Path, together=False, preload=True, timeout=240, prefix=()
) -> list[dict]:
    """Runs main.py once per entry of ``runs`` with ``tests/forked_main.py`` (see there), one after
    another or ``together``; returns per run what the driver reports, plus its stdout and stderr.
    The driver's command line starts with ``prefix``; a driver that outlives ``timeout`` is killed
    with all its children. Without a prefix, the driver is forked by this worker's driver server
    (its imports made once)."""
    outdir.mkdir(parents=True)
    spec = {"together": together, "preload": preload, "runs": runs}
    if prefix:
        status, err = _run_driver(prefix, spec, outdir, timeout)
    else:
        status, err = _DriverServer.running().drive(spec, outdir, timeout)
    assert status == 0, err[-3000:]
    ended = json.loads((outdir / "runs.json").read_text())
    for i, run in enumerate(ended):
        run["out"] = (outdir / f"run{i}.out").read_text()
        run["err"] = (outdir / f"run{i}.err").read_text()
    return ended


def _run_driver(prefix, spec: dict, outdir: pathlib.Path, timeout: int) -> tuple[int, str]:
    """``forked_main.py`` in a process of its own: (exit status, stderr)."""
    command = [*prefix, sys.executable, os.path.join(ROOT, "tests", "forked_main.py"), json.dumps(spec), str(outdir)]
    driver = subprocess.Popen(command, cwd=ROOT, text=True, stdout=-1, stderr=-1, start_new_session=True)
    try:
        _, err = driver.communicate(timeout=timeout)
    finally:  # the children are in the driver's process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    return driver.returncode, err


def _environment() -> dict:
    """The environment a driver server's children run in, but for the name of the test that pytest
    keeps there (which changes with every test, and changes nothing a run does)."""
    return {name: value for name, value in os.environ.items() if name != "PYTEST_CURRENT_TEST"}


class _DriverServer:
    """``forked_main.py --serve``, one per pytest worker, started by its first request: it imports
    JAX and the training code once (seconds) for every driver it forks. It ends with its worker
    (its stdin closes)."""

    _running = None

    def __init__(self):
        command = [sys.executable, os.path.join(ROOT, "tests", "forked_main.py"), "--serve"]
        self.env = _environment()  # what its imports saw
        self.process = subprocess.Popen(command, cwd=ROOT, text=True, stdin=-1, stdout=-1, start_new_session=True)

    @classmethod
    def running(cls) -> "_DriverServer":
        """This worker's server, started anew if it died or the environment changed since."""
        server = cls._running
        if server is None or server.process.poll() is not None or server.env != _environment():
            if server is not None:
                server.process.kill()
            cls._running = server = cls()
        return server

    def drive(self, spec: dict, outdir: pathlib.Path, timeout: int) -> tuple[int, str]:
        """A driver forked for ``spec``, killed with its children after ``timeout`` seconds:
        (exit status, stderr)."""
        request = {"spec": spec, "outdir": str(outdir)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        try:
            ended, _, _ = select.select([self.process.stdout], [], [], timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # its children, or all of it after the timeout
        status = int(self.process.stdout.readline())
        err = (outdir / "driver.err").read_text()
        return status, err if ended else f"the driver outlived {timeout} s and was killed\n{err}"


def kill_and_restart(plan, workdir: pathlib.Path, flags) -> list[dict]:
    """Runs main.py with ``flags`` over ``workdir`` once per moment of ``plan``, SIGKILLed there,
    then once more to the end (see ``run_forked``)."""
    argv = [*flags, f"--workdir={workdir}"]
    runs = [{"argv": argv, "signal": [moment, step, signal.SIGKILL]} for moment, step in plan]
    return run_forked([*runs, {"argv": argv}], workdir.with_name(workdir.name + "_outputs"))


def distributed_run(
    argvs: list[list[str]], outdir, devices, x64=False, signals=None, preload=True, timeout=240
) -> list[dict]:
    """Runs main.py as ``len(argvs)`` processes of one distributed run on 127.0.0.1, process i with
    ``argvs[i]``, ``devices`` (or ``devices[i]``) fake CPU devices and the signal ``signals[i]``
    (see ``run_forked``)."""
    address = f"127.0.0.1:{free_port()}"
    devices = devices if isinstance(devices, list) else [devices] * len(argvs)
    signals = signals or [None] * len(argvs)
    runs = [
        {
            "argv": [*argv, f"--coordinator_address={address}", f"--num_processes={len(argvs)}", f"--process_id={i}"],
            "devices": devices[i],
            "x64": x64,
            "signal": signals[i],
        }
        for i, argv in enumerate(argvs)
    ]
    return run_forked(runs, pathlib.Path(outdir), together=True, preload=preload, timeout=timeout)


def assert_survived_the_kills(runs, workdir, reference, total_steps: int):
    """Every planned kill happened; no restart picked up an uncommitted checkpoint; the run ends as
    ``reference`` (an uninterrupted run) did: the same final state bit for bit, the same records
    in metrics.jsonl (every step once, the same values but for the measured speed), the same report."""
    assert runs[-1]["status"] == 0, runs[-1]["err"][-3000:]
    for before, run in zip(runs, runs[1:], strict=False):
        assert before["status"] == -signal.SIGKILL, (before["signal"], before["err"][-3000:])
        moment, step, _ = before["signal"]
        committed = [int(name) for name in before["checkpoints"] if name.isdigit()]
        if moment == "save":  # killed inside the write: written, not committed
            assert f"{step}.orbax-checkpoint-tmp" in before["checkpoints"] and step not in committed, before
        resumed = max(committed, default=0)
        assert resumed < step, before
        said = f"resuming from step {resumed} of {total_steps}" if resumed else "resuming"
        assert (said in run["out"]) == bool(resumed), run["out"]
    assert_same_final_state(workdir, reference, step=total_steps)
    assert _saved_data(workdir, total_steps) == _saved_data(reference, total_steps)  # position, plateau rule
    assert _logged(workdir) == _logged(reference)
    report = "validation_report.json"
    assert json.loads((workdir / report).read_text()) == json.loads((reference / report).read_text())


def _saved_data(workdir, step) -> dict:
    from alexnet_jax.checkpointing import Checkpoints

    checkpoints = Checkpoints(workdir / "checkpoints", keep=1)
    try:
        return checkpoints.read_data(step)
    finally:
        checkpoints.close()


def _logged(workdir) -> list[dict]:
    from alexnet_jax import metrics_log

    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in metrics_log.read_metrics(workdir)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices: int) -> dict:
    """This test run's environment with ``devices`` fake CPU devices per process."""
    flags = os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch_processes(
    commands: list[list[str]], envs: list[dict], timeout: int = 240
) -> list[subprocess.CompletedProcess]:
    """Runs one command per process, process i with ``--process_id=i`` of len(commands), and waits."""
    address = f"127.0.0.1:{free_port()}"
    started = []
    for i, (command, env) in enumerate(zip(commands, envs, strict=True)):
        flags = [f"--coordinator_address={address}", f"--num_processes={len(commands)}", f"--process_id={i}"]
        started.append(subprocess.Popen([*command, *flags], env=env, cwd=ROOT, text=True, stdout=-1, stderr=-1))
    finished = []
    try:
        for process in started:
            out, err = process.communicate(timeout=timeout)
            finished.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:  # a hang (processes that disagree wait for each other) must not outlive the test
        for process in started:
            process.kill()
    return finished

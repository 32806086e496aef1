"""Details a user sees: throughput, curves, schedules, logs on resume, the start-up line, installs."""

import importlib
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys

import jax
import pytest
from conftest import ROOT

from alexnet_jax import metrics_log, optim, runtime
from alexnet_jax.config_checks import validate
from alexnet_jax.models import create_model
from alexnet_jax.train import StopRequests
from configs import cifar10, cifar10_cpu, smoke

SHIPPED = sorted(p.stem for p in pathlib.Path(ROOT, "configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_is_valid_as_it_is(name):
    validate(importlib.import_module(f"configs.{name}").get_config(), num_devices=8)


@pytest.mark.parametrize("module", [cifar10, cifar10_cpu, smoke], ids=["cifar10", "cifar10_cpu", "smoke"])
def test_the_step_schedule_is_a_one_flag_switch_for_every_config(module):
    config = module.get_config()
    config.schedule.name = "step"
    validate(config, num_devices=1)
    schedule = optim.create_schedule(config, steps_per_epoch=3)
    total, rate = 3 * config.num_epochs, config.optimizer.learning_rate
    drops = [s for s in range(1, total) if schedule(s) < schedule(s - 1)]
    assert drops == [round(total / 3), round(2 * total / 3)]
    assert float(schedule(total - 1)) == pytest.approx(rate * config.schedule.step_factor**2)


def test_resuming_rewrites_metrics_by_rename_not_in_place(tmp_path):
    log = metrics_log.MetricsLog(tmp_path)
    for step in (2, 4, 6):
        log.write("train", step, {"loss": 1.0})
    log.close()
    before = (tmp_path / "metrics.jsonl").read_text()
    os.link(tmp_path / "metrics.jsonl", tmp_path / "old.jsonl")  # a second name for the old file's bytes
    metrics_log.MetricsLog(tmp_path, resume_step=4).close()
    assert [r["step"] for r in metrics_log.read_metrics(tmp_path)] == [2, 4]
    # Rewriting in place would have truncated the old file, which a kill at that moment loses.
    assert (tmp_path / "old.jsonl").read_text() == before


def tensorboard_events(path: pathlib.Path):
    """(step, session_log status) of each event in a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
        events.append((event.step, event.session_log.status))
        offset += 12 + length + 4
    return events


def test_a_resumed_run_tells_tensorboard_to_drop_the_events_after_its_step(tmp_path):
    metrics_log.MetricsLog(tmp_path).close()
    metrics_log.MetricsLog(tmp_path, resume_step=40).close()
    newest = max((tmp_path / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    start = 1  # SessionLog.START: TensorBoard purges earlier files' events at steps >= this event's step
    assert (41, start) in tensorboard_events(newest)


def test_the_start_up_line_names_version_devices_and_processes():
    line = runtime.platform_line()
    assert re.fullmatch(rf"JAX {re.escape(jax.__version__)}: 8 x cpu \(cpu\), 1 process", line), line


def abstract_params(config):
    model = create_model(config.model, 10)
    return jax.eval_shape(model.init, jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)))["params"]


def test_a_gpu_config_on_the_cpu_warns_once_and_names_the_faster_choice(capsys):
    config = cifar10.get_config()
    runtime.warn_if_accelerator_config_on_cpu(config, abstract_params(config))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bfloat16 compute and a 14.9 M-parameter model" in lines[0]
    assert "configs/cifar10_cpu.py" in lines[0] and "requirements-cuda13.lock" in lines[0]
    config = cifar10_cpu.get_config()
    runtime.warn_if_accelerator_config_on_cpu(config, abstract_params(config))
    assert capsys.readouterr().err == ""


def test_the_first_stop_signal_is_a_request_the_second_stops_at_once():
    # raise_signal: to this thread, handled before the next line (os.kill may reach another of the
    # process's threads first, pytest-timeout's timer say, and the handler then runs a moment later)
    # The handler restored is the one found (whatever an earlier test of this worker left installed).
    before = signal.getsignal(signal.SIGINT)
    with StopRequests() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.poll()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before, (signal.getsignal(signal.SIGINT), before)


def pins(path: pathlib.Path) -> dict:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


@pytest.mark.parametrize("platform, plugin", [("cuda12", "jax-cuda12-plugin"), ("cuda13", "jax-cuda13-plugin")])
def test_gpu_installs_pin_the_same_jax_as_the_cpu_lock(platform, plugin):
    cpu = pins(pathlib.Path(ROOT) / "requirements.lock")
    extra = pins(pathlib.Path(ROOT) / f"requirements-{platform}.lock")
    assert extra[plugin] == extra[plugin.replace("plugin", "pjrt")] == cpu["jax"] == cpu["jaxlib"]
    assert not set(extra) & set(cpu)  # installed together: nothing pinned twice
    pyproject = (pathlib.Path(ROOT) / "pyproject.toml").read_text()
    assert f'{platform} = ["jax[{platform}]=={cpu["jax"]}"]' in pyproject


def test_compiled_programs_go_to_the_compilation_cache_unless_the_environment_says_where(tmp_path):
    assert runtime.use_compilation_cache(str(tmp_path / "ignored")) == os.environ["JAX_COMPILATION_CACHE_DIR"]
    script = (
        "import sys, jax, jax.numpy as jnp\n"
        "from alexnet_jax.runtime import use_compilation_cache\n"
        "assert use_compilation_cache(sys.argv[1]) == sys.argv[1]\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # cache even this tiny program\n"
        "jax.jit(jnp.sin)(1.0).block_until_ready()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", script, str(cache)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in cache.iterdir() if p.name.startswith("jit_sin")], list(cache.iterdir())


def test_help_lists_every_mode_with_its_example(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for mode in ("evaluate", "prepare", "convert", "predict"):
        assert f"python main.py --mode={mode}" in out
    assert "--data_dir=DATA_DIR \\\n      [--image_size=256" in out  # continued lines as written


def test_worker_counts_follow_the_cores_this_process_may_use(tmp_path):
    """Affinity (taskset, SLURM) and a container's CPU quota (Docker --cpus, Kubernetes limits)
    count, not the host's cores."""
    from alexnet_jax import cpus

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    assert cpus.cgroup_cpu_quota(v2) == 1.5 and cpus.usable_cpus(v2) == 1
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_cpu_quota(v1) == 4.0 and cpus.cgroup_cpu_quota(tmp_path / "none") is None
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        assert cpus.usable_cpus(tmp_path / "none") == 1 and cpus.usable_cpus(v1) == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert cpus.usable_cpus(tmp_path / "none") == len(allowed)


def test_a_checkpoint_signature_holds_only_what_the_chosen_model_takes(tmp_path):
    from alexnet_jax.checkpointing import CheckpointError, check_signature
    from alexnet_jax.experiment import model_signature
    from configs import imagenet2012_paper

    config = imagenet2012_paper.get_config()
    assert model_signature(config.model) == {"name": "alexnet2012", "width": 1.0}
    saved = {"model": {**model_signature(cifar10.get_config().model), "name": "alexnet2012"}}  # all fields
    config.model.channels, config.model.fc_features = (8, 8, 8, 8, 8), 64  # only alexnet_cifar takes these
    check_signature(saved, {"model": model_signature(config.model)}, tmp_path, "")  # resumes
    cifar = cifar10.get_config()
    check_signature(saved, {"model": {**model_signature(cifar.model), "name": "alexnet2012"}}, tmp_path, "")
    cifar.model.width = 0.5
    with pytest.raises(CheckpointError, match=r"\(model\.width: 1\.0 there, 0\.5 now\)"):
        check_signature(
            {"model": model_signature(cifar10.get_config().model)},
            {"model": model_signature(cifar.model)},
            tmp_path,
            "",
        )


def test_profile_steps_writes_a_trace_of_those_steps(straight_run):
    import gzip
    import json

    (trace,) = (straight_run[0] / "profile").glob("plugins/profile/*/*.trace.json.gz")  # traced: steps 2, 3
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert any("train_step" in name for name in names), sorted(names)[:50]


def test_the_first_layers_filters_are_drawn_as_the_papers_figure_3(straight_run, tmp_path, cli):
    import numpy as np
    from PIL import Image

    from alexnet_jax import plots

    kernel = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)  # 4 filters of 2x2
    kernel[..., 3] = 7.0  # a flat filter
    grid = plots.filter_grid(kernel, towers=2, columns=16)
    assert grid.shape == (2 * 3 + plots.TOWER_GAP + 1, 16 * 3 + 1, 3)  # two towers of one row each
    first = grid[1:3, 1:3]  # filter 0, stretched on its own to 0..255
    assert first.min() == 0 and first.max() == 255 and (grid[1:3, 4:6] == first).all()  # filter 1: the same shape
    second_tower = 1 + 3 + plots.TOWER_GAP
    assert (grid[second_tower : second_tower + 2, 4:6] == 0).all()  # filter 3 (flat): no range to stretch
    assert (grid[3:second_tower, :] == 255).all()  # the gap between the towers

    workdir = straight_run[0]
    drawn = Image.open(workdir / "conv1_filters.png")  # the final model's, in every run's report
    assert drawn.size == tuple(s * plots.FILTER_SCALE for s in plots.filter_grid(np.ones((3, 3, 3, 16))).shape[1::-1])
    code, out, err = cli(
        "--mode=filters", f"--workdir={workdir}", "--checkpoint=latest", f"--output={tmp_path / 'f.png'}"
    )
    assert code == 0 and f"checkpoint 12: {tmp_path / 'f.png'}" in out, err
    assert (tmp_path / "f.png").read_bytes() == (
        workdir / "conv1_filters.png"
    ).read_bytes()  # checkpoint 12 is the final model

"""This codebase's train step against PyTorch's, same network and batch, side by side in one run.

  python benchmarks/versus_pytorch.py                                   # GPU: the full grid
  python benchmarks/versus_pytorch.py --models=alexnet_cifar --batches=8 --dtypes=float32 --steps=3 --warmup=1
  python benchmarks/versus_pytorch.py --models=cifar10_cpu,alexnet_cifar,alexnet_owt --width=0.5 \
      --batches=32 --cifar_batches=256 --dtypes=float32 --repeats=5 --steps=5 --warmup=2   # a CPU

PyTorch runs in each mode of ``--torch_compile`` (eager: ``none``; ``torch.compile``'s modes), each
a row. With ``--repeats`` above 1 every row is measured that many times, interleaved (repeat 1 of
every row, then repeat 2, ...), each framework and mode in a process of its own, and the table
shows the median of the repeats' medians and their spread: noise on a shared or throttled CPU moves
single runs by 20%. ``cifar10_cpu`` is ``alexnet_cifar`` shaped as ``configs/cifar10_cpu.py``.

For each network, batch and dtype it times one training step (uint8 images normalised on the
device, forward, cross-entropy, backward, SGD with momentum 0.9 and weight decay 5e-4 on the
kernels) in both frameworks: warm-up steps first, then the median of ``--steps`` steps, each
synchronised with the device. Inputs are random (never zeros), resident on the device.

* JAX: the codebase's own step (``train.compose_train_step``: ``train_step`` under
  ``jit(shard_map)`` on one device, float32 parameters, compute in ``dtype``, state donated).
* PyTorch: ``torchvision.models.alexnet`` for ``alexnet_owt``; for ``alexnet2012`` and
  ``alexnet_cifar`` the same layers written below (the paper's LRN within each group, grouped
  convolutions); channels_last, ``torch.compile`` (``--torch_compile``), cudnn.benchmark, bf16 autocast
  for bfloat16, TF32 allowed for float32 (JAX's default precision on GPUs uses TF32 too),
  ``torch.optim.SGD`` (foreach) with the same weight-decay mask.

Model FLOPs per image are counted from the network's convolutions and matrix products
(``count_flops``): forward, plus backward = weight gradients (= forward) and input gradients
(= forward, except the first layer's, which no one needs). MFU divides the achieved model FLOP/s by
the bf16 matrix-product peak measured in the same run (the faster of the two frameworks on an
8192^3 product; 2048^3 on a CPU, ``--matmul_size``). Peak memory: PyTorch's allocator high-water mark for the step;
for JAX, XLA's memory analysis of the compiled step (arguments + outputs + temporaries).
"""

import contextlib
import gzip
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time
import traceback

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import configs.cifar10
import configs.cifar10_cpu
from alexnet_jax import files, models
from alexnet_jax.experiment import create_state
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import compose_train_step
from benchmarks.timing import peak_bytes, time_steps

_MODELS = flags.DEFINE_list("models", ["alexnet_owt", "alexnet2012", "alexnet_cifar"], "Networks to time.")
_BATCHES = flags.DEFINE_list("batches", ["128", "256", "512"], "Batch sizes for the 224x224 networks.")
_CIFAR_BATCHES = flags.DEFINE_list("cifar_batches", None, "Batch sizes for alexnet_cifar; default: --batches.")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Compute dtypes.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "torch"], "jax, torch (torch is skipped if not installed).")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps per row.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps after compilation.")
_TORCH_COMPILE = flags.DEFINE_list(
    "torch_compile", ["none", "default"], "PyTorch's modes, a row each: 'none' (eager) or a torch.compile mode."
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 1, "Measurements of each row, interleaved, each in a process of its own when above 1; the median shown."
)
_ONE = flags.DEFINE_string("child_row", None, "Internal: only the row 'model:batch:dtype:runner' (a child process).")
_PROFILE = flags.DEFINE_list(
    "profile",
    [],
    "Cells 'model:batch:dtype' to print GPU kernel-time tables for. JAX's profiler cannot trace after "
    "PyTorch's has run in the same process (CUPTI): for JAX tables of several cells, use --frameworks=jax.",
)
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "/tmp/versus_pytorch_profiles", "Where JAX writes its traces.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
_WIDTH = flags.DEFINE_float("width", 1.0, "Width multiplier of alexnet_cifar, on both sides (a CPU smoke run: 0.125).")
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", None, "Side of the peak-measuring product; default 8192 (GPU), 2048."
)

IMAGE_SIZES = {"alexnet_owt": 224, "alexnet2012": 224, "alexnet_cifar": 32, "cifar10_cpu": 32}
CLASSES = {"alexnet_owt": 1000, "alexnet2012": 1000, "alexnet_cifar": 10, "cifar10_cpu": 10}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


def jax_config(model: str, batch: int, dtype: str, width: float = 1.0):
    """``configs/cifar10.py`` switched to ``model``: no augmentation, no batch norm, dropout 0.5 (as the
    PyTorch networks), the benchmark's SGD."""
    config = configs.cifar10.get_config()
    config.model.width = width  # alexnet_cifar only
    if model == "cifar10_cpu":  # alexnet_cifar as the CPU config shapes it
        shaped, config.model.width = configs.cifar10_cpu.get_config().model, 1.0
        model, config.model.channels, config.model.fc_features = "alexnet_cifar", shaped.channels, shaped.fc_features
    config.model.name, config.model.dtype, config.batch_size = model, dtype, batch
    config.model.norm, config.model.dropout_rate = "none", 0.5  # as the PyTorch networks
    config.augment.crop_padding, config.augment.flip = 0, False
    config.dataset.normalization = "cifar10" if model == "alexnet_cifar" else "imagenet"
    opt = config.optimizer
    opt.learning_rate, opt.momentum, opt.nesterov, opt.weight_decay = LEARNING_RATE, MOMENTUM, False, WEIGHT_DECAY
    opt.decay_biases, opt.update_rule, opt.label_smoothing = False, "pytorch", 0.0
    config.schedule.name = "constant"
    return config


def random_batch(model: str, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = IMAGE_SIZES[model]
    return rng.integers(0, 256, (batch, size, size, 3), np.uint8), rng.integers(0, CLASSES[model], batch, np.int32)


def count_flops(model: str, width: float = 1.0) -> list[tuple[str, float]]:
    """(layer, forward FLOPs per image) of every convolution and matrix product, read off the jaxpr."""
    net = models.create_model(jax_config(model, 1, "float32", width).model, CLASSES[model])
    size = IMAGE_SIZES[model]
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(net.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v, x: net.apply(v, x))(variables, x)
    layers = []
    for name, eqn in _equations(jaxpr.jaxpr):
        name = name or eqn.primitive.name
        out = eqn.outvars[0].aval.shape
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO: every output element takes H*W*I multiply-adds
            layers.append((name, 2.0 * np.prod(out) * np.prod(kernel[:-1])))
        elif eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            depth = np.prod([eqn.invars[0].aval.shape[d] for d in contracting])
            layers.append((name, 2.0 * np.prod(out) * depth))
    return layers


def _equations(jaxpr, outer: str = ""):
    """(name, equation) of every equation, inside calls too (a layer's custom gradient), each named
    by the modules it sits in."""
    for eqn in jaxpr.eqns:
        name = "/".join(filter(None, (outer, str(eqn.source_info.name_stack))))
        yield name, eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub, name)


def train_flops_per_image(layers: list[tuple[str, float]]) -> float:
    forward = sum(f for _, f in layers)
    return 3 * forward - layers[0][1]  # no input gradient for the first layer


def jax_matmul_tflops(size: int, dtype=jnp.bfloat16, repeats: int = 20) -> float:
    keys = jax.random.split(jax.random.key(1), 2)
    a, b = (jax.random.normal(k, (size, size), dtype) for k in keys)
    matmul = jax.jit(lambda a, b: a @ b)
    times = time_steps(lambda: matmul(a, b).block_until_ready(), 3, repeats)
    return 2 * size**3 / statistics.median(times) / 1e12


def jax_row(model: str, batch: int, dtype: str, warmup: int, steps: int, width: float = 1.0) -> dict:
    config = jax_config(model, batch, dtype, width)
    parallel = DataParallel("shard_map", jax.devices()[:1])
    images, labels = random_batch(model, batch)
    state = create_state(config, CLASSES[model], images.shape[1:], steps_per_epoch=1)
    step_fn = compose_train_step(parallel, config, CLASSES[model])
    state = parallel.replicate(state)
    data, rng = parallel.shard({"image": images, "label": labels}), parallel.replicate(jax.random.key(0))
    started = time.perf_counter()
    compiled = step_fn.lower(state, data, rng).compile()
    compile_s = time.perf_counter() - started
    peak = peak_bytes(compiled)
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], data, rng)
        jax.block_until_ready((holder["state"], metrics))

    times = time_steps(step, warmup, steps)
    return {"compile_s": compile_s, "times": times, "peak_bytes": peak, "step": step, "hlo": compiled.as_text()}


def jax_kernel_table(result: dict, out_dir: pathlib.Path, steps: int = 10, rows: int = 15) -> str:
    """Runs ``steps`` steps under the JAX profiler; device time per GPU kernel, or on a CPU per
    operation of the compiled step, named by the layer and the part of the step it computes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
        for _ in range(steps):
            result["step"]()
    trace_files = sorted(out_dir.rglob("perfetto_trace.json.gz"))
    if not trace_files:
        return "no perfetto trace written"
    events = json.load(gzip.open(trace_files[-1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    on_cpu = jax.devices()[0].platform == "cpu"
    totals = (_cpu_op_totals if on_cpu else _gpu_kernel_totals)(events, result.get("hlo", ""))
    return _time_table(totals, steps, rows, "CPU operation" if on_cpu else "GPU kernel")


def _gpu_kernel_totals(events: list[dict], hlo: str) -> dict[str, float]:
    threads = {
        (e.get("pid"), e.get("tid")): e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    processes = {
        e.get("pid"): e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    totals: dict[str, float] = {}
    for e in events:
        if e.get("ph") != "X" or "/device:GPU" not in processes.get(e.get("pid"), ""):
            continue
        if "Stream" not in threads.get((e.get("pid"), e.get("tid")), "Stream"):
            continue
        args = e.get("args", {})
        key = f"{e['name'][:60]} [{args.get('hlo_op', '')}]" if args.get("hlo_op") else e["name"][:80]
        totals[key] = totals.get(key, 0.0) + e.get("dur", 0.0)
    return totals


def _cpu_op_totals(events: list[dict], hlo: str) -> dict[str, float]:
    """Time per (layer, part of the step, kind of operation): the thunks XLA's CPU client ran, named
    by their HLO metadata (``conv2 backward: convolution``); the dots of a layer's kernel gradient
    that carry no metadata, as ``matrix products without a name``."""
    named = dict(re.findall(r"%([\w.-]+) = .*?op_name=\"([^\"]+)\"", hlo))
    totals: dict[str, float] = {}
    for e in events:
        op = e.get("args", {}).get("hlo_op")
        if e.get("ph") != "X" or not op:
            continue
        name = named.get(op, "")
        layer = re.search(r"/(conv\d|fc\d|bn\d|lrn\d|Dense_\d|Conv_\d)/", name)
        part = "backward" if "transpose(" in name else "forward"
        kind = op.split(".")[0].replace("wrapped_", "").replace("ynn_fusion", "matrix product or convolution")
        key = f"{layer[1]} {part}: {kind}" if layer else (f"{part}: {kind}" if name else f"{kind} without a name")
        totals[key] = totals.get(key, 0.0) + e.get("dur", 0.0)
    return totals


def _time_table(totals: dict[str, float], steps: int, rows: int, what: str = "GPU kernel") -> str:
    whole = sum(totals.values())
    if not whole:
        return f"no {what}s in the trace"
    lines = [f"{what} time per step: {whole / steps / 1e3:.2f} ms", f"| {what} | ms/step | share |", "|---|---|---|"]
    for name, micros in sorted(totals.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"| `{name}` | {micros / steps / 1e3:.3f} | {100 * micros / whole:.1f}% |")
    return "\n".join(lines)


def print_profile(framework: str, cell: tuple, result: dict, out: pathlib.Path, torch_bench):
    try:
        if framework == "jax":
            table = jax_kernel_table(result, out / f"jax_{cell[0]}_{cell[1]}_{cell[2]}")
        else:
            table = torch_bench.kernel_table(result["step"])
    except Exception:
        table = f"profile failed:\n{traceback.format_exc()}"
    print(f"\n{framework} {' '.join(map(str, cell))}:\n{table}\n", flush=True)


def summarise(framework: str, model: str, batch: int, dtype: str, result: dict, flops: float, peak: float) -> dict:
    median = statistics.median(result["times"])
    achieved = flops * batch / median
    return {
        "framework": framework,
        "model": model,
        "batch": batch,
        "dtype": dtype,
        "images_per_s": batch / median,
        "step_ms": 1e3 * median,
        "spread_ms": 1e3 * (max(result["times"]) - min(result["times"])),
        "tflops": achieved / 1e12,
        "mfu": None if peak is None else achieved / peak,
        "peak_gib": None if result["peak_bytes"] is None else result["peak_bytes"] / 2**30,
        "compile_s": result["compile_s"],
        "steps": len(result["times"]),
    }


def print_table(rows: list[dict]):
    """One line per row; JAX's lines end with its speed over each PyTorch mode's (same model, batch, dtype)."""
    print(
        "\n| model | batch | dtype | framework | images/s | step (ms) | spread (ms) | TFLOP/s | MFU | "
        "peak mem (GiB) | compile (s) | JAX / PyTorch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    speeds = {(r["model"], r["batch"], r["dtype"], r["framework"]): r["images_per_s"] for r in rows}
    for r in rows:
        cell = (r["model"], r["batch"], r["dtype"])
        others = {f: v for (*c, f), v in speeds.items() if tuple(c) == cell and f.startswith("torch")}
        ratio = (
            ", ".join(f"{r['images_per_s'] / v:.2f}x {f}" for f, v in others.items()) if r["framework"] == "jax" else ""
        )
        memory = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(
            f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['framework']} | {r['images_per_s']:,.0f} | "
            f"{r['step_ms']:.2f} | {r['spread_ms']:.2f} | {r['tflops']:.2f} | {mfu} | {memory} | "
            f"{r['compile_s']:.1f} | {ratio} |"
        )


def grid() -> list[tuple[str, int, str]]:
    cells = []
    for model in _MODELS.value:
        batches = _CIFAR_BATCHES.value if "cifar" in model and _CIFAR_BATCHES.value else _BATCHES.value
        cells += [(model, int(batch), dtype) for batch in batches for dtype in _DTYPES.value]
    return cells


def runners(torch_bench) -> list[str]:
    """``jax``, then PyTorch in each mode: ``torch`` (eager), ``torch.compile`` (its default mode) or
    ``torch.compile:<mode>``."""
    modes = [] if torch_bench is None else _TORCH_COMPILE.value
    names = {"none": "torch", "default": "torch.compile"}
    return ["jax", *(names.get(mode, f"torch.compile:{mode}") for mode in modes)]


def measure(cell: tuple, runner: str, torch_bench) -> dict:
    """One row: ``cell`` = (model, batch, dtype) timed by ``runner``."""
    model, batch, dtype = cell
    if runner == "jax":
        return jax_row(model, batch, dtype, _WARMUP.value, _STEPS.value, _WIDTH.value)
    mode = {"torch": "none", "torch.compile": "default"}.get(runner, runner.split(":")[-1])
    images, labels = random_batch(model, batch)
    sgd = (LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)
    return torch_bench.time_row(model, images, labels, dtype, mode, _WARMUP.value, _STEPS.value, sgd, _WIDTH.value)


def in_own_processes(cells: list[tuple], names: list[str], out_dir: pathlib.Path) -> list[dict]:
    """Every (cell, runner) ``--repeats`` times, interleaved, each in a process of its own; the rows
    they wrote, each with its repeat's index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    passed = [flags.FLAGS[name].serialize() for name in ("steps", "warmup", "width")]
    for repeat in range(_REPEATS.value):
        for model, batch, dtype in cells:
            for runner in names:
                out = out_dir / f"{repeat}_{model}_{batch}_{dtype}_{runner}.json"
                one = f"--child_row={model}:{batch}:{dtype}:{runner}"
                command = [sys.executable, __file__, one, *passed, f"--json={out}"]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode or not out.exists():
                    print(f"{runner} {model} batch {batch} {dtype} failed:\n{done.stderr[-3000:]}", flush=True)
                    continue
                for row in json.loads(out.read_text())["rows"]:
                    rows.append({**row, "repeat": repeat})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def median_of_repeats(rows: list[dict]) -> list[dict]:
    """One row per (model, batch, dtype, framework): the median step of its repeats, and their spread."""
    groups = {}
    for row in rows:
        groups.setdefault((row["model"], row["batch"], row["dtype"], row["framework"]), []).append(row)
    merged = []
    for repeats in groups.values():
        steps = sorted(r["step_ms"] for r in repeats)
        median = statistics.median(steps)
        middle = min(repeats, key=lambda r: abs(r["step_ms"] - median))  # its compile time and memory shown
        per_second = 1e3 * middle["batch"] / median
        merged.append({**middle, "step_ms": median, "spread_ms": steps[-1] - steps[0], "images_per_s": per_second,
                       "tflops": middle["tflops"] * middle["step_ms"] / median, "repeats": len(steps)})  # fmt: skip
    return merged


def header(torch_bench, peaks: dict, size: int) -> None:
    device = jax.devices()[0]
    versions = f"jax {jax.__version__}" + (
        f", torch {torch_bench.version()}" if torch_bench else ", torch not installed"
    )
    print(f"device: {device.device_kind} ({device.platform}); {versions}")
    if device.platform == "cpu":
        cores = len(os.sched_getaffinity(0))
        torch_threads = f"; {torch_bench.threads()}" if torch_bench else ""
        print(f"threads: XLA's CPU client uses the {cores} cores this process may run on{torch_threads}")
    peak_dtype = "float32" if device.platform == "cpu" else "bf16"
    print(f"{peak_dtype} {size}^3 matmul peak (TFLOP/s): " + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items()))


def main(argv):
    del argv
    torch_bench = None
    runner = _ONE.value.split(":", 3)[-1] if _ONE.value else None
    if (runner or "torch").startswith("torch") and "torch" in _FRAMEWORKS.value:
        with contextlib.suppress(ImportError):
            from benchmarks import torch_alexnets as torch_bench
    if runner:  # a child: one row, no peak
        model, batch, dtype, _ = _ONE.value.split(":", 3)
        result = measure((model, int(batch), dtype), runner, torch_bench)
        row = summarise(
            runner, model, int(batch), dtype, result, train_flops_per_image(count_flops(model, _WIDTH.value)), None
        )
        files.write_text(_JSON.value, json.dumps({"rows": [row]}))
        return
    on_gpu = jax.devices()[0].platform == "gpu"
    size = _MATMUL_SIZE.value or (8192 if on_gpu else 2048)
    dtype = jnp.bfloat16 if on_gpu else jnp.float32  # a CPU's fast products are float32's
    peaks = {"jax": jax_matmul_tflops(size, dtype)}
    if torch_bench is not None:
        peaks["torch"] = torch_bench.matmul_tflops(size, on_gpu)
    peak = max(peaks.values()) * 1e12
    header(torch_bench, peaks, size)
    flops = {model: count_flops(model, _WIDTH.value) for model in _MODELS.value}
    for model, layers in flops.items():
        per_layer = ", ".join(f"{name.split('/')[-1]} {f / 1e6:.0f}" for name, f in layers)
        print(f"{model}: forward MFLOP/image {per_layer}; train GFLOP/image {train_flops_per_image(layers) / 1e9:.3f}")
    names = runners(torch_bench) if "torch" in _FRAMEWORKS.value else ["jax"]
    names = [n for n in names if n != "jax" or "jax" in _FRAMEWORKS.value]
    if _REPEATS.value > 1:
        rows = median_of_repeats(in_own_processes(grid(), names, pathlib.Path(_PROFILE_DIR.value) / "rows"))
        for row in rows:
            model = row["model"]
            row["mfu"] = train_flops_per_image(flops[model]) * row["images_per_s"] / peak
    else:
        rows = in_this_process(grid(), names, flops, peak, torch_bench)
    if _JSON.value:
        files.write_text(_JSON.value, json.dumps({"peaks": peaks, "rows": rows}, indent=1))
    print_table(rows)


def in_this_process(cells, names, flops, peak, torch_bench) -> list[dict]:
    rows = []
    for model, batch, dtype in cells:
        for runner in names:
            try:
                result = measure((model, batch, dtype), runner, torch_bench)
            except Exception:  # one failing row must not cost the others
                print(f"{runner} {model} batch {batch} {dtype} failed:\n{traceback.format_exc()}", flush=True)
                continue
            rows.append(summarise(runner, model, batch, dtype, result, train_flops_per_image(flops[model]), peak))
            print(json.dumps(rows[-1]), flush=True)
            if f"{model}:{batch}:{dtype}" in _PROFILE.value:
                framework = "jax" if runner == "jax" else "torch"
                print_profile(framework, (model, batch, dtype), result, pathlib.Path(_PROFILE_DIR.value), torch_bench)
    return rows


if __name__ == "__main__":
    app.run(main)

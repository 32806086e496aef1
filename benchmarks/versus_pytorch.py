"""This codebase's train step against PyTorch's, same network and batch, side by side in one run.

  python benchmarks/versus_pytorch.py                                   # GPU: the full grid
  python benchmarks/versus_pytorch.py --models=alexnet_cifar --batches=8 --dtypes=float32 --steps=3 --warmup=1

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
import pathlib
import statistics
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
from alexnet_jax import models
from alexnet_jax.experiment import create_state
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import compose_train_step
from benchmarks.timing import time_steps

_MODELS = flags.DEFINE_list("models", ["alexnet_owt", "alexnet2012", "alexnet_cifar"], "Networks to time.")
_BATCHES = flags.DEFINE_list("batches", ["128", "256", "512"], "Batch sizes for the 224x224 networks.")
_CIFAR_BATCHES = flags.DEFINE_list("cifar_batches", None, "Batch sizes for alexnet_cifar; default: --batches.")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Compute dtypes.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "torch"], "jax, torch (torch is skipped if not installed).")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps per row.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps after compilation.")
_TORCH_COMPILE = flags.DEFINE_string("torch_compile", "default", "torch.compile mode, or 'none' for eager.")
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

IMAGE_SIZES = {"alexnet_owt": 224, "alexnet2012": 224, "alexnet_cifar": 32}
CLASSES = {"alexnet_owt": 1000, "alexnet2012": 1000, "alexnet_cifar": 10}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


def jax_config(model: str, batch: int, dtype: str, width: float = 1.0):
    """``configs/cifar10.py`` switched to ``model``: no augmentation, no batch norm, dropout 0.5 (as the
    PyTorch networks), the benchmark's SGD."""
    config = configs.cifar10.get_config()
    config.model.name, config.model.dtype, config.batch_size = model, dtype, batch
    config.model.norm, config.model.dropout_rate = "none", 0.5  # as the PyTorch networks
    config.model.width = width  # alexnet_cifar only
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
    for eqn in _equations(jaxpr.jaxpr):
        name = str(eqn.source_info.name_stack) or eqn.primitive.name
        out = eqn.outvars[0].aval.shape
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO: every output element takes H*W*I multiply-adds
            layers.append((name, 2.0 * np.prod(out) * np.prod(kernel[:-1])))
        elif eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            depth = np.prod([eqn.invars[0].aval.shape[d] for d in contracting])
            layers.append((name, 2.0 * np.prod(out) * depth))
    return layers


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


def train_flops_per_image(layers: list[tuple[str, float]]) -> float:
    forward = sum(f for _, f in layers)
    return 3 * forward - layers[0][1]  # no input gradient for the first layer


def jax_matmul_tflops(size: int, repeats: int = 20) -> float:
    keys = jax.random.split(jax.random.key(1), 2)
    a, b = (jax.random.normal(k, (size, size), jnp.bfloat16) for k in keys)
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
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
        peak = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        )
    holder = {"state": state}

    def step():
        holder["state"], metrics = compiled(holder["state"], data, rng)
        jax.block_until_ready((holder["state"], metrics))

    times = time_steps(step, warmup, steps)
    return {"compile_s": compile_s, "times": times, "peak_bytes": peak, "step": step}


def jax_kernel_table(step, out_dir: pathlib.Path, steps: int = 10, rows: int = 15) -> str:
    """Runs ``steps`` steps under the JAX profiler; GPU kernel time per kernel name, as a table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(out_dir), create_perfetto_trace=True):
        for _ in range(steps):
            step()
    trace_files = sorted(out_dir.rglob("perfetto_trace.json.gz"))
    if not trace_files:
        return "no perfetto trace written"
    events = json.load(gzip.open(trace_files[-1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
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
    return _time_table(totals, steps, rows)


def _time_table(totals: dict[str, float], steps: int, rows: int) -> str:
    whole = sum(totals.values())
    if not whole:
        return "no GPU kernels in the trace"
    lines = [f"GPU kernel time per step: {whole / steps / 1e3:.2f} ms", "| kernel | ms/step | share |", "|---|---|---|"]
    for name, micros in sorted(totals.items(), key=lambda kv: -kv[1])[:rows]:
        lines.append(f"| `{name}` | {micros / steps / 1e3:.3f} | {100 * micros / whole:.1f}% |")
    return "\n".join(lines)


def print_profile(framework: str, cell: tuple, step, out: pathlib.Path, torch_bench):
    try:
        if framework == "jax":
            table = jax_kernel_table(step, out / f"jax_{cell[0]}_{cell[1]}_{cell[2]}")
        else:
            table = torch_bench.kernel_table(step)
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
        "mfu": achieved / peak,
        "peak_gib": None if result["peak_bytes"] is None else result["peak_bytes"] / 2**30,
        "compile_s": result["compile_s"],
        "steps": len(result["times"]),
    }


def print_table(rows: list[dict]):
    print(
        "\n| model | batch | dtype | framework | images/s | step (ms) | spread (ms) | TFLOP/s | MFU | "
        "peak mem (GiB) | compile (s) | JAX / PyTorch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    speeds = {(r["model"], r["batch"], r["dtype"], r["framework"]): r["images_per_s"] for r in rows}
    for r in rows:
        torch_speed = speeds.get((r["model"], r["batch"], r["dtype"], "torch"))
        ratio = (
            f"{speeds[r['model'], r['batch'], r['dtype'], 'jax'] / torch_speed:.2f}x"
            if (r["framework"] == "jax" and torch_speed)
            else ""
        )
        memory = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(
            f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['framework']} | {r['images_per_s']:,.0f} | "
            f"{r['step_ms']:.2f} | {r['spread_ms']:.2f} | {r['tflops']:.1f} | {100 * r['mfu']:.1f}% | {memory} | "
            f"{r['compile_s']:.1f} | {ratio} |"
        )


def grid() -> list[tuple[str, int, str]]:
    cells = []
    for model in _MODELS.value:
        batches = _CIFAR_BATCHES.value if model == "alexnet_cifar" and _CIFAR_BATCHES.value else _BATCHES.value
        cells += [(model, int(batch), dtype) for batch in batches for dtype in _DTYPES.value]
    return cells


def main(argv):
    del argv
    torch_bench = None
    if "torch" in _FRAMEWORKS.value:
        with contextlib.suppress(ImportError):
            from benchmarks import torch_alexnets as torch_bench
    on_gpu = jax.devices()[0].platform == "gpu"
    size = _MATMUL_SIZE.value or (8192 if on_gpu else 2048)
    peaks = {"jax": jax_matmul_tflops(size)}
    if torch_bench is not None:
        peaks["torch"] = torch_bench.matmul_tflops(size)
    peak = max(peaks.values()) * 1e12
    versions = f"jax {jax.__version__}" + (
        f", torch {torch_bench.version()}" if torch_bench else ", torch not installed"
    )
    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); {versions}")
    print(f"bf16 {size}^3 matmul peak (TFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
    flops = {model: count_flops(model, _WIDTH.value) for model in _MODELS.value}
    for model, layers in flops.items():
        per_layer = ", ".join(f"{name.split('/')[-1]} {f / 1e6:.0f}" for name, f in layers)
        print(f"{model}: forward MFLOP/image {per_layer}; train GFLOP/image {train_flops_per_image(layers) / 1e9:.3f}")
    rows = []
    for model, batch, dtype in grid():
        train_flops = train_flops_per_image(flops[model])
        for framework in _FRAMEWORKS.value:
            if framework == "torch" and torch_bench is None:
                continue
            try:
                if framework == "jax":
                    result = jax_row(model, batch, dtype, _WARMUP.value, _STEPS.value, _WIDTH.value)
                else:
                    images, labels = random_batch(model, batch)
                    result = torch_bench.time_row(
                        model,
                        images,
                        labels,
                        dtype,
                        _TORCH_COMPILE.value,
                        _WARMUP.value,
                        _STEPS.value,
                        (LEARNING_RATE, MOMENTUM, WEIGHT_DECAY),
                        _WIDTH.value,
                    )
            except Exception:  # one failing row must not cost the others
                print(f"{framework} {model} batch {batch} {dtype} failed:\n{traceback.format_exc()}", flush=True)
                continue
            row = summarise(framework, model, batch, dtype, result, train_flops, peak)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if f"{model}:{batch}:{dtype}" in _PROFILE.value:
                print_profile(
                    framework, (model, batch, dtype), result["step"], pathlib.Path(_PROFILE_DIR.value), torch_bench
                )
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(json.dumps({"peaks": peaks, "rows": rows}, indent=1))
    print_table(rows)


if __name__ == "__main__":
    app.run(main)

"""What input costs: the train step fed by each input path, on the same data, side by side.

  python benchmarks/end_to_end.py --config=configs/cifar10_cpu.py --config.dataset.data_dir=DATA_DIR

Rows, all with the same model, batch and augmentation:

* ``bare step``: the step on one batch already on the devices, again and again (no input at all);
* ``resident``: the whole split on the devices, each batch gathered there (the resident feed);
* ``streaming, N workers``: Grain reads, decodes and puts each batch on the devices ahead of the
  step (the streaming feed), with each number of worker processes.

Each row compiles first, runs ``--warmup`` steps, then times ``--steps`` steps, each synchronised:
images/s over the timed steps' wall time (waiting for input included), the median step, and the
rate as a fraction of the bare step's. Prints a Markdown table.
"""

import statistics
import sys
import time
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alexnet_jax import feeds, runtime  # noqa: E402
from alexnet_jax.experiment import create_state, load_split, step_constants  # noqa: E402
from alexnet_jax.parallel import DataParallel  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cifar10_cpu.py", "Config to run.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Grain worker processes for the streaming rows.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per row.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")


def run_steps(step_fn, fresh_state, inputs, rng, warmup: int, steps: int) -> dict:
    """Compiles, warms up, then times ``steps`` steps from ``fresh_state()`` (the step donates its
    state); ``inputs(step)`` gives the step's inputs."""
    state = fresh_state()
    compiled = step_fn.lower(state, *inputs(0), rng).compile()
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        state, metrics = compiled(state, *inputs(step), rng)
        jax.block_until_ready(metrics)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return {"total_s": sum(times), "median_ms": 1e3 * statistics.median(times)}


def measure_rows(config, parallel: DataParallel, warmup: int, steps: int, workers: list[int]) -> list[tuple]:
    """(label, timing) for the bare step, the resident feed and the streaming feed with each worker count."""
    total = warmup + steps
    stream_split = load_split(config, config.dataset.train_split, train=True)
    constants = step_constants(config, len(stream_split.class_names))
    steps_per_epoch = len(stream_split) // config.batch_size
    state, _ = create_state(config, constants.num_classes, stream_split.image_shape, steps_per_epoch)
    host_state = jax.device_get(state)  # host copies: each row's step donates (deletes) its device state
    fresh, rng = (lambda: parallel.replicate(host_state)), parallel.replicate(jax.random.key(0))
    rows = []
    for count in workers:
        config.input.workers = count
        feed = feeds.StreamingFeed(parallel, config, stream_split, total, 0, constants)
        rows.append((f"streaming, {count} workers", run_steps(feed.step_fn, fresh, feed.inputs, rng, warmup, steps)))
        if count == workers[0]:
            batch = feed.inputs(total - 1)
            timing = run_steps(feed.step_fn, fresh, lambda step, batch=batch: batch, rng, warmup, steps)
            rows.insert(0, ("bare step (one batch on the devices)", timing))
        feed.close()
    if config.input.random_resized_crop is None:  # the resident path holds images as stored
        config.input.pipeline = "resident"
        resident_split = load_split(config, config.dataset.train_split, train=True)
        feed = feeds.ResidentFeed(parallel, config, resident_split, steps_per_epoch, constants)
        rows.insert(1, ("resident", run_steps(feed.step_fn, fresh, feed.inputs, rng, warmup, steps)))
    return rows


def main(argv):
    del argv
    config = _CONFIG.value
    config.input.pipeline = "streaming"
    print(runtime.platform_line())
    print(
        f"config: model={config.model.name} width={config.model.get('width')} dtype={config.model.dtype} "
        f"batch={config.batch_size} dataset={config.dataset.name} crop={config.augment.crop_size} "
        f"host view={config.input.random_resized_crop}"
    )
    parallel = DataParallel(config.parallel)
    rows = measure_rows(config, parallel, _WARMUP.value, _STEPS.value, [int(w) for w in _WORKERS.value])
    bare = _STEPS.value * config.batch_size / rows[0][1]["total_s"]
    print("\n| input | images/s | step median (ms) | of the bare step |")
    print("|---|---:|---:|---:|")
    for label, timing in rows:
        images_per_s = _STEPS.value * config.batch_size / timing["total_s"]
        print(f"| {label} | {images_per_s:,.0f} | {timing['median_ms']:.1f} | {images_per_s / bare:.0%} |")


if __name__ == "__main__":
    app.run(main)

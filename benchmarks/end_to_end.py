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

import contextlib
import itertools
import statistics
import sys
import time
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alexnet_jax import feeds, runtime
from alexnet_jax.experiment import create_state, load_split
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import compose_train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cifar10_cpu.py", "Config to run.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Grain worker processes for the streaming rows.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per row.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")


def run_steps(step_fn, fresh_state, batches, rng, warmup: int, steps: int) -> dict:
    """Compiles, warms up, then times ``steps`` steps from ``fresh_state()`` (the step donates its
    state) on the batches the iterator ``batches`` gives."""
    state, batch = fresh_state(), next(batches)
    compiled = step_fn.lower(state, batch, rng).compile()
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        state, metrics = compiled(state, batch if step == 0 else next(batches), rng)
        jax.block_until_ready(metrics)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    batches.close()
    return {"total_s": sum(times), "median_ms": 1e3 * statistics.median(times)}


def measure_rows(config, parallel: DataParallel, warmup: int, steps: int, workers: list[int]) -> list[tuple]:
    """(label, timing) for the bare step, the resident feed and the streaming feed with each worker count."""
    total = warmup + steps
    stream_split = load_split(config, config.dataset.train_split, train=True)
    num_classes, steps_per_epoch = len(stream_split.class_names), len(stream_split) // config.batch_size
    state = create_state(config, num_classes, stream_split.image_shape, steps_per_epoch)
    host_state = jax.device_get(state)  # host copies: each row's step donates (deletes) its device state
    fresh, rng = (lambda: parallel.replicate(host_state)), parallel.replicate(jax.random.key(0))
    step_fn, seed, rows = compose_train_step(parallel, config, num_classes), config.seed, []
    for count in workers:
        feed = feeds.StreamingFeed(parallel, stream_split, config.batch_size, seed, total, count)
        rows.append((f"streaming, {count} workers", run_steps(step_fn, fresh, feed.batches(0), rng, warmup, steps)))
        if count == workers[0]:
            with contextlib.closing(feed.batches(total - 1)) as last:
                batch = next(last)
            timing = run_steps(step_fn, fresh, (batch for _ in itertools.count()), rng, warmup, steps)
            rows.insert(0, ("bare step (one batch on the devices)", timing))
    if config.input.random_resized_crop is None:  # the resident path holds images as stored
        config.input.pipeline = "resident"
        resident_split = load_split(config, config.dataset.train_split, train=True)
        feed = feeds.ResidentFeed(parallel, resident_split, config.batch_size, [seed])
        rows.insert(1, ("resident", run_steps(step_fn, fresh, feed.batches(0), rng, warmup, steps)))
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

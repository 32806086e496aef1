"""Images/s per model of an ensemble trained in one compiled step, for several ensemble sizes,
with the members vmap-ed and one after another (``ensemble.over_members``' ``vectorize``) side by side.

  python benchmarks/ensemble.py --config=configs/cifar10_cpu.py --sizes=1,2,4,8

Times the device-resident train step the loop runs (benchmarks/train_step.py's setup) with
``--config.ensemble_size`` = each size, all members sharing the data order, on the config's
devices: 3 warm-up steps, then the median of ``--steps`` synchronised steps. Per-model images/s is
batch / step time (each member trains on the whole batch); its ratio to N = 1 says what training
together gains (a device one small model leaves idle) or loses. Prints a Markdown table.
"""

import statistics
import sys
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import time_steps
from train_step import setup

from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import compose_train_step

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file("config", "configs/cifar10_cpu.py", "Config to benchmark.")
    flags.DEFINE_list("sizes", ["1", "2", "4", "8"], "Ensemble sizes.")
    flags.DEFINE_integer("steps", 10, "Timed steps per size.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    flags.DEFINE_list("ways", ["vmap", "unrolled"], "How the members share the step.")


def measure(config, members: int, way: str, steps: int, warmup: int) -> dict:
    config.ensemble_size = members
    parallel = DataParallel(config.parallel)
    _, (state, *inputs) = setup(config, parallel, steps + warmup)
    train_fn = compose_train_step(parallel, config, config.dataset.synthetic_classes, vectorize_members=way == "vmap")

    def step():
        nonlocal state
        state, metrics = train_fn(state, *inputs)
        jax.block_until_ready(metrics)

    median = statistics.median(time_steps(step, warmup, steps))
    return {"members": members, "way": way, "step_ms": 1e3 * median, "per_model": config.batch_size / median}


def main(argv):
    del argv
    config = FLAGS.config
    print(
        f"model={config.model.name} dtype={config.model.dtype} channels={tuple(config.model.channels)} "
        f"batch={config.batch_size} device={jax.devices()[0].device_kind} x{jax.device_count()} jax={jax.__version__}"
    )
    single = measure(config.copy_and_resolve_references(), 1, "single", FLAGS.steps, FLAGS.warmup)
    rows = [single] + [
        measure(config.copy_and_resolve_references(), int(n), way, FLAGS.steps, FLAGS.warmup)
        for n in FLAGS.sizes
        if int(n) > 1
        for way in FLAGS.ways
    ]
    print("\n| members | members share the step | step median (ms) | images/s per model | x one model |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        ratio = row["per_model"] / single["per_model"]
        print(f"| {row['members']} | {row['way']} | {row['step_ms']:.0f} | {row['per_model']:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)

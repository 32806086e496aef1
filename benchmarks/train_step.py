"""Train-step throughput of a config, pmap vs shard_map side by side, on synthetic device-resident data.

  python benchmarks/train_step.py --config=configs/cifar10_cpu.py
  python benchmarks/train_step.py --config=configs/cifar10.py --config.model.dtype=float32

Times the same compiled step the training loop runs (augment + forward + backward + update), on
a batch the resident feed gathered on the devices; warm-up steps first, then the median of
``--steps`` timed steps, each synchronised.
FLOPs per image come from XLA's cost analysis of the compiled step. Prints a Markdown table.
"""

import statistics
import sys
import time
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alexnet_jax import datasets, ensemble
from alexnet_jax.experiment import create_state
from alexnet_jax.feeds import ResidentFeed
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import compose_train_step
from benchmarks.timing import peak_bytes

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined when run as a script, so that tests can import this module)."""
    config_flags.DEFINE_config_file("config", "configs/cifar10_cpu.py", "Config to benchmark.")
    flags.DEFINE_list("modes", ["shard_map", "pmap"], "Parallel wrappers to compare.")
    flags.DEFINE_integer("steps", 20, "Timed steps per wrapper.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")


def synthetic_image_size(config) -> int:
    """The side of the synthetic images for ``config``: what its step is fed. The ImageNet configs
    crop 224 from stored 256x256 images (the paper's) or are fed 224x224 host views (torchvision's);
    the others take the config's ``synthetic_image_size`` (CIFAR's 32)."""
    crop = config.augment.crop_size
    if crop is None:
        return config.dataset.synthetic_image_size
    return config.input.get("random_resized_crop") or max(crop, round(crop * 8 / 7))


def setup(config, parallel: DataParallel, num_steps: int):
    """The step and its arguments on the devices (state, a batch, key), on synthetic data of the
    size the config is fed."""
    config.dataset.name = datasets.SYNTHETIC
    config.dataset.synthetic_image_size = synthetic_image_size(config)
    config.dataset.synthetic_examples = config.batch_size * (num_steps + 1)
    split = datasets.synthetic_split(config.dataset, "train")
    steps_per_epoch = len(split) // config.batch_size
    state = create_state(config, len(split.class_names), split.images.shape[1:], steps_per_epoch)
    train_fn = compose_train_step(parallel, config, len(split.class_names))
    batch = next(ResidentFeed(parallel, split, config.batch_size, ensemble.data_seeds(config)).batches(0))
    rng = parallel.replicate(ensemble.train_key(config))  # an ensemble's: one per member
    return train_fn, (parallel.place_model(state), batch, rng)


def flops_per_image(config) -> float:
    """XLA's FLOP count of the whole step on one device, per image."""
    train_fn, args = setup(config.copy_and_resolve_references(), DataParallel("shard_map", jax.devices()[:1]), 1)
    cost = train_fn.lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")) / config.batch_size


def measure(config, mode: str, steps: int, warmup: int, flops_per_img: float) -> dict:
    parallel = DataParallel(mode)
    train_fn, (device_state, batch, rng) = setup(config, parallel, steps + warmup)
    started = time.perf_counter()
    compiled = train_fn.lower(device_state, batch, rng).compile()
    compile_s = time.perf_counter() - started
    peak = peak_bytes(compiled)

    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        device_state, metrics = train_fn(device_state, batch, rng)
        jax.block_until_ready(metrics)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {
        "mode": mode,
        "devices": parallel.num_devices,
        "compile_s": compile_s,
        "step_ms": 1e3 * median,
        "spread_ms": 1e3 * (max(times) - min(times)),
        "images_per_s": config.batch_size / median,
        "gflop_per_image": flops_per_img / 1e9,
        "gflop_per_s": flops_per_img * config.batch_size / median / 1e9,
        "peak_gib": float("nan") if peak is None else peak / 2**30,
    }


def main(argv):
    del argv
    config = FLAGS.config
    print(
        f"model={config.model.name} dtype={config.model.dtype} channels={tuple(config.model.channels)} "
        f"width={config.model.width} batch={config.batch_size} image={synthetic_image_size(config)} "
        f"device={jax.devices()[0].device_kind} x{jax.device_count()} jax={jax.__version__}"
    )
    flops = flops_per_image(config)
    rows = [
        measure(config.copy_and_resolve_references(), mode, FLAGS.steps, FLAGS.warmup, flops) for mode in FLAGS.modes
    ]
    print(
        "\n| wrapper | devices | compile (s) | step median (ms) | spread (ms) | images/s | GFLOP/image | GFLOP/s "
        "| peak memory (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['devices']} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['spread_ms']:.1f} "
            f"| {r['images_per_s']:.0f} | {r['gflop_per_image']:.3f} | {r['gflop_per_s']:.0f} | {r['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)

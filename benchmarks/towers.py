"""The paper's model parallelism against data parallelism on two devices: the bytes each step moves
between the devices, read from the compiled programs, and the step time.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/towers.py --batch=32

Compiles the streaming path's train step (benchmarks/train_step.py's setup does the resident one)
of ``configs/imagenet2012_paper.py`` (alexnet2012, float32, 224x224 inputs) for ``towers`` (one
pair of devices: every layer split in two) and for ``shard_map`` (data parallel: the batch split in
two), lists every collective in the optimised HLO between two or more devices with its shape, and counts
the bytes a device receives: an all-gather of n parts, (n-1)/n of its result; a reduce-scatter,
(n-1)/n of its operand (each part goes to one device); an all-reduce, 2 (n-1)/n of its operand
(ring). Then times
``--steps`` steps of each after ``--warmup``, medians. Prints Markdown tables.
"""

import collections
import re
import statistics
import sys
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import time_steps

from alexnet_jax import ensemble
from alexnet_jax.experiment import create_state
from alexnet_jax.parallel import create
from alexnet_jax.train import compose_train_step
from configs import imagenet2012_paper

FLAGS = flags.FLAGS
BYTES = {"f32": 4, "f64": 8, "bf16": 2, "s32": 4, "u32": 4, "pred": 1, "u8": 1}
KINDS = ("all-gather", "reduce-scatter", "all-reduce", "collective-permute", "all-to-all")
INSTRUCTION = re.compile(r"=\s*(.*?)\s(" + "|".join(KINDS) + r")(?:-start)?\(")
ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")


def define_flags():
    flags.DEFINE_integer("batch", 32, "Global batch (the paper's: 128).")
    flags.DEFINE_integer("steps", 5, "Timed steps per program.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")


def group_size(line: str, devices: int) -> int:
    """How many devices a collective instruction's groups hold (``replica_groups={{0,1}}`` or ``[2,2]<=[4]``)."""
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if listed:
        return len(listed.group(1).split(","))
    iota = re.search(r"replica_groups=\[\d+,(\d+)\]", line)
    return int(iota.group(1)) if iota else devices


def collectives(hlo: str, devices: int = 2) -> list[tuple[str, int, int]]:
    """(kind, bytes of its result: all arrays of a tuple, devices in its groups) of every collective
    of an optimised HLO module."""
    found = []
    for line in hlo.splitlines():
        match = INSTRUCTION.search(line)
        if match is None:
            continue
        arrays = ARRAY.findall(match.group(1))
        size = sum(int(np.prod([int(d) for d in dims.split(",") if d])) * BYTES.get(t, 4) for t, dims in arrays)
        found.append((match.group(2), size, group_size(line, devices)))
    return found


def received(kind: str, size: int, parts: int) -> float:
    """Bytes one device receives for a collective over ``parts`` devices whose result is ``size``."""
    share = (parts - 1) / parts
    if kind == "reduce-scatter":
        return size * parts * share  # the result is one part of the operand
    return size * share * (2 if kind == "all-reduce" else 1)


def program(mode: str, batch: int):
    """The compiled train step of ``mode`` on two devices, its arguments, and its collectives."""
    config = imagenet2012_paper.get_config()
    config.parallel, config.batch_size = mode, batch
    parallel = create(mode, jax.devices()[:2])
    state = create_state(config, 1000, (256, 256, 3), steps_per_epoch=1)
    step = compose_train_step(parallel, config, 1000)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    data = parallel.shard({"image": images, "label": rng.integers(0, 1000, batch).astype(np.int32)})
    args = (parallel.place_model(state), data, parallel.replicate(ensemble.train_key(config)))
    compiled = step.lower(*args).compile()
    return compiled, args, collectives(compiled.as_text())


def measure(mode: str, batch: int, steps: int, warmup: int) -> tuple:
    """(mode, collectives by kind, bytes a device receives per step, median step seconds)."""
    compiled, (state, data, rng), found = program(mode, batch)

    def step():
        nonlocal state
        state, metrics = compiled(state, data, rng)
        jax.block_until_ready(metrics)

    median = statistics.median(time_steps(step, warmup, steps))
    counts = dict(collections.Counter(kind for kind, _, parts in found if parts > 1))
    return mode, counts, sum(received(kind, size, parts) for kind, size, parts in found), median


def main(argv):
    del argv
    print(f"device={jax.devices()[0].device_kind} x{jax.device_count()} jax={jax.__version__} batch={FLAGS.batch}")
    rows = [measure(mode, FLAGS.batch, FLAGS.steps, FLAGS.warmup) for mode in ("towers", "shard_map")]
    print("\n| parallel | collectives in the step | MB received per device per step | per image (KB) | step (s) |")
    print("|---|---|---:|---:|---:|")
    for mode, counts, moved, median in rows:
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        print(f"| {mode} | {listed} | {moved / 1e6:.1f} | {moved / FLAGS.batch / 1e3:.0f} | {median:.2f} |")


if __name__ == "__main__":
    define_flags()
    app.run(main)

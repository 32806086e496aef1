"""Start-up costs of a training command, each measured against its alternative in one run:

* reading a split into memory (the resident path's first read) in this process or in N Grain
  worker processes (median of ``--repeats``; every count must give the same array);
* importing the training modules in fresh processes, from this and other checkouts (``--import_roots``);
* a whole ``main.py`` command run twice with a fresh persistent compilation cache: the first run
  compiles and fills it, the second reads the compiled programs back.

  python benchmarks/startup.py --dataset=cifar10_png --data_dir=/tmp/tfds --split='train[:90%]' \\
      --workers=0,2 -- --config=configs/smoke.py

Everything after ``--`` is the command's flags (``--workdir`` and ``--compilation_cache`` are added).
Prints Markdown tables.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import ml_collections
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax import datasets

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", None, "TFDS dataset to read (e.g. cifar10_png, prepared with --mode=prepare).")
flags.DEFINE_string("data_dir", None, "Its TFDS data_dir.")
flags.DEFINE_string("split", "train", "The split to read.")
flags.DEFINE_list("workers", ["0", "2"], "Worker process counts to compare (0: this process).")
flags.DEFINE_integer("repeats", 3, "Reads per worker count, imports per checkout; the median is printed.")
flags.DEFINE_list(
    "import_roots",
    [],
    "Checkouts of this repository whose training modules' import time is compared (fresh processes).",
)


def time_reads(workers: list[int]) -> list[tuple[int, float, int]]:
    """(workers, median seconds, images) per worker count; the arrays must agree."""
    config = ml_collections.ConfigDict({"name": FLAGS.dataset, "data_dir": FLAGS.data_dir, "download": False})
    rows, reference = [], None
    for count in workers:
        seconds = []
        for _ in range(FLAGS.repeats):
            started = time.perf_counter()
            split = datasets.load_split(config, FLAGS.split, workers=count)
            seconds.append(time.perf_counter() - started)
        reference = split.images if reference is None else reference
        assert np.array_equal(split.images, reference), f"{count} workers read other images"
        rows.append((count, statistics.median(seconds), len(split)))
    return rows


def time_imports(roots: list[str]) -> list[tuple[str, float]]:
    """(checkout, median seconds) to import alexnet_jax.train and .evaluate in a fresh process."""
    rows = []
    for root in roots:
        seconds = []
        for _ in range(FLAGS.repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "from alexnet_jax import train, evaluate"], cwd=root, check=True)
            seconds.append(time.perf_counter() - started)
        rows.append((root, statistics.median(seconds)))
    return rows


def time_command_twice(command_flags: list[str]) -> list[tuple[str, float, float | None]]:
    """(run, wall seconds, the train step's compile seconds) for two runs sharing a fresh cache."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for run in ("first (compiles, fills the cache)", "second (reads the cache)"):
            workdir = os.path.join(scratch, f"run{len(rows)}")
            command = [sys.executable, "main.py", *command_flags, f"--workdir={workdir}"]
            command.append(f"--compilation_cache={scratch}/cache")
            env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - started
            compiled = re.search(r"compiled the train step in ([\d.]+) s", done.stdout + done.stderr)
            rows.append((run, wall, float(compiled.group(1)) if compiled else None))
    return rows


def main(argv):
    logging.set_verbosity(logging.WARNING)  # TFDS logs each dataset it opens
    print(f"CPU: {os.cpu_count()} cores; {' '.join(sys.argv[1:])}\n")
    if FLAGS.dataset:
        reads = time_reads([int(w) for w in FLAGS.workers])
        print(f"| reading {FLAGS.dataset} {FLAGS.split} | seconds (median of {FLAGS.repeats}) | images/s | vs 0 |")
        print("|---|---|---|---|")
        for count, seconds, images in reads:
            print(f"| {count} workers | {seconds:.2f} | {images / seconds:,.0f} | {reads[0][1] / seconds:.2f}x |")
        print()
    if FLAGS.import_roots:
        print("| importing alexnet_jax.train, .evaluate from | seconds (median, with Python's start) |")
        print("|---|---|")
        for root, seconds in time_imports(FLAGS.import_roots):
            print(f"| {root} | {seconds:.2f} |")
        print()
    if len(argv) > 1:
        print("| command run | wall-clock s | train step compile s |")
        print("|---|---|---|")
        for run, wall, compiled in time_command_twice(argv[1:]):
            print(f"| {run} | {wall:.1f} | {compiled if compiled is not None else 'n/a'} |")


if __name__ == "__main__":
    app.run(main)

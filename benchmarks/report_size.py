"""What an evaluation report costs as the classes grow: seconds, peak memory and file sizes of
``report.write_report`` (JSON report, confusion, per-class and prediction figures) at 10, 100 and
1,000 classes, each in a fresh process.

  python benchmarks/report_size.py --classes=10,100,1000 --per_class=50

Each class has ``--per_class`` validation examples (ImageNet: 50), predicted right 60% of the time
and otherwise as one of a few neighbouring classes, so that the confusion matrix has the block
structure of a real one; the prediction grid shows 256x256 images. Prints a Markdown table.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_list("classes", ["10", "100", "1000"], "Class counts to measure, each in a fresh process.")
flags.DEFINE_integer("per_class", 50, "Validation examples per class.")
flags.DEFINE_integer("image_size", 256, "Side of the images in the prediction grid.")
flags.DEFINE_integer("one", None, "Internal: measure this class count in this process and print JSON.")
flags.DEFINE_integer("rss_limit_mb", 0, "Internal: exit with code 3 once resident memory passes this (0: none).")


@dataclasses.dataclass(frozen=True)
class FakeSplit:
    """What write_report reads of a split: class names, length, and images by index."""

    class_names: tuple[str, ...]
    size: int
    image_size: int

    def __len__(self) -> int:
        return self.size

    def read(self, indices) -> dict:
        rng = np.random.default_rng(0)
        shape = (len(indices), self.image_size, self.image_size, 3)
        return {"image": rng.integers(0, 256, shape, dtype=np.uint8)}


def fake_results(num_classes: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions): right 60% of the time, else one of the next 3 classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    wrong = (labels + rng.integers(1, 4, len(labels))) % num_classes
    return labels, np.where(rng.random(len(labels)) < 0.6, labels, wrong)


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MB: VmRSS (resident now) or VmHWM (the peak of this
    program; unlike getrusage's maxrss, not inherited from the process that started it)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _watch_rss(limit_mb: float):
    """Ends this process (exit code 3) as soon as its resident memory passes ``limit_mb``."""
    while True:
        if _rss_mb() > limit_mb:
            print(json.dumps({"error": f"resident memory passed {limit_mb} MB"}), flush=True)
            os._exit(3)
        time.sleep(0.005)


def measure_here(num_classes: int, per_class: int, image_size: int, out_dir: pathlib.Path) -> dict:
    """Writes one report into ``out_dir``; returns seconds, the peak resident memory above the
    process's memory before writing, and the files' sizes."""
    from alexnet_jax.report import write_report
    from alexnet_jax.torchvision_weights import imagenet_classes

    wnids = [wnid for wnid, _ in imagenet_classes()]
    names = tuple(wnids[:num_classes]) if num_classes <= len(wnids) else tuple(f"c{i}" for i in range(num_classes))
    labels, predictions = fake_results(num_classes, per_class)
    split = FakeSplit(names, len(labels), image_size)
    before = _rss_mb()
    started = time.perf_counter()
    write_report(out_dir, "validation", split, predictions, labels, {"step": 1, "top1": 0.6})
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    sizes = {path.name: path.stat().st_size for path in sorted(out_dir.iterdir())}
    return {"classes": num_classes, "seconds": seconds, "peak_mb": peak, "growth_mb": peak - before, "sizes": sizes}


def measure_in_subprocess(num_classes: int, per_class: int, image_size: int, rss_limit_mb: int = 0) -> dict:
    """``measure_here`` in a fresh Python process (so that nothing earlier sets its peak memory)."""
    with tempfile.TemporaryDirectory() as out_dir:
        command = [sys.executable, __file__, f"--one={num_classes}", f"--per_class={per_class}"]
        command += [f"--image_size={image_size}", f"--rss_limit_mb={rss_limit_mb}", f"--out_dir={out_dir}"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"error": done.stderr[-2000:]}
    return {**result, "exit_code": done.returncode}


flags.DEFINE_string("out_dir", None, "Internal: where --one writes its report.")


def main(argv):
    del argv
    if FLAGS.one is not None:
        if FLAGS.rss_limit_mb:
            threading.Thread(target=_watch_rss, args=(FLAGS.rss_limit_mb,), daemon=True).start()
        import matplotlib.pyplot  # noqa: F401  (imported before the baseline: it is not the report's cost)

        print(json.dumps(measure_here(FLAGS.one, FLAGS.per_class, FLAGS.image_size, pathlib.Path(FLAGS.out_dir))))
        return
    print(
        "| classes | examples | seconds | peak RSS (MB) | growth while writing (MB) | report.json (KB) | "
        "confusion.png (KB) | per_class.png (KB) | predictions.png (KB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in map(int, FLAGS.classes):
        r = measure_in_subprocess(count, FLAGS.per_class, FLAGS.image_size)
        if r["exit_code"]:
            print(f"| {count} | failed: {r.get('error', '')[:200]} |")
            continue
        kb = {name.split("_", 1)[1]: size / 1024 for name, size in r["sizes"].items()}
        print(
            f"| {count:,} | {count * FLAGS.per_class:,} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
            f"{r['growth_mb']:.0f} | {kb['report.json']:.0f} | {kb['confusion.png']:.0f} | "
            f"{kb['per_class.png']:.0f} | {kb['predictions.png']:.0f} |"
        )


if __name__ == "__main__":
    app.run(main)

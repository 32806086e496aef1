"""ImageNet at its real shape, rehearsed on a CPU: 1,000 classes of full-size photos, every command a
user runs, and what each costs.

  python benchmarks/imagenet_rehearsal.py --photos=DIR_OF_JPEGS --root=/tmp/rehearsal

First it writes an ImageNet-shaped image folder under ``ROOT/images``: the 1,000 ILSVRC-2012
classes named by their WordNet ids, ``--train_per_class`` and ``--val_per_class`` JPEGs each
(default 2 and 1: 3,000 photos; all stages then take about 15 minutes on a 2-core CPU, most of
it the two ten-crop evaluations), made from the photos in ``--photos`` (e.g. the 500 ImageNet
sample photos) by random crops, scales, mirrors and colour changes, at ImageNet's spread of sizes
(mostly 500 px on the long side, some small, some over 2,000 px, a few tiny; see
``draw_size``), a few greyscale, a few CMYK, one PNG named .JPEG. Then it runs, each as its own
``main.py`` command (``--stages`` picks some):

  prepare_256, prepare_full      the paper's format (256x256 JPEG) and full size (torchvision's)
  paper_stopped, paper_resumed   configs/imagenet2012_paper.py, alexnet2012, ``--steps`` steps:
                                 SIGTERM after the first step, then run again to the end, whose
                                 evaluation scores the whole validation split on ten crops and
                                 writes the report
  paper_evaluate                 --mode=evaluate of that run
  torchvision                    configs/imagenet_torchvision.py, alexnet_owt, ``--steps`` steps,
                                 centre-crop evaluation of the whole validation split, report
  predict                        --mode=predict of the torchvision run on the validation folder
  convert, finetune              synthetic weights in torchvision's layout -> --mode=convert ->
                                 configs/finetune_folder.py from them on the 1,000 classes
  features, neighbours           fc7 of the training split from the paper run (--mode=features),
                                 and the paper's Figure 4 (--mode=neighbours)
  towers                         the paper config split over 2 host devices (--config.parallel=towers)
  ensemble                       configs/imagenet2012_paper_5cnn.py, five alexnet2012 in one step
                                 (both evaluated on the centre crop)

For each: wall-clock seconds, the peak resident memory of the process tree (the sum over the
command and its worker processes, sampled every 0.2 s; shared pages count once per process), the
disk it added to the folders it writes (the data directory; the workdir) at its peak (sampled as
often) and at its end, and the files it left. Prints a Markdown table
and writes it, with the per-image costs, to ``ROOT/rehearsal.json``.
"""

import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
from absl import app, flags
from PIL import Image, ImageEnhance

ROOT_DIR = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

from alexnet_jax.torchvision_weights import MODULES, imagenet_classes  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("photos", None, "Folder of JPEG photos the synthetic ImageNet is made from.")
flags.DEFINE_string("root", "/tmp/imagenet_rehearsal", "Where the folder, datasets and runs are written.")
flags.DEFINE_integer("train_per_class", 2, "Training images per class (1,000 classes).")
flags.DEFINE_integer("val_per_class", 1, "Validation images per class.")
flags.DEFINE_integer("steps", 4, "Training steps of each run (--config.max_steps; the stopped run stops at 2 or 3).")
flags.DEFINE_integer("workers", None, "Processes for writing the folder and preparing (default: all cores).")
flags.DEFINE_list("stages", [], "Stages to run (default: all, in order).")
flags.DEFINE_list("train_flags", [], "Extra flags for every training command (e.g. --config.batch_size=64).")
flags.DEFINE_string("checkout", str(ROOT_DIR), "The checkout whose main.py runs (to compare two versions).")
flags.DEFINE_integer(
    "tfds_buffer_mb",
    None,
    "Prepare with TFDS's in-memory shuffle buffer at this size instead of its 1,000 MB, so that a small "
    "folder takes the path ImageNet takes: records spilled to temporary bucket files, then written out.",
)

STAGES = (
    "prepare_256",
    "prepare_full",
    "paper_stopped",
    "paper_resumed",
    "paper_evaluate",
    "torchvision",
    "predict",
    "convert",
    "finetune",
    "features",
    "neighbours",
    "towers",
    "ensemble",
)


# --------------------------------------------------------------------------- the image folder


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) with ImageNet's spread: three quarters 500 px on the long side (4:3, 3:2,
    1:1), a fifth between 150 and 900 px, 1.5% 1,600-3,000 px, 2% under 120 px; a quarter portrait."""
    kind = rng.random()
    if kind < 0.765:
        long_side, aspect = 500, rng.choice([4 / 3, 4 / 3, 4 / 3, 3 / 2, 1.0])
    elif kind < 0.965:
        long_side, aspect = int(rng.integers(150, 901)), float(np.exp(rng.uniform(0, np.log(1.8))))
    elif kind < 0.98:
        long_side, aspect = int(rng.integers(1600, 3001)), rng.choice([4 / 3, 3 / 2])
    else:
        long_side, aspect = int(rng.integers(40, 121)), float(np.exp(rng.uniform(0, np.log(1.5))))
    short_side = max(1, round(long_side / aspect))
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


@dataclasses.dataclass(frozen=True)
class PhotoJob:
    """One photo of the synthetic folder: where it goes and the seed of everything drawn for it."""

    path: pathlib.Path
    seed: tuple[int, ...]
    mode: str  # RGB | L (greyscale) | CMYK | PNG (a PNG named .JPEG)


_SOURCES: list = []


def _load_sources(photos: list[pathlib.Path]):
    global _SOURCES
    _SOURCES = [Image.open(path).convert("RGB") for path in photos]


def write_photo(job: PhotoJob) -> int:
    """A random crop of a source photo, scaled to a drawn size, maybe mirrored, with other
    brightness, contrast and colour; saved as a JPEG (quality 80-95). Returns its bytes."""
    rng = np.random.default_rng(job.seed)
    source = _SOURCES[rng.integers(len(_SOURCES))]
    area, aspect = rng.uniform(0.3, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    width = min(source.width, max(8, round(np.sqrt(area * source.width * source.height * aspect))))
    height = min(source.height, max(8, round(np.sqrt(area * source.width * source.height / aspect))))
    left, top = rng.integers(0, source.width - width + 1), rng.integers(0, source.height - height + 1)
    image = source.crop((left, top, left + width, top + height)).resize(draw_size(rng), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    buffer = io.BytesIO()
    if job.mode == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.convert(job.mode).save(buffer, format="JPEG", quality=int(rng.integers(80, 96)))
    job.path.parent.mkdir(parents=True, exist_ok=True)
    job.path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def photo_jobs(folder: pathlib.Path, train_per_class: int, val_per_class: int) -> list[PhotoJob]:
    """Every photo of the folder: ``train/<wnid>/<wnid>_<i>.JPEG`` and ImageNet's validation names,
    1.5% greyscale, 0.25% CMYK (ImageNet has both), the 14th training photo a PNG."""
    jobs, number = [], 0
    for split, per_class in (("train", train_per_class), ("validation", val_per_class)):
        for label, (wnid, _) in enumerate(imagenet_classes()):
            for i in range(per_class):
                number += 1
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"
                mode = "L" if number % 67 == 0 else "CMYK" if number % 401 == 7 else "RGB"
                mode = "PNG" if (split, number) == ("train", 14) else mode
                jobs.append(PhotoJob(folder / split / wnid / name, (label, i, split == "train"), mode))
    return jobs


def write_folder(folder: pathlib.Path, photos: pathlib.Path, workers: int) -> dict:
    """Writes the synthetic ImageNet folder (unless written already); returns its shape."""
    jobs = photo_jobs(folder, FLAGS.train_per_class, FLAGS.val_per_class)
    done = folder / ".written"
    if not done.exists():
        sources = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        with multiprocessing.get_context("fork").Pool(workers, _load_sources, (sources,)) as pool:
            list(pool.imap_unordered(write_photo, jobs, chunksize=16))
        done.touch()
    sizes = [Image.open(job.path).size for job in jobs[:: max(1, len(jobs) // 1000)]]
    return {
        "images": len(jobs),
        "bytes": sum(job.path.stat().st_size for job in jobs),
        "mean_size": np.mean(sizes, 0).round().tolist(),
        "over_2000_px": float(np.mean([max(s) > 2000 for s in sizes])),
    }


# --------------------------------------------------------------------------- measuring a command


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its descendants."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def disk_use(folders) -> tuple[int, int]:
    """(bytes, files) under ``folders``."""
    size = count = 0
    for folder in folders:
        for directory, _, names in os.walk(folder):
            for name in names:
                try:
                    size += os.lstat(os.path.join(directory, name)).st_size
                    count += 1
                except FileNotFoundError:
                    pass
    return size, count


@dataclasses.dataclass
class Measured:
    stage: str
    command: list
    seconds: float = 0.0
    exit_code: int | None = None
    peak_rss: int = 0
    peak_processes: int = 0  # the process and its descendants (input workers, encoders), at most at once
    peak_child_rss: int = 0  # the most resident bytes of any one child process (with its own children)
    start_disk: int = 0
    peak_disk: int = 0
    final_disk: int = 0
    files_created: int = 0
    tail: str = ""


def measure(stage: str, command: list[str], folders, stop_when=None) -> Measured:
    """Runs ``command`` (from the repository root), sampling its process tree's memory and the disk
    use of ``folders`` until it ends; sends it SIGTERM once ``stop_when()`` is true."""
    result = Measured(stage, command)
    result.start_disk, files_before = disk_use(folders)
    started = time.perf_counter()
    log = open(pathlib.Path(FLAGS.root) / f"{stage}.log", "w")
    child = subprocess.Popen(command, cwd=FLAGS.checkout, stdout=log, stderr=subprocess.STDOUT)
    process, stopped = psutil.Process(child.pid), False
    while child.poll() is None:
        result.peak_rss = max(result.peak_rss, tree_rss(process))
        with contextlib.suppress(psutil.Error):
            children = process.children(recursive=True)
            result.peak_processes = max(result.peak_processes, 1 + len(children))
            result.peak_child_rss = max([result.peak_child_rss, *(tree_rss(child) for child in children)])
        result.peak_disk = max(result.peak_disk, disk_use(folders)[0])
        if stop_when is not None and not stopped and stop_when():
            child.send_signal(signal.SIGTERM)
            stopped = True
        time.sleep(0.2)
    result.seconds, result.exit_code = time.perf_counter() - started, child.returncode
    log.close()
    result.final_disk, files_after = disk_use(folders)
    result.peak_disk = max(result.peak_disk, result.final_disk)
    result.files_created = files_after - files_before
    result.tail = (pathlib.Path(FLAGS.root) / f"{stage}.log").read_text()[-1500:]
    return result


# --------------------------------------------------------------------------- the stages


def synthetic_torchvision_weights(path: pathlib.Path):
    """A .safetensors file with torchvision's AlexNet tensor names and shapes, drawn at random."""
    from safetensors.numpy import save_file

    shapes = {
        "features.0": (64, 3, 11, 11),
        "features.3": (192, 64, 5, 5),
        "features.6": (384, 192, 3, 3),
        "features.8": (256, 384, 3, 3),
        "features.10": (256, 256, 3, 3),
        "classifier.1": (4096, 9216),
        "classifier.4": (4096, 4096),
        "classifier.6": (1000, 4096),
    }
    assert shapes.keys() == MODULES.keys()
    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in shapes.items():
        tensors[f"{name}.weight"] = (rng.standard_normal(shape, np.float32) * 0.01).astype(np.float32)
        tensors[f"{name}.bias"] = np.zeros(shape[0], np.float32)
    save_file(tensors, str(path))


def logged_a_step(workdir: pathlib.Path):
    """True once the run in ``workdir`` has logged a training step."""
    metrics = workdir / "metrics.jsonl"
    return lambda: metrics.exists() and '"kind": "train"' in metrics.read_text()


def prepare_command(root: pathlib.Path) -> list[str]:
    """``--mode=prepare`` of the folder into ``ROOT/tfds`` (dataset flags to add)."""
    command = [sys.executable, "main.py", "--mode=prepare", f"--image_folder={root / 'images'}"]
    command += [f"--data_dir={root / 'tfds'}"] + ([f"--workers={FLAGS.workers}"] if FLAGS.workers else [])
    if FLAGS.tfds_buffer_mb:  # main.py run with TFDS's module constant changed first
        patch = f"import tensorflow_datasets.core.shuffle as s; s.MAX_MEM_BUFFER_SIZE = {FLAGS.tfds_buffer_mb} << 20"
        run = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path('main.py', run_name='__main__')"
        command[1:2] = ["-c", f"{patch}; {run}", "main.py"]
    return command


def stage_commands(root: pathlib.Path) -> dict:
    """Stage -> (command, folders it writes, stop condition)."""
    tfds, runs = root / "tfds", root / "runs"
    cache = f"--compilation_cache={root / 'xla_cache'}"
    main = [sys.executable, "main.py", cache]

    def train(config: str, workdir: str, dataset: str, *more) -> list[str]:
        steps = [f"--config.max_steps={FLAGS.steps}", "--config.log_every_steps=1", *FLAGS.train_flags]
        where = [f"--workdir={runs / workdir}", f"--config.dataset.name={dataset}", f"--config.dataset.data_dir={tfds}"]
        return [*main, f"--config=configs/{config}.py", *where, *steps, *more]

    paper = train("imagenet2012_paper", "paper", "rehearsal_256")
    splits = ["--config.dataset.train_split=train", "--config.dataset.eval_split=validation"]
    finetune = train(
        "finetune_folder", "finetune", "rehearsal_full", f"--config.init_from={runs / 'converted'}", *splits
    )
    predict = [*main, "--mode=predict", f"--workdir={runs / 'torchvision'}", f"--output={root / 'predictions.csv'}"]
    weights = root / "synthetic_alexnet_owt.safetensors"
    return {
        "prepare_256": ([*prepare_command(root), "--dataset_name=rehearsal_256", "--image_size=256"], [tfds], None),
        "prepare_full": (
            [*prepare_command(root), "--dataset_name=rehearsal_full", "--image_format=jpeg"],
            [tfds],
            None,
        ),
        "paper_stopped": (paper, [runs / "paper"], logged_a_step(runs / "paper")),
        "paper_resumed": (paper, [runs / "paper"], None),
        "paper_evaluate": ([*paper, "--mode=evaluate", "--checkpoint=latest"], [runs / "paper"], None),
        "torchvision": (train("imagenet_torchvision", "torchvision", "rehearsal_full"), [runs / "torchvision"], None),
        "predict": ([*predict, f"--images={root / 'images' / 'validation'}"], [runs / "torchvision"], None),
        "convert": (
            [*main, "--mode=convert", f"--weights={weights}", f"--workdir={runs / 'converted'}"],
            [runs / "converted"],
            None,
        ),
        "finetune": (finetune, [runs / "finetune"], None),
        **research_stages(root, main, train),
    }


def research_stages(root: pathlib.Path, main: list[str], train) -> dict:
    """The research commands at this shape: fc7 of the training split and Figure 4 from the paper
    run; the paper's towers on 2 host devices; the 5-CNN ensemble (both evaluated on centre crops)."""
    runs, output = root / "runs", root / "features"
    output.mkdir(parents=True, exist_ok=True)
    paper = [f"--workdir={runs / 'paper'}", "--layer=fc7"]
    towers = train("imagenet2012_paper", "towers", "rehearsal_256", "--config.parallel=towers", "--config.eval_crops=1")
    return {
        "features": (
            [*main, "--mode=features", *paper, "--split=train", f"--output={output / 'fc7.npy'}"],
            [output],
            None,
        ),
        "neighbours": (
            [*main, "--mode=neighbours", *paper, "--queries=4", f"--output={output / 'neighbours.png'}"],
            [output],
            None,
        ),
        "towers": (["env", "XLA_FLAGS=--xla_force_host_platform_device_count=2", *towers], [runs / "towers"], None),
        "ensemble": (
            train("imagenet2012_paper_5cnn", "ensemble", "rehearsal_256", "--config.eval_crops=1"),
            [runs / "ensemble"],
            None,
        ),
    }


def row(m: Measured) -> str:
    mb = lambda n: f"{n / 2**20:,.0f}"
    return (
        f"| {m.stage} | {m.exit_code} | {m.seconds:,.1f} | {mb(m.peak_rss)} | {mb(m.peak_disk - m.start_disk)}, "
        f"{mb(m.final_disk - m.start_disk)} | {m.files_created:,} |"
    )


def main(argv):
    del argv
    root = pathlib.Path(FLAGS.root)
    root.mkdir(parents=True, exist_ok=True)
    workers = FLAGS.workers or os.cpu_count()
    started = time.perf_counter()
    shape = write_folder(root / "images", pathlib.Path(FLAGS.photos), workers)
    shape["seconds"] = time.perf_counter() - started
    print(f"folder: {json.dumps(shape)}", flush=True)
    weights = root / "synthetic_alexnet_owt.safetensors"
    if not weights.exists():
        synthetic_torchvision_weights(weights)
    commands, results = stage_commands(root), []
    print("| stage | exit code | seconds | peak RSS, process tree (MiB) | disk added: peak, end (MiB) | files |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    for stage in FLAGS.stages or STAGES:
        command, folders, stop_when = commands[stage]
        results.append(measure(stage, command, folders, stop_when))
        print(row(results[-1]), flush=True)
        if results[-1].exit_code not in (0, 130):
            print(f"\n{stage} failed:\n{results[-1].tail}", flush=True)
    record = {"folder": shape, "flags": sys.argv[1:], "stages": [dataclasses.asdict(r) for r in results]}
    (root / "rehearsal.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    flags.mark_flag_as_required("photos")
    app.run(main)

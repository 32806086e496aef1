"""Host input throughput for both ImageNet paths: prepare rate, JPEG decoding, and the Grain pipeline.

  python benchmarks/input_pipeline.py --folder=/tmp/imagenet-sample --workers=0,1,2

``--folder`` holds JPEG photos (any layout, e.g. the 500 ImageNet sample photos unpacked); without
it the script writes stand-ins (smooth random images of ImageNet's typical 500x375 size, which
decode at another speed than photos). For each of ``--paths`` it prepares them into a temporary TFDS
dataset: ``paper``, 256x256 JPEG; ``torchvision``, full size (RGB JPEGs kept as they are). Then it
prints a Markdown table of images/s: preparing (one process), decoding or making the host's view
alone (one core), and the whole streaming pipeline (read from ArrayRecord, decode, view, batch)
with each number of worker processes, per core used.
"""

import io
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from alexnet_jax import datasets, input_pipeline
from alexnet_jax.images import CentreSquare, Encoding, RandomResizedCrop, example_rng
from alexnet_jax.prepare import prepare_image_folder

_FOLDER = flags.DEFINE_string("folder", None, "Folder of JPEG photos; unset: generated stand-ins.")
_COUNT = flags.DEFINE_integer("count", 500, "Photos to use (stand-ins to generate).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker processes to measure (0: in-process).")
_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_BATCHES = flags.DEFINE_integer("batches", 24, "Timed batches per pipeline (after 4 untimed).")
_PATHS = flags.DEFINE_list("paths", ["paper", "torchvision"], "Which ImageNet paths to measure.")


def stand_ins(root: pathlib.Path, count: int) -> list[pathlib.Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)
        path = root / f"standin_{i}.JPEG"
        Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def image_folder(photos: list[pathlib.Path], root: pathlib.Path) -> pathlib.Path:
    """train/<class>/ links to the photos, ten classes, for prepare."""
    for i, photo in enumerate(photos):
        folder = root / "train" / f"class_{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / photo.name).symlink_to(photo.resolve())
    return root


def rate(fn, items) -> float:
    """Items per second of ``fn`` over ``items`` (after one untimed pass over the first tenth)."""
    for item in items[: max(1, len(items) // 10)]:
        fn(item)
    started = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - started)


def decoders() -> dict:
    import simplejpeg

    found = {
        "simplejpeg (libjpeg-turbo)": lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB"),
        "PIL": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
    }
    try:
        import cv2

        cv2.setNumThreads(1)
        found["OpenCV"] = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB)
    except ImportError:
        pass
    return found


def pipeline_rate(split, workers: int, batch: int, batches: int) -> float:
    fn = input_pipeline.TrainBatch(split.read, len(split), batch, seed=0, share=input_pipeline.ProcessShare())
    total = batches + 4
    iterator = iter(input_pipeline.pipeline(fn, 0, total, workers))
    for _ in range(4):  # workers start, buffers fill
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - started
    iterator.close()
    return batches * batch / elapsed


def pipeline_rows(photos, work: pathlib.Path, name: str, encoding: Encoding, view=None) -> list[tuple]:
    """Prepares the photos with ``encoding``, then times the pipeline with each number of workers."""
    import ml_collections

    folder = work / f"folder_{name}"
    prepare_image_folder(
        str(image_folder(photos, folder)), name, str(work / "tfds"), image_size=encoding.size, image_format="jpeg"
    )
    config = ml_collections.ConfigDict({"name": name, "data_dir": str(work / "tfds"), "download": False})
    split = datasets.load_split(config, "train", stream=True, view=view)
    rows = []
    for workers in map(int, _WORKERS.value):
        processes = "worker process" if workers == 1 else "worker processes"
        label = f"{name} pipeline: read + decode + batch {_BATCH.value}, {workers or 'no'} {processes}"
        rows.append((label, pipeline_rate(split, workers, _BATCH.value, _BATCHES.value), max(workers, 1)))
    return rows


def paper_rows(photos, work: pathlib.Path) -> list[tuple]:
    encoding = Encoding(256, "jpeg")
    rows = [("prepare: decode, scale, centre-crop, encode 256x256 q90 (1 process)", rate(encoding.encode, photos), 1)]
    prepared = [encoding.encode(p) for p in photos]
    for name, decode in decoders().items():
        rows.append((f"decode 256x256 q90, {name}", rate(decode, prepared), 1))
    return rows + pipeline_rows(photos, work, "paper_256", encoding)


def torchvision_rows(photos, work: pathlib.Path) -> list[tuple]:
    encoding = Encoding(None, "jpeg")
    rows = [("prepare full size: check, keep RGB JPEGs, convert others (1 process)", rate(encoding.encode, photos), 1)]
    originals = [encoding.encode(p) for p in photos]
    rows.append(("decode full size, simplejpeg", rate(decoders()["simplejpeg (libjpeg-turbo)"], originals), 1))
    crop, centre = RandomResizedCrop(224), CentreSquare(256)
    keyed = [(image, example_rng(0, 0, i)) for i, image in enumerate(originals)]
    rows.append(("random resized crop 224 from full size (train view)", rate(lambda k: crop(*k), keyed), 1))
    rows.append(("centre square 256 from full size (evaluation view)", rate(centre, originals), 1))
    return rows + pipeline_rows(photos, work, "full_size", encoding, view=crop)


def main(argv):
    del argv
    work = pathlib.Path(tempfile.mkdtemp(prefix="input_bench_"))
    if _FOLDER.value:
        photos = sorted(p for p in pathlib.Path(_FOLDER.value).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
        photos, source = photos[: _COUNT.value], f"{_FOLDER.value} ({min(len(photos), _COUNT.value)} photos)"
    else:
        (work / "standins").mkdir()
        photos, source = stand_ins(work / "standins", _COUNT.value), f"{_COUNT.value} generated 500x375 stand-ins"
    rows = []
    if "paper" in _PATHS.value:
        rows += paper_rows(photos, work)
    if "torchvision" in _PATHS.value:
        rows += torchvision_rows(photos, work)
    print(f"\nsource: {source}; mean file size {np.mean([p.stat().st_size for p in photos]) / 1e3:.1f} KB\n")
    print("| what | images/s | processes | images/s per process |")
    print("|---|---:|---:|---:|")
    for label, value, processes in rows:
        print(f"| {label} | {value:,.0f} | {processes} | {value / processes:,.0f} |")


if __name__ == "__main__":
    app.run(main)

"""How far a reduced-scale JPEG decode moves the paper's stored images, and what it saves.

  python benchmarks/prepare_fidelity.py --folder=DIR_OF_JPEGS --size=256

For each photo, the paper's stored image (shorter side scaled to ``--size``, bicubic, antialiased;
the centre square) made three ways before JPEG encoding:

* ``full``: decoded at full size (the reference: the paper's definition applied to the photo);
* ``draft 1x``: PIL's ``draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale while the result
  stays at least ``size`` on each side;
* ``draft 2x``: the same, but the result stays at least twice ``size``.

Over the photos each draft decodes smaller (the others it leaves alone), prints the PSNR against
``full`` (median, and the worst photo) and the time to decode and scale per photo both ways
(median of ``--passes`` passes, one core); and, for scale, the PSNR that JPEG encoding at quality
90 costs the reference itself over all photos.
"""

import io
import os
import pathlib
import statistics
import sys
import time

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax.images import centre_square

FLAGS = flags.FLAGS
flags.DEFINE_string("folder", None, "Folder of JPEG photos.")
flags.DEFINE_integer("size", 256, "The stored images' side.")
flags.DEFINE_integer("passes", 3, "Timed passes over all photos; the median is printed.")


def stored(data: bytes, size: int, draft_factor: int | None) -> np.ndarray:
    """The stored image, decoded at full size (None) or with ``draft`` to ``draft_factor`` x ``size``."""
    with Image.open(io.BytesIO(data)) as image:
        if draft_factor:
            image.draft("RGB", (draft_factor * size, draft_factor * size))
        return np.asarray(centre_square(image.convert("RGB"), size))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def jpeg_round_trip(pixels: np.ndarray, quality: int = 90) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def decoded_size(data: bytes, size: int, draft_factor: int) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (draft_factor * size, draft_factor * size))
        return image.size


def timed(photos: dict, size: int, factor) -> tuple[float, dict]:
    """(median seconds of ``FLAGS.passes`` passes over ``photos``, the stored images)."""
    seconds = []
    for _ in range(FLAGS.passes):
        started = time.perf_counter()
        made = {name: stored(data, size, factor) for name, data in photos.items()}
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), made


def main(argv):
    del argv
    paths = sorted(p for p in pathlib.Path(FLAGS.folder).iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    photos = {p.name: p.read_bytes() for p in paths}
    size = FLAGS.size
    print(f"{len(photos)} photos, stored at {size}x{size}; each row over the photos its draft decodes smaller\n")
    print(
        "| decoding | photos decoded smaller | PSNR vs full, median (dB) | worst (photo, size) | "
        "ms per photo, full | ms per photo, this way | speed-up |"
    )
    print("|---|---:|---:|---|---:|---:|---:|")
    for way, factor in {"draft 1x": 1, "draft 2x": 2}.items():
        smaller = {n: d for n, d in photos.items() if decoded_size(d, size, factor) != Image.open(io.BytesIO(d)).size}
        full_seconds, reference = timed(smaller, size, None)
        seconds, made = timed(smaller, size, factor)
        scores = {name: psnr(made[name], reference[name]) for name in smaller}
        worst = min(scores, key=scores.get)
        count = len(smaller)
        print(
            f"| {way} | {count} | {np.median(list(scores.values())):.1f} | {scores[worst]:.1f} ({worst}, "
            f"{Image.open(io.BytesIO(photos[worst])).size}) | {1000 * full_seconds / count:.2f} | "
            f"{1000 * seconds / count:.2f} | {full_seconds / seconds:.2f}x |"
        )
    reference = {name: stored(data, size, None) for name, data in photos.items()}
    quality = [psnr(jpeg_round_trip(reference[name]), reference[name]) for name in photos]
    print(
        f"\nJPEG q90 of the full decode's stored images, all photos: median {np.median(quality):.1f} dB, "
        f"worst {min(quality):.1f} dB"
    )


if __name__ == "__main__":
    flags.mark_flag_as_required("folder")
    app.run(main)

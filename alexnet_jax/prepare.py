"""Turns an image folder ``<root>/<split>/<class>/<image>`` into a TFDS dataset on disk.

Three formats:

* as they are, lossless (``image_size`` None, format ``png``; for CIFAR-sized data): RGB PNG;
* the paper's (``image_size`` 256, for ImageNet): shorter side scaled to 256 (bicubic, antialiased),
  the central 256x256 kept, stored as JPEG at ``JPEG_QUALITY``. Training takes random 224 crops of
  these, as Krizhevsky et al. (2012) did, so the host only has to decode a 256x256 JPEG per image;
* full size (``image_size`` None, format ``jpeg``; torchvision's recipe, whose random resized crops
  need the whole photo): RGB JPEGs kept byte for byte, anything else (greyscale, CMYK, PNG)
  converted to RGB and stored as JPEG at ``JPEG_QUALITY``.

Images are encoded in parallel over all cores (PIL opens any format by content: greyscale, CMYK,
a PNG named .JPEG) into a cache beside the dataset, one file per image written atomically, so a
killed prepare continues where it stopped when run again. Then TFDS's ad-hoc builder writes
ArrayRecord files with ``image``, ``label`` (class names kept) and ``file_name`` (the path under
the split). The result is read like any TFDS dataset:
``tfds.data_source(name, data_dir=..., split='train[:90%]')``. TFDS shuffles examples by a hash of
their file path when writing, so slices such as ``train[90%:]`` are a fixed pseudo-random subset
rather than the last classes in folder order.
"""

import dataclasses
import functools
import io
import logging
import multiprocessing
import os
import pathlib
import shutil

import tensorflow_datasets as tfds
import tqdm
from PIL import Image

from alexnet_jax.datasets import DatasetError, is_catalog_name
from alexnet_jax.images import centre_square

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def scan_image_folder(root: pathlib.Path) -> tuple[dict[str, list[tuple[pathlib.Path, str]]], list[str]]:
    """Lists ``(path, class name)`` per split, and the sorted class names over all splits."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist; expected <split>/<class>/<image> inside it")
    splits = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        splits[split_dir.name] = [
            (path, class_dir.name)
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir())
            for path in sorted(class_dir.iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        raise DatasetError(
            f"no images under {root}; expected <split>/<class>/<image> with {'/'.join(IMAGE_SUFFIXES)} files"
        )
    classes = {split: {label for _, label in files} for split, files in splits.items()}
    class_names = sorted(set().union(*classes.values()))
    for split, present in classes.items():
        missing = sorted(set(class_names) - present)
        if missing:
            raise DatasetError(
                f"{root / split} has no images of class(es) {missing} that other splits have; "
                "give every split the same class folders, each with images"
            )
    return splits, class_names


# JPEG quality of the paper format: see README "ImageNet" for the sizes and decoding rates measured.
JPEG_QUALITY = 90


FORMATS = ("png", "jpeg")


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How images are stored: scaled and centre-cropped to ``size`` (JPEG), or at their size as
    ``format`` (PNG: lossless; JPEG: RGB JPEGs as they are)."""

    size: int | None = None
    format: str = "png"
    quality: int = JPEG_QUALITY

    def __post_init__(self):
        if self.size:
            object.__setattr__(self, "format", "jpeg")

    @property
    def suffix(self) -> str:
        return ".jpg" if self.format == "jpeg" else ".png"

    @property
    def cache_name(self) -> str:
        return f"{self.size or 'original'}-{self.format}-q{self.quality}"

    def encode(self, path: pathlib.Path) -> bytes:
        with Image.open(path) as image:
            if self.size:
                image.draft("RGB", (self.size, self.size))  # JPEG: decode big photos at a reduced scale
            image.load()  # a broken file fails here, whatever the format
            if self.format == "jpeg" and not self.size and image.format == "JPEG" and image.mode == "RGB":
                return path.read_bytes()
            image = image.convert("RGB")
        buffer = io.BytesIO()
        if self.size:
            image = centre_square(image, self.size)
        image.save(buffer, format=self.format.upper(), **({"quality": self.quality} if self.format == "jpeg" else {}))
        return buffer.getvalue()


def _encode_into_cache(job: tuple[Encoding, pathlib.Path, pathlib.Path]) -> str | None:
    """Encodes one image into the cache unless it is there; returns an error message or None."""
    encoding, path, cached = job
    if cached.exists():
        return None
    try:
        encoded = encoding.encode(path)
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(cached.name + ".partial")
    partial.write_bytes(encoded)
    partial.replace(cached)  # atomic: a kill leaves no half-written image
    return None


def encode_all(jobs: list, workers: int, chunk: int = 64) -> list[tuple[pathlib.Path, str]]:
    """Encodes every (encoding, path, cache path) job on up to ``workers`` processes (one for a
    single chunk: this one), with a progress bar; returns the (path, error) of undecodable images."""
    workers = min(workers, -(-len(jobs) // chunk))
    bar = functools.partial(tqdm.tqdm, total=len(jobs), desc="encoding", unit="img", disable=None)
    if workers <= 1:
        errors = list(bar(map(_encode_into_cache, jobs)))
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: no fork of JAX's threads
            errors = list(bar(pool.imap(_encode_into_cache, jobs, chunksize=chunk)))
    return [(path, error) for (_, path, _), error in zip(jobs, errors, strict=True) if error is not None]


def _examples(files, class_index, root: pathlib.Path, cache: pathlib.Path, encoding: Encoding, bad: set):
    for path, label in files:
        if path not in bad:
            relative = path.relative_to(root)
            image = (cache / relative).with_suffix(encoding.suffix).read_bytes()
            yield str(relative), {"image": image, "label": class_index[label], "file_name": str(relative)}


def _check_bad_images(failed, skip_bad_images: bool, cache: pathlib.Path):
    if failed and not skip_bad_images:
        path, error = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DatasetError(
            f"cannot decode image {path} ({error}){more}; fix or delete it, or pass --skip_bad_images "
            f"(the images encoded so far are kept in {cache} for the next run)"
        )
    for path, error in failed:
        logging.warning("skipping bad image %s (%s)", path, error)


def prepare_image_folder(
    image_folder: str,
    name: str,
    data_dir: str,
    skip_bad_images: bool = False,
    image_size: int | None = None,
    workers: int | None = None,
    version: str = "1.0.0",
    image_format: str = "png",
) -> list[pathlib.Path]:
    """Writes the TFDS dataset ``name`` under ``data_dir``; returns the paths of skipped images.

    ``image_size``: a size stores the paper's format (JPEG); None keeps the images' sizes, stored
    as ``image_format`` (png: lossless; jpeg: full-size photos).
    ``workers``: encoding processes (None: one per core).
    """
    if is_catalog_name(name):
        raise DatasetError(
            f"--dataset_name={name} is a TFDS catalog dataset and its builder would shadow yours; "
            f"pick another name, e.g. my_{name}"
        )
    root = pathlib.Path(image_folder).expanduser()
    splits, class_names = scan_image_folder(root)
    encoding = Encoding(image_size, image_format)
    data_root = pathlib.Path(data_dir).expanduser()
    cache = data_root / ".prepare_cache" / f"{name}-{encoding.cache_name}"
    jobs = [
        (encoding, path, (cache / path.relative_to(root)).with_suffix(encoding.suffix))
        for files in splits.values()
        for path, _ in files
    ]
    failed = encode_all(jobs, workers or os.cpu_count())
    _check_bad_images(failed, skip_bad_images, cache)
    bad = {path for path, _ in failed}
    _write_dataset(name, version, root, data_root, splits, class_names, cache, encoding, bad)
    shutil.rmtree(cache)
    if not any(cache.parent.iterdir()):
        cache.parent.rmdir()
    return sorted(bad)


def _write_dataset(name, version, root, data_root, splits, class_names, cache, encoding: Encoding, bad):
    class_index = {label: i for i, label in enumerate(class_names)}
    shape = (encoding.size, encoding.size, 3) if encoding.size else (None, None, 3)
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=shape, encoding_format=encoding.format),
            "label": tfds.features.ClassLabel(names=class_names),
            "file_name": tfds.features.Text(),
        }
    )
    split_datasets = {
        split: _examples(files, class_index, root, cache, encoding, bad) for split, files in splits.items()
    }
    created = data_root / name if not (data_root / name).exists() else None
    try:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version=version,
            features=features,
            split_datasets=split_datasets,
            data_dir=str(data_root),
            description=f"Image folder {root} prepared by alexnet_jax.",
            file_format="array_record",
        )
    except BaseException:
        if created is not None:  # leave no half-written dataset that a later run could mistake for a prepared one
            shutil.rmtree(created, ignore_errors=True)
        raise

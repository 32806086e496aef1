"""Turns an image folder ``<root>/<split>/<class>/<image>``, or the splits of a TFDS dataset (TFDS's
``imagenet2012``, built by its own builder from the ILSVRC2012 tars), into a TFDS dataset on disk.

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
the split). A TFDS source's labels, class names and file names are kept the same way, its
images read once for encoding and never held in memory all at once. The result is read like any TFDS dataset:
``tfds.data_source(name, data_dir=..., split='train[:90%]')``. TFDS shuffles examples by a hash of
their file path when writing, so slices such as ``train[90%:]`` are a fixed pseudo-random subset
rather than the last classes in folder order.
"""

import contextlib
import dataclasses
import io
import itertools
import logging
import multiprocessing
import os
import pathlib
import shutil
import types

import tensorflow_datasets as tfds
import tqdm
from PIL import Image

from alexnet_jax.datasets import DatasetError, is_catalog_name, tfds_source
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

    def encode(self, source: pathlib.Path | bytes) -> bytes:
        """One image, from its file or its encoded bytes, in this encoding."""
        with Image.open(source if isinstance(source, pathlib.Path) else io.BytesIO(source)) as image:
            if self.size:
                image.draft("RGB", (self.size, self.size))  # JPEG: decode big photos at a reduced scale
            image.load()  # a broken file fails here, whatever the format
            if self.format == "jpeg" and not self.size and image.format == "JPEG" and image.mode == "RGB":
                return source.read_bytes() if isinstance(source, pathlib.Path) else source
            image = image.convert("RGB")
        buffer = io.BytesIO()
        if self.size:
            image = centre_square(image, self.size)
        image.save(buffer, format=self.format.upper(), **({"quality": self.quality} if self.format == "jpeg" else {}))
        return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class EncodeJob:
    """One image to encode into the cache: its file or bytes, named ``name`` in error messages."""

    encoding: Encoding
    source: pathlib.Path | bytes
    cached: pathlib.Path
    name: str


def _encode_into_cache(job: EncodeJob) -> str | None:
    """Encodes one image into the cache unless it is there; returns an error message or None."""
    if job.cached.exists():
        return None
    try:
        encoded = job.encoding.encode(job.source)
    except Exception as e:  # PIL raises many types for broken files
        return f"{type(e).__name__}: {e}"
    job.cached.parent.mkdir(parents=True, exist_ok=True)
    partial = job.cached.with_name(job.cached.name + ".partial")
    partial.write_bytes(encoded)
    partial.replace(job.cached)  # atomic: a kill leaves no half-written image
    return None


def encode_all(jobs, total: int, workers: int, chunk: int = 64, block: int = 8192) -> list[tuple[str, str]]:
    """Encodes ``total`` jobs (an iterable of ``EncodeJob``, read ``block`` at a time so that a big
    dataset's bytes are never all in memory) on up to ``workers`` processes (one for a single
    chunk: this one), with a progress bar; returns the (name, error) of undecodable images."""
    workers = min(workers, -(-total // chunk))
    failed = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm.tqdm(total=total, desc="encoding", unit="img", disable=None))
        # spawn: no fork of JAX's threads
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers)) if workers > 1 else None
        jobs = iter(jobs)
        for jobs_block in iter(lambda: tuple(itertools.islice(jobs, block)), ()):
            errors = (
                pool.imap(_encode_into_cache, jobs_block, chunksize=chunk)
                if pool
                else map(_encode_into_cache, jobs_block)
            )
            for job, error in zip(jobs_block, errors, strict=True):
                bar.update(1)
                if error is not None:
                    failed.append((job.name, error))
    return failed


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
) -> list[str]:
    """Writes the TFDS dataset ``name`` under ``data_dir``; returns the paths of skipped images.

    ``image_size``: a size stores the paper's format (JPEG); None keeps the images' sizes, stored
    as ``image_format`` (png: lossless; jpeg: full-size photos).
    ``workers``: encoding processes (None: one per core).
    """
    _check_output_name(name)
    root = pathlib.Path(image_folder).expanduser()
    splits, class_names = scan_image_folder(root)
    output = _Output(name, version, pathlib.Path(data_dir).expanduser(), Encoding(image_size, image_format))
    jobs = [
        EncodeJob(output.encoding, path, output.cached(path.relative_to(root)), str(path))
        for files in splits.values()
        for path, _ in files
    ]
    bad = output.encode(jobs, len(jobs), workers, skip_bad_images)
    class_index = {label: i for i, label in enumerate(class_names)}

    def examples(files):
        for path, label in files:
            if str(path) not in bad:
                relative = str(path.relative_to(root))
                image = output.cached(path.relative_to(root)).read_bytes()
                yield relative, {"image": image, "label": class_index[label], "file_name": relative}

    description = f"Image folder {root} prepared by alexnet_jax."
    output.write({split: examples(files) for split, files in splits.items()}, class_names, description)
    return sorted(bad)


def open_tfds_splits(source_name: str, data_dir: str, splits, manual_dir: str | None = None) -> dict:
    """Data sources (images left encoded) of ``splits`` of the TFDS dataset ``source_name``, built
    first if it is not (imagenet2012: from the ILSVRC2012 tars in ``manual_dir``)."""
    sliced = [split for split in splits if not split.isidentifier()]
    if sliced:
        raise DatasetError(
            f"--splits={','.join(splits)}: {sliced[0]!r} is not a split name; prepare whole splits "
            "(e.g. train,validation) and slice them when training (--config.dataset.train_split='train[:90%]')"
        )
    config = types.SimpleNamespace(name=source_name, data_dir=data_dir, download=manual_dir is None)
    skip = {"image": tfds.decode.SkipDecoding()}
    return {split: tfds_source(config, split, skip, manual_dir) for split in splits}


def prepare_tfds_splits(
    sources: dict,
    name: str,
    data_dir: str,
    skip_bad_images: bool = False,
    image_size: int | None = None,
    workers: int | None = None,
    version: str = "1.0.0",
    image_format: str = "jpeg",
) -> list[str]:
    """Writes TFDS data ``sources`` (split -> source, images encoded) re-encoded as the TFDS dataset
    ``name`` under ``data_dir`` (labels and file names kept); returns the names of skipped images."""
    _check_output_name(name)
    output = _Output(name, version, pathlib.Path(data_dir).expanduser(), Encoding(image_size, image_format))

    def jobs():
        for split, source in sources.items():
            for index in range(len(source)):
                cached = output.cached(pathlib.Path(split, f"{index:09d}"))
                if cached.exists():  # encoded by an earlier run: not even read
                    yield EncodeJob(output.encoding, b"", cached, "")
                else:
                    record = source[index]
                    yield EncodeJob(output.encoding, record["image"], cached, f"{split}/{_text(record['file_name'])}")

    total = sum(len(source) for source in sources.values())
    bad = output.encode(jobs(), total, workers, skip_bad_images)

    def examples(split, source):
        for index in range(len(source)):
            record = source[index]
            file_name = _text(record["file_name"])  # as the source names it
            if f"{split}/{file_name}" not in bad:
                image = output.cached(pathlib.Path(split, f"{index:09d}")).read_bytes()
                yield f"{split}/{index}", {"image": image, "label": int(record["label"]), "file_name": file_name}

    class_names = next(iter(sources.values())).dataset_info.features["label"].names
    description = f"TFDS {', '.join(sources)} re-encoded by alexnet_jax."
    output.write({split: examples(split, source) for split, source in sources.items()}, class_names, description)
    return sorted(bad)


def _text(value) -> str:
    """A TFDS Text feature's value (bytes as read back; str from TFDS's test mocks) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_output_name(name: str):
    if is_catalog_name(name):
        raise DatasetError(
            f"--dataset_name={name} is a TFDS catalog dataset and its builder would shadow yours; "
            f"pick another name, e.g. my_{name}"
        )


@dataclasses.dataclass(frozen=True)
class _Output:
    """The dataset being written: its name, encoding and cache of encoded images (removed when written)."""

    name: str
    version: str
    data_root: pathlib.Path
    encoding: Encoding

    @property
    def cache(self) -> pathlib.Path:
        return self.data_root / ".prepare_cache" / f"{self.name}-{self.encoding.cache_name}"

    def cached(self, relative: pathlib.Path) -> pathlib.Path:
        return (self.cache / relative).with_suffix(self.encoding.suffix)

    def encode(self, jobs, total: int, workers: int | None, skip_bad_images: bool) -> set[str]:
        """Encodes the jobs into the cache; returns the names of the bad images (raises unless skipped)."""
        failed = encode_all(jobs, total, workers or os.cpu_count())
        _check_bad_images(failed, skip_bad_images, self.cache)
        return {name for name, _ in failed}

    def write(self, split_examples: dict, class_names, description: str):
        """Writes the splits' (key, example) iterables as ArrayRecord files, then removes the cache."""
        shape = (self.encoding.size, self.encoding.size, 3) if self.encoding.size else (None, None, 3)
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=shape, encoding_format=self.encoding.format),
                "label": tfds.features.ClassLabel(names=class_names),
                "file_name": tfds.features.Text(),
            }
        )
        created = self.data_root / self.name if not (self.data_root / self.name).exists() else None
        try:
            tfds.dataset_builders.store_as_tfds_dataset(
                name=self.name,
                version=self.version,
                features=features,
                split_datasets=split_examples,
                data_dir=str(self.data_root),
                description=description,
                file_format="array_record",
            )
        except BaseException:
            if created is not None:  # leave no half-written dataset that a later run could take for a prepared one
                shutil.rmtree(created, ignore_errors=True)
            raise
        shutil.rmtree(self.cache)
        if not any(self.cache.parent.iterdir()):
            self.cache.parent.rmdir()

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
a PNG named .JPEG) straight into TFDS's ad-hoc builder, which writes ArrayRecord files with
``image``, ``label`` (class names kept) and ``file_name`` (the path under the split); no copy of
the images is kept on the way, and a prepare that stops, however it stops, leaves nothing that
passes for a dataset (run it again: it starts over). A TFDS source's labels, class names and file
names are kept the same way, its images read once for encoding and never held in memory all at
once. The result is read like any TFDS dataset: ``tfds.data_source(name, data_dir=...,
split='train[:90%]')``. TFDS shuffles examples by a hash of
their file path when writing, so slices such as ``train[90%:]`` are a fixed pseudo-random subset
rather than the last classes in folder order.
"""

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import pathlib
import re
import shutil
import tarfile
import types

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from alexnet_jax import cpus
from alexnet_jax.datasets import DatasetError, is_catalog_name, label_key, tfds_source
from alexnet_jax.images import Encoding, encode_each

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


@dataclasses.dataclass(frozen=True)
class EncodeJob:
    """One image to encode: its file, its encoded bytes or its pixels, named ``name`` in error
    messages; its TFDS ``key``; and what is stored beside it (label, file name)."""

    source: pathlib.Path | bytes | np.ndarray
    name: str
    key: str
    fields: dict


CHUNK = 32  # images a worker process encodes per task


def ordered_map(function, items, pool, ahead: int, chunk: int = CHUNK):
    """``function(list of items)``'s results, one per item, in order: computed by ``pool``'s
    processes (in this one if None), at most ``ahead`` chunks ahead of the consumer, so that
    memory stays flat however fast the workers are."""
    chunks = iter(lambda: list(itertools.islice(items, chunk)), [])
    if pool is None:
        for part in chunks:
            yield from function(part)
        return
    pending = collections.deque()
    for part in itertools.chain(chunks, [None]):
        if part is not None:
            pending.append(pool.apply_async(function, (part,)))
        while pending and (part is None or len(pending) >= ahead):
            yield from pending.popleft().get()


@contextlib.contextmanager
def worker_pool(workers: int):
    """``workers`` encoding processes, or None (encode in this one) for fewer than 2."""
    if workers < 2:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:  # spawn: no fork of JAX's threads
        yield pool


class _Examples:
    """The (key, example) pairs TFDS writes, each image encoded on the way by ``pool``'s processes;
    undecodable images stop the writing (``DatasetError``) or, with ``skip_bad_images``, are
    skipped and listed in ``skipped``."""

    def __init__(self, encoding: Encoding, pool, workers: int, skip_bad_images: bool, bar: tqdm.tqdm):
        self.encoding, self.pool, self.skip_bad_images, self.bar = encoding, pool, skip_bad_images, bar
        self.ahead = 4 * workers  # chunks in flight
        self.skipped: list[str] = []

    def __call__(self, jobs):
        jobs, sources = itertools.tee(jobs)
        encode = functools.partial(encode_each, self.encoding)
        encoded = ordered_map(encode, (job.source for job in sources), self.pool, self.ahead)
        for job, (image, error) in zip(jobs, encoded, strict=True):
            self.bar.update(1)
            if error is not None:
                self._bad(job.name, error)
                continue
            yield job.key, {"image": image, **job.fields}

    def _bad(self, name: str, error: str):
        if not self.skip_bad_images:
            raise DatasetError(
                f"cannot decode image {name} ({error}); fix or delete it, or pass --skip_bad_images "
                "(nothing was written)"
            )
        logging.warning("skipping bad image %s (%s)", name, error)
        self.skipped.append(name)


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
    class_index = {label: i for i, label in enumerate(class_names)}

    def jobs(files):
        for path, label in files:
            relative = str(path.relative_to(root))
            yield EncodeJob(path, str(path), relative, {"label": class_index[label], "file_name": relative})

    output = _Output(name, version, pathlib.Path(data_dir).expanduser(), _encoding(image_size, image_format))
    total = sum(map(len, splits.values()))
    description = f"Image folder {root} prepared by alexnet_jax."
    return output.write(
        {split: jobs(files) for split, files in splits.items()},
        total,
        workers,
        skip_bad_images,
        class_names,
        description,
    )


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
    ``name`` under ``data_dir``, labels (``imagenet2012_real``: its original label as ``label``, and
    its ``real_label`` lists) and file names kept; returns the names of skipped images."""
    _check_output_name(name)
    first = next(iter(sources.values()))
    key, features = label_key(first), first.dataset_info.features
    class_names = features[key].names
    real = tfds.features.Sequence(tfds.features.ClassLabel(names=class_names))
    extra = {"real_label": real} if "real_label" in features else {}

    def jobs(split, source):
        for index in range(len(source)):
            record = source[index]
            file_name = _text(record["file_name"])  # as the source names it
            fields = {"label": int(record[key]), "file_name": file_name}
            fields.update({feature: np.asarray(record[feature]).tolist() for feature in extra})
            yield EncodeJob(record["image"], f"{split}/{file_name}", f"{split}/{index}", fields)

    output = _Output(name, version, pathlib.Path(data_dir).expanduser(), _encoding(image_size, image_format))
    total = sum(len(source) for source in sources.values())
    description = f"TFDS {', '.join(sources)} re-encoded by alexnet_jax."
    split_jobs = {split: jobs(split, source) for split, source in sources.items()}
    return output.write(split_jobs, total, workers, skip_bad_images, class_names, description, extra)


CIFAR10_SPLITS = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
_CIFAR10_RECORD = 1 + 32 * 32 * 3  # a label byte, then the red, green and blue planes of a 32x32 image


def read_cifar10_archive(path: str) -> tuple[list[str], dict[str, list[tuple[str, np.ndarray, np.ndarray]]]]:
    """The class names and, per split, (batch file, images N x 32 x 32 x 3, labels) of the official
    CIFAR-10 archive in its binary version (``cifar-10-binary.tar.gz``), read without unpacking it."""
    wanted = ["batches.meta.txt", *itertools.chain(*CIFAR10_SPLITS.values())]
    try:
        with tarfile.open(pathlib.Path(path).expanduser()) as archive:
            members = {pathlib.PurePath(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [name for name in wanted if name not in members]
            if missing:
                raise DatasetError(
                    f"{path} has no {missing[0]}: it is not CIFAR-10's binary archive, cifar-10-binary.tar.gz "
                    '(https://www.cs.toronto.edu/~kriz/cifar.html, "CIFAR-10 binary version")'
                )
            read = {name: archive.extractfile(members[name]).read() for name in wanted}
    except (tarfile.TarError, OSError) as e:
        why = str(e).splitlines()[0].rstrip(":")
        message = f"{path} cannot be read as CIFAR-10's archive ({why}); give cifar-10-binary.tar.gz"
        raise DatasetError(message) from None
    class_names = read["batches.meta.txt"].decode().split()
    splits = {}
    for split, batches in CIFAR10_SPLITS.items():
        splits[split] = []
        for batch in batches:
            records = np.frombuffer(read[batch], np.uint8)
            if records.size % _CIFAR10_RECORD or records.size == 0:
                raise DatasetError(f"{path}: {batch} holds {records.size} bytes, not whole images; download it again")
            records = records.reshape(-1, _CIFAR10_RECORD)
            images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            splits[split].append((batch.removesuffix(".bin"), images, records[:, 0]))
    return class_names, splits


def prepare_cifar10_archive(archive: str, name: str, data_dir: str, skip_bad_images: bool = False, **options):
    """Writes CIFAR-10's binary archive as the TFDS dataset ``name`` under ``data_dir`` (splits
    ``train``, 50,000 images, and ``test``, 10,000; file names ``<batch>/<index>``); returns [].
    ``options``: ``prepare_image_folder``'s ``image_size``, ``workers``, ``version``, ``image_format``."""
    image_size, workers = options.get("image_size"), options.get("workers")
    version, image_format = options.get("version", "1.0.0"), options.get("image_format", "png")
    _check_output_name(name)
    class_names, splits = read_cifar10_archive(archive)

    def jobs(batches):
        for batch, images, labels in batches:
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                file_name = f"{batch}/{index:05d}"
                fields = {"label": int(label), "file_name": file_name}
                yield EncodeJob(np.ascontiguousarray(image), f"{archive}: {file_name}", file_name, fields)

    output = _Output(name, version, pathlib.Path(data_dir).expanduser(), _encoding(image_size, image_format))
    total = sum(len(images) for batches in splits.values() for _, images, _ in batches)
    description = f"CIFAR-10's archive {archive} prepared by alexnet_jax."
    split_jobs = {split: jobs(batches) for split, batches in splits.items()}
    return output.write(split_jobs, total, workers, skip_bad_images, class_names, description)


def _encoding(image_size: int | None, image_format: str) -> Encoding:
    """``--image_size`` stores the paper's format, always JPEG; else the images' sizes as ``image_format``."""
    return Encoding(image_size, "jpeg" if image_size else image_format)


def _text(value) -> str:
    """A TFDS Text feature's value (bytes as read back; str from TFDS's test mocks) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def prepared_version(name: str, data_dir: str) -> pathlib.Path | None:
    """The folder of dataset ``name`` under ``data_dir`` if one was written whole (TFDS writes
    ``dataset_info.json`` last, into a folder it renames into place), else None."""
    written = pathlib.Path(data_dir).expanduser().glob(f"{name}/*.*.*/dataset_info.json")
    versions = sorted(path.parent for path in written if re.fullmatch(r"\d+\.\d+\.\d+", path.parent.name))
    return versions[-1] if versions else None


def _check_output_name(name: str):
    if is_catalog_name(name):
        raise DatasetError(
            f"--dataset_name={name} is a TFDS catalog dataset and its builder would shadow yours; "
            f"pick another name, e.g. my_{name}"
        )


@dataclasses.dataclass(frozen=True)
class _Output:
    """The dataset being written: its name, version, data directory and encoding."""

    name: str
    version: str
    data_root: pathlib.Path
    encoding: Encoding

    def write(self, split_jobs: dict, total: int, workers, skip_bad_images: bool, class_names, description, extra=None):
        """Encodes the splits' jobs on ``workers`` processes (None: one per core) straight into
        TFDS's ArrayRecord writer, with the ``extra`` features of the jobs' fields (ReaL's
        ``real_label``); returns the names of the skipped images. On any failure the folders it
        made are removed, so that no half-written dataset is taken for a prepared one; what a
        killed prepare left (TFDS's ``incomplete.*`` folders) is removed first."""
        shape = (self.encoding.size, self.encoding.size, 3) if self.encoding.size else (None, None, 3)
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=shape, encoding_format=self.encoding.format),
                "label": tfds.features.ClassLabel(names=class_names),
                "file_name": tfds.features.Text(),
                **(extra or {}),
            }
        )
        for stale in (self.data_root / self.name).glob("incomplete.*"):  # what a killed prepare left
            shutil.rmtree(stale, ignore_errors=True)
        made = [p for p in (self.data_root, self.data_root / self.name, self.data_root / "downloads") if not p.exists()]
        bar = tqdm.tqdm(total=total, desc="encoding", unit="img", disable=None)
        workers = min(workers or cpus.usable_cpus(), -(-total // CHUNK))  # no process without a chunk to encode
        with bar, worker_pool(workers) as pool:
            examples = _Examples(self.encoding, pool, workers, skip_bad_images, bar)
            try:
                tfds.dataset_builders.store_as_tfds_dataset(
                    name=self.name,
                    version=self.version,
                    features=features,
                    split_datasets={split: examples(jobs) for split, jobs in split_jobs.items()},
                    data_dir=str(self.data_root),
                    description=description,
                    file_format="array_record",
                )
            except BaseException:
                for folder in made:
                    shutil.rmtree(folder, ignore_errors=True)
                raise
        _remove_empty(self.data_root / "downloads", keep=self.data_root / "downloads" not in made)
        return sorted(examples.skipped)


def _remove_empty(folder: pathlib.Path, keep: bool):
    """Removes the empty folders TFDS made under ``folder`` (``downloads/extracted``), and ``folder``
    itself unless ``keep``."""
    for directory in sorted(folder.rglob("*"), reverse=True) if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            directory.rmdir()
    if not keep:
        with contextlib.suppress(OSError):
            folder.rmdir()

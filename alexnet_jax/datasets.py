"""Reads a named dataset split into host arrays (uint8 images, int32 labels).

TFDS datasets are read through ``tfds.data_source`` (ArrayRecord files, decoded with NumPy/PIL),
so training never imports TensorFlow. A dataset is named by TFDS name + ``data_dir`` + split,
with TFDS slicing (``train[:90%]``). The name ``synthetic`` gives a small learnable dataset made
in memory, for smoke runs, tests and throughput benchmarks.
"""

import dataclasses
import logging
import pathlib
import shutil
import socket
import urllib.parse
import zlib

import numpy as np
import tqdm

from alexnet_jax import cpus
from alexnet_jax.errors import UserError
from alexnet_jax.images import decode_image, decode_into, example_rng

SYNTHETIC = "synthetic"
_READ_CHUNK = 1024


def _tfds():
    """TFDS, imported when a TFDS dataset is first read: synthetic data needs none (a bare GPU machine
    may lack it)."""
    import tensorflow_datasets

    return tensorflow_datasets


def _encoded() -> dict:
    return {"image": _tfds().decode.SkipDecoding()}  # images stay encoded; decode_into decodes them


class DatasetError(UserError):
    """A dataset cannot be read; the message says what to do."""


class _DropUnpreparedWarning(logging.Filter):
    """TFDS warns that a dataset's version folder has no ``dataset_info.json`` whenever it looks at
    one that is not prepared; the one-line error that follows says what to do, so that warning goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUnpreparedWarning())


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """A split held in host memory."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.images.shape[1:]

    def read(self, indices: np.ndarray, keys=None) -> dict[str, np.ndarray]:
        return {"image": self.images[indices], "label": self.labels[indices]}


@dataclasses.dataclass(frozen=True)
class StreamSplit:
    """A TFDS split read on demand: ``read`` decodes just the examples asked for (picklable, so
    Grain workers can read it), through the host ``view`` if there is one (``images.py``)."""

    source: object  # a TFDS data source that leaves images encoded
    class_names: tuple[str, ...]
    image_shape: tuple[int, ...]  # of the images as batched
    description: str
    view: object = None
    label_key: str = "label"  # the feature holding the class (``label_key``)

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices: np.ndarray, keys=None) -> dict[str, np.ndarray]:
        """The examples at ``indices``; a random view draws from ``keys``, one (seed, step, position) each."""
        records = self.source.__getitems__([int(i) for i in indices])
        images = np.empty((len(records), *self.image_shape), np.uint8)
        if self.view is not None and self.view.random:
            rngs = [example_rng(*key) for key in keys]
        for i, record in enumerate(records):
            if self.view is None:
                shape = decode_into(record["image"], images[i])
            else:
                image = self.view(record["image"], rngs[i] if self.view.random else None)
                shape = image.shape
                if shape == self.image_shape:
                    images[i] = image
            if shape != self.image_shape:
                raise DatasetError(
                    f"{self.description} has images of size {shape} besides {self.image_shape}; streamed batches "
                    "need one size: prepare the dataset at one size (--image_size), or let the host scale them "
                    "(--config.input.random_resized_crop and eval_resize)"
                )
        return {"image": images, "label": np.asarray([r[self.label_key] for r in records], np.int32)}


def is_catalog_name(name: str) -> bool:
    """Whether ``name`` is a dataset in the TFDS catalog (whose builder would shadow a local one)."""
    tfds = _tfds()
    try:
        tfds.builder_cls(name)
    except tfds.core.registered.DatasetNotFoundError:
        return False
    return True


def prepare_hint(name: str) -> str:
    local = f"my_{name}" if is_catalog_name(name) else name
    return (
        "put the images in <split>/<class>/<image> folders and run "
        f"`python main.py --mode=prepare --image_folder=DIR --dataset_name={local} --data_dir=DATA_DIR` "
        "(with --image_size=256 for ImageNet-sized photos; ImageNet's tars: --tfds_source=imagenet2012 "
        "--manual_dir=TARS instead of --image_folder), "
        f"then pass --config.dataset.name={local} --config.dataset.data_dir=DATA_DIR"
    )


def unresolvable_hosts(builder) -> list[str]:
    """The builder's download hosts when none of them resolves (offline), else []."""
    hosts = sorted({urllib.parse.urlparse(url).hostname for url in builder.url_infos or {}} - {None})
    failed = []
    for host in hosts:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            failed.append(host)
    return failed if failed == hosts else []


def load_split(
    dataset_config, split: str, stream: bool = False, view=None, workers: int | None = 0
) -> ArraySplit | StreamSplit:
    """``split`` of the dataset described by ``dataset_config`` (name, data_dir, download): read
    into host memory (decoded by ``workers`` processes, see ``read_all``), or with ``stream``
    opened to be read on demand, through the host ``view`` if given (synthetic data is always in
    memory)."""
    if dataset_config.name == SYNTHETIC:
        return synthetic_split(dataset_config, split)
    description = f"{dataset_config.name} {split}"
    if not stream:
        return read_all(tfds_source(dataset_config, split, decoders=_encoded()), description, workers)
    source = tfds_source(dataset_config, split, decoders=_encoded())
    _check_not_empty(source, description)
    image_shape = source.dataset_info.features["image"].shape
    if view is not None:
        image_shape = (view.size, view.size, image_shape[-1])
    elif None in image_shape:  # sizes not declared: take the first image's
        image_shape = decode_image(source[0]["image"]).shape
    return StreamSplit(source, _class_names(source), tuple(image_shape), description, view, label_key(source))


def label_key(source) -> str:
    """The feature holding an example's class: ``label``, or ``original_label`` in TFDS's
    ``imagenet2012_real`` (whose ``real_label`` lists the classes its reassessment accepts)."""
    features = source.dataset_info.features
    return "label" if "label" in features else "original_label"


def _class_names(source) -> tuple[str, ...]:
    return tuple(source.dataset_info.features[label_key(source)].names)


def real_labels(dataset_config, split: str) -> list[np.ndarray] | None:
    """Every example's ``real_label`` (ReaL: the classes a reassessment of ImageNet's validation
    labels accepts, possibly none), in order; None if the dataset has no such feature."""
    if dataset_config.name == SYNTHETIC:
        return None
    source = tfds_source(dataset_config, split, decoders=_encoded())
    if "real_label" not in source.dataset_info.features:
        return None
    labels = []
    for start in range(0, len(source), _READ_CHUNK):
        records = _read_records(source, range(start, min(start + _READ_CHUNK, len(source))))
        labels += [np.asarray(record["real_label"], np.int64).reshape(-1) for record in records]
    return labels


def _check_not_empty(source, description: str):
    if len(source) == 0:
        raise DatasetError(f"{description} has no examples; check the split slicing")


def tfds_source(dataset_config, split: str, decoders=None, manual_dir: str | None = None):
    """Opens a TFDS split as a random-access data source, downloading only where allowed, or
    building it from the files in ``manual_dir`` (ImageNet's tars)."""
    name, data_dir = dataset_config.name, dataset_config.data_dir or None
    tfds = _tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise DatasetError(f"no TFDS dataset {name!r} under data_dir={data_dir}; {prepare_hint(name)}") from None
    if not builder.is_prepared():
        if manual_dir is not None:
            _build_from_manual_dir(builder, manual_dir)
        else:
            _download(builder, dataset_config.download)
    try:
        return builder.as_data_source(split=split, decoders=decoders)
    except (ValueError, KeyError, AssertionError) as e:
        splits = ", ".join(builder.info.splits.keys())
        raise DatasetError(f"bad split {split!r} for {name!r} (splits: {splits}): {e}") from None


def _download(builder, allowed: bool):
    name = builder.name
    if not allowed:
        raise DatasetError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; {prepare_hint(name)}")
    offline = unresolvable_hosts(builder)
    if offline:  # fail now rather than after TFDS's minutes of retries
        raise DatasetError(
            f"cannot download TFDS dataset {name!r}: {', '.join(offline)} does not resolve (no internet?); "
            f"to work offline, {prepare_hint(name)}"
        )
    try:
        builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # network and filesystem errors alike: say how to work offline
        raise DatasetError(
            f"could not download TFDS dataset {name!r} ({_first_line(e)}); to work offline, {prepare_hint(name)}"
        ) from None


def _build_from_manual_dir(builder, manual_dir: str):
    """TFDS builds the dataset from ``manual_dir``; on failure, the folders it made are removed."""
    config = _tfds().download.DownloadConfig(manual_dir=manual_dir)
    root = pathlib.Path(builder.data_dir_root)
    made = [p for p in (root, root / builder.name, root / "downloads") if not p.exists()]
    try:
        builder.download_and_prepare(file_format="array_record", download_config=config)
    except Exception as e:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        raise DatasetError(
            f"could not build TFDS dataset {builder.name!r} from --manual_dir={manual_dir} ({_first_line(e)}); put "
            "the files its builder needs there (imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)"
        ) from None


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _read_records(source, indices: range) -> list:
    """Records at ``indices``, in one batched ArrayRecord read (a third faster than one by one for
    CIFAR-sized records); one by one where the source has no batched read (TFDS's mock data)."""
    try:
        return list(source.__getitems__(list(indices)))
    except TypeError:
        return [source[i] for i in indices]


@dataclasses.dataclass(frozen=True)
class _DecodedChunk:
    """Chunk number -> its ``size`` examples decoded into one array, and the shapes of any image
    that is not ``image_shape`` (picklable, for Grain workers)."""

    source: object
    image_shape: tuple[int, ...]
    size: int
    label_key: str

    def __call__(self, number: int) -> dict[str, np.ndarray]:
        start = int(number) * self.size
        examples = _read_records(self.source, range(start, min(start + self.size, len(self.source))))
        images = np.empty((len(examples), *self.image_shape), np.uint8)
        shapes = [decode_into(example["image"], image) for example, image in zip(examples, images, strict=True)]
        other = sorted({shape for shape in shapes if shape != self.image_shape})
        labels = np.array([example[self.label_key] for example in examples], np.int32)
        return {"image": images, "label": labels, "other_shapes": np.array(other, np.int64).reshape(-1, 3)}


def read_all(source, description: str, workers: int | None = 0, chunk: int = _READ_CHUNK) -> ArraySplit:
    """Decodes every example of a data source (images left encoded) into one array, with a progress
    bar; in ``workers`` processes (None: one per core; 0: this one), ``chunk`` examples at a time.

    Starting worker processes takes seconds, so there is at most one per 8 chunks: 45,000 CIFAR
    images (44 chunks) are read by up to 5, a 5,000-image split in this process."""
    _check_not_empty(source, description)
    total, chunks = len(source), -(-len(source) // chunk)
    shape = decode_image(_read_records(source, range(1))[0]["image"]).shape
    read = _DecodedChunk(source, shape, chunk, label_key(source))
    workers = min(cpus.usable_cpus() if workers is None else workers, chunks // 8)
    if workers > 0:
        from alexnet_jax.input_pipeline import pipeline  # Grain, only where it is used

        decoded = pipeline(read, 0, chunks, workers)
    else:
        decoded = map(read, range(chunks))
    images, labels, shapes = np.empty((total, *read.image_shape), np.uint8), np.empty(total, np.int32), set()
    with tqdm.tqdm(total=total, desc=f"reading {description}", unit="img", disable=None) as bar:
        for number, decoded_chunk in enumerate(decoded):
            rows = slice(number * chunk, number * chunk + len(decoded_chunk["label"]))
            images[rows], labels[rows] = decoded_chunk["image"], decoded_chunk["label"]
            shapes.update(map(tuple, decoded_chunk["other_shapes"].tolist()))
            bar.update(len(decoded_chunk["label"]))
    if shapes:
        shapes = [tuple(read.image_shape), *sorted(shapes)]
        raise DatasetError(
            f"{description} has images of {len(shapes)} different sizes (e.g. {shapes[:3]}); "
            "the in-memory pipeline needs one size: resize the image folder and prepare it again"
        )
    return ArraySplit(images, labels, _class_names(source))


def synthetic_split(dataset_config, split: str) -> ArraySplit:
    """A learnable stand-in: each class is a fixed random colour, each image a noisy patch of it.

    Colour survives cropping and flipping, so augmentation does not hide the class.

    ``train`` has ``synthetic_examples`` images; any other split a quarter as many, drawn with a
    different seed. The class patterns are the same for every split.
    """
    classes, size = dataset_config.synthetic_classes, dataset_config.synthetic_image_size
    count = dataset_config.synthetic_examples if split == "train" else dataset_config.synthetic_examples // 4
    colours = np.random.default_rng(0).uniform(32, 224, (classes, 1, 1, 3))
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    labels = rng.integers(0, classes, count).astype(np.int32)
    noise = rng.normal(0, 48, (count, size, size, 3))
    images = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
    return ArraySplit(images, labels, tuple(f"class_{i}" for i in range(classes)))

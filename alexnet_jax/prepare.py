"""Turns an image folder ``<root>/<split>/<class>/<image>`` into a TFDS dataset on disk.

Images (PNG or JPEG, any mode) are decoded with PIL, converted to RGB and stored losslessly as
PNG in ArrayRecord files through TFDS's ad-hoc builder. The result is read like any TFDS dataset:
``tfds.data_source(name, data_dir=..., split='train[:90%]')``. TFDS shuffles examples by a hash of
their file path when writing, so slices such as ``train[90%:]`` are a fixed pseudo-random subset
rather than the last classes in folder order.
"""

import logging
import pathlib
import shutil

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from alexnet_jax.datasets import DatasetError, is_catalog_name

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


def decode_rgb(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _examples(files, class_index, root, skip_bad_images, skipped):
    for path, label in files:
        try:
            image = decode_rgb(path)
        except Exception as e:  # PIL raises many types for broken files
            if not skip_bad_images:
                raise DatasetError(
                    f"cannot decode image {path} ({type(e).__name__}: {e}); fix or delete it, or pass --skip_bad_images"
                ) from None
            logging.warning("skipping bad image %s (%s)", path, e)
            skipped.append(path)
            continue
        yield str(path.relative_to(root)), {"image": image, "label": class_index[label]}


def prepare_image_folder(
    image_folder: str, name: str, data_dir: str, skip_bad_images: bool = False, version: str = "1.0.0"
) -> list[pathlib.Path]:
    """Writes the TFDS dataset ``name`` under ``data_dir``; returns the paths of skipped images."""
    if is_catalog_name(name):
        raise DatasetError(
            f"--dataset_name={name} is a TFDS catalog dataset and its builder would shadow yours; "
            f"pick another name, e.g. my_{name}"
        )
    root = pathlib.Path(image_folder).expanduser()
    splits, class_names = scan_image_folder(root)
    class_index = {label: i for i, label in enumerate(class_names)}
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=class_names),
        }
    )
    skipped: list[pathlib.Path] = []
    split_datasets = {
        split: _examples(files, class_index, root, skip_bad_images, skipped) for split, files in splits.items()
    }
    data_root = pathlib.Path(data_dir).expanduser()
    created = next((p for p in (data_root, data_root / name) if not p.exists()), None)  # outermost new folder
    try:
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version=version,
            features=features,
            split_datasets=split_datasets,
            data_dir=data_dir,
            description=f"Image folder {root} prepared by alexnet_jax.",
            file_format="array_record",
        )
    except BaseException:
        if created is not None:  # leave no half-written dataset that a later run could mistake for a prepared one
            shutil.rmtree(created, ignore_errors=True)
        raise
    return skipped

"""The activations of a named layer (``fc7`` by default), and the paper's Figure 4 from them.

Layers are named as in the paper for every model (``models.LAYERS``): ``conv1`` ... ``conv5``,
``fc6``, ``fc7``, ``fc8`` (the logits). A hidden fully connected layer gives its activations after the ReLU (the
paper's "feature activations induced at the last, 4096-dimensional hidden layer"); a convolution,
its output before the normalisation and ReLU that follow it, flattened. Images go through what
evaluation's single view does (the centre ``crop_size`` crop, or the whole image), in batches on the
accelerator; a split is streamed, so memory holds one batch of images.

``--mode=features`` writes a split's or a folder's features as ``.npy``; ``--mode=neighbours`` draws
Figure 4: validation images, each beside the training images whose features are nearest (Euclidean).
"""

import contextlib
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from alexnet_jax import augment, datasets, files, input_pipeline, models
from alexnet_jax.errors import UserError
from alexnet_jax.feeds import host_views
from alexnet_jax.input_pipeline import ProcessShare
from alexnet_jax.predict import in_fixed_batches

HIDDEN = ("fc6", "fc7")  # followed by a ReLU


def check_layer(variables: dict, layer: str):
    """Raises ``UserError`` unless ``layer`` is one of the model's layers (``models.LAYERS``)."""
    held = [name for name in models.LAYERS if name in variables["params"]]
    if layer not in held:
        raise UserError(f"--layer={layer} is not one of this model's layers: {', '.join(held)}")


def layer_features(apply_fn, variables: dict, pixels: jax.Array, layer: str) -> jax.Array:
    """``layer``'s activations [N, features] of normalised images [N, H, W, C] (a pure function:
    jit it, vmap it, differentiate it)."""
    _, captured = apply_fn(
        variables,
        pixels,
        train=False,
        capture_intermediates=lambda module, method: module.name == layer and method == "__call__",
        mutable=["intermediates"],
    )
    (output,) = captured["intermediates"][layer]["__call__"]
    output = jax.nn.relu(output) if layer in HIDDEN else output
    return output.reshape(output.shape[0], -1).astype(jnp.float32)


class FeatureExtractor:
    """A predictor's model (``predict.Predictor``: a workdir's checkpoint, one model of it) as a
    function of uint8 images -> ``layer``'s features, in batches of the config's ``eval_batch_size``."""

    def __init__(self, predictor, layer: str):
        config = predictor.config
        self.config, self.batch, self.layer, self.input = config, predictor.batch, layer, predictor.input
        crop, stats = config.augment.get("crop_size"), config.dataset.normalization
        check_layer(predictor.variables, layer)  # a bad name fails before anything is read

        def features(variables, images):
            images = images if crop is None else augment.centre_crop(images, crop)
            return layer_features(predictor.apply_fn, variables, augment.normalize(images, stats), layer)

        self._features, self._variables = jax.jit(features), predictor.variables

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of images [N, H, W, C] (uint8), a fixed-size batch at a time."""
        return in_fixed_batches(functools.partial(self._features, self._variables), images, self.batch)


def open_split(config, split: str):
    """``split`` of the workdir's dataset, streamed through evaluation's host view."""
    return datasets.load_split(config.dataset, split, stream=True, view=host_views(config.input)[1])


def split_batches(split, batch: int, workers: int | None, description: str):
    """(images, labels, positions) of ``split`` in order, a batch at a time, read by ``workers``."""
    batch_fn = input_pipeline.EvalBatch(split.read, len(split), batch, ProcessShare())
    count = -(-len(split) // batch)
    stream = input_pipeline.batches(input_pipeline.pipeline(batch_fn, 0, count, workers))
    for number, read in enumerate(tqdm.tqdm(stream, total=count, desc=description, unit="batch", disable=None)):
        real = read["mask"].astype(bool)
        yield read["image"][real], read["label"][real], number * batch + np.flatnonzero(real)


def write_split_features(extractor: FeatureExtractor, split, output: pathlib.Path) -> tuple[int, int]:
    """Writes the features [N, D] of ``split`` (``open_split``'s) to ``output`` (.npy) and its labels
    beside it (``<output stem>_labels.npy``), each whole or not at all; returns (N, D). The features
    go to the file a batch at a time: ImageNet's 1.28 million fc7 vectors take 21 GB."""
    if not len(split):
        raise UserError("the split holds no images: give another --split")
    batches = split_batches(split, extractor.batch, extractor.config.input.get("workers"), "features")
    with contextlib.ExitStack() as writing:
        for number, (images, batch_labels, positions) in enumerate(batches):
            found = extractor(images)
            if number == 0:
                rows = writing.enter_context(files.writing_npy(output, (len(split), found.shape[1]), found.dtype))
                labels = np.zeros(len(split), batch_labels.dtype)
            rows[positions], labels[positions] = found, batch_labels
    files.write_npy(output.with_name(output.stem + "_labels.npy"), labels)
    return rows.shape


def write_folder_features(extractor: FeatureExtractor, paths: list[pathlib.Path], output: pathlib.Path) -> tuple:
    """Writes the features of the readable files among ``paths`` to ``output`` (.npy) and their
    paths beside it (``<output stem>_paths.txt``, one per row), each whole or not at all, a batch at
    a time; returns (N, D)."""
    from alexnet_jax.predict import readable_batches

    unfinished, readable = output.with_name(f".{output.stem}.unfinished.npy"), []
    with contextlib.ExitStack() as writing:
        for chunk, images in readable_batches(paths, extractor.input, extractor.batch, "features"):
            found = extractor(images)
            if not readable:
                rows = writing.enter_context(files.writing_npy(unfinished, (len(paths), found.shape[1]), found.dtype))
            rows[len(readable) : len(readable) + len(found)] = found
            readable += chunk
    if not readable:
        raise UserError(f"none of the {len(paths)} files could be read as an image")
    width = rows.shape[1]
    del rows  # unmapped before it is cut
    files.keep_rows(unfinished, len(readable))  # the rows of unreadable files were left at the end
    os.replace(unfinished, output)
    files.write_text(output.with_name(output.stem + "_paths.txt"), "".join(f"{path}\n" for path in readable))
    return len(readable), width


def nearest(extractor: FeatureExtractor, queries: np.ndarray, split, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query feature vector, the positions in ``split`` of the ``count`` examples whose
    features are nearest (Euclidean), nearest first, and their distances. ``split`` is streamed and
    only the best ``count`` per query are kept, so memory does not grow with it (ImageNet's 1.28
    million fc7 vectors would take 21 GB)."""
    best_distance = np.full((len(queries), 0), np.inf)
    best_position = np.zeros((len(queries), 0), np.int64)
    workers = extractor.config.input.get("workers")
    query_norms = np.square(queries).sum(1)[:, None]
    for images, _, positions in split_batches(split, extractor.batch, workers, "nearest training images"):
        found = extractor(images).astype(np.float64)
        # |q - f|^2 = |q|^2 + |f|^2 - 2 q.f: queries x batch numbers, never queries x batch x features
        squared = query_norms + np.square(found).sum(1)[None] - 2 * queries @ found.T
        distance = np.sqrt(np.maximum(squared, 0))
        best_distance = np.concatenate([best_distance, distance], axis=1)
        best_position = np.concatenate([best_position, np.broadcast_to(positions, distance.shape)], axis=1)
        keep = np.argsort(best_distance, axis=1, kind="stable")[:, :count]
        best_distance = np.take_along_axis(best_distance, keep, 1)
        best_position = np.take_along_axis(best_position, keep, 1)
    return best_position, best_distance


def plot_neighbours(extractor: FeatureExtractor, queries: int, count: int, output: pathlib.Path) -> pathlib.Path:
    """The paper's Figure 4: the first ``queries`` validation images (the config's ``eval_split``),
    each followed on its row by the ``count`` training images nearest in ``extractor``'s features."""
    from alexnet_jax import plots

    config = extractor.config
    validation, train = open_split(config, config.dataset.eval_split), open_split(config, config.dataset.train_split)
    shown = validation.read(np.arange(min(queries, len(validation))))
    positions, distances = nearest(extractor, extractor(shown["image"]).astype(np.float64), train, count)
    neighbours = train.read(positions.reshape(-1))
    names = train.class_names
    images, texts = [], []
    for row, (image, label) in enumerate(zip(shown["image"], shown["label"], strict=True)):
        images.append(image)
        texts.append(f"query\n{names[label]}")
        for column in range(positions.shape[1]):
            at = row * positions.shape[1] + column
            images.append(neighbours["image"][at])
            texts.append(f"{distances[row, column]:.3g}\n{names[neighbours['label'][at]]}")
    return plots.plot_labelled_grid(images, texts, output, columns=count + 1)

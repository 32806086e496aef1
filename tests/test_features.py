"""Features of a named layer (``features.py``) and the paper's Figure 4 from them."""

import collections
import pathlib
import tracemalloc

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import augment, features
from alexnet_jax.errors import UserError
from alexnet_jax.predict import Predictor


def test_the_features_and_neighbours_commands(straight_run, cli, tmp_path):
    workdir = straight_run[0]
    code, out, err = cli("--mode=features", f"--workdir={workdir}", f"--output={tmp_path / 'val.npy'}")
    assert code == 0, err
    values, labels = np.load(tmp_path / "val.npy"), np.load(tmp_path / "val_labels.npy")
    extractor = features.FeatureExtractor(Predictor(workdir, "latest", False), "fc7")
    validation = features.open_split(extractor.config, "validation")
    assert values.shape == (len(validation), 32) and f"fc7 features of {len(validation)} images, 32 each" in out
    shown = validation.read(np.arange(len(validation)))
    np.testing.assert_array_equal(labels, shown["label"])
    for i in (0, 1):  # the same images, as files: the same features
        Image.fromarray(shown["image"][i]).save(tmp_path / f"{i}.png")
    folder = ("--mode=features", f"--workdir={workdir}", f"--images={tmp_path}/*.png", f"--output={tmp_path / 'f.npy'}")
    code, out, err = cli(*folder)
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), values[:2], rtol=1e-6, atol=1e-6 * np.abs(values).max())
    (tmp_path / "00-broken.png").write_bytes(b"not an image")  # skipped: the same 2 rows, not 3
    before = np.load(tmp_path / "f.npy")
    code, out, err = cli(*folder)
    assert code == 0 and "skipped" in err and "00-broken.png" in err, err
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), before)
    assert (tmp_path / "f_paths.txt").read_text() == f"{tmp_path / '0.png'}\n{tmp_path / '1.png'}\n"
    assert not list(tmp_path.glob(".*"))  # nothing unfinished left

    # fc7 is what the classifier reads, after its ReLU: fc8 (the logits) is the head applied to it.
    # Both from one program, so fc8 is computed from these very fc7 values; a float32 dot product of
    # n terms is within n * eps * (|fc7| @ |kernel| + |bias|) of the exact one (computed in float64).
    predictor = Predictor(workdir, "latest", False)
    both = jax.jit(lambda v, x: [features.layer_features(predictor.apply_fn, v, x, n) for n in ("fc7", "fc8")])
    pixels = augment.normalize(shown["image"][:16], extractor.config.dataset.normalization)
    fc7, fc8 = (np.asarray(x) for x in both(predictor.variables, pixels))
    np.testing.assert_array_equal(fc7.shape, (16, 32))
    assert fc7.min() >= 0 and fc7.max() > 0 and np.any(fc7 == 0)  # after a ReLU
    head = jax.tree.map(np.asarray, predictor.variables["params"]["fc8"])
    exact = fc7.astype(np.float64) @ head["kernel"].astype(np.float64) + head["bias"]
    terms = fc7.shape[1] + 1
    bound = terms * np.finfo(np.float32).eps * (np.abs(fc7) @ np.abs(head["kernel"]) + np.abs(head["bias"]))
    assert np.all(np.abs(fc8 - exact) <= bound)
    with pytest.raises(UserError, match="--layer=fc9 is not one of this model's layers: conv1, conv2, conv3, conv4"):
        features.check_layer(predictor.variables, "fc9")

    train = features.open_split(extractor.config, "train")
    chosen = np.array([5, 100, 250])  # in the first, second and last batch of 64
    queries = extractor(train.read(chosen)["image"]).astype(np.float64)
    positions, distances = features.nearest(extractor, queries, train, count=3)
    np.testing.assert_array_equal(positions[:, 0], chosen)  # each image is its own nearest
    assert np.all(np.diff(distances, axis=1) >= 0)
    # At distance 0, up to the features' float32 rounding (another place in a batch may round them
    # in another order) and |q|^2 + |f|^2 - 2 q.f's float64 rounding: far below 1e-5 of |q|.
    assert np.all(distances[:, 0] <= 1e-5 * np.linalg.norm(queries, axis=1))
    exact = np.linalg.norm(queries[:, None] - queries[None], axis=-1)[[0, 0, 1], [1, 2, 2]]
    assert exact.min() > 1e-2 * np.linalg.norm(queries, axis=1).max()  # other images: far from that

    code, out, err = cli("--mode=neighbours", f"--workdir={workdir}", "--queries=2", f"--output={tmp_path / 'n.png'}")
    assert code == 0 and Image.open(tmp_path / "n.png").size[0] > 0, err


def test_a_splits_features_go_to_the_file_a_batch_at_a_time(straight_run, tmp_path):
    """conv1's features of the training split (256 images x 8,192 values, 8 MB), 16 images at a time:
    writing them adds less than a quarter of that to the memory that reading the split takes
    (holding them all would add twice it; a batch's features, copied twice, 1 MB). Memory is NumPy's
    and Python's, as ``tracemalloc`` counts it."""
    extractor = features.FeatureExtractor(Predictor(straight_run[0], "latest", False), "conv1")
    extractor.batch = 16
    train, output = features.open_split(extractor.config, "train"), tmp_path / "conv1.npy"
    features.write_split_features(extractor, train, output)  # compiled, before measuring
    workers = extractor.config.input.get("workers")
    reading = peak_memory(lambda: collections.deque(features.split_batches(train, extractor.batch, workers, ""), 0))
    writing = peak_memory(lambda: features.write_split_features(extractor, train, output))
    written = np.load(output, mmap_mode="r")
    assert written.shape == (256, 8192)
    assert writing - reading < written.nbytes / 4, (reading, writing)
    # The rows in place: each image's own features, up to float32 rounding (conv1 sums 27 products;
    # another place in the batch may round them in another order); another image's differ by far more.
    again = extractor(train.read(np.arange(250, 256))["image"])
    np.testing.assert_allclose(written[250:], again, rtol=0, atol=1e-5 * np.abs(again).max())
    np.testing.assert_array_equal(np.load(tmp_path / "conv1_labels.npy"), train.read(np.arange(256))["label"])


def peak_memory(fn) -> int:
    """The most memory ``fn()`` held at once, in bytes, as ``tracemalloc`` counts it."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bytes_written(fn) -> int:
    """The bytes this process hands to write() while ``fn()`` runs (/proc/self/io's wchar): what
    goes to a memory-mapped file's pages is not counted, a copy of it written out is."""

    def wchar():
        return int(dict(line.split(": ") for line in pathlib.Path("/proc/self/io").read_text().splitlines())["wchar"])

    before = wchar()
    fn()
    return wchar() - before


def test_a_folders_features_with_an_unreadable_file_are_not_copied(straight_run, tmp_path):
    """Rows were reserved for every file: the unreadable ones' are cut off the end of the very file,
    not left behind by writing a second copy of the readable ones (a copy takes the disk twice)."""
    extractor = features.FeatureExtractor(Predictor(straight_run[0], "latest", False), "conv1")
    images = features.open_split(extractor.config, "validation").read(np.arange(16))["image"]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "99-broken.png").write_bytes(b"not an image")
    paths = sorted(tmp_path.glob("*.png"))
    extractor(images[:1])  # compiled before measuring
    output = tmp_path / "out" / "conv1.npy"
    output.parent.mkdir()
    written = bytes_written(lambda: features.write_folder_features(extractor, paths, output))
    kept = np.load(output, mmap_mode="r")
    assert kept.shape == (16, 8192) and written < kept.nbytes / 4, written
    np.testing.assert_allclose(kept, extractor(images), rtol=0, atol=1e-5 * np.abs(kept).max())
    assert sorted(p.name for p in output.parent.iterdir()) == ["conv1.npy", "conv1_paths.txt"]

"""Features of a named layer (``features.py``) and the paper's Figure 4 from them."""

import jax
import numpy as np
from conftest import tiny_config
from PIL import Image

from alexnet_jax import augment, datasets, features
from alexnet_jax.experiment import create_state
from alexnet_jax.predict import Predictor
from alexnet_jax.train_step import state_variables


def test_fc7_is_what_the_classifier_reads_after_its_relu():
    config = tiny_config()
    split = datasets.load_split(config.dataset, "validation")
    state, _ = create_state(config, 10, split.image_shape, 1)
    variables, pixels = state_variables(state), augment.normalize(split.images[:16], config.dataset.normalization)
    take = lambda layer: np.asarray(features.layer_features(state.apply_fn, variables, pixels, "alexnet_cifar", layer))  # noqa: E731
    fc7, fc8, logits = take("fc7"), take("fc8"), np.asarray(state.apply_fn(variables, pixels))
    np.testing.assert_array_equal(fc8, logits)
    assert fc7.shape == (16, config.model.fc_features * config.model.width) and fc7.min() >= 0 and fc7.max() > 0
    head = jax.device_get(state.params["Dense_2"])
    # float32 sums of fc7 x kernel products: rounding bounded by their magnitudes
    bound = 1e-5 * (np.abs(fc7) @ np.abs(head["kernel"]) + np.abs(head["bias"]))
    assert np.all(np.abs(fc7 @ head["kernel"] + head["bias"] - logits) <= bound)
    assert take("conv1").shape == (16, 32 * 32 * round(64 * config.model.width))
    assert (
        features.module_name("alexnet2012", "fc7") == "fc7" and features.module_name("alexnet_owt", "conv2") == "Conv_1"
    )


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
    code, out, err = cli(
        "--mode=features", f"--workdir={workdir}", f"--images={tmp_path}/*.png", f"--output={tmp_path / 'f.npy'}"
    )
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), values[:2], rtol=1e-6, atol=1e-6 * np.abs(values).max())

    train = features.open_split(extractor.config, "train")
    chosen = np.array([5, 100, 250])  # in the first, second and last batch of 64
    positions, distances = features.nearest(extractor, extractor(train.read(chosen)["image"]), train, count=3)
    np.testing.assert_array_equal(positions[:, 0], chosen)  # each image is its own nearest
    assert np.all(distances[:, 0] == 0) and np.all(np.diff(distances, axis=1) >= 0)

    code, out, err = cli("--mode=neighbours", f"--workdir={workdir}", "--queries=2", f"--output={tmp_path / 'n.png'}")
    assert code == 0 and Image.open(tmp_path / "n.png").size[0] > 0, err

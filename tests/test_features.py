"""Features of a named layer (``features.py``) and the paper's Figure 4 from them."""

import numpy as np
from PIL import Image

from alexnet_jax import features
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
    code, out, err = cli(
        "--mode=features", f"--workdir={workdir}", f"--images={tmp_path}/*.png", f"--output={tmp_path / 'f.npy'}"
    )
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), values[:2], rtol=1e-6, atol=1e-6 * np.abs(values).max())

    # fc7 is what the classifier reads, after its ReLU: the head on it gives the predictor's probabilities.
    predictor = Predictor(workdir, "latest", False)
    head = predictor.variables["params"]["Dense_2"]
    fc7 = values[:16]
    assert fc7.shape[1] == 32 and fc7.min() >= 0 and fc7.max() > 0
    logits = fc7 @ head["kernel"] + head["bias"]
    want = np.exp(logits - logits.max(1, keepdims=True))
    # float32 sums of fc7 x kernel products and a softmax: rounding bounded by their magnitudes
    probabilities = predictor(shown["image"][:16])
    np.testing.assert_allclose(probabilities, want / want.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert (
        features.module_name("alexnet2012", "fc7") == "fc7" and features.module_name("alexnet_owt", "conv2") == "Conv_1"
    )

    train = features.open_split(extractor.config, "train")
    chosen = np.array([5, 100, 250])  # in the first, second and last batch of 64
    positions, distances = features.nearest(extractor, extractor(train.read(chosen)["image"]), train, count=3)
    np.testing.assert_array_equal(positions[:, 0], chosen)  # each image is its own nearest
    assert np.all(distances[:, 0] == 0) and np.all(np.diff(distances, axis=1) >= 0)

    code, out, err = cli("--mode=neighbours", f"--workdir={workdir}", "--queries=2", f"--output={tmp_path / 'n.png'}")
    assert code == 0 and Image.open(tmp_path / "n.png").size[0] > 0, err

"""torchvision's AlexNet weights -> alexnet_owt, checked against torchvision's own forward pass.

PyTorch is not a dependency of the suite: ``tests/torchvision_reference.py`` drew deterministic
weights and two input images from fixed NumPy seeds, ran torchvision's ``alexnet`` on them and
stored its logits (``tests/data``). The test draws the same weights again (their SHA-256 must equal
the one stored beside the logits), converts them and runs this codebase's model."""

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file
from torchvision_reference import fingerprint, synthetic_input, synthetic_state_dict, zero_state_dict

from alexnet_jax import models, torchvision_weights
from alexnet_jax.torchvision_weights import WeightsError

REFERENCE = np.load("tests/data/torchvision_alexnet_logits.npz")


def _logits(state_dict, dtype):
    model = models.AlexNetOWT(dtype=dtype)
    images = synthetic_input().transpose(0, 2, 3, 1).astype(dtype)  # NCHW -> NHWC
    expected = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    params = torchvision_weights.params_from_torchvision(state_dict, expected)
    return np.asarray(jax.jit(model.apply)({"params": params}, images))


def test_converted_weights_give_torchvisions_logits():
    weights = synthetic_state_dict()
    assert fingerprint(weights) == str(REFERENCE["weights_sha256"])  # the weights torchvision ran
    want = REFERENCE["logits_float64"]
    scale = np.sqrt(np.mean(want**2))
    # float32: each of the 8 layers sums up to 9216 products; rounding errors of unit roundoff
    # 6e-8 grow as a random walk, ~sqrt(9216) x 6e-8 = 6e-6 of the values per layer, 5e-5 over 8.
    # A conversion mistake (a kernel transposed, fc6's inputs in another order, a bias left out)
    # moves the logits by about their own size.
    got = _logits(weights, np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    # The reference's top 6 are more than 2 x the tolerance apart, so within it the top 5 cannot reorder.
    top6 = -np.sort(-want, axis=1)[:, :6]
    assert (top6[:, :-1] - top6[:, 1:]).min() > 2e-4 * scale
    assert (np.argsort(-got, axis=1)[:, :5] == np.argsort(-want, axis=1)[:, :5]).all()


@pytest.mark.tier2  # the first tier: the same in float32, within the bound its roundings allow (above)
def test_converted_weights_give_torchvisions_logits_in_float64():
    weights = {name: w.astype(np.float64) for name, w in synthetic_state_dict().items()}
    want = REFERENCE["logits_float64"]
    with jax.enable_x64(True):  # float64: only the order of sums differs, ~1e-15 relative
        got = _logits(weights, np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.sqrt(np.mean(want**2)))


def test_a_wrong_weights_file_is_one_line_naming_the_tensor(tmp_path):
    state_dict = zero_state_dict()
    expected = jax.eval_shape(models.AlexNetOWT().init, jax.random.key(0), np.zeros((1, 224, 224, 3)))["params"]
    wrong_head = {**state_dict, "classifier.6.weight": state_dict["classifier.6.weight"][:10]}
    with pytest.raises(WeightsError, match=r"'classifier.6.weight' has shape \(10, 4096\); .*\(1000, 4096\)"):
        torchvision_weights.params_from_torchvision(wrong_head, expected)
    resnet_like = {**state_dict, "layer1.0.conv1.weight": np.zeros((64, 64, 3, 3), np.float32)}
    with pytest.raises(WeightsError, match="'layer1.0.conv1.weight' is not in torchvision's alexnet"):
        torchvision_weights.params_from_torchvision(resnet_like, expected)
    missing = {k: v for k, v in state_dict.items() if k != "features.8.bias"}
    with pytest.raises(WeightsError, match="'features.8.bias' of torchvision's alexnet is missing"):
        torchvision_weights.params_from_torchvision(missing, expected)
    small = tmp_path / "small.safetensors"
    save_file({"features.0.weight": state_dict["features.0.weight"]}, small)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(small.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="is not a readable safetensors file"):
        torchvision_weights.read_state_dict(truncated)
    pickled = tmp_path / "alexnet.pth"
    pickled.write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.raises(WeightsError, match=r"needs PyTorch|cannot be read as a PyTorch state dict"):
        torchvision_weights.read_state_dict(pickled)


def test_converted_weights_name_imagenets_classes_as_its_datasets_do():
    """--mode=convert records ImageNet's classes by WordNet id, as TFDS's imagenet2012 and <wnid>
    folders name them, so fine-tuning on ImageNet keeps the pretrained classifier (init_from
    compares with ``same_classes``), and predict shows the readable names."""
    from alexnet_jax import finetune

    wnids = [wnid for wnid, _ in torchvision_weights.imagenet_classes()]
    recorded = torchvision_weights.converted_data("w.safetensors")["class_names"]
    assert recorded == wnids and finetune.same_classes(recorded, wnids)
    assert torchvision_weights.readable_class_names(recorded)[:2] == ["tench", "goldfish"]
    # A checkpoint converted by an earlier version, which recorded readable names, names the same classes.
    readable = torchvision_weights.readable_class_names(wnids)
    assert finetune.same_classes(readable, wnids) and not finetune.same_classes(readable[::-1], wnids)

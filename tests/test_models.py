import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alexnet_jax import models


def count_params(model, image_size):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("image_size", [224, 227])
def test_alexnet2012_has_the_papers_parameter_count(image_size):
    assert count_params(models.AlexNet2012(num_classes=1000), image_size) == 60_965_224


def test_alexnet_owt_matches_torchvision_parameter_count():
    assert count_params(models.AlexNetOWT(num_classes=1000), 224) == 61_100_840


@pytest.mark.parametrize("image_size", [224, 227])
def test_alexnet2012_conv1_gives_55x55_maps(image_size):
    model = models.AlexNet2012(num_classes=7)
    x = jnp.zeros((2, image_size, image_size, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    out, state = jax.eval_shape(lambda p: model.apply(p, x, capture_intermediates=True), params)
    assert state["intermediates"]["conv1"]["__call__"][0].shape == (2, 55, 55, 96)
    assert out.shape == (2, 7)


def test_alexnet2012_uses_paper_initialisation():
    init = models.AlexNet2012(num_classes=10).init
    images = jnp.zeros((1, 227, 227, 3))

    def checked(key):
        """Biases, and the spread of the smaller kernels: XLA then leaves fc6's and fc7's 54M
        weights undrawn (the paper draws every layer's weights from the same N(0, 0.01))."""
        params = init(key, images)["params"]
        stds = {name: jnp.std(params[name]["kernel"]) for name in ("conv1", "conv2", "fc8")}
        return {name: layer["bias"] for name, layer in params.items()}, stds

    biases, stds = jax.jit(checked)(jax.random.key(0))
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        np.testing.assert_array_equal(biases[name], 1.0)
    for name in ("conv1", "conv3", "fc8"):
        np.testing.assert_array_equal(biases[name], 0.0)
    for name, std in stds.items():  # 35k to 307k draws: the sample std is within 1% of 0.01
        assert abs(float(std) - 0.01) < 1e-4, (name, std)
    shapes = jax.eval_shape(init, jax.random.key(0), images)["params"]
    assert shapes["conv2"]["kernel"].shape == (5, 5, 48, 256)  # two groups of 48 input maps


def test_cifar_model_output_shape_width_and_dtypes():
    small = models.AlexNetCIFAR(num_classes=10, width=0.25, fc_features=512, dtype=jnp.bfloat16)
    x = jnp.zeros((3, 32, 32, 3))
    variables = jax.jit(small.init)(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    logits = jax.jit(small.apply)(variables, x)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 16)
    assert count_params(small, 32) < count_params(models.AlexNetCIFAR(num_classes=10, width=0.5), 32)


def test_create_model_reads_config():
    config = ml_collections.ConfigDict({"name": "alexnet_cifar", "dtype": "bfloat16", "width": 0.5, "lrn": True})
    model = models.create_model(config, num_classes=4)
    assert isinstance(model, models.AlexNetCIFAR)
    assert (model.num_classes, model.width, model.lrn, model.dtype) == (4, 0.5, True, jnp.bfloat16)


def lrn_reference(x, size, k, alpha, beta, groups):
    """The paper's formula, one channel at a time, within each group of channels."""
    out = np.empty_like(x)
    per_group = x.shape[-1] // groups
    for c in range(x.shape[-1]):
        first = (c // per_group) * per_group
        lo, hi = max(first, c - size // 2), min(first + per_group - 1, c + size // 2)
        out[..., c] = x[..., c] / (k + alpha * np.sum(x[..., lo : hi + 1] ** 2, axis=-1)) ** beta
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_matches_the_papers_formula(groups):
    x = np.random.default_rng(0).normal(0, 30, (2, 3, 3, 12)).astype(np.float32)
    layer = models.LocalResponseNorm(size=5, k=2.0, alpha=1e-4, beta=0.75, groups=groups)
    got = layer.apply({}, jnp.asarray(x))
    np.testing.assert_allclose(got, lrn_reference(x, 5, 2.0, 1e-4, 0.75, groups), rtol=1e-5)
    assert not np.allclose(got, x)  # the large inputs make the normalisation visible


def test_adaptive_avg_pool_matches_torch_bins():
    x = np.random.default_rng(1).normal(size=(1, 7, 5, 2)).astype(np.float32)
    got = np.asarray(models.adaptive_avg_pool(jnp.asarray(x), 3))
    # torch bins for 7 -> 3: [0,3) [2,5) [4,7); for 5 -> 3: [0,2) [1,4) [3,5)
    rows, cols = [(0, 3), (2, 5), (4, 7)], [(0, 2), (1, 4), (3, 5)]
    want = np.array([[x[0, a:b, c:d].mean((0, 1)) for c, d in cols] for a, b in rows])
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


@pytest.mark.parametrize(
    "model, size, message",
    [
        (models.AlexNet2012(), 32, "alexnet2012 takes 224..227 pixel images, got 32"),
        (models.AlexNet2012(), 256, "alexnet2012 takes 224..227 pixel images, got 256"),
        (models.AlexNetOWT(), 32, "alexnet_owt takes at least 63 pixel images, got 32"),
    ],
)
def test_imagenet_models_reject_wrong_input_sizes(model, size, message):
    from alexnet_jax.errors import UserError

    with pytest.raises(UserError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_alexnet_owt_accepts_its_smallest_input():
    assert count_params(models.AlexNetOWT(), 63) == 61_100_840


def test_create_model_ignores_fields_of_other_models():
    config = ml_collections.ConfigDict({"name": "alexnet_owt", "width": 0.5, "channels": (8,), "dropout_rate": 0.3})
    model = models.create_model(config, num_classes=3)
    assert isinstance(model, models.AlexNetOWT) and model.dropout_rate == 0.3

"""AlexNet variants in Flax linen, NHWC, float32 parameters, configurable compute dtype.

* ``alexnet2012``: Krizhevsky, Sutskever & Hinton (2012), layer by layer, including the two-GPU
  grouping and the paper's initialisation. 60,965,224 parameters for 1000 classes.
* ``alexnet_owt``: torchvision's "one weird trick" layout (no LRN, no groups). 61,100,840 parameters.
* ``alexnet_cifar``: AlexNet's structure (5 conv + 3 FC, ReLU, overlapping max-pool, dropout,
  optional LRN) for 32x32 inputs, with a width multiplier.

The 224/227 question: the paper feeds 224x224 crops yet states a 55x55 conv1 output, which an
11x11 stride-4 unpadded convolution only gives for 227x227 inputs. ``alexnet2012`` accepts either:
inputs smaller than 227 are zero-padded up to 227 inside conv1 (224 -> 1 pixel top/left, 2 pixels
bottom/right), so 224 crops (the paper's text) and 227 crops (Caffe's choice) both give 55x55.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import UserError
from alexnet_jax.layers import Conv, max_pool
from alexnet_jax.parallel import AXIS

PAPER_INPUT_SIZE = 227
NORMS = ("none", "batch")
# Every model names its layers as the paper does: conv1 ... conv5, fc6, fc7, and the classifier
# fc8, which fine-tuning starts afresh for other classes; alexnet_cifar's batch norms bn1 ... bn5.
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
HEAD = "fc8"


def _check_input_size(model: str, size: int, smallest: int, largest: int | None = None):
    if size < smallest or (largest is not None and size > largest):
        wanted = f"{smallest}..{largest}" if largest else f"at least {smallest}"
        raise UserError(f"{model} takes {wanted} pixel images, got {size}; use alexnet_cifar for small images")


def at_least_float32(dtype) -> jnp.dtype:
    """The dtype sums and logits are kept in: float32 for bfloat16 compute, float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


class LocalResponseNorm(nn.Module):
    """Local response normalisation as written in the paper (section 3.3).

    b[c] = a[c] / (k + alpha * sum_{j=max(0, c-n/2)}^{min(N-1, c+n/2)} a[j]^2) ** beta

    alpha multiplies the plain sum (not the sum divided by n, as in Caffe and PyTorch). With
    ``groups`` > 1 the channels are normalised within each group, as each GPU did in the paper.
    """

    size: int = 5
    k: float = 2.0
    alpha: float = 1e-4
    beta: float = 0.75
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(at_least_float32(dtype))
        *spatial, channels = x.shape
        grouped = x.reshape(*spatial, self.groups, channels // self.groups)
        half = self.size // 2
        window_sums = jax.lax.reduce_window(
            jnp.square(grouped),
            0.0,
            jax.lax.add,
            window_dimensions=(1,) * (grouped.ndim - 1) + (self.size,),
            window_strides=(1,) * grouped.ndim,
            padding=((0, 0),) * (grouped.ndim - 1) + ((half, half),),
        )
        out = grouped / (self.k + self.alpha * window_sums) ** self.beta
        return out.reshape(x.shape).astype(dtype)


class Dropout(nn.Module):
    """Flax's ``nn.Dropout`` (the same masks from the same keys) whose rate may also be a traced
    value (the step's ``hyper`` input: ``train_step.hyperparameters``)."""

    rate: Any

    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or (isinstance(self.rate, int | float) and self.rate == 0):
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def _max_pool(x: jax.Array, padding: str = "VALID") -> jax.Array:
    """The paper's overlapping pooling: 3x3 windows, stride 2."""
    return max_pool(x, (3, 3), (2, 2), padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gather_replicated(x: jax.Array, axis_name: str) -> jax.Array:
    """``all_gather`` on the last axis, for a value every device then uses alike (the logits, whose
    loss each tower computes): the gradient of a device's part is its part of the gradient, where
    ``all_gather``'s own transpose would sum the identical gradients of every device."""
    return jax.lax.all_gather(x, axis_name, axis=x.ndim - 1, tiled=True)


def _gather_forward(x, axis_name):
    return gather_replicated(x, axis_name), None


def _gather_backward(axis_name, _, gradient):
    size = gradient.shape[-1] // jax.lax.axis_size(axis_name)
    start = jax.lax.axis_index(axis_name) * size
    return (jax.lax.dynamic_slice_in_dim(gradient, start, size, axis=gradient.ndim - 1),)


gather_replicated.defvjp(_gather_forward, _gather_backward)


class AlexNet2012(nn.Module):
    """The 2012 paper's network (Figure 2). On one device the two GPU halves become groups; with
    ``tower_axis`` (``--config.parallel=towers``) this module is one GPU's half, as in the paper:
    half of every layer's kernels (the parameters of the grouped model, split on their output
    axis), the outputs of conv2, conv5, fc6, fc7 and fc8 gathered from both towers, where the
    paper's GPUs communicated, and nowhere else. ``width`` scales every layer (1: the paper's)."""

    num_classes: int = 1000
    dropout_rate: float = 0.5
    width: float = 1.0
    tower_axis: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        weights = nn.initializers.normal(stddev=0.01)
        zeros, ones = nn.initializers.zeros, nn.initializers.ones
        towers = 1 if self.tower_axis is None else 2  # this module's share of each layer: 1 / towers
        size = lambda features: max(2, 2 * round(features * self.width / 2))  # even: two halves
        gather = lambda x: x if towers == 1 else jax.lax.all_gather(x, self.tower_axis, axis=x.ndim - 1, tiled=True)

        def conv(features, kernel, bias_init, grouped=False, strides=1, padding=1, name=None):
            return Conv(
                size(features) // towers,
                (kernel, kernel),
                strides=strides,
                padding=padding,
                feature_group_count=2 if grouped and towers == 1 else 1,
                kernel_init=weights,
                bias_init=bias_init,
                dtype=self.dtype,
                name=name,
            )

        def dense(features, bias_init, name):
            return nn.Dense(features // towers, kernel_init=weights, bias_init=bias_init, dtype=self.dtype, name=name)

        _check_input_size("alexnet2012", x.shape[1], 224, PAPER_INPUT_SIZE)
        pad = PAPER_INPUT_SIZE - x.shape[1]
        conv1_padding = ((pad // 2, pad - pad // 2),) * 2
        lrn = functools.partial(LocalResponseNorm, groups=2 // towers)  # within each GPU's half
        x = x.astype(self.dtype)
        x = nn.relu(conv(96, 11, zeros, strides=4, padding=conv1_padding, name="conv1")(x))
        x = _max_pool(lrn(name="lrn1")(x))
        x = nn.relu(conv(256, 5, ones, grouped=True, padding=2, name="conv2")(x))
        x = _max_pool(lrn(name="lrn2")(x))
        x = nn.relu(conv(384, 3, zeros, name="conv3")(gather(x)))  # conv3 reads both GPUs' conv2
        x = nn.relu(conv(384, 3, ones, grouped=True, name="conv4")(x))
        x = _max_pool(nn.relu(conv(256, 3, ones, grouped=True, name="conv5")(x)))
        x = gather(x).reshape(x.shape[0], -1)  # the fully connected layers read both GPUs
        # The paper drops out the outputs of the first two fully connected layers.
        x = Dropout(self.dropout_rate)(gather(nn.relu(dense(size(4096), ones, "fc6")(x))), not train)
        x = Dropout(self.dropout_rate)(gather(nn.relu(dense(size(4096), ones, "fc7")(x))), not train)
        x = dense(self.num_classes, zeros, HEAD)(x)
        x = x if towers == 1 else gather_replicated(x, self.tower_axis)
        return x.astype(at_least_float32(self.dtype))


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
    """torchvision's AdaptiveAvgPool2d for NHWC inputs: bins [floor(i*H/o), ceil((i+1)*H/o))."""
    height, width = x.shape[1:3]
    if (height, width) == (output_size, output_size):
        return x

    def bins(length):
        return [(i * length // output_size, -(-(i + 1) * length // output_size)) for i in range(output_size)]

    rows = [
        jnp.stack([x[:, h0:h1, w0:w1].mean(axis=(1, 2)) for w0, w1 in bins(width)], axis=1) for h0, h1 in bins(height)
    ]
    return jnp.stack(rows, axis=1)


class AlexNetOWT(nn.Module):
    """torchvision.models.alexnet: Krizhevsky's 2014 "one weird trick" single-tower layout."""

    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(features, kernel, name, strides=1, padding=1):
            return Conv(features, (kernel, kernel), strides, padding=padding, dtype=self.dtype, name=name)

        _check_input_size("alexnet_owt", x.shape[1], 63)  # smaller inputs pool down to nothing
        x = x.astype(self.dtype)
        x = _max_pool(nn.relu(conv(64, 11, "conv1", strides=4, padding=2)(x)))
        x = _max_pool(nn.relu(conv(192, 5, "conv2", padding=2)(x)))
        x = nn.relu(conv(384, 3, "conv3")(x))
        x = nn.relu(conv(256, 3, "conv4")(x))
        x = _max_pool(nn.relu(conv(256, 3, "conv5")(x)))
        x = adaptive_avg_pool(x, 6).reshape(x.shape[0], -1)
        x = Dropout(self.dropout_rate)(x, not train)
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc6")(x))
        x = Dropout(self.dropout_rate)(x, not train)
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="fc7")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x).astype(at_least_float32(self.dtype))


class AlexNetCIFAR(nn.Module):
    """AlexNet's structure for 32x32 images: 5 conv (3x3) + 3 FC, ReLU, 3x3/2 max-pools, dropout.

    ``width`` scales every layer of the full-width net (64, 192, 384, 256, 256 conv channels;
    ``fc_features`` hidden units). He-normal initialisation, since without normalisation layers
    the paper's N(0, 0.01^2) makes a slim net start too slowly for a 30-minute CPU budget.
    ``norm="batch"`` puts batch normalisation (statistics over the global batch, on every device)
    between each convolution and its ReLU, where ``lrn`` would be; the convolutions then have no bias.
    """

    num_classes: int = 10
    width: float = 1.0
    fc_features: int = 2048
    channels: Sequence[int] = (64, 192, 384, 256, 256)
    lrn: bool = False
    norm: str = "none"  # none | batch
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        he = nn.initializers.he_normal()
        c1, c2, c3, c4, c5 = (max(1, round(c * self.width)) for c in self.channels)
        hidden = max(1, round(self.fc_features * self.width))
        if self.norm not in NORMS:
            raise UserError(f"--config.model.norm={self.norm!r} is not one of {NORMS}")
        batch_norm = self.norm == "batch"

        def conv_relu(x, features, layer: int, lrn=False):
            conv = Conv(features, (3, 3), padding=1, use_bias=not batch_norm, kernel_init=he, dtype=self.dtype,
                           name=f"conv{layer}")  # fmt: skip
            x = conv(x)
            if batch_norm:
                axis = AXIS if train else None
                x = nn.BatchNorm(not train, momentum=0.9, dtype=self.dtype, axis_name=axis, name=f"bn{layer}")(x)
            x = nn.relu(x)
            return LocalResponseNorm(name=f"lrn{layer}")(x) if lrn else x

        x = x.astype(self.dtype)
        x = _max_pool(conv_relu(x, c1, 1, self.lrn), padding="SAME")
        x = _max_pool(conv_relu(x, c2, 2, self.lrn), padding="SAME")
        x = conv_relu(x, c3, 3)
        x = conv_relu(x, c4, 4)
        x = _max_pool(conv_relu(x, c5, 5), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        x = Dropout(self.dropout_rate)(x, not train)
        x = nn.relu(nn.Dense(hidden, kernel_init=he, dtype=self.dtype, name="fc6")(x))
        x = Dropout(self.dropout_rate)(x, not train)
        x = nn.relu(nn.Dense(hidden, kernel_init=he, dtype=self.dtype, name="fc7")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name=HEAD)(x).astype(at_least_float32(self.dtype))


MODELS = {"alexnet2012": AlexNet2012, "alexnet_owt": AlexNetOWT, "alexnet_cifar": AlexNetCIFAR}


def is_dense(module_name: str) -> bool:
    """Whether a top-level module is a fully connected layer (else convolutional: a conv, its batch norm)."""
    return module_name.startswith("fc")


def renamed_from_flax(tree):
    """A variable tree of an earlier version, whose models had Flax's automatic layer names
    (``Conv_0`` ... ``Conv_4``, ``BatchNorm_0`` ..., ``Dense_0`` ... ``Dense_2``), with the paper's
    (``conv1`` ... ``conv5``, ``bn1`` ..., ``fc6`` ... ``fc8``), wherever in ``tree`` (an optimizer
    state's momentum, a moving average) they are keys; other keys are left as they are."""
    return rename_keys(tree, _from_flax)


def renamed_to_flax(tree):
    """``renamed_from_flax``'s inverse: the tree an earlier version would hold."""
    return rename_keys(tree, _to_flax)


_FLAX_NAMES = {"Conv": ("conv", 1), "BatchNorm": ("bn", 1), "Dense": ("fc", 6)}


def _from_flax(key):
    prefix, _, number = str(key).partition("_")
    if prefix in _FLAX_NAMES and number.isdigit():
        name, first = _FLAX_NAMES[prefix]
        return f"{name}{int(number) + first}"
    return key


def _to_flax(key):
    for prefix, (name, first) in _FLAX_NAMES.items():
        number = str(key).removeprefix(name)
        if str(key).startswith(name) and number.isdigit():
            return f"{prefix}_{int(number) - first}"
    return key


def rename_keys(tree, rename):
    """``tree`` with every dict key ``k`` replaced by ``rename(k)``, through dicts, lists, tuples and
    named tuples (Optax's states)."""
    if isinstance(tree, dict):
        return {rename(k): rename_keys(v, rename) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(rename_keys(v, rename) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(rename_keys(v, rename) for v in tree)
    return tree


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}  # float64: JAX_ENABLE_X64=1


def param_dtype(model_config):
    """The dtype of the parameters and the optimizer state: float64 for ``dtype=float64`` (numerical
    checks: results that differ only in the order of sums then agree to ~1e-15), else float32."""
    return np.float64 if model_config.get("dtype") == "float64" else np.float32


def first_layer_kernel(params):
    """The kernel of the convolution that reads the image (the only one with 3 input channels):
    height x width x 3 x filters, as it is held (a device array, perhaps split over devices)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    kernels = [leaf for path, leaf in leaves if getattr(path[-1], "key", None) == "kernel" and leaf.ndim == 4]
    first = [kernel for kernel in kernels if kernel.shape[2] == 3]
    if len(first) != 1:
        raise ValueError(f"expected one convolution reading 3 channels, found {len(first)}")
    return first[0]


def towers(name: str) -> int:
    """How many GPUs the model's layers were split over in the paper (alexnet2012's two), else 1."""
    return 2 if name == "alexnet2012" else 1


def model_fields(name: str) -> set[str]:
    """The config fields model ``name`` takes (its module attributes, less the wiring)."""
    return set(MODELS[name].__dataclass_fields__) - {"parent", "name", "num_classes", "tower_axis"}


def create_model(model_config, num_classes: int) -> nn.Module:
    """Builds the model named by ``model_config.name`` from the config fields it takes (the towers'
    half of ``alexnet2012``: ``parallel.TowerParallel.model``).

    Fields that only other models take are ignored, so one config can switch models with
    ``--config.model.name``.
    """
    name = model_config.name
    fields = {k: v for k, v in model_config.items() if k in model_fields(name)}
    fields["dtype"] = DTYPES[fields.get("dtype", "float32")]
    return MODELS[name](num_classes=num_classes, **fields)

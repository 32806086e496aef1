"""The project's layers (``alexnet_jax/layers.py``): on a CPU a convolution's kernel gradient is
matrix products and a max-pool's gradient elementwise; they must compute what XLA's gradients
compute, in every shape the models use; for a GPU the step keeps XLA's convolutions and pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import linen as nn
from jax import lax

from alexnet_jax import ensemble, layers, parallel
from alexnet_jax.experiment import create_state
from alexnet_jax.train import compose_train_step

LAYOUT = ("NHWC", "HWIO", "NHWC")

# (input, kernel, strides, padding, groups): the models' kinds of convolution, small.
CASES = {
    "3x3": ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), ((1, 1), (1, 1)), 1),
    "5x5 grouped": ((2, 9, 9, 4), (5, 5, 2, 6), (1, 1), ((2, 2), (2, 2)), 2),
    "asymmetric padding": ((2, 9, 7, 4), (3, 3, 4, 6), (1, 1), ((1, 2), (0, 1)), 1),
    "SAME": ((2, 9, 7, 4), (3, 3, 4, 6), (1, 1), "SAME", 1),
    "VALID": ((2, 9, 7, 4), (3, 3, 4, 6), (1, 1), "VALID", 1),
    "11x11 stride 4": ((2, 35, 35, 3), (11, 11, 3, 8), (4, 4), ((2, 2), (2, 2)), 1),
}


@pytest.fixture(autouse=True)
def products_at_every_size(monkeypatch):
    """The tests' convolutions are far below the size where the layers take over from XLA's
    gradient: here they take the products whatever the size (the rule itself: the last test)."""
    monkeypatch.setattr(layers, "PRODUCTS_FROM_FLOPS", 0)


def loss_of(convolution, strides, padding, groups):
    """A loss whose output gradient is not a constant (sin), so every sum of the gradients shows."""
    spec = dict(dimension_numbers=LAYOUT, feature_group_count=groups)
    return lambda x, k: jnp.sum(jnp.sin(convolution(x, k, strides, padding, **spec)))


def arrays(x_shape, k_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(k_shape).astype(dtype)


def relative(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("case", CASES)
def test_gradients_equal_lax_convs_in_float64(case):
    x_shape, k_shape, *layout = CASES[case]
    with jax.enable_x64(True):
        x, k = arrays(x_shape, k_shape, np.float64)
        want = jax.grad(loss_of(lax.conv_general_dilated, *layout), (0, 1))(x, k)
        got = jax.jit(jax.grad(loss_of(layers.conv_general_dilated, *layout), (0, 1)))(x, k)
    for name, g, w in zip(("input", "kernel"), got, want, strict=True):
        assert relative(g, w) <= 1e-12, (name, relative(g, w))


def test_ensemble_members_and_per_example_gradients_equal_lax_convs_in_float64():
    """vmap over members (a kernel and a batch each) and over examples (per-example gradients)."""
    x_shape, k_shape, *layout = CASES["5x5 grouped"]
    members = lambda loss: jax.vmap(jax.grad(loss, (0, 1)))
    examples = lambda loss: jax.vmap(jax.grad(lambda x, k: loss(x[None], k), (0, 1)), (0, None))
    with jax.enable_x64(True):
        x, k = arrays((3, *x_shape), (3, *k_shape), np.float64)
        for vmapped, inputs in ((members, (x, k)), (examples, (x[0], k[0]))):
            want = vmapped(loss_of(lax.conv_general_dilated, *layout))(*inputs)
            got = jax.jit(vmapped(loss_of(layers.conv_general_dilated, *layout)))(*inputs)
            for g, w in zip(got, want, strict=True):
                assert relative(g, w) <= 1e-12


POOLS = [  # shape, window, strides, padding: the models' 3x3 at stride 2, then other windows and strides
    ((3, 9, 9, 4), (3, 3), (2, 2), "VALID"),
    ((3, 8, 8, 4), (3, 3), (2, 2), "SAME"),
    ((3, 7, 6, 2), (3, 3), (2, 2), "SAME"),
    ((3, 8, 8, 2), (2, 2), (2, 2), "VALID"),
    ((3, 7, 7, 2), (3, 3), (1, 1), "SAME"),
    ((3, 9, 8, 2), (2, 3), (3, 2), "SAME"),
    ((3, 7, 7, 2), (1, 1), (2, 2), "VALID"),  # pixels no window reads
]


@pytest.mark.parametrize("shape, window, strides, padding", POOLS)
def test_max_pool_gradients_equal_flaxs_in_float64_ties_included(shape, window, strides, padding):
    """After a ReLU many windows hold several equal maxima (zeros): the gradient must go to the one
    XLA's select_and_scatter chooses, or the difference is of the gradient's own size."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = np.round(np.maximum(rng.standard_normal((2, *shape)), 0), 1)  # zeros and equal values
        loss = lambda pool: pooled_loss(pool, window, strides, padding)
        gradient = lambda pool: jax.jit(jax.vmap(jax.grad(loss(pool))))(x)
        want, got = gradient(nn.max_pool), gradient(layers.max_pool)
    assert relative(got, want) <= 1e-12  # vmap-ed, as ensemble members take it


def pooled_loss(pool, window, strides, padding):
    return lambda x: jnp.sum(jnp.sin(pool(x, window, strides, padding)) * jnp.arange(1.0, 1 + x.shape[-1]))


@pytest.mark.parametrize("case", ["3x3", "5x5 grouped"])
def test_float32_kernel_gradients_within_the_rounding_bound(case):
    """Each kernel gradient entry sums K = batch x output pixels products, in another order than
    XLA's convolution: both are within gamma_K = K u / (1 - K u) of the exact sum, relative to the
    sum of the products' magnitudes (computed in float64), so they differ by at most twice that."""
    x_shape, k_shape, *layout = CASES[case]
    x, k = arrays(x_shape, k_shape, np.float32)
    output = jax.eval_shape(lambda x, k: lax.conv_general_dilated(x, k, *layout[:2], dimension_numbers=LAYOUT,
                                                                 feature_group_count=layout[2]), x, k)  # fmt: skip
    g = np.random.default_rng(1).standard_normal(output.shape).astype(np.float32)
    padding, groups = layout[1], layout[2]
    want = kernel_gradient_by_lax(x, g, k, *layout)
    got = layers.kernel_gradient_by_products(x, g, k.shape, padding, groups)
    with jax.enable_x64(True):
        magnitudes = kernel_gradient_by_lax(np.abs(x).astype(np.float64), np.abs(g).astype(np.float64), k, *layout)
    terms = output.shape[0] * output.shape[1] * output.shape[2]
    unit = np.finfo(np.float32).eps / 2
    gamma = terms * unit / (1 - terms * unit)
    assert (np.abs(np.asarray(got) - np.asarray(want)) <= 2 * gamma * magnitudes).all()


def kernel_gradient_by_lax(x, g, k, strides, padding, groups):
    forward = lambda k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=LAYOUT,
                                                 feature_group_count=groups)  # fmt: skip
    return np.asarray(jax.vjp(forward, jnp.zeros(k.shape, x.dtype))[1](g)[0])


def exported_train_step(platform: str) -> str:
    """The tiny config's train step (alexnet_cifar, data parallel over this process's devices),
    exported for ``platform`` from this CPU machine: its StableHLO text."""
    config, shape = tiny_config(), (32, 32, 3)
    state = jax.eval_shape(lambda: create_state(config, 10, shape, 4))
    batch = {"image": jax.ShapeDtypeStruct((64, *shape), np.uint8), "label": jax.ShapeDtypeStruct((64,), np.int32)}
    rng = jax.eval_shape(lambda: ensemble.train_key(config))
    step = compose_train_step(parallel.create(config.parallel), config, 10)
    return jax.export.export(step, platforms=(platform,))(state, batch, rng).mlir_module()


def test_a_step_exported_for_gpus_keeps_xlas_gradients_and_for_cpus_takes_the_layers():
    """alexnet_cifar's 5 convolutions: 5 forward, 4 input gradients (not the image's), 5 kernel
    gradients as convolutions for CUDA; on a CPU the kernel gradients are matrix products. Its 3
    max-pools' gradients: select_and_scatter for CUDA, none on a CPU."""
    cuda, cpu = exported_train_step("cuda"), exported_train_step("cpu")
    assert cuda.count("stablehlo.convolution") == 5 + 4 + 5 and cuda.count("stablehlo.select_and_scatter") == 3
    assert cpu.count("stablehlo.convolution") == 5 + 4 and cpu.count("stablehlo.select_and_scatter") == 0


@pytest.mark.parametrize("x_shape, kernel_gradient", [((8, 32, 32, 96), "products"), ((8, 8, 8, 96), "convolution")])
def test_small_kernel_gradients_stay_xlas(monkeypatch, x_shape, kernel_gradient):
    """3x3, 96 -> 96 channels: 1.36 GFLOP of kernel-gradient work at 8 x 32 x 32 (products), 85
    MFLOP at 8 x 8 x 8, below ``PRODUCTS_FROM_FLOPS`` (XLA's convolution)."""
    monkeypatch.setattr(layers, "PRODUCTS_FROM_FLOPS", 100e6)
    x, k = jax.ShapeDtypeStruct(x_shape, np.float32), jax.ShapeDtypeStruct((3, 3, 96, 96), np.float32)
    step = jax.grad(loss_of(layers.conv_general_dilated, (1, 1), "SAME", 1), (0, 1))
    exported = jax.export.export(jax.jit(step), platforms=("cpu",))(x, k).mlir_module()
    assert exported.count("stablehlo.convolution") == {"products": 2, "convolution": 3}[kernel_gradient]

"""Layers whose gradients a CPU computes faster than XLA's own: ``Conv`` and ``max_pool``.

Convolution. XLA's CPU backend computes a convolution's kernel gradient as another convolution, up
to several times slower (3.8x on ``configs/cifar10_cpu.py``'s conv2) than the same sums taken as one matrix
product per kernel position: the input's slice at that position against the output's gradient
(BENCHMARKS.md, "Where a CPU step's convolutions go").
``Conv`` is ``nn.Conv`` with ``conv_general_dilated`` below: the forward pass and the input's
gradient are ``lax.conv_general_dilated``'s own; the kernel's gradient is the matrix products where
the program runs on a CPU, and XLA's convolution everywhere else (cuDNN, the TPU's MXU). The choice
is made inside the compiled program (``lax.platform_dependent``): a step traced once lowers to
``lax.conv``'s gradients for a GPU or a TPU. Parameters keep ``nn.Conv``'s names and shapes.
Strided convolutions (AlexNet's 11x11 at stride 4: its slices are sparse gathers, slower than
XLA's), dilated ones, other layouts and small ones (below ``PRODUCTS_FROM_FLOPS`` of kernel-gradient
work per device, as in the test suite's tiny models) keep XLA's gradient everywhere.

Max-pooling. XLA's CPU backend computes the gradient of a max-pool (``select_and_scatter``) with
an index tensor per dimension, a variadic reduce-window and a scatter: about a quarter of the
operations' time in a CPU step of ``configs/cifar10_cpu.py``'s network (BENCHMARKS.md, "Where the
CPU step goes now, and PyTorch's"). ``max_pool``'s gradient on a CPU is elementwise instead: for each window
position, the output's gradient goes where the input equals the window's maximum (the first such
position in row-major order, as ``select_and_scatter`` chooses), placed back by shifts.
"""

import functools
import itertools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

LAYOUT = ("NHWC", "HWIO", "NHWC")  # Flax's, the one the products handle
# Below this much kernel-gradient work (floating-point operations per device) XLA's own gradient is
# as fast, and compiles in a third of the time (BENCHMARKS.md, "Where a CPU step's convolutions go").
PRODUCTS_FROM_FLOPS = 100e6


def kernel_gradient_by_products(x, g, kernel_shape, padding, groups: int, strides=(1, 1)) -> jax.Array:
    """d loss / d kernel of an NHWC x HWIO convolution from its input ``x`` and its output's gradient
    ``g``: for each kernel position, the (strided) input slice it sees times ``g``, summed over the
    batch and the output's pixels (one matrix product per position, batched over the groups).

    A loop over the kernel's rows (each row's slices made and used before the next row's): unrolled
    over every position, XLA keeps every slice alive at once (alexnet2012's 5x5 conv2 at batch 128:
    25 slices of 36 MB)."""
    *window, in_per_group, out_features = kernel_shape
    x = _pad_pixels(x, 0, [(low, high, 0) for low, high in padding])
    batch, *out_size, _ = g.shape
    x = x.reshape(*x.shape[:-1], groups, in_per_group)
    g = g.reshape(*g.shape[:-1], groups, out_features // groups)
    accumulate = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 inputs: sums in float32
    (row_stride, column_stride), (out_rows, out_columns) = strides, out_size
    rows, columns = row_stride * (out_rows - 1) + 1, column_stride * (out_columns - 1) + 1  # the spans read

    def kernel_row(i):
        band = lax.dynamic_slice_in_dim(x, i, rows, axis=1)[:, ::row_stride]  # the input rows row i sees
        seen = (band[:, :, j : j + columns : column_stride] for j in range(window[1]))
        return jnp.stack([jnp.einsum("nhwgc,nhwgo->cgo", s, g, preferred_element_type=accumulate) for s in seen])

    return lax.map(kernel_row, jnp.arange(window[0])).reshape(*window, in_per_group, out_features).astype(x.dtype)


def _pad_pixels(x, value, pixels) -> jax.Array:
    """``x`` (NHWC) padded on its pixel axes only, by ``pixels``: (low, high, interior) per axis."""
    return lax.pad(x, jnp.array(value, x.dtype), [(0, 0, 0), *pixels, (0, 0, 0)])


def _xla_conv(x, kernel, padding, groups, precision):
    return lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=LAYOUT, feature_group_count=groups, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, padding, groups, precision):
    return _xla_conv(x, kernel, padding, groups, precision)


def _conv_forward(x, kernel, padding, groups, precision):
    return _xla_conv(x, kernel, padding, groups, precision), (x, kernel)


def _conv_backward(padding, groups, precision, saved, g):
    conv = functools.partial(_xla_conv, padding=padding, groups=groups, precision=precision)

    def on_cpu(x, kernel, g):
        (input_gradient,) = jax.vjp(lambda x: conv(x, kernel), x)[1](g)
        return input_gradient, kernel_gradient_by_products(x, g, kernel.shape, padding, groups)

    def elsewhere(x, kernel, g):
        return jax.vjp(conv, x, kernel)[1](g)

    return lax.platform_dependent(*saved, g, cpu=on_cpu, default=elsewhere)


_conv.defvjp(_conv_forward, _conv_backward)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated``, with the kernel's gradient by matrix products on CPUs where the
    convolution is a 2-D one in Flax's layout, at stride 1, undilated (see the module's docstring)."""
    undilated = all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    in_layout = lhs.ndim == 4 and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == (
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, LAYOUT)
    )
    handled = in_layout and undilated and tuple(window_strides) == (1, 1) and batch_group_count == 1
    if not handled or preferred_element_type is not None or _kernel_gradient_flops(lhs, rhs) < PRODUCTS_FROM_FLOPS:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return _conv(lhs, rhs, tuple(map(tuple, padding)), feature_group_count, precision)


def _kernel_gradient_flops(x, kernel) -> float:
    """Multiplies and adds of a stride-1 NHWC x HWIO convolution's kernel gradient (about the output's pixels)."""
    return 2.0 * x.shape[0] * x.shape[1] * x.shape[2] * kernel.size


def _pool(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))


def pool_gradient_by_masks(x, pooled, g, window, strides, padding) -> jax.Array:
    """d loss / d x of an NHWC max-pool from its input ``x``, its output ``pooled`` and the output's
    gradient ``g``: each output's gradient goes to the first input of its window (row-major) that
    equals the window's maximum.

    That first position is an index per output (the least window position that matches), and the
    gradients are placed back without strided padding (``_placed_back``): in the loop XLA's CPU
    backend fuses them into, the padding's index arithmetic was paid at every pixel for every
    position (BENCHMARKS.md, "The max-pool's gradient placed back by phases")."""
    padded = _pad_pixels(x, -jnp.inf, [(low, high, 0) for low, high in padding])
    batch, *out_size, channels = pooled.shape
    positions = list(itertools.product(*map(range, window)))
    indices = []
    for k, position in enumerate(positions):
        ends = [p + s * (size - 1) + 1 for p, s, size in zip(position, strides, out_size, strict=True)]
        seen = lax.slice(padded, (0, *position, 0), (batch, *ends, channels), (1, *strides, 1))
        indices.append(jnp.where(seen == pooled, k, len(positions)))  # len(positions): none (a NaN window)
    first = jnp.min(jnp.stack(indices, axis=-1), axis=-1)
    masked = {position: jnp.where(first == k, g, jnp.zeros((), g.dtype)) for k, position in enumerate(positions)}
    total = _placed_back(masked, strides, padded.shape)
    return _pad_pixels(total, 0, [(-low, -high, 0) for low, high in padding])  # the padding cut off


def _placed_back(masked: dict, strides, shape) -> jax.Array:
    """The sum of each window position's gradients placed where that position read them, in a
    batch of ``shape``: the pixels split into strides[0] x strides[1] phases (rows r, r + stride,
    ...), each phase a sum of shifted gradients, then interleaved (no strided padding, whose index
    arithmetic XLA's CPU loops pay for every position at every pixel)."""
    batch, *size, channels = shape
    rows, columns = (-(-n // s) for n, s in zip(size, strides, strict=True))  # each phase's, rounded up
    phases = {}
    for (row, column), gradient in masked.items():
        (shift_r, phase_r), (shift_c, phase_c) = divmod(row, strides[0]), divmod(column, strides[1])
        out_rows, out_columns = gradient.shape[1:3]
        shifts = [(shift_r, rows - shift_r - out_rows, 0), (shift_c, columns - shift_c - out_columns, 0)]
        shifted, phase = _pad_pixels(gradient, 0, shifts), (phase_r, phase_c)
        phases[phase] = phases[phase] + shifted if phase in phases else shifted
    zeros = jnp.zeros((batch, rows, columns, channels), shifted.dtype)  # a phase no position reads
    row_phases = [jnp.stack([phases.get((r, c), zeros) for c in range(strides[1])], axis=3) for r in range(strides[0])]
    grid = jnp.stack(row_phases, axis=2)  # batch, rows, row phase, columns, column phase, channels
    return grid.reshape(batch, rows * strides[0], columns * strides[1], channels)[:, : size[0], : size[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    return _pool(x, window, strides, padding)


def _max_pool_forward(x, window, strides, padding):
    pooled = _pool(x, window, strides, padding)
    return pooled, (x, pooled)


def _max_pool_backward(window, strides, padding, saved, g):
    def on_cpu(x, pooled, g):
        return (pool_gradient_by_masks(x, pooled, g, window, strides, padding),)

    def elsewhere(x, pooled, g):
        return jax.vjp(lambda x: _pool(x, window, strides, padding), x)[1](g)

    return lax.platform_dependent(*saved, g, cpu=on_cpu, default=elsewhere)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding="VALID") -> jax.Array:
    """``nn.max_pool`` of an NHWC batch (``padding``: "VALID", "SAME" or pairs), its gradient computed
    elementwise on a CPU (see the module's docstring)."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:-1], window, strides, padding)
    return _max_pool(x, tuple(window), tuple(strides), tuple(map(tuple, padding)))


class Conv(nn.Conv):
    """``nn.Conv`` (same fields, parameters and names) with ``conv_general_dilated`` above: what every
    model of this project, and a researcher's own, uses for a convolution."""

    conv_general_dilated: Callable | None = conv_general_dilated

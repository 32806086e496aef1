"""Where a config's convolutions spend a CPU train step: each convolution of the model, as the
model's forward pass traces it, each part timed alone (forward; input gradient; weight gradient;
both gradients) with XLA's convolution, and its weight gradient computed instead as
one matrix product per kernel position over strided slices of the padded input. Prints one
Markdown table; float32, jitted, the median of ``--repeats`` after a warm-up.

  python benchmarks/conv_cpu.py --config=configs/cifar10_cpu.py
  python benchmarks/conv_cpu.py --config=configs/cifar10_cpu.py --config.model.name=alexnet_owt --batch=32
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax import lax
from ml_collections import config_flags

sys.path.insert(0, ".")
from alexnet_jax import models
from alexnet_jax.layers import kernel_gradient_by_products

config_flags.DEFINE_config_file("config", "configs/cifar10_cpu.py", "The config whose model is measured.")
BATCH = flags.DEFINE_integer("batch", 0, "Images per step (0: the config's batch_size).")
IMAGE = flags.DEFINE_integer("image", 0, "Image side in pixels (0: the model's input: 32 for alexnet_cifar, 224 else).")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement; the median is shown.")


def model_convolutions(config, batch: int, side: int) -> list[dict]:
    """Each convolution of the model's forward pass: its input and kernel shapes and parameters."""
    model = models.create_model(config.model, 10)
    images = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, images)
    found = []
    for eqn in _equations(jaxpr.jaxpr):
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars)
            params = eqn.params
            found.append({"lhs": lhs.shape, "rhs": rhs.shape, "strides": params["window_strides"],
                          "padding": params["padding"], "groups": params["feature_group_count"],
                          "dimension_numbers": params["dimension_numbers"]})  # fmt: skip
    return found


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs inside it (jit, custom derivatives, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for inner in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _median_ms(fn, *args) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPEATS.value):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def measure(conv: dict) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(conv["lhs"]), jnp.float32)
    w = jnp.asarray(0.1 * rng.standard_normal(conv["rhs"]), jnp.float32)
    spec = dict(window_strides=conv["strides"], padding=conv["padding"], feature_group_count=conv["groups"],
                dimension_numbers=conv["dimension_numbers"])  # fmt: skip
    forward = lambda x, w: lax.conv_general_dilated(x, w, **spec)
    dy = jnp.asarray(rng.standard_normal(jax.eval_shape(forward, x, w).shape), jnp.float32)
    pulled = lambda x, w, dy: jax.vjp(forward, x, w)[1](dy)  # the output gradient an argument, not a constant
    layout = (conv["padding"], conv["groups"], conv["strides"])
    by_matmuls = lambda x, w, dy: kernel_gradient_by_products(x, dy, w.shape, *layout)
    xla_weights, matmul_weights = jax.jit(pulled)(x, w, dy)[1], jax.jit(by_matmuls)(x, w, dy)
    difference = float(jnp.linalg.norm(matmul_weights - xla_weights) / jnp.linalg.norm(xla_weights))
    return {
        "forward": _median_ms(forward, x, w),
        "input gradient": _median_ms(lambda x, w, dy: pulled(x, w, dy)[0], x, w, dy),
        "weight gradient": _median_ms(lambda x, w, dy: pulled(x, w, dy)[1], x, w, dy),
        "both gradients": _median_ms(pulled, x, w, dy),
        "weight gradient by matmuls": _median_ms(by_matmuls, x, w, dy),
        "difference": difference,
    }


def main(_):
    config = flags.FLAGS.config
    batch = BATCH.value or config.batch_size
    side = IMAGE.value or (32 if config.model.name == "alexnet_cifar" else 224)
    print(f"{config.model.name}, batch {batch}, {side}x{side} images, float32, JAX {jax.__version__} on "
          f"{jax.devices()[0].device_kind}; ms, median of {REPEATS.value}\n")  # fmt: skip
    print("| convolution | input -> output | forward | input gradient | weight gradient | both gradients | "
          "weight gradient by matmuls | speed-up | relative difference |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, conv in enumerate(model_convolutions(config, batch, side), 1):
        m = measure(conv)
        n, h, w, c = conv["lhs"]
        kh, kw, _, o = conv["rhs"]
        print(f"| {k}: {kh}x{kw}, stride {conv['strides'][0]}, groups {conv['groups']} | {h}x{w}x{c} -> {o} | "
              f"{m['forward']:.1f} | {m['input gradient']:.1f} | {m['weight gradient']:.1f} | "
              f"{m['both gradients']:.1f} | {m['weight gradient by matmuls']:.1f} | "
              f"{m['weight gradient'] / m['weight gradient by matmuls']:.1f}x | {m['difference']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    app.run(main)

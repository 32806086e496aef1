"""docs/research.md's worked examples run as written, and what they rest on: per-example gradients
against a loop over the examples (float64), DP-SGD's aggregate against its definition."""

import pathlib
import re

import jax
import numpy as np
import optax
import pytest
from conftest import ROOT

from alexnet_jax import models
from alexnet_jax.per_example import per_example_grads
from configs import smoke


def test_the_guides_python_blocks_run():
    guide = pathlib.Path(ROOT, "docs", "research.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    assert blocks
    for block in blocks:
        namespace = {}
        exec(compile(block, "docs/research.md", "exec"), namespace)
        assert jax.tree.leaves(namespace["grads"])[0].shape[0] == 8  # per example
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(namespace["params"]))


def _tiny_model(dtype="float32"):
    config = smoke.get_config()
    config.model.width, config.model.fc_features, config.model.dtype = 0.125, 32, dtype
    return models.create_model(config.model, 10)


def test_per_example_gradients_are_each_examples_own_in_float64():
    with jax.enable_x64(True):
        model = _tiny_model("float64")
        images = np.random.default_rng(0).normal(size=(3, 16, 16, 3))
        targets = jax.nn.one_hot(np.array([1, 2, 3]), 10).astype(np.float64)
        params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
        params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
        grads = per_example_grads(model.apply, params, images, targets)

        @jax.jit
        @jax.grad
        def alone(params, image, target):
            logits = model.apply({"params": params}, image[None], train=False)
            return optax.softmax_cross_entropy(logits, target[None])[0]

        for i in range(len(images)):
            alone_grads = alone(params, images[i], targets[i])
            for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(alone_grads), strict=True):
                np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)  # sums in another order only
        with_batch_norm = {**params, "BatchNorm_0": {"scale": np.ones(4), "bias": np.zeros(4)}}
        with pytest.raises(ValueError, match="without batch norm"):
            per_example_grads(model.apply, with_batch_norm, images, targets)


def test_dp_sgds_aggregate_clips_each_example_sums_and_averages():
    grads = {"w": np.array([[3.0, 4.0], [0.3, 0.4]]), "b": np.array([[0.0], [0.0]])}  # norms 5 and 0.5
    aggregate = optax.contrib.differentially_private_aggregate(1.0, 0.0, key=jax.random.key(0))
    updates, _ = aggregate.update(grads, aggregate.init(None))
    np.testing.assert_allclose(updates["w"], (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 2, rtol=1e-6)

"""Per-example gradients: the gradient of each example's loss on its own, ``jax.vmap`` of
``jax.grad`` over the batch, in one compiled program.

Valid for models whose examples do not see each other in the forward pass: not with batch norm
(``norm="batch"``: its statistics mix the batch), which ``per_example_grads`` refuses. Dropout
draws each example's mask from its own key when ``keys`` are given (one per example); without
keys the model runs as at test time. docs/research.md uses it for DP-SGD (Abadi et al., 2016)
through ``optax.contrib.differentially_private_aggregate``.
"""

import functools
import re

import jax
import optax


def per_example_grads(apply_fn, params, inputs: jax.Array, targets: jax.Array, keys: jax.Array | None = None):
    """The gradient of each example's cross-entropy with respect to ``params``: the tree of
    ``params`` with a leading axis of the batch's size.

    ``apply_fn``: the model's ``apply`` (``model.apply``); ``inputs``: float NHWC, normalised as
    the model takes them; ``targets``: one-hot (or smoothed) label distributions, N x classes;
    ``keys``: one dropout key per example, or None. Compiled once per model and shapes."""
    if any(re.search(r"'(bn\d+|BatchNorm_\d+)'", jax.tree_util.keystr(path)) for path, _ in _leaves(params)):
        raise ValueError("per-example gradients need a model without batch norm (--config.model.norm=none)")
    return _per_example_grads(apply_fn, params, inputs, targets, keys)


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


@functools.partial(jax.jit, static_argnums=0)
def _per_example_grads(apply_fn, params, inputs, targets, keys):
    def loss(params, image, target, key):
        rngs = None if key is None else {"dropout": key}
        logits = apply_fn({"params": params}, image[None], train=key is not None, rngs=rngs)
        return optax.softmax_cross_entropy(logits, target[None])[0]

    key_axis = None if keys is None else 0
    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, key_axis))(params, inputs, targets, keys)

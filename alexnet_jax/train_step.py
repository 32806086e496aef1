"""The pure train step, written once for a named ``'batch'`` device axis.

``train_step`` sees one device's share of the global batch; ``jax.lax.pmean`` over ``'batch'``
makes the gradients and metrics global. It runs unchanged under ``jax.pmap`` or
``jax.jit(jax.shard_map(...))`` (``parallel.py``), on one device or many, on one host or many.
Each variant of a run is owned by its module and leaves the step as it is when off: an ensemble's
members (``ensemble.over_members``) and the parallelism (``parallel.DataParallel.compile_step``)
wrap it; gradient accumulation wraps the gradient inside it (``accumulated``); a moving average of
the weights is an update of the state it makes (``ema.updater``). ``train.compose_train_step``
composes them.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from alexnet_jax import models
from alexnet_jax.parallel import AXIS

# Research hook (docs/research.md), named by the config's loss_term: name -> (params, logits,
# targets) -> a scalar added to each device's loss.
LOSS_TERMS = {}


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx), the model's batch-norm
    statistics if it has any (else None), and the weights' moving average (``ema.py``; else None)."""

    batch_stats: Any = None
    ema: Any = None


def model_variables(params: Any, batch_stats: Any) -> dict:
    """What ``apply_fn`` takes: the parameters, and the batch-norm statistics if there are any."""
    return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}


def state_variables(state: TrainState) -> dict:
    return model_variables(state.params, state.batch_stats)


@dataclasses.dataclass(frozen=True)
class Training:
    """The train step's constants, baked into the compiled program (changing one compiles again)."""

    num_classes: int
    grad_accum_steps: int = 1  # each device's batch in this many micro-batches, gradients averaged
    loss_term: str = ""  # a name in LOSS_TERMS, or none

    @classmethod
    def from_config(cls, config, num_classes: int) -> "Training":
        return cls(num_classes, config.get("grad_accum_steps", 1), config.get("loss_term", ""))


def hyperparameters(config) -> dict:
    """The config's values that the step takes as an input, ``hyper``, rather than as constants, so
    that each member of an ensemble can have its own: the label smoothing, and the dropout rate of a
    model that has one."""
    hyper = {"label_smoothing": config.optimizer.label_smoothing}
    if "dropout_rate" in models.model_fields(config.model.name):
        hyper["dropout_rate"] = config.model.dropout_rate
    return hyper


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, image_shape, rng, param_dtype=jnp.float32
) -> TrainState:
    """Initialises parameters and batch-norm statistics (``param_dtype``) and optimizer state for
    ``image_shape`` = (H, W, C). The step is a strongly typed int32, as a restored one is: a fresh
    and a resumed state then share one compiled train step. Pure: jit it, vmap it over keys."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params, batch_stats = jax.tree.map(
        lambda x: x.astype(param_dtype), (variables["params"], variables.get("batch_stats"))
    )
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats)
    return state.replace(step=jnp.zeros((), jnp.int32))


def _global_positions(local_batch: int) -> jax.Array:
    """Each local example's position in the global batch (device-count independent)."""
    return jax.lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)


def train_step(state: TrainState, batch: dict, rng: jax.Array, hyper: dict, *, model, augmentation, training, update):
    """One SGD step on the global batch: ``batch['image']`` uint8 NHWC, ``batch['label']`` int;
    ``hyper`` as ``hyperparameters`` makes it; ``model`` the module that applies the parameters (one
    tower's half of it under ``parallel=towers``), ``augmentation`` an ``augment.Augmentation``,
    ``training`` a ``Training``; ``update(new state, state)`` the state's last update (``ema.updater``).

    ``rng`` is the run's base key; the step folds in ``state.step``, so the same key is passed
    every step. Returns the new state and global means: ``loss`` (the objective, with label
    smoothing), ``cross_entropy`` (against the true labels, comparable with evaluation),
    ``accuracy``, and ``skipped_updates``: 1 if the gradients were not finite and the optimizer
    skipped the update (the step count still advances), else 0.
    """
    images, labels = batch["image"], batch["label"]
    augment_key, dropout_key = jax.random.split(jax.random.fold_in(rng, state.step))
    example_keys = jax.vmap(jax.random.fold_in, (None, 0))(augment_key, _global_positions(images.shape[0]))
    inputs = augmentation(images, example_keys)
    one_hot = jax.nn.one_hot(labels, training.num_classes, dtype=jnp.float32)
    targets = optax.smooth_labels(one_hot, hyper["label_smoothing"])
    rates = {"dropout_rate": hyper["dropout_rate"]} if "dropout_rate" in hyper else {}
    loss_fn = functools.partial(
        _loss, model=model.clone(**rates), batch_stats=state.batch_stats, term=training.loss_term, key=dropout_key
    )
    value_and_grad = accumulated(jax.value_and_grad(loss_fn, has_aux=True), training.grad_accum_steps)
    first_shard = jax.lax.axis_index(AXIS) * training.grad_accum_steps
    (loss, (logits, batch_stats)), grads = value_and_grad(state.params, inputs, targets, first_shard)
    metrics = {
        "loss": loss,
        "cross_entropy": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }
    metrics = jax.lax.pmean(metrics, AXIS)
    applied = state.apply_gradients(grads=jax.lax.pmean(grads, AXIS))
    # optax.apply_if_finite, inside optim.create_optimizer's inject_hyperparams: False if the update was skipped.
    finite = applied.opt_state.inner_state.last_finite
    if state.batch_stats is not None:  # statistics of a skipped step are dropped too
        applied = applied.replace(
            batch_stats=jax.tree.map(functools.partial(jnp.where, finite), batch_stats, state.batch_stats)
        )
    metrics["skipped_updates"] = 1.0 - finite.astype(jnp.float32)
    return update(applied, state), metrics


def _loss(params, inputs, targets, shard, *, model, batch_stats, term: str, key):
    """The mean loss of batch shard ``shard`` (its dropout masks drawn from ``key`` folded with it),
    and (logits, the batch statistics it leaves)."""
    variables, rngs = model_variables(params, batch_stats), {"dropout": jax.random.fold_in(key, shard)}
    if batch_stats is None:
        logits, stats = model.apply(variables, inputs, train=True, rngs=rngs), None
    else:
        logits, updates = model.apply(variables, inputs, train=True, rngs=rngs, mutable=["batch_stats"])
        stats = updates["batch_stats"]
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return (loss + LOSS_TERMS[term](params, logits, targets) if term else loss), (logits, stats)


def accumulated(value_and_grad, micro: int):
    """``value_and_grad(params, inputs, targets, shard)`` over ``micro`` equal micro-batches of the
    device's batch one after another, micro-batch j as batch shard ``shard + j`` (so one device with
    k micro-batches computes what k devices with one each do), the losses and gradients averaged,
    the logits concatenated, the last batch statistics kept; ``value_and_grad`` itself for 1.

    A loop holds one micro-batch's activations at a time. XLA's CPU backend runs convolution
    gradients inside a loop about 20x slower (BENCHMARKS.md, "Gradient accumulation"): there the
    loop is unrolled into straight-line code."""
    if micro == 1:
        return value_and_grad

    def over_micro_batches(params, inputs, targets, shard):
        in_parts = lambda x: x.reshape(micro, x.shape[0] // micro, *x.shape[1:])

        def micro_step(summed, part):
            (loss, (logits, stats)), grads = value_and_grad(params, *part[:2], shard + part[2])
            return jax.tree.map(jnp.add, summed, grads), (loss, logits, stats)

        parts = (in_parts(inputs), in_parts(targets), jnp.arange(micro))
        zeros = jax.tree.map(jnp.zeros_like, params)
        unroll = jax.default_backend() == "cpu"
        summed, (losses, logits, stats) = jax.lax.scan(micro_step, zeros, parts, unroll=unroll)
        stats = jax.tree.map(lambda s: s[-1], stats)
        aux = (logits.reshape(-1, logits.shape[-1]), stats)
        return (losses.mean(), aux), jax.tree.map(lambda g: g / micro, summed)

    return over_micro_batches

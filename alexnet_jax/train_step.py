"""The pure train and eval steps, written once for a named ``'batch'`` device axis.

Each function sees one device's share of the global batch; ``jax.lax.pmean``/``psum`` over
``'batch'`` make gradients and metrics global. They run unchanged under ``jax.pmap`` or
``jax.jit(jax.shard_map(...))`` (see ``parallel.py``), on one device or many, on one host or many.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from alexnet_jax import augment, ensemble

AXIS = "batch"

# Research hooks (docs/research.md), named by the config:
# loss_term: name -> (params, logits, targets) -> a scalar added to each device's loss.
LOSS_TERMS = {}
# eval_scores: name -> (log probabilities [N, classes], labels [N]) -> a value per example, whose
# mean evaluation reports as <name> beside loss, top1, top5.
EVAL_SCORES = {}


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, opt_state, apply_fn, tx), the model's batch-norm
    statistics if it has any (else None), and an ensemble member's ``label_smoothing`` and
    ``dropout_rate`` (``ensemble.py``; else None: the config's, as constants)."""

    batch_stats: Any = None
    settings: Any = None
    ema: Any = None  # the model variables' exponential moving average (``ema_decay``), or None


def model_variables(params: Any, batch_stats: Any) -> dict:
    """What ``apply_fn`` takes: the parameters, and the batch-norm statistics if there are any."""
    return {"params": params} if batch_stats is None else {"params": params, "batch_stats": batch_stats}


def state_variables(state: TrainState) -> dict:
    return model_variables(state.params, state.batch_stats)


@dataclasses.dataclass(frozen=True)
class StepConstants:
    """Plain Python values baked into the compiled steps as constants (bound with
    ``functools.partial``, never passed as traced arguments): changing one means compiling again.
    Frozen and hashable, and not a pytree, so no field can turn into a traced array by accident."""

    num_classes: int
    label_smoothing: float = 0.0
    crop_padding: int = 0
    crop_size: int | None = None  # train: random crops of this size; evaluation: centre or ten crops
    flip: bool = False
    pca_noise: float = 0.0  # std of the paper's colour-noise coefficients (0.1 in the paper)
    normalization: str = "cifar10"
    eval_crops: int = 1  # 1: one view; 10: the paper's ten crops, softmax averaged
    eval_flip: bool = False  # also score the mirror image, softmax averaged
    grad_accum_steps: int = 1  # each device's batch in this many micro-batches, gradients averaged
    ensemble_size: int = 1  # evaluation: members stacked on a leading axis, scored each and together
    ema_decay: float = 0.0  # > 0: the state's ``ema`` moves this much less than all the way to the new weights
    custom_augmentation: str = ""  # a name in augment.CUSTOM, or none
    loss_term: str = ""  # a name in LOSS_TERMS, or none
    eval_scores: tuple[str, ...] = ()  # names in EVAL_SCORES


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, image_shape, rng, param_dtype=jnp.float32, apply_fn=None
) -> TrainState:
    """Initialises parameters and batch-norm statistics (``param_dtype``) and optimizer state for
    ``image_shape`` = (H, W, C), in one compiled program. The step is a strongly typed int32, as a
    restored one is: a fresh and a resumed state then share one compiled train step. Keys stacked
    on a leading axis initialise an ensemble: one member per key, one shared step count.
    ``apply_fn`` (default ``model.apply``) is what the steps apply the parameters with."""

    def init(rng):
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params, batch_stats = jax.tree.map(
            lambda x: x.astype(param_dtype), (variables["params"], variables.get("batch_stats"))
        )
        state = TrainState.create(apply_fn=apply_fn or model.apply, params=params, tx=tx, batch_stats=batch_stats)
        return state.replace(step=jnp.zeros((), jnp.int32))

    if rng.ndim == 0:
        return jax.jit(init)(rng)
    axes = ensemble.state_axes(jax.eval_shape(init, rng[0]))
    return jax.jit(jax.vmap(init, out_axes=axes))(rng)


def _global_positions(local_batch: int) -> jax.Array:
    """Each local example's position in the global batch (device-count independent)."""
    return jax.lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    k = min(k, logits.shape[-1])
    return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)


def train_step(
    state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, constants: StepConstants
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on the global batch. ``batch['image']`` is uint8 NHWC, ``batch['label']`` int.

    ``rng`` is the run's base key; the step folds in ``state.step``, so the same key is passed
    every step. Returns the new state and global means: ``loss`` (the objective, with label
    smoothing), ``cross_entropy`` (against the true labels, comparable with evaluation),
    ``accuracy``, and ``skipped_updates``: 1 if the gradients were not finite and the optimizer
    skipped the update (the step count still advances), else 0.
    """
    images, labels = batch["image"], batch["label"]
    local_batch = images.shape[0]
    step_key = jax.random.fold_in(rng, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    example_keys = jax.vmap(jax.random.fold_in, (None, 0))(augment_key, _global_positions(local_batch))
    images = augment.augment_batch(images, example_keys, constants.crop_padding, constants.flip, constants.crop_size)
    pixels = images.astype(jnp.float32)
    if constants.pca_noise > 0:
        noise_keys = jax.vmap(jax.random.fold_in, (0, None))(example_keys, 2)
        pixels = pixels + jax.vmap(augment.pca_noise, (0, None))(noise_keys, constants.pca_noise)[:, None, None, :]
    if constants.custom_augmentation:
        custom_keys = jax.vmap(jax.random.fold_in, (0, None))(example_keys, 3)
        pixels = augment.CUSTOM[constants.custom_augmentation](pixels, custom_keys)
    inputs = augment.normalize(pixels, constants.normalization)
    smoothing = constants.label_smoothing if state.settings is None else state.settings["label_smoothing"]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, constants.num_classes, dtype=jnp.float32), smoothing)
    loss, logits, grads, batch_stats = _gradients(state, inputs, targets, dropout_key, constants)
    grads = jax.lax.pmean(grads, AXIS)
    metrics = {
        "loss": loss,
        "cross_entropy": optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }
    metrics = jax.lax.pmean(metrics, AXIS)
    applied = state.apply_gradients(grads=grads)
    # optax.apply_if_finite, inside optim.create_optimizer's inject_hyperparams: False if the update was skipped.
    finite = applied.opt_state.inner_state.last_finite
    if state.batch_stats is not None:  # statistics of a skipped step are dropped too
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        applied = applied.replace(batch_stats=jax.tree.map(keep, batch_stats, state.batch_stats))
    metrics["skipped_updates"] = 1.0 - finite.astype(jnp.float32)
    if state.ema is not None:  # ema <- decay * ema + (1 - decay) * new weights
        average = optax.incremental_update(state_variables(applied), state.ema, 1 - constants.ema_decay)
        applied = applied.replace(ema=average)
    return applied, metrics


def _gradients(state: TrainState, inputs: jax.Array, targets: jax.Array, dropout_key: jax.Array, constants):
    """This device's mean loss, logits, gradients and batch statistics, over ``micro`` equal
    micro-batches of its batch one after another (the gradients summed, then divided by ``micro``).

    Micro-batch j of device d draws its dropout masks from the key of shard ``d * micro + j``:
    one device with k micro-batches computes what k devices with one each do (the batch-norm
    configs take one micro-batch: their statistics are the batch's)."""
    has_stats, micro, term = state.batch_stats is not None, constants.grad_accum_steps, constants.loss_term
    first_shard = jax.lax.axis_index(AXIS) * micro
    member = {} if state.settings is None else {"dropout_rate": state.settings["dropout_rate"]}

    def loss_fn(params, inputs, targets, key):
        variables, training = model_variables(params, state.batch_stats), {"train": True, **member}
        if has_stats:
            logits, updates = state.apply_fn(
                variables, inputs, **training, rngs={"dropout": key}, mutable=["batch_stats"]
            )
        else:
            logits, updates = state.apply_fn(variables, inputs, **training, rngs={"dropout": key}), {}
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        loss = loss + LOSS_TERMS[term](params, logits, targets) if term else loss
        return loss, (logits, updates.get("batch_stats"))

    def micro_step(summed, batch):
        inputs, targets, j = batch
        key = jax.random.fold_in(dropout_key, first_shard + j)
        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, inputs, targets, key)
        return jax.tree.map(jnp.add, summed, grads), (loss, logits, stats)

    if micro == 1:  # the whole batch at once (XLA's CPU backend runs a scan of one many times slower)
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, inputs, targets, jax.random.fold_in(dropout_key, first_shard)
        )
        return loss, logits, grads, batch_stats
    in_parts = lambda x: x.reshape(micro, x.shape[0] // micro, *x.shape[1:])  # noqa: E731
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    parts = (in_parts(inputs), in_parts(targets), jnp.arange(micro))
    # A loop over the micro-batches holds one micro-batch's activations at a time. XLA's CPU backend
    # runs convolution gradients inside a loop about 20x slower (BENCHMARKS.md, "Gradient
    # accumulation"): there the loop is unrolled into straight-line code.
    unroll = jax.default_backend() == "cpu"
    summed, (losses, logits, stats) = jax.lax.scan(micro_step, zeros, parts, unroll=unroll)
    batch_stats = jax.tree.map(lambda s: s[-1], stats) if has_stats else None
    grads = jax.tree.map(lambda g: g / micro, summed)
    return losses.mean(), logits.reshape(-1, logits.shape[-1]), grads, batch_stats


def eval_step(
    variables: dict, batch: dict[str, jax.Array], apply_fn, constants: StepConstants
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Scores a batch; ``batch['mask']`` marks real examples (padding scores nothing).

    Returns global sums (``loss``, ``top1``, ``top5``, ``count``), and this device's predictions and
    labels. An ensemble's variables are stacked: the sums and predictions are the ensemble's (the
    members' softmax averaged), and ``member_loss``, ``member_top1``, ``member_top5`` hold each
    member's sums (the members scored one after another, in one member's memory).
    """
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    score = lambda v: eval_log_probabilities(v, batch["image"], apply_fn, constants)  # noqa: E731
    if constants.ensemble_size == 1:
        log_probs = score(variables)
        sums = _scores(log_probs, labels, mask, constants.eval_scores)
    else:  # every member, and the ensemble: the members' softmax averaged
        members = jax.lax.map(score, variables)
        log_probs = members_mean_probability(members)
        per_member = jax.vmap(_scores, (0, None, None, None))(members, labels, mask, constants.eval_scores)
        sums = _scores(log_probs, labels, mask, constants.eval_scores)
        sums.update({f"member_{k}": value for k, value in per_member.items()})
    return jax.lax.psum({**sums, "count": jnp.sum(mask)}, AXIS), jnp.argmax(log_probs, -1), labels


def _scores(log_probs: jax.Array, labels: jax.Array, mask: jax.Array, extra: tuple[str, ...] = ()) -> dict:
    """Sums over the real examples of the cross-entropy, of top-1 and top-5 hits, and of the
    ``EVAL_SCORES`` named in ``extra``."""
    loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    sums = {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum(_topk_correct(log_probs, labels, 1) * mask),
        "top5": jnp.sum(_topk_correct(log_probs, labels, 5) * mask),
    }
    return {**sums, **{name: jnp.sum(EVAL_SCORES[name](log_probs, labels) * mask) for name in extra}}


def eval_log_probabilities(variables: dict, images: jax.Array, apply_fn, constants: StepConstants) -> jax.Array:
    """Log class probabilities of uint8 NHWC ``images`` at test time: of one view (the centre
    ``crop_size`` crop, or the whole image), or of the mean softmax over the paper's ten crops;
    with ``eval_flip``, of the mean softmax over the view and its mirror image.

    Several views are scored one after another (``jax.lax.map``), so that evaluation needs the
    memory of one batch of views, not ten: on a CPU, the paper config's 1,280 crops at once took
    23 GB (BENCHMARKS.md, "ImageNet's shape")."""

    def log_softmax(views):
        logits = apply_fn(variables, augment.normalize(views, constants.normalization), train=False)
        return jax.nn.log_softmax(logits, axis=-1)

    def mean_over(views):  # [V, N, ...] -> log of the mean probability over the V views
        return log_mean_probability(jax.lax.map(log_softmax, views))

    if constants.eval_crops == 10:
        return mean_over(augment.ten_crops(images, constants.crop_size))  # [10, N, size, size, C]
    if constants.crop_size is not None:
        images = augment.centre_crop(images, constants.crop_size)
    if constants.eval_flip:
        return mean_over(jnp.stack([images, images[:, :, ::-1]]))
    return log_softmax(images)


def log_mean_probability(log_probs: jax.Array) -> jax.Array:
    """Log of the mean probability over the leading axis (views, or an ensemble's members)."""
    return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(float(log_probs.shape[0]))


def members_mean_probability(log_probs: jax.Array) -> jax.Array:
    """An ensemble's log probabilities: the log of its members' mean probability (members on the
    leading axis), each example's over the members whose output for it is finite. A member that
    diverged (its outputs not finite) is left out of the average; with none finite the result is NaN."""
    finite = jnp.all(jnp.isfinite(log_probs), axis=-1, keepdims=True)
    count = jnp.sum(finite, axis=0)
    summed = jax.nn.logsumexp(jnp.where(finite, log_probs, -jnp.inf), axis=0)
    return jnp.where(count > 0, summed - jnp.log(jnp.maximum(count, 1).astype(log_probs.dtype)), jnp.nan)


def ensemble_log_probabilities(variables: dict, images: jax.Array, apply_fn, constants: StepConstants) -> jax.Array:
    """``eval_log_probabilities`` of a model, or of an ensemble (stacked variables, with
    ``constants.ensemble_size`` > 1): its members' softmax averaged (``members_mean_probability``),
    scored one after another."""
    score = lambda v: eval_log_probabilities(v, images, apply_fn, constants)  # noqa: E731
    return score(variables) if constants.ensemble_size == 1 else members_mean_probability(jax.lax.map(score, variables))


def resident_batch(data: dict[str, jax.Array], order: jax.Array, start: jax.Array, local_batch: int):
    """This device's share of a global batch gathered from a device-resident dataset.

    ``order`` lists example indices (an epoch's permutation, or 0..N-1 for evaluation); the
    global batch is ``order[start : start + global batch]`` and device i takes its i-th block.
    """
    offset = start + jax.lax.axis_index(AXIS) * local_batch
    indices = jax.lax.dynamic_slice_in_dim(order, offset, local_batch)
    return jax.tree.map(lambda column: column[indices], data)


def resident_train_step(state, data, order, rng, *, local_batch, steps_per_epoch, constants):
    """``train_step`` on the batch at ``state.step`` of the epoch ordered by ``order``."""
    start = (state.step % steps_per_epoch) * local_batch * jax.lax.axis_size(AXIS)
    batch = resident_batch(data, order, start, local_batch)
    return train_step(state, batch, rng, constants)


def resident_eval_step(variables, data, order, start, *, apply_fn, local_batch, constants):
    """``eval_step`` on ``order[start : start + global batch]`` of a padded resident dataset."""
    return eval_step(variables, resident_batch(data, order, start, local_batch), apply_fn, constants)

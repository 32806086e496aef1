"""Learning-rate schedules, the paper's plateau rule and the paper's SGD, built from config values with Optax."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from alexnet_jax import models

NONFINITE_UPDATES = ("stop", "skip")  # what the loop does after a step whose gradients were not finite


def step_epochs(config) -> tuple[float, ...]:
    """The epochs where the ``step`` schedule divides the rate: ``schedule.step_epochs``, or by
    default one and two thirds into the run (epochs 30 and 60 of 90, as torchvision's recipe)."""
    epochs = config.schedule.step_epochs
    if epochs is None:
        return (config.num_epochs / 3, 2 * config.num_epochs / 3)
    return tuple(epochs)


def _constant_rate(config, steps_per_epoch: int) -> optax.Schedule:
    return optax.constant_schedule(config.optimizer.learning_rate)  # plateau: changed by the rule's decisions


def _step(config, steps_per_epoch: int) -> optax.Schedule:
    boundaries = {}  # epochs that round to one step multiply there once each
    for epoch in step_epochs(config):
        step = round(epoch * steps_per_epoch)
        boundaries[step] = boundaries.get(step, 1.0) * config.schedule.step_factor
    return optax.piecewise_constant_schedule(config.optimizer.learning_rate, boundaries)


def _warmup_cosine(config, steps_per_epoch: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.optimizer.learning_rate,
        warmup_steps=int(config.schedule.warmup_epochs * steps_per_epoch),
        decay_steps=config.num_epochs * steps_per_epoch,
    )


def _onecycle(config, steps_per_epoch: int) -> optax.Schedule:
    return optax.cosine_onecycle_schedule(
        transition_steps=config.num_epochs * steps_per_epoch,
        peak_value=config.optimizer.learning_rate,
        pct_start=config.schedule.pct_start,
    )


# name -> (config, steps per epoch) -> Optax schedule of the step, peaking at optimizer.learning_rate
# (ensembles scale it per member: keep it proportional to that peak). Research schedules: add one.
SCHEDULES = {
    "constant": _constant_rate,
    "step": _step,
    "warmup_cosine": _warmup_cosine,
    "onecycle": _onecycle,
    "plateau": _constant_rate,
}


def create_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """The schedule named by ``config.schedule.name`` (``SCHEDULES``); epochs are converted to steps."""
    if config.schedule.name not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule.name!r}; choose one of {tuple(SCHEDULES)}")
    return SCHEDULES[config.schedule.name](config, steps_per_epoch)


def _is_kernel(params):
    """Weight decay mask: kernels only, as cuda-convnet applied it (biases are not decayed)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


UPDATE_RULES = ("paper", "pytorch")


def _finetune_scales(config) -> tuple[optax.GradientTransformation, ...]:
    """The per-layer update scales of ``config.finetune`` (none when it changes nothing)."""
    finetune = config.get("finetune")
    if finetune is None or (not finetune.freeze_convs and finetune.pretrained_lr_scale == 1):
        return ()

    def labels(params):
        def label(module):
            if module == models.HEAD:
                return "head"
            return "frozen" if finetune.freeze_convs and not models.is_dense(module) else "pretrained"

        return {module: jax.tree.map(lambda _, m=module: label(m), tree) for module, tree in params.items()}

    scales = {"head": optax.identity(), "pretrained": optax.scale(finetune.pretrained_lr_scale)}
    return (optax.multi_transform({**scales, "frozen": optax.set_to_zero()}, labels),)


def create_optimizer(config, schedule: optax.Schedule, per_member: bool = False) -> optax.GradientTransformation:
    """SGD with momentum and weight decay, by ``optimizer.update_rule``:

    * ``paper`` (section 5):  v <- momentum * v - lr * (grad + weight_decay * w);  w <- w + v
      The rate sits inside the momentum buffer, so a schedule change takes effect gradually.
    * ``pytorch`` (``torch.optim.SGD``):  b <- momentum * b + grad + weight_decay * w;  w <- w - lr * b
      The same updates at a constant rate; a rate change rescales the whole buffer at once.

    Fine-tuning (``config.finetune``) scales each update last, by layer: the head (``models.HEAD``)
    by 1, the other layers by ``pretrained_lr_scale``, frozen convolutional layers by 0 (they stay
    bit-identical). Every step of both rules is linear in the rate, so scaling the update equals
    scaling the rate.

    Weight decay applies to kernels only (cuda-convnet's), or to biases too with
    ``optimizer.decay_biases`` (PyTorch's). Inside, ``optax.apply_if_finite`` skips any update whose
    gradients are not all finite (a NaN or an infinite loss), leaving parameters and the momentum as
    they were; its ``last_finite`` says whether the last one was applied, and the loop stops or goes
    on (``nonfinite_updates``). Around it the rate is an injected hyperparameter
    (``optax.inject_hyperparams``), whose count advances at every step, skipped or not, so the rate
    at step s is the schedule's at s: the optimizer state holds the rate of the last update, and
    with the plateau rule the rate itself, which the loop divides.

    ``per_member`` (ensembles): the weight decay and a factor on the rate are in the state too, set
    per member (every schedule is proportional to its peak, so member k's rate is the schedule's
    times ``learning_rate_k / optimizer.learning_rate``).
    """
    opt, scales = config.optimizer, _finetune_scales(config)

    def sgd(learning_rate, weight_decay=opt.weight_decay, learning_rate_factor=1.0):
        decay = optax.add_decayed_weights(weight_decay, mask=None if opt.decay_biases else _is_kernel)
        momentum = optax.trace(decay=opt.momentum, nesterov=opt.nesterov)
        rate = optax.scale_by_learning_rate(learning_rate * learning_rate_factor)
        steps = (decay, momentum, rate) if opt.update_rule == "pytorch" else (decay, rate, momentum)
        return optax.chain(*steps, *scales)

    def sgd_if_finite(learning_rate, weight_decay=opt.weight_decay, learning_rate_factor=1.0):
        inner = sgd(learning_rate, weight_decay, learning_rate_factor)
        return optax.apply_if_finite(inner, max_consecutive_errors=2**30)

    # The hyperparameters in the parameters' dtype, whatever JAX makes of Python numbers (float64
    # where a user set JAX_ENABLE_X64=1 for float32 parameters).
    dtype = models.param_dtype(config.model)
    if config.schedule.name == "plateau":
        rate = opt.learning_rate
    else:
        rate = lambda count: jnp.asarray(schedule(count), dtype)
    # An ensemble's members differ in these: values in the state, not constants (ensemble.py).
    member_values = {"weight_decay": opt.weight_decay, "learning_rate_factor": 1.0} if per_member else {}
    return optax.inject_hyperparams(sgd_if_finite, hyperparam_dtype=dtype)(learning_rate=rate, **member_values)


def learning_rate(opt_state) -> jax.Array:
    """The rate of the last update (with the plateau rule, the current one); an ensemble's, per member."""
    hyperparams = opt_state.hyperparams
    return hyperparams["learning_rate"] * hyperparams.get("learning_rate_factor", 1.0)


def with_learning_rate(opt_state, rate: jax.Array):
    """The optimizer state with the rate replaced (the plateau rule's division; an ensemble's
    members keep their factors)."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": rate})


@dataclasses.dataclass
class Plateau:
    """The paper's rule: multiply the rate by ``factor`` (0.1) when the validation error has not
    improved for ``patience`` evaluations, at most ``max_reductions`` times. Its fields go into checkpoints."""

    patience: int
    factor: float
    max_reductions: int
    best_error: float = math.inf
    evaluations_without_improvement: int = 0
    reductions: int = 0

    def observe(self, error: float) -> bool:
        """Takes one evaluation's validation error; returns whether to lower the rate now."""
        if error < self.best_error:
            self.best_error, self.evaluations_without_improvement = error, 0
            return False
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement < self.patience or self.reductions >= self.max_reductions:
            return False
        self.reductions, self.evaluations_without_improvement = self.reductions + 1, 0
        return True

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "best_error": None if math.isinf(self.best_error) else self.best_error}

    @classmethod
    def from_config(cls, config, saved: dict | None = None) -> "Plateau":
        rule = config.schedule
        fields = {"patience": rule.patience, "factor": rule.step_factor, "max_reductions": rule.max_reductions}
        if saved:
            best = saved["best_error"]
            counters = ("evaluations_without_improvement", "reductions")
            fields.update(best_error=math.inf if best is None else best, **{k: saved[k] for k in counters})
        return cls(**fields)

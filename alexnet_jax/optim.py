"""Learning-rate schedules and the paper's SGD, built from config values with Optax."""

import jax
import optax

SCHEDULES = ("constant", "step", "warmup_cosine", "onecycle")


def step_epochs(config) -> tuple[float, ...]:
    """The epochs where the ``step`` schedule divides the rate: ``schedule.step_epochs``, or by
    default one and two thirds into the run (epochs 30 and 60 of 90, as torchvision's recipe)."""
    epochs = config.schedule.step_epochs
    if epochs is None:
        return (config.num_epochs / 3, 2 * config.num_epochs / 3)
    return tuple(epochs)


def create_schedule(config, steps_per_epoch: int) -> optax.Schedule:
    """The schedule named by ``config.schedule.name``; epochs are converted to steps here."""
    base = config.optimizer.learning_rate
    schedule = config.schedule
    total_steps = config.num_epochs * steps_per_epoch
    if schedule.name == "constant":
        return optax.constant_schedule(base)
    if schedule.name == "step":
        boundaries = {round(epoch * steps_per_epoch): schedule.step_factor for epoch in step_epochs(config)}
        return optax.piecewise_constant_schedule(base, boundaries)
    if schedule.name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=base,
            warmup_steps=int(schedule.warmup_epochs * steps_per_epoch),
            decay_steps=total_steps,
        )
    if schedule.name == "onecycle":
        return optax.cosine_onecycle_schedule(
            transition_steps=total_steps, peak_value=base, pct_start=schedule.pct_start
        )
    raise ValueError(f"unknown schedule {schedule.name!r}; choose one of {SCHEDULES}")


def _is_kernel(params):
    """Weight decay mask: kernels only, as cuda-convnet applied it (biases are not decayed)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with momentum exactly as in the paper (section 5):

        v <- momentum * v - lr * (grad + weight_decay * w);   w <- w + v

    The learning rate sits inside the momentum buffer, so a schedule change takes effect
    gradually, as in the paper, rather than rescaling the whole buffer at once.
    """
    opt = config.optimizer
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=_is_kernel),
        optax.scale_by_learning_rate(schedule),
        optax.trace(decay=opt.momentum, nesterov=opt.nesterov),
    )

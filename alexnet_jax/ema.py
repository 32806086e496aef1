"""An exponential moving average of the weights (``--config.ema_decay``): after every step,
``ema = decay * ema + (1 - decay) * weights`` (batch statistics included), starting from the weights
the run starts from (freshly initialised, or loaded by ``init_from``). It lives in the train state
(``TrainState.ema``), moved by the step as it updates the state (``updater``), is checkpointed
beside the weights and evaluated beside them; ``decay`` 0 keeps none, and every function here then
leaves the state as it is."""

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.train_step import state_variables


def decay(config) -> float:
    return config.get("ema_decay", 0.0)


def started(state, config):
    """``state`` with its average set to its current weights (or none, ``decay`` 0)."""
    if not decay(config):
        return state.replace(ema=None)
    return state.replace(ema=jax.tree.map(jnp.copy, state_variables(state)))


def updater(config):
    """The train step's last update of the state, ``(new state, state before the step) -> new
    state``: its average moved towards the new weights; the new state as it is without an average."""
    rate = 1.0 - decay(config)
    if not decay(config):
        return keep

    def moved(new, before):
        return new.replace(ema=optax.incremental_update(state_variables(new), before.ema, rate))

    return moved


def keep(new, before):
    """The new state as it is (no moving average)."""
    return new


def described(metrics: dict) -> str:
    """What the validation line adds: the average's top-1, where it was scored."""
    return f" (moving average: top-1 {metrics['ema_top1']:.4f})" if "ema_top1" in metrics else ""


def note(config) -> str:
    """What a report's ``ema_*`` metrics are of."""
    return f"; ema_*: their exponential moving average (decay {decay(config)})" if decay(config) else ""

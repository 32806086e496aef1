"""Ensembles and sweeps: N models trained together by one ``jax.vmap``-ed step.

Member k is the single run of ``member_config(config, k)``: seed ``seed + k``, its own
hyperparameters from ``config.members`` (a sweep in one program), and the data order of
``data_seed`` (``ensemble_data_order="shared"``) or of its own seed (``"own"``). The members'
parameters, optimizer states, batch statistics and per-member settings are stacked on a leading
axis of size N; the step count is one, shared. Per-member values a compiled step cannot take as
constants are traced instead: the weight decay and a learning-rate factor live in the optimizer
state (``optim.create_optimizer(..., per_member=True)``), the label smoothing and the dropout
rate in ``TrainState.settings``.
"""

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import UserError

DATA_ORDERS = ("shared", "own")
# config.members.<field> -> where the single-run config holds it
MEMBER_FIELDS = {
    "learning_rate": ("optimizer", "learning_rate"),
    "weight_decay": ("optimizer", "weight_decay"),
    "label_smoothing": ("optimizer", "label_smoothing"),
    "dropout_rate": ("model", "dropout_rate"),
}


def size(config) -> int:
    return config.get("ensemble_size", 1)


def data_seed(config) -> int:
    """The seed of the data order (and of the host's random crops)."""
    seed = config.get("data_seed")
    return config.seed if seed is None else seed


def member_values(config, field: str) -> tuple:
    """Each member's value of ``field`` (a key of ``MEMBER_FIELDS``)."""
    values = config.get("members", {}).get(field)
    if values is not None:
        return tuple(values)
    group, key = MEMBER_FIELDS[field]
    return (config[group][key],) * size(config)


def member_config(config, k: int):
    """The config of the single run that member ``k`` of ``config``'s ensemble trains."""
    single = copy.deepcopy(config)
    with single.unlocked():
        for field, (group, key) in MEMBER_FIELDS.items():
            single[group][key] = member_values(config, field)[k]
            single.members[field] = None
        own = config.get("ensemble_data_order") == "own"
        single.data_seed = data_seed(config) + k if own else data_seed(config)
        single.seed, single.ensemble_size = config.seed + k, 1
    return single


def member_seeds(config) -> list[int]:
    return [config.seed + k for k in range(size(config))]


def member(tree, k: int):
    """Member ``k`` of stacked values."""
    return jax.tree.map(lambda x: x[k], tree)


STACKED = ("params", "opt_state", "batch_stats", "settings", "ema")  # a train state's per-member fields


def state_axes(state):
    """vmap's axes for a stacked train state: the step is shared, the rest is per member."""
    return state.replace(step=None, **{field: 0 for field in STACKED})


def member_state(state, k: int):
    """Member ``k``'s train state (the shared step included)."""
    return state.replace(**{field: member(getattr(state, field), k) for field in STACKED})


def stack(trees: list):
    """Members' values stacked on a leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack_states(states: list):
    """Members' train states as one stacked state (their step, which they share, once)."""
    return states[0].replace(**{field: stack([getattr(s, field) for s in states]) for field in STACKED})


def with_member_settings(state, config):
    """A freshly initialised stacked state with each member's hyperparameters put in."""
    dtype = jax.tree.leaves(state.params)[0].dtype
    values = lambda field: jnp.asarray(member_values(config, field), dtype)  # noqa: E731
    hyperparams = dict(state.opt_state.hyperparams)
    hyperparams["weight_decay"] = values("weight_decay").astype(hyperparams["weight_decay"].dtype)
    factor = values("learning_rate") / config.optimizer.learning_rate
    hyperparams["learning_rate_factor"] = factor.astype(hyperparams["learning_rate_factor"].dtype)
    settings = {"label_smoothing": values("label_smoothing"), "dropout_rate": values("dropout_rate")}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams), settings=settings)


def flatten(values: dict) -> dict:
    """Plain numbers for the log: a per-member array becomes its mean under its name and
    ``member<k>_<name>`` for each member; ``member_<name>`` arrays (evaluation's) become
    ``member<k>_<name>`` alone."""
    flat = {}
    for name, value in values.items():
        value = np.asarray(value)
        if value.ndim == 0:
            flat[name] = float(value)
            continue
        if not name.startswith("member_"):
            flat[name] = float(value.mean())
        base = name.removeprefix("member_")
        flat.update({f"member{k}_{base}": float(v) for k, v in enumerate(value)})
    return flat


def diverged(metrics: dict) -> list[int]:
    """The members whose validation cross-entropy is not finite (``member<k>_loss``): left out of the
    ensemble's average (``train_step.members_mean_probability``), and so of the best checkpoint."""
    members = (re.fullmatch(r"member(\d+)_loss", key) for key in metrics)
    return sorted(int(m.group(1)) for m in members if m and not np.isfinite(metrics[m.group(0)]))


def signature(config) -> dict:
    """What an ensemble adds to a checkpoint's signature: its size (1: a single model), its data
    order, and the seed of the data order in effect (``data_seed``, or the seed where it is unset)."""
    added = {"ensemble_size": size(config), "data_seed": data_seed(config)}
    if size(config) > 1:
        added["ensemble_data_order"] = config.ensemble_data_order
    return added


def chosen(config, variables: dict, k: int | None, where) -> tuple[dict, int]:
    """What evaluation and prediction score, and how many members it has: a single model; an
    ensemble's members together (``k`` None); or member ``k`` alone."""
    members = size(config)
    if k is None:
        return variables, members
    if not 0 <= k < members:
        raise UserError(f"--member={k}: {where} holds {members} model(s); choose one of 0 to {members - 1}")
    return (member(variables, k) if members > 1 else variables), 1


def stacked(shapes, config):
    """One model's ``jax.ShapeDtypeStruct`` tree as the ensemble of ``config`` stacks it."""
    if size(config) == 1:
        return shapes
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((size(config), *x.shape), x.dtype), shapes)

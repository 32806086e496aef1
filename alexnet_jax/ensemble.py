"""Ensembles and sweeps: N models trained together by one compiled step.

Member k is the single run of ``member_config(config, k)``: seed ``seed + k``, its own
hyperparameters from ``config.members`` (a sweep in one program), and the data order of
``data_seed`` (``ensemble_data_order="shared"``) or of ``data_seed + k`` (``"own"``). The members'
parameters, optimizer states, batch statistics and moving averages are stacked on a leading axis of
size N; the step count is one, shared. Each member's weight decay and a factor on its learning
rate live in its optimizer state (``optim.create_optimizer(..., per_member=True)``); its label
smoothing and dropout rate are the step's ``hyper`` input (``train_step.hyperparameters``).

Everything here is the identity for one model (``ensemble_size=1``): ``over_members`` wraps the
train step, ``averaged`` the evaluation's scoring, ``initialised`` the initialisation.
"""

import copy
import re

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, train_step
from alexnet_jax.errors import UserError

DATA_ORDERS = ("shared", "own")
# config.members.<field> -> where the single-run config holds it
MEMBER_FIELDS = {
    "learning_rate": ("optimizer", "learning_rate"),
    "weight_decay": ("optimizer", "weight_decay"),
    "label_smoothing": ("optimizer", "label_smoothing"),
    "dropout_rate": ("model", "dropout_rate"),
}
STACKED = ("params", "opt_state", "batch_stats", "ema")  # a train state's per-member fields


def size(config) -> int:
    return config.get("ensemble_size", 1)


def data_seed(config) -> int:
    """The seed of the data order (and of the host's random crops)."""
    seed = config.get("data_seed")
    return config.seed if seed is None else seed


def own_order(config) -> bool:
    """Whether each member reads the data in its own order."""
    return size(config) > 1 and config.ensemble_data_order == "own"


def data_seeds(config) -> list[int]:
    """The seeds of the data orders read: one, or each member's (``own``)."""
    return [data_seed(config) + k for k in range(size(config))] if own_order(config) else [data_seed(config)]


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
        single.data_seed = data_seeds(config)[k if own_order(config) else 0]
        single.seed, single.ensemble_size = config.seed + k, 1
    return single


def member_seeds(config) -> list[int]:
    return [config.seed + k for k in range(size(config))]


def member(tree, k: int):
    """Member ``k`` of stacked values."""
    return jax.tree.map(lambda x: x[k], tree)


def stack(trees: list):
    """Members' values stacked on a leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def state_axes(state):
    """vmap's axes for a stacked train state: the step is shared, the rest is per member."""
    return state.replace(step=None, **{field: 0 for field in STACKED})


def member_state(state, k: int):
    """Member ``k``'s train state (the shared step included)."""
    return state.replace(**{field: member(getattr(state, field), k) for field in STACKED})


def stack_states(states: list):
    """Members' train states as one stacked state (their step, which they share, once)."""
    return states[0].replace(**{field: stack([getattr(s, field) for s in states]) for field in STACKED})


def train_key(config) -> jax.Array:
    """The run's key for augmentation and dropout (an ensemble's: one per member)."""
    seeds = np.asarray(member_seeds(config))
    keys = jax.vmap(lambda seed: jax.random.fold_in(jax.random.key(seed), 1))(seeds)
    return keys if size(config) > 1 else keys[0]


def initialised(init, config):
    """``init(key)``'s train state for ``config.seed``; an ensemble's: every member's, from its own
    seed, stacked, each member's weight decay and rate factor in its optimizer state."""
    if size(config) == 1:
        return jax.jit(init)(jax.random.key(config.seed))
    keys = jax.vmap(jax.random.key)(np.asarray(member_seeds(config)))
    axes = state_axes(jax.eval_shape(init, keys[0]))
    state = jax.jit(jax.vmap(init, out_axes=axes))(keys)
    dtype = models.param_dtype(config.model)
    hyperparams = dict(state.opt_state.hyperparams)
    hyperparams["weight_decay"] = jnp.asarray(member_values(config, "weight_decay"), dtype)
    rates = np.asarray(member_values(config, "learning_rate"), np.float64) / config.optimizer.learning_rate
    hyperparams["learning_rate_factor"] = jnp.asarray(rates, dtype)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def over_members(step, config, vectorize: bool | None = None):
    """``step(state, batch, rng, hyper) -> (state, metrics)`` as ``(state, batch, rng) -> (state,
    metrics)``: for one model, with ``config``'s hyperparameters; for an ensemble, member k with
    its own state, key and hyperparameters (member k's single run's), each metric stacked. The batch
    is every member's, or each member's own on axis 1 (``own`` data order).

    ``vectorize``: the members by ``jax.vmap`` (their convolutions become grouped ones), or one
    after another in the same program (the step traced once for all); None: vmap on accelerators,
    one after another on CPUs, where the vmap-ed step runs 2.9x slower (BENCHMARKS.md, "Ensembles")."""
    hyper = [train_step.hyperparameters(member_config(config, k)) for k in range(size(config))]
    if size(config) == 1:
        return lambda state, batch, rng: step(state, batch, rng, hyper[0])
    batch_axis = 1 if own_order(config) else None
    dtype = models.param_dtype(config.model)
    if vectorize if vectorize is not None else jax.default_backend() != "cpu":
        stacked = jax.tree.map(lambda *values: np.asarray(values, dtype), *hyper)

        def vectorized(state, batch, rng):
            axes = state_axes(state)
            return jax.vmap(step, in_axes=(axes, batch_axis, 0, 0), out_axes=(axes, 0))(state, batch, rng, stacked)

        return vectorized

    member_step = jax.jit(step)  # traced once for all members: their hyperparameters are inputs
    member_hyper = [jax.tree.map(lambda value: np.asarray(value, dtype), h) for h in hyper]

    def one_after_another(state, batch, rng):
        own = lambda k: batch if batch_axis is None else jax.tree.map(lambda x: x[:, k], batch)
        results = [member_step(member_state(state, k), own(k), rng[k], h) for k, h in enumerate(member_hyper)]
        return stack_states([r[0] for r in results]), stack([r[1] for r in results])

    return one_after_another


def members_mean_probability(log_probs: jax.Array) -> jax.Array:
    """An ensemble's log probabilities: the log of its members' mean probability (members on the
    leading axis), each example's over the members whose output for it is finite. A member that
    diverged (its outputs not finite) is left out of the average; with none finite the result is NaN."""
    finite = jnp.all(jnp.isfinite(log_probs), axis=-1, keepdims=True)
    count = jnp.sum(finite, axis=0)
    summed = jax.nn.logsumexp(jnp.where(finite, log_probs, -jnp.inf), axis=0)
    return jnp.where(count > 0, summed - jnp.log(jnp.maximum(count, 1).astype(log_probs.dtype)), jnp.nan)


def averaged(scored, members: int):
    """``scored(variables, images) -> {name: log probabilities}`` of one model, for ``members``
    stacked models (scored one after another, in one model's memory): the ensemble's under each
    name (``members_mean_probability``), and member k's as ``member<k>_<name>``; ``scored`` for one."""
    if members == 1:
        return scored

    def ensemble_scored(variables, images):
        each = jax.lax.map(lambda v: scored(v, images), variables)
        scores = {name: members_mean_probability(values) for name, values in each.items()}
        return {**scores, **{f"member{k}_{name}": values[k] for name, values in each.items() for k in range(members)}}

    return ensemble_scored


def flatten(values: dict) -> dict:
    """Plain numbers for the log: a per-member array becomes its mean under its name and
    ``member<k>_<name>`` for each member."""
    flat = {}
    for name, value in values.items():
        value = np.asarray(value)
        flat[name] = float(value.mean())
        if value.ndim:
            flat.update({f"member{k}_{name}": float(v) for k, v in enumerate(value)})
    return flat


def diverged(metrics: dict) -> list[int]:
    """The members whose validation cross-entropy is not finite (``member<k>_loss``): left out of the
    ensemble's average (``members_mean_probability``), and so of the best checkpoint."""
    members = (re.fullmatch(r"member(\d+)_loss", key) for key in metrics)
    return sorted(int(m.group(1)) for m in members if m and not np.isfinite(metrics[m.group(0)]))


def first(tree, config):
    """An ensemble's first member of stacked values; one model's values as they are."""
    return member(tree, 0) if size(config) > 1 else tree


def described(metrics: dict) -> str:
    """What the validation line adds for an ensemble: each member's top-1, and the members that
    diverged (left out of the ensemble's numbers); nothing for one model."""
    tops = [f"{metrics[key]:.4f}" for key in metrics if re.fullmatch(r"member\d+_top1", key)]
    diverging = ", ".join(map(str, diverged(metrics)))
    return (f" (members' top-1: {' '.join(tops)})" if tops else "") + (
        f" (diverged, left out of the ensemble: member {diverging})" if diverging else ""
    )


def note(config) -> str:
    """What a report's metrics are of, for an ensemble."""
    return "; an ensemble's: its members' softmax averaged, each member's as member<k>_*" if size(config) > 1 else ""


def report_fields(config, metrics: dict) -> dict:
    """What an ensemble's final report adds: the members left out of its average."""
    return {"diverged_members": diverged(metrics)} if size(config) > 1 else {}


def signature(config) -> dict:
    """What an ensemble adds to a checkpoint's signature: its size (1: a single model), its data
    order, and the seed of the data order in effect (``data_seed``, or the seed where it is unset)."""
    added = {"ensemble_size": size(config), "data_seed": data_seed(config)}
    if size(config) > 1:
        added["ensemble_data_order"] = config.ensemble_data_order
    return added


def chosen(config, variables: dict, k: int | None, where) -> tuple[dict, int]:
    """What evaluation, prediction and the figures use, and how many members it has: a single
    model; an ensemble's members together (``k`` None); or member ``k`` alone."""
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

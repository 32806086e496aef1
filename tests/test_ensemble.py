"""Ensembles and sweeps (``--config.ensemble_size``): member k of an ensemble trained by one
vmap-ed step is the single run of member k's seed and hyperparameters, in float64 (the bound of
test_train_step.py: the two compute the same sums, batched or not), on the resident and the
streaming path. The ensemble's evaluation scores every member and their averaged softmax (the
weights' moving average, which ensembles stack like the weights: test_research.py)."""

import contextlib
import itertools

import jax
import numpy as np
import pytest
from conftest import tiny_config
from test_train_step import ATOL, RTOL, agreement_config

from alexnet_jax import augment, config_checks, datasets, ensemble
from alexnet_jax.evaluation import create_evaluator
from alexnet_jax.experiment import create_state
from alexnet_jax.feeds import ResidentFeed, create_feed
from alexnet_jax.input_pipeline import epoch_order
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import compose_train_step
from alexnet_jax.train_step import TrainState, state_variables

STEPS = 2
SWEEP = {"learning_rate": (0.01, 0.03), "weight_decay": (5e-4, 2e-3), "label_smoothing": (0.1, 0.0)}


def base_config():
    """test_train_step.py's float64 agreement config, narrower and with smaller batches: XLA's CPU
    backend runs the members' convolutions (grouped, once vmap-ed) slowly in float64, about 10 s a
    step at the full agreement size."""
    config = agreement_config(tiny_config())
    config.model.width, config.batch_size, config.schedule.name = 0.03125, 8, "onecycle"
    return config


def sweep_config(pipeline: str, data_order: str):
    """Two members differing in every per-member hyperparameter, on a schedule that is not constant."""
    config = base_config()
    config.input.pipeline = pipeline
    config.ensemble_size, config.ensemble_data_order = 2, data_order
    for field, values in SWEEP.items():
        config.members[field] = values
    config.members.dropout_rate = (0.2, 0.5)
    with jax.enable_x64(True):
        config_checks.validate(config, num_devices=1)
    return config


def single_run_of_member_1(data_order: str):
    """Member 1's run, written out by hand: seed 1, its hyperparameters, and the data order of seed
    0 (shared) or of its own seed (own)."""
    single = base_config()
    single.seed, single.data_seed = 1, 0 if data_order == "shared" else None
    single.optimizer.learning_rate, single.optimizer.weight_decay, single.optimizer.label_smoothing = 0.03, 2e-3, 0.0
    single.model.dropout_rate = 0.5
    return single


def train(config, split, parallel, vectorize=None):
    """``STEPS`` steps through the run's own feed and step; returns (start state, host state, losses)."""
    steps_per_epoch = len(split) // config.batch_size
    start = jax.device_get(create_state(config, len(split.class_names), split.image_shape, steps_per_epoch))
    feed = create_feed(parallel, config, split, STEPS, ensemble.data_seeds(config))
    step = compose_train_step(parallel, config, len(split.class_names), vectorize)
    state, rng, losses = parallel.replicate(start), parallel.replicate(ensemble.train_key(config)), []
    with contextlib.closing(feed.batches(0)) as batches:
        for batch in itertools.islice(batches, STEPS):
            state, metrics = step(state, batch, rng)
            losses.append(np.asarray(jax.device_get(parallel.unreplicate(metrics))["loss"]))
    return start, jax.device_get(parallel.unreplicate(state)), np.stack(losses)


@pytest.mark.parametrize(
    # the first tier: the members one after another, and vmap equal to that (the next test)
    "pipeline, vectorize",
    [pytest.param("streaming", True, marks=pytest.mark.tier2), ("resident", False)],
)
def test_member_k_of_an_ensemble_is_the_single_run_of_its_seed_and_hyperparameters(pipeline, vectorize):
    """On the streaming path with the members vmap-ed, as on accelerators, and on the resident
    path with the members one after another, as on CPUs; both check the evaluation."""
    split = datasets.load_split(tiny_config().dataset, "train")
    parallel = DataParallel("shard_map", jax.devices()[:1])
    config = sweep_config(pipeline, "shared")
    single_config = single_run_of_member_1("shared")
    single_config.input.pipeline = pipeline
    with jax.enable_x64(True):
        _, single, single_losses = train(single_config, split, parallel)
        start, trained, losses = train(config, split, parallel, vectorize)
        assert_scored_as_the_mean_of_the_members_softmax(config, trained, parallel)
    assert losses.shape == (STEPS, 2) and int(trained.step) == STEPS
    got, want = ensemble.member(state_variables(trained), 1), state_variables(single)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(losses[:, 1], single_losses, rtol=RTOL)
    # The members are different models, and both were trained.
    first, second = (jax.tree.leaves(ensemble.member(trained.params, k)) for k in (0, 1))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(first, second, strict=True)) > 1e-3
    moved = zip(jax.tree.leaves(trained.params), jax.tree.leaves(start.params), strict=True)
    assert all(float(np.max(np.abs(a - b).reshape(2, -1), axis=1).min()) > 0 for a, b in moved)


def test_members_one_after_another_compute_what_vmap_computes():
    """``ensemble.over_members`` both ways on a step of the train step's form (a state with a shared
    step count, a batch per member, a key and hyperparameters per member): the same states and
    metrics, in float64 to a few units of rounding (two programs may fuse a multiply-add in one and
    round twice in the other). One after another, the members share one trace of the step (its cost
    grows with the model, not with the members)."""
    traced = []

    def step(state, batch, key, hyper):
        traced.append(1)
        noise = jax.random.normal(key, (3,)) * hyper["dropout_rate"]
        params = {"w": state.params["w"] * hyper["label_smoothing"] + batch["x"][0] + noise}
        return state.replace(step=state.step + 1, params=params), {"loss": params["w"].sum()}

    state = TrainState(
        step=np.int32(5),
        apply_fn=None,
        params={"w": np.arange(6.0).reshape(2, 3)},
        tx=None,
        opt_state={"m": np.ones(2)},
    )
    batch = {"x": np.array([[[1.0, 1, 1], [2, 2, 2]]])}  # one example, each member's own (axis 1)
    inputs = (batch, jax.random.split(jax.random.key(0), 2))
    config = sweep_config("resident", "own")
    results = []
    with jax.enable_x64(True):
        for vectorized in (True, False):
            traced.clear()
            results.append(jax.device_get(jax.jit(ensemble.over_members(step, config, vectorized))(state, *inputs)))
            assert len(traced) == 1, vectorized
    (vmapped, vmapped_metrics), (unrolled, unrolled_metrics) = results
    assert int(unrolled.step) == 6 and unrolled.params["w"].shape == (2, 3) and unrolled.opt_state["m"].shape == (2,)
    assert unrolled.params["w"].dtype == np.float64
    for a, b in zip(
        jax.tree.leaves((vmapped, vmapped_metrics)), jax.tree.leaves((unrolled, unrolled_metrics)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)


def test_members_with_their_own_data_order_read_their_own_seeds_orders():
    config = sweep_config("resident", "own")
    split = datasets.load_split(config.dataset, "train")
    parallel = DataParallel("shard_map", jax.devices()[:1])
    steps_per_epoch = len(split) // config.batch_size
    feed = ResidentFeed(parallel, split, config.batch_size, ensemble.data_seeds(config))
    assert feed.steps_per_epoch == steps_per_epoch
    for epoch in (0, 1):
        order = feed.order(epoch)
        for k in range(2):  # member k's is the single run's of data seed k (ensemble.member_config)
            want = epoch_order(ensemble.member_config(config, k).data_seed, epoch, len(split))
            np.testing.assert_array_equal(jax.device_get(order)[k], want)
            assert ensemble.member_config(config, k).data_seed == k
    config.input.pipeline = "streaming"
    with jax.enable_x64(True), pytest.raises(config_checks.ConfigError, match="ensemble_data_order=own needs"):
        config_checks.validate(config, num_devices=1)


def assert_scored_as_the_mean_of_the_members_softmax(config, trained, parallel):
    """Evaluation scores every member, and the ensemble as the mean of their softmax (float64)."""
    validation = datasets.load_split(tiny_config().dataset, "validation")
    evaluate = create_evaluator(parallel, trained.apply_fn, validation, config, members=2)
    variables = state_variables(trained)
    metrics, predictions, labels = evaluate(parallel.place_model(variables))
    pixels = np.asarray(augment.normalize(validation.images, config.dataset.normalization), np.float64)
    probabilities = np.asarray(jax.jit(jax.vmap(lambda v: jax.nn.softmax(trained.apply_fn(v, pixels))))(variables))
    mean, rows = probabilities.mean(axis=0), np.arange(len(validation))
    np.testing.assert_array_equal(labels, validation.labels)
    np.testing.assert_array_equal(predictions, np.argmax(mean, -1))
    assert metrics["top1"] == np.mean(predictions == labels)
    # The cross-entropy of the mean probability (not of the mean logits), to float64's rounding.
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(mean[rows, labels])), rel=RTOL)
    for k in range(2):
        assert metrics[f"member{k}_top1"] == np.mean(np.argmax(probabilities[k], -1) == labels)
        assert metrics[f"member{k}_loss"] == pytest.approx(-np.mean(np.log(probabilities[k][rows, labels])), rel=RTOL)

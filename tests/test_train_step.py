"""The data-parallel train step: 1 device, pmap x8 and shard_map x8 compute the same, batch-norm
statistics too (that it learns is checked end to end, in test_run.py).

The agreement tests run in float64 (JAX's x64 mode, parameters and optimizer state included).
What differs between 1 and 8 devices is only the order of sums (8 partial means vs 1), and in
float64 that reordering changes a result by a few units of 2.2e-16 per operation: after a few
steps of a net this size, well under 1e-12 relative (measured ~1e-15 here). Every bug these tests
exist to catch (gradients summed, not averaged; a device training on another device's slice of the
batch; augmentation keys that depend on the device count) moves the parameters by about the
learning rate times a gradient, above 1e-6. A bound of 1e-10 relative sits orders of magnitude
from both, on any CPU: float32's ~1e-6 reordering noise on some CPUs is what made a float32 bound
machine-dependent.
"""

import importlib
import itertools
import pathlib

import jax
import numpy as np
import pytest
from conftest import ROOT, float64_state, tiny_config

from alexnet_jax import augment, config_checks, datasets, ensemble
from alexnet_jax.augment import Augmentation
from alexnet_jax.checkpointing import Checkpoints
from alexnet_jax.evaluation import View
from alexnet_jax.experiment import create_state
from alexnet_jax.feeds import ResidentFeed
from alexnet_jax.parallel import REPLICATED, SHARDED, DataParallel
from alexnet_jax.train import compose_train_step
from alexnet_jax.train_step import Training, state_variables

STEPS = 3
RTOL, ATOL = 1e-10, 1e-13  # see the module docstring


@pytest.fixture
def split(config):
    return datasets.load_split(config.dataset, "train")


def agreement_config(config):
    config.dataset.synthetic_image_size = 8  # float64 convolutions are slow on CPUs; size is not what is tested
    config.model.dtype = "float64"
    config.model.dropout_rate = 0.0  # dropout masks are drawn per device; everything else is not
    config.optimizer.learning_rate, config.schedule.name = 0.01, "constant"
    config.augment.crop_padding, config.augment.flip = 4, True
    return config


def host_batch_steps(config, parallel: DataParallel, split, start_state, steps=STEPS):
    """Trains ``steps`` steps on consecutive host batches (the streaming path's step); returns host
    params and per-step losses."""
    step = compose_train_step(parallel, config, len(split.class_names))
    state, rng, losses = parallel.place_model(start_state), parallel.replicate(jax.random.key(7)), []
    for i in range(steps):
        rows = slice(i * config.batch_size, (i + 1) * config.batch_size)
        state, metrics = step(state, parallel.shard({"image": split.images[rows], "label": split.labels[rows]}), rng)
        losses.append(float(jax.device_get(parallel.unreplicate(metrics))["loss"]))
    return jax.device_get(state_variables(parallel.unreplicate(state))), losses


def resident_steps(config, parallel: DataParallel, split, start_state):
    """The path training runs: each device gathers its block of the epoch's order on device."""
    feed = ResidentFeed(parallel, split, config.batch_size, [config.seed])  # epoch_order(config.seed, ...)
    train_fn = compose_train_step(parallel, config, len(split.class_names))
    rng = parallel.replicate(jax.random.key(3))
    state, losses = parallel.replicate(start_state), []
    for batch in itertools.islice(feed.batches(0), STEPS):
        state, metrics = train_fn(state, batch, rng)
        losses.append(float(jax.device_get(parallel.unreplicate(metrics))["loss"]))
    return jax.device_get(state_variables(parallel.unreplicate(state))), losses


def agreement_start(norm: str):
    """(config, split, float64 start state)."""
    config = agreement_config(tiny_config())
    config.model.norm = norm
    split = datasets.load_split(config.dataset, "train")
    with jax.enable_x64(True):
        return config, split, float64_state(config, split, len(split) // config.batch_size)


def test_one_device_and_pmap_agree_in_float64():
    """On the resident path, 8 devices under pmap against one. shard_map on several devices is
    checked against one device on host batches (4 devices, with micro-batches, below), against one
    process on the resident path (2 processes x 2 devices, test_multihost.py), and against two
    towers (test_towers.py); both wrappers run the same per-device function."""
    assert jax.device_count() == 8
    config, split, start = agreement_start("none")
    with jax.enable_x64(True):
        one_device = resident_steps(config, DataParallel("shard_map", jax.devices()[:1]), split, start)
        runs = {"pmap x8": resident_steps(config, DataParallel("pmap"), split, start)}
    assert_agree(start, one_device, runs)


def assert_agree(start, one_device, runs):
    """Every run's variables and losses equal one device's, to the float64 bound; the steps moved
    the variables (parameters, and batch-norm statistics if any), so agreeing means something."""
    want_variables, want_losses = one_device
    for collection, started in state_variables(start).items():
        pairs = zip(jax.tree.leaves(want_variables[collection]), jax.tree.leaves(started), strict=True)
        assert max(float(np.max(np.abs(a - b))) for a, b in pairs) > 1e-3, collection
    for name, (variables, losses) in runs.items():
        for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(want_variables), strict=True):
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(losses, want_losses, rtol=RTOL, err_msg=name)


def test_batch_norm_statistics_are_taken_over_the_global_batch_and_checkpointed(tmp_path):
    """8 devices' statistics are the whole batch's, as on 1 device (float64, as above); a
    checkpoint saves and restores them."""
    config, split, start = agreement_start("batch")
    images = augment.normalize(split.images[: config.batch_size], config.dataset.normalization)

    def statistics(parallel: DataParallel):
        def per_device(variables, x):
            return state.apply_fn(variables, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]

        fn = parallel.wrap(per_device, (REPLICATED, SHARDED), REPLICATED)
        return jax.device_get(parallel.unreplicate(fn(parallel.replicate(variables), parallel.shard(images))))

    with jax.enable_x64(True):
        state, variables = start, state_variables(start)
        images = np.asarray(images, np.float64)
        want = statistics(DataParallel("shard_map", jax.devices()[:1]))
        got = statistics(DataParallel("shard_map"))
        checkpoints = Checkpoints(tmp_path, keep=1, async_save=False)
        checkpoints.save(start.replace(batch_stats=got), jax.random.key(0), {})
        restored, _, _ = checkpoints.restore(0, start, jax.random.key(0))
        checkpoints.close()
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), want, start.batch_stats)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the batch moved the statistics
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    for a, b in zip(jax.tree.leaves(restored.batch_stats), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("owner", [Training, Augmentation, View])
def test_the_steps_constants_are_hashable_constants_not_a_pytree(owner, config):
    """Each owner's constants (training's, augmentation's, evaluation's), built where they are used."""
    constants = owner.from_config(config, 10) if owner is Training else owner.from_config(config)
    assert jax.tree.leaves(constants) == [constants]  # a leaf: jit can never trace its fields
    again = owner.from_config(tiny_config(), 10) if owner is Training else owner.from_config(tiny_config())
    assert hash(constants) == hash(again) and constants == again


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
def test_batch_not_divisible_by_devices_is_a_clear_error(config, key):
    config[key] = 100
    with pytest.raises(config_checks.ConfigError, match=f"{key}=100 is not divisible by the 8 devices.*e.g. 104"):
        config_checks.validate(config, num_devices=8)


def test_a_field_no_model_takes_is_a_clear_error(config):
    config.model.widht = 0.5
    with pytest.raises(config_checks.ConfigError, match=r"no model takes the field\(s\) \['widht'\]"):
        config_checks.validate(config, num_devices=8)


def test_one_device_with_k_micro_batches_computes_what_k_devices_do_in_float64():
    """grad_accum_steps=4 on one device against 4 devices, dropout on: micro-batch j draws device
    j's masks, so the two agree to the float64 bound."""
    config = agreement_config(tiny_config())
    config.model.dropout_rate = 0.5  # in the model the state applies
    split = datasets.load_split(config.dataset, "train")
    with jax.enable_x64(True):
        start = float64_state(config, split, len(split) // config.batch_size)
        four_devices = host_batch_steps(config, DataParallel("shard_map", jax.devices()[:4]), split, start, steps=2)
        config.grad_accum_steps = 4
        config_checks.validate(config, num_devices=1)
        one_device = host_batch_steps(config, DataParallel("shard_map", jax.devices()[:1]), split, start, steps=2)
        config.grad_accum_steps = 3
        with pytest.raises(config_checks.ConfigError, match="grad_accum_steps=3 does not divide each device's 64"):
            config_checks.validate(config, num_devices=1)
    assert_agree(start, four_devices, {"1 device x 4 micro-batches": one_device})


SHIPPED = sorted(p.stem for p in (pathlib.Path(ROOT) / "configs").glob("*.py") if p.stem not in ("__init__", "default"))


@pytest.mark.parametrize("name", SHIPPED)
def test_jax_x64_mode_leaves_every_shipped_configs_step_as_it_is(name):
    """``JAX_ENABLE_X64=1`` (common among JAX users) makes Python numbers float64: the train step of
    every shipped config still traces, and gives back a state of the dtypes it took (traced, not
    compiled: the ImageNet configs at full size)."""
    config = importlib.import_module(f"configs.{name}").get_config()
    config.batch_size = 2
    shape = (256, 256, 3) if config.augment.crop_size else (32, 32, 3)
    shape = (224, 224, 3) if config.input.get("random_resized_crop") else shape
    with jax.enable_x64(True):
        state = jax.eval_shape(lambda: create_state(config, 10, shape, 10))
        step = compose_train_step(DataParallel("shard_map", jax.devices()[:1]), config, 10)
        batch = {"image": jax.ShapeDtypeStruct((2, *shape), np.uint8), "label": jax.ShapeDtypeStruct((2,), np.int32)}
        after, _ = jax.eval_shape(step, state, batch, jax.eval_shape(lambda: ensemble.train_key(config)))
    dtypes = lambda tree: [x.dtype for x in jax.tree.leaves(tree)]
    assert dtypes(after.params) == dtypes(state.params) and np.float32 in dtypes(after.params)
    assert dtypes(after.opt_state) == dtypes(state.opt_state)

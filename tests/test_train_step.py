import functools

import jax
import numpy as np
import pytest

from alexnet_jax import config_checks, datasets
from alexnet_jax.parallel import REPLICATED, SHARDED, DataParallel
from alexnet_jax.train import create_state, step_constants
from alexnet_jax.train_step import train_step

STEPS = 4


def run_steps(config, parallel: DataParallel, split, steps=STEPS):
    """Trains ``steps`` steps on consecutive batches; returns host params and per-step metrics."""
    state, _ = create_state(config, len(split.class_names), split.images.shape[1:], steps_per_epoch=steps)
    step = parallel.wrap(
        functools.partial(train_step, options=step_constants(config, len(split.class_names))),
        (REPLICATED, SHARDED, REPLICATED),
        (REPLICATED, REPLICATED),
        donate_argnums=(0,),
    )
    device_state, rng = parallel.replicate(state), parallel.replicate(jax.random.key(7))
    history = []
    for i in range(steps):
        rows = slice(i * config.batch_size, (i + 1) * config.batch_size)
        batch = parallel.shard({"image": split.images[rows], "label": split.labels[rows]})
        device_state, metrics = step(device_state, batch, rng)
        history.append(jax.device_get(parallel.unreplicate(metrics)))
    return jax.device_get(parallel.unreplicate(device_state).params), history


@pytest.fixture
def split(config):
    return datasets.load_split(config.dataset, "train")


def test_a_few_steps_reduce_the_loss(config, split):
    config.optimizer.learning_rate = 0.01
    config.schedule.name = "constant"
    single = DataParallel("shard_map", jax.devices()[:1])
    _, history = run_steps(config, single, split, steps=8)
    losses = [float(h["loss"]) for h in history]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_pmap_shard_map_and_one_device_agree_on_8_devices(config, split):
    assert jax.device_count() == 8
    config.model.dropout_rate = 0.0  # dropout masks are drawn per device; everything else is not
    config.optimizer.learning_rate, config.schedule.name = 0.005, "constant"  # a stable run: no chaos
    config.augment.crop_padding, config.augment.flip = 4, True
    runs = {
        "one device": run_steps(config, DataParallel("shard_map", jax.devices()[:1]), split),
        "pmap x8": run_steps(config, DataParallel("pmap"), split),
        "shard_map x8": run_steps(config, DataParallel("shard_map"), split),
    }
    reference_params, reference_history = runs.pop("one device")
    start, _ = create_state(config, 10, split.images.shape[1:], STEPS)
    moved = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree.leaves(reference_params), jax.tree.leaves(start.params), strict=True)
    )
    assert moved > 1e-3  # the steps changed the parameters, so agreement means something
    for name, (params, history) in runs.items():
        # Only the order of float32 sums differs (8 partial means vs 1): measured ~6e-8 apart.
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(reference_params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(
            [h["loss"] for h in history], [h["loss"] for h in reference_history], rtol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
def test_batch_not_divisible_by_devices_is_a_clear_error(config, key):
    config[key] = 100
    with pytest.raises(config_checks.ConfigError, match=f"{key}=100 is not divisible by the 8 devices.*e.g. 104"):
        config_checks.validate(config, num_devices=8)


def test_a_field_no_model_takes_is_a_clear_error(config):
    config.model.widht = 0.5
    with pytest.raises(config_checks.ConfigError, match=r"no model takes the field\(s\) \['widht'\]"):
        config_checks.validate(config, num_devices=8)


def test_resident_step_gathers_the_same_global_batches_on_1_and_8_devices(config, split):
    """The path training runs: each device gathers its block of the epoch's order on device."""
    from alexnet_jax.train import compile_train_step, epoch_order_fn

    config.model.dropout_rate = 0.0
    config.optimizer.learning_rate, config.schedule.name = 0.005, "constant"
    steps_per_epoch = len(split) // config.batch_size
    results = []
    for parallel in (DataParallel("shard_map", jax.devices()[:1]), DataParallel("pmap"), DataParallel("shard_map")):
        state, _ = create_state(config, 10, split.images.shape[1:], steps_per_epoch)
        train_fn = compile_train_step(parallel, config, steps_per_epoch, step_constants(config, 10))
        data = parallel.replicate({"image": split.images, "label": split.labels})
        rng = parallel.replicate(jax.random.key(3))
        order = epoch_order_fn(parallel, len(split))(rng, parallel.replicate(np.int32(0)))
        device_state = parallel.replicate(state)
        losses = []
        for _ in range(3):
            device_state, metrics = train_fn(device_state, data, order, rng)
            losses.append(float(jax.device_get(parallel.unreplicate(metrics))["loss"]))
        results.append((jax.device_get(parallel.unreplicate(device_state).params), losses))
    (want_params, want_losses), *others = results
    for params, losses in others:
        np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(want_params), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_step import ATOL, RTOL

from alexnet_jax import optim


def test_step_schedule_divides_by_ten_at_the_given_epochs(config):
    config.schedule.name, config.schedule.step_epochs, config.num_epochs = "step", (2, 3), 4
    schedule = optim.create_schedule(config, steps_per_epoch=10)
    lr = config.optimizer.learning_rate
    np.testing.assert_allclose(
        [schedule(s) for s in (0, 19, 20, 29, 30, 39)], [lr, lr, lr / 10, lr / 10, lr / 100, lr / 100], rtol=1e-6
    )


def test_step_epochs_on_one_step_each_divide_there(config):
    """Two epochs that round to the same step (here 3 steps an epoch) divide there twice, not once."""
    config.schedule.name, config.schedule.step_epochs, config.num_epochs = "step", (1.0, 1.1), 4
    schedule = optim.create_schedule(config, steps_per_epoch=3)
    lr = config.optimizer.learning_rate
    np.testing.assert_allclose([schedule(2), schedule(3), schedule(11)], [lr, lr / 100, lr / 100], rtol=1e-6)


def test_skipped_updates_do_not_hold_back_the_schedule(config):
    """With a non-finite gradient skipped at step 1, the rate applied at step s is still the
    schedule's at s (the rate's count advances with every step, skipped or not)."""
    rates = jnp.asarray([0.1, 0.05, 0.025, 0.0125])
    tx = optim.create_optimizer(config, lambda step: rates[step])
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    for step, gradient in enumerate([1.0, jnp.nan, 1.0, 1.0]):
        updates, state = tx.update({"w": jnp.full((2, 2), gradient)}, state, params)
        assert float(optim.learning_rate(state)) == float(rates[step]), step
        assert bool(state.inner_state.last_finite) == (step != 1)
        params = optax.apply_updates(params, updates)


def test_warmup_cosine_and_onecycle_shapes(config):
    config.num_epochs, config.schedule.warmup_epochs = 10, 1
    config.schedule.name = "warmup_cosine"
    cosine = optim.create_schedule(config, steps_per_epoch=10)
    assert float(cosine(0)) == 0.0
    assert float(cosine(10)) == pytest.approx(config.optimizer.learning_rate)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-8)
    config.schedule.name, config.schedule.pct_start = "onecycle", 0.3
    onecycle = optim.create_schedule(config, steps_per_epoch=10)
    values = np.array([onecycle(s) for s in range(101)])
    assert values.argmax() == 30 and values.max() == pytest.approx(config.optimizer.learning_rate)
    assert values[0] < values.max() / 10 and values[-1] < values.max() / 1000


@pytest.mark.parametrize("rule, decay_biases", [("paper", False), ("pytorch", True)])
def test_sgd_follows_the_papers_or_pytorchs_update_rule(config, rule, decay_biases):
    """paper: v <- m v - lr (g + wd w); w <- w + v, biases not decayed. pytorch: b <- m b + g + wd w;
    w <- w - lr b, biases decayed too. The rate changes between steps, where the two differ."""
    config.optimizer.momentum, config.optimizer.weight_decay, config.optimizer.nesterov = 0.9, 0.01, False
    config.optimizer.update_rule, config.optimizer.decay_biases = rule, decay_biases
    rates = [0.1, 0.05, 0.025]
    tx = optim.create_optimizer(config, lambda step: jnp.asarray(rates)[step])
    params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([0.5])}
    grads = [{"kernel": jnp.array([[0.3, 0.1]]) * (i + 1), "bias": jnp.array([0.2]) * (i + 1)} for i in range(3)]
    state = tx.init(params)
    want = jax.tree.map(np.asarray, params)
    velocity = jax.tree.map(np.zeros_like, want)
    for lr, g in zip(rates, grads, strict=True):
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        decay = {"kernel": 0.01, "bias": 0.01 if decay_biases else 0.0}
        if rule == "paper":
            velocity = {k: 0.9 * velocity[k] - lr * (np.asarray(g[k]) + decay[k] * want[k]) for k in want}
            want = {k: want[k] + velocity[k] for k in want}
        else:
            velocity = {k: 0.9 * velocity[k] + np.asarray(g[k]) + decay[k] * want[k] for k in want}
            want = {k: want[k] - lr * velocity[k] for k in want}
    for k in want:
        np.testing.assert_allclose(params[k], want[k], rtol=1e-6)


@pytest.mark.parametrize("rule", ["paper", "pytorch"])
def test_fine_tuning_scales_updates_by_layer(config, rule):
    """With config.finetune: the head's updates are the plain optimizer's, the other dense layers'
    are ``pretrained_lr_scale`` times them, frozen convolutions' are exactly 0. In float64, within
    test_train_step.py's bound: scaling by a power of two is exact, but the two optimizers are
    different compiled programs, and XLA may fuse a multiply and an add into one rounding in one of
    them and not in the other."""
    config.optimizer.update_rule, config.optimizer.weight_decay = rule, 0.01
    with jax.enable_x64(True):
        _assert_scaled_by_layer(config)


def _assert_scaled_by_layer(config):
    rates = [0.1, 0.05, 0.025]
    schedule = lambda step: jnp.asarray(rates)[step]
    plain = optim.create_optimizer(config, schedule)
    config.init_from, config.finetune.freeze_convs, config.finetune.pretrained_lr_scale = "w", True, 0.25
    tuned = optim.create_optimizer(config, schedule)
    layer = lambda seed: {"kernel": jax.random.normal(jax.random.key(seed), (3, 2)), "bias": jnp.ones(2)}
    params = {"conv1": layer(0), "bn1": {"scale": jnp.ones(2)}, "fc6": layer(1), "fc8": layer(2)}
    plain_state, tuned_state = plain.init(params), tuned.init(params)
    for step in range(3):
        grads = jax.tree.map(lambda p, step=step: jnp.cos(p + step), params)
        want, plain_state = plain.update(grads, plain_state, params)
        got, tuned_state = tuned.update(grads, tuned_state, params)
        for module, scale in (("fc8", 1.0), ("fc6", 0.25)):
            for key in params[module]:
                assert got[module][key].dtype == np.float64
                np.testing.assert_allclose(got[module][key], scale * want[module][key], rtol=RTOL, atol=ATOL)
        for frozen in jax.tree.leaves((got["conv1"], got["bn1"])):
            np.testing.assert_array_equal(frozen, 0.0)

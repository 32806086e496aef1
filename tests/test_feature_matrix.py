"""The feature matrix's cheap form (its full form, every pair run for real: tests/feature_matrix.py):
every feature alone and every pair that can exist has a config that validates and a train step
that traces to a state of the dtypes it took; or validation refuses it in one line, and those
pairs are exactly the matrix's ``REFUSED``."""

import jax
import numpy as np
import pytest
from feature_matrix import REFUSED, cell_flags, pairs

import main
from alexnet_jax import config_checks, ensemble, parallel
from alexnet_jax.experiment import create_state
from alexnet_jax.train import compose_train_step

# Flags that do not change the train step: pairs that differ only in them share one trace.
NOT_IN_THE_STEP = ("--config.init_from", "--config.input.pipeline", "--config.max_steps", "--config.nonfinite_updates",
                   "--config.profile_steps", "--config.eval_crops", "--config.eval_flip")  # fmt: skip
_traced = set()


def traced_step(config):
    """The run's train step traced on abstract values (nothing compiled); returns (state in, state out)."""
    shape = (config.dataset.synthetic_image_size,) * 2 + (3,)
    data_parallel = parallel.create(config.parallel)
    state = jax.eval_shape(lambda: create_state(config, 10, shape, 4))
    orders = len(ensemble.data_seeds(config))
    images = (config.batch_size, *([orders] if orders > 1 else []), *shape)
    batch = {"image": jax.ShapeDtypeStruct(images, np.uint8), "label": jax.ShapeDtypeStruct(images[:-3], np.int32)}
    rng = jax.eval_shape(lambda: ensemble.train_key(config))
    inputs = (state, batch, rng)
    if config.parallel == "pmap":  # a leading device axis, and each device's share of the batch
        devices = data_parallel.num_devices
        stacked = lambda x: jax.ShapeDtypeStruct((devices, *x.shape), x.dtype)
        shared = lambda x: jax.ShapeDtypeStruct((devices, x.shape[0] // devices, *x.shape[1:]), x.dtype)
        inputs = (jax.tree.map(stacked, state), jax.tree.map(shared, batch), jax.tree.map(stacked, rng))
    after, _ = jax.eval_shape(compose_train_step(data_parallel, config, 10), *inputs)
    return inputs[0], after


@pytest.mark.parametrize("features", pairs(), ids=lambda features: " x ".join(features))
def test_every_pair_validates_and_its_step_traces_or_is_refused_in_one_line(features):
    flags, x64 = cell_flags(features, source="/a/run")
    with jax.enable_x64(x64):
        config = main.parse_args(["main.py", *flags]).config
        refusal = REFUSED.get(frozenset(features))
        if refusal:
            with pytest.raises(config_checks.ConfigError, match=refusal.replace("(", r"\(").replace(".", r"\.")):
                config_checks.validate(config, jax.device_count())
            return
        config_checks.validate(config, jax.device_count())
        key = (x64, *sorted(f for f in flags if not f.startswith(NOT_IN_THE_STEP)))
        if key in _traced:
            return
        before, after = traced_step(config)
        _traced.add(key)
    dtypes = lambda tree: [x.dtype for x in jax.tree.leaves(tree)]
    assert dtypes(after) == dtypes(before) and after.step.dtype == np.int32

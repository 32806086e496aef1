"""The paper's model parallelism (``--config.parallel=towers``): alexnet2012 split over two devices
as over the paper's two GPUs, composed with data parallelism, computes what the grouped model on
one device per batch shard computes, in float64 (test_train_step.py's bound), dropout included."""

import jax
import numpy as np
import pytest
from conftest import TINY, float64_state, tiny_config
from test_train_step import agreement_config, assert_agree, host_batch_steps

from alexnet_jax import config_checks, datasets, models
from alexnet_jax.experiment import create_state
from alexnet_jax.parallel import DataParallel, TowerParallel


def paper_config():
    """alexnet2012 at 1/32 of its width (the split is the same; float64 on CPUs is slow), on 224x224 images."""
    config = agreement_config(tiny_config())
    config.model.name, config.model.width, config.model.dropout_rate = "alexnet2012", 0.03125, 0.5
    config.dataset.synthetic_image_size, config.dataset.synthetic_examples = 224, 24
    config.augment.crop_padding, config.batch_size = 0, 4
    return config


def test_two_towers_by_two_batch_shards_equal_the_grouped_model_in_float64():
    assert jax.device_count() >= 4
    config = paper_config()
    split = datasets.load_split(config.dataset, "train")
    with jax.enable_x64(True):
        grouped_start = float64_state(config, split, len(split) // config.batch_size)
        grouped = host_batch_steps(config, DataParallel("shard_map", jax.devices()[:2]), split, grouped_start)
        config.parallel = "towers"
        config_checks.validate(config, num_devices=4)
        # The same parameters, applied by one tower's half of the model (TowerParallel.model).
        towers = host_batch_steps(config, TowerParallel("towers", jax.devices()[:4]), split, grouped_start)
    assert_agree(grouped_start, grouped, {"2 batch shards x 2 towers": towers})


def test_a_towers_states_first_kernel_is_fetched_whole_as_the_runs_filter_figure_draws_it():
    """What the run's filter figure draws (``parallel.fetch``): the kernel split between the towers'
    devices, whole; any one device holds only its tower's filters."""
    config = paper_config()
    config.parallel = "towers"
    split = datasets.load_split(config.dataset, "train")
    towers = TowerParallel("towers", jax.devices()[:4])
    with jax.enable_x64(True):  # the config's float64 (float32 would do as well)
        state = jax.device_get(create_state(config, len(split.class_names), split.image_shape, 1))
        kernel = models.first_layer_kernel(towers.place_model(state).params)
        got = towers.fetch(kernel)
    want = models.first_layer_kernel(state.params)
    assert kernel.addressable_data(0).shape != want.shape  # split: one device's share is not all of it
    np.testing.assert_array_equal(got, want)


# the first tier: the kernel fetched whole (above), a run's figure and --mode=filters (test_loop_details.py)
@pytest.mark.tier2
def test_a_towers_run_draws_both_towers_filters(tmp_path, cli):
    """The run's filter figure shows both towers' filters, whole, as --mode=filters draws them from
    its checkpoint (a process of one device evaluating a towers run: test_multihost.py, second tier)."""
    flags = [*TINY, "--config.parallel=towers", "--config.model.name=alexnet2012", "--config.model.width=0.03125",
             "--config.dataset.synthetic_image_size=224", "--config.dataset.synthetic_examples=32",
             "--config.batch_size=8", "--config.eval_batch_size=8", "--config.augment.crop_padding=0",
             "--config.num_epochs=1", f"--workdir={tmp_path / 'run'}"]  # fmt: skip
    code, out, err = cli(*flags)
    assert code == 0 and "4 pairs of towers" in out, err[-3000:]
    filters, workdir = tmp_path / "filters.png", tmp_path / "run"
    code, out, err = cli("--mode=filters", f"--workdir={workdir}", "--checkpoint=latest", f"--output={filters}")
    assert code == 0, err[-3000:]
    assert filters.read_bytes() == (workdir / "conv1_filters.png").read_bytes()

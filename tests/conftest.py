"""Test set-up: 8 fake CPU devices (set before JAX is imported) and small shared configs."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from configs import smoke  # noqa: E402


def tiny_config():
    """The smoke config shrunk further: 512 synthetic images, 8 steps per epoch, 2 epochs."""
    config = smoke.get_config()
    config.dataset.synthetic_examples = 512
    config.model.width = 0.125
    config.model.fc_features = 256
    config.batch_size = 64
    config.eval_batch_size = 64
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
    return config


@pytest.fixture
def config():
    return tiny_config()

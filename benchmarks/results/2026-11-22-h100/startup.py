"""Start-up costs of the CIFAR command, as run on the H100 machine on 2026-11-22 (prints seconds):

  PYTHONPATH=.:$PYTHONPATH python benchmarks/results/2026-11-22-h100/startup.py

Printed there: jax init 2.0, import 7.0, read 45000 9.5, read 5000 0.8.
"""

import time

t = time.time()
import jax  # noqa: E402

jax.devices()
print("jax init", round(time.time() - t, 1))
t = time.time()
import ml_collections  # noqa: E402

from alexnet_jax import datasets, train  # noqa: E402, F401

print("import", round(time.time() - t, 1))
config = ml_collections.ConfigDict(dict(name="cifar10_png", data_dir="/tmp/tfds", download=False))
t = time.time()
datasets.load_split(config, "train[:90%]")
print("read 45000", round(time.time() - t, 1))
t = time.time()
datasets.load_split(config, "train[90%:]")
print("read 5000", round(time.time() - t, 1))

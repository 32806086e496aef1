#!/usr/bin/env bash
# The wheels a GPU image with JAX, Flax, Optax, Orbax and PyTorch lacks for benchmarks/gpu_check.py,
# at requirements.lock's versions, for CPython 3.12 on x86-64 Linux, into .whl/ (run from the
# repository's root, where pip can reach a package registry). On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out=gpu_check
# (The CIFAR-10 sections also need TFDS and its dependencies, and the prepared data.)
set -euo pipefail
mapfile -t pins < <(grep -iE '^(ml-collections|ml_collections|tensorboardx|simplejpeg|grain|array_record|portpicker)==' requirements.lock | cut -d' ' -f1)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"

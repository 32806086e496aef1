"""docs/research.md's worked examples run as written (its research pieces added to their files
and switched on together by its command), and what they rest on: per-example gradients
against a loop over the examples (float64), DP-SGD's aggregate against its definition."""

import contextlib
import importlib
import pathlib
import re
import shlex

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from conftest import ROOT

import main
from alexnet_jax import metrics_log, models
from alexnet_jax.checkpointing import read_variables
from alexnet_jax.experiment import create_state
from alexnet_jax.per_example import per_example_grads

GUIDE = pathlib.Path(ROOT, "docs", "research.md")
SIZES = ["--config.dataset.synthetic_examples=256", "--config.batch_size=64", "--config.eval_batch_size=64"]


@contextlib.contextmanager
def added_to_their_files(blocks: list[str]):
    """Runs each block that names its file (``# alexnet_jax/<module>.py``) at the end of that
    module, as if added there; takes out what the blocks added after (new names, registry entries)."""
    saved = []
    try:
        for block in blocks:
            name = block.splitlines()[0].removeprefix("# ").removesuffix(".py").replace("/", ".")
            module = importlib.import_module(name)
            names = vars(module)
            registries = {k: dict(v) for k, v in names.items() if isinstance(v, dict) and not k.startswith("__")}
            saved.append((names, set(names), registries))
            exec(compile(block, module.__file__, "exec"), names)
        yield
    finally:
        for names, before, registries in reversed(saved):
            for added in set(names) - before:
                del names[added]
            for key, entries in registries.items():
                names[key].clear()
                names[key].update(entries)


def test_the_guides_research_pieces_run_together_as_written(tmp_path, cli):
    """And the moving average the command keeps: ema = decay * ema + (1 - decay) * weights after
    each step, from the initial weights, checkpointed beside them."""
    guide = GUIDE.read_text()
    pieces = [b for b in re.findall(r"```python\n(.*?)```", guide, re.S) if b.startswith("# alexnet_jax/")]
    assert len(pieces) == 5
    command = re.search(r"### All of them\n\n```sh\n(.*?)```", guide, re.S).group(1).replace("\\\n", " ")
    argv = [arg.strip("'") for arg in shlex.split(command)[2:] if not arg.startswith("--workdir")]
    run = [*argv, *SIZES, "--config.num_epochs=1", "--config.max_steps=2", "--config.checkpoint_every_steps=1",
           "--config.figures=False"]  # fmt: skip
    with added_to_their_files(pieces):
        from alexnet_jax import augment, train_step

        code, out, err = cli(*run, f"--workdir={tmp_path}")
        assert code == 0, err
        grey = augment.CUSTOM["cutout"](np.full((4, 32, 32, 3), 255.0), jax.random.split(jax.random.key(0), 4))
        uniform = train_step.LOSS_TERMS["confidence_penalty"](None, np.zeros((2, 10)), None)
        config = main.parse_args(["main.py", *run]).config
        initial = create_state(config, 10, (32, 32, 3), steps_per_epoch=4).params
    records = metrics_log.read_metrics(tmp_path)
    train, evaluation = records[-2], records[-1]
    assert train["learning_rate"] == pytest.approx(0.005 * 3 / 4, rel=1e-6)  # linear over 4 steps, at the 2nd
    assert 0 <= evaluation["val_brier"] <= 2 and 0 <= evaluation["val_ema_brier"] <= 2
    assert all(0 < ((image == 127.5).all(-1)).sum() <= 64 for image in grey)  # one square of at most 8 x 8
    assert float(uniform) == pytest.approx(-0.1 * np.log(10), rel=1e-6)
    (first, _), (second, _) = (read_variables(tmp_path / "checkpoints" / str(step)) for step in (1, 2))
    assert sorted(second) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc8"]  # alexnet_gap's
    average, _ = read_variables(tmp_path / "checkpoints" / "2", "ema")
    for got, *weights in zip(*(jax.tree.leaves(t) for t in (average, initial, first, second)), strict=True):
        want = 0.75 * (0.75 * weights[0] + 0.25 * weights[1]) + 0.25 * weights[2]
        # float32: a few roundings, on values the size of the weights
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.max(np.abs(weights[2]))))
    assert "alexnet_gap" not in models.MODELS  # taken out again


def test_the_guides_dp_sgd_block_runs():
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S) if "dp_sgd" in b]
    namespace = {}
    exec(compile(block, "docs/research.md", "exec"), namespace)
    assert jax.tree.leaves(namespace["grads"])[0].shape[0] == 8  # per example
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(namespace["params"]))
    # The model the block says: an eighth of alexnet_cifar's width (8 of conv1's 64 filters; 8 of 64
    # hidden units), 10 classes.
    kernels = [x.shape for x in jax.tree.leaves(namespace["params"]) if x.ndim > 1]
    assert sorted(shape[-1] for shape in kernels) == [8, 8, 8, 10, 24, 32, 32, 48]


class _Small(nn.Module):
    """A convolution and a dense layer: per_example_grads takes any apply function; the models'
    examples are as independent as these (no batch norm)."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), dtype=x.dtype, param_dtype=x.dtype)(x))
        return nn.Dense(10, dtype=x.dtype, param_dtype=x.dtype)(x.reshape(x.shape[0], -1))


def test_per_example_gradients_are_each_examples_own_in_float64():
    with jax.enable_x64(True):
        model = _Small()
        images = np.random.default_rng(0).normal(size=(3, 16, 16, 3))
        targets = jax.nn.one_hot(np.array([1, 2, 3]), 10).astype(np.float64)
        params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
        params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
        grads = per_example_grads(model.apply, params, images, targets)

        @jax.jit
        @jax.grad
        def alone(params, image, target):
            logits = model.apply({"params": params}, image[None], train=False)
            return optax.softmax_cross_entropy(logits, target[None])[0]

        for i in range(len(images)):
            alone_grads = alone(params, images[i], targets[i])
            for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(alone_grads), strict=True):
                np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)  # sums in another order only
        for name in ("bn1", "BatchNorm_0"):  # the project's models' batch norms, and Flax's own names
            with_batch_norm = {**params, name: {"scale": np.ones(4), "bias": np.zeros(4)}}
            with pytest.raises(ValueError, match="without batch norm"):
                per_example_grads(model.apply, with_batch_norm, images, targets)


def test_dp_sgds_aggregate_clips_each_example_sums_and_averages():
    grads = {"w": np.array([[3.0, 4.0], [0.3, 0.4]]), "b": np.array([[0.0], [0.0]])}  # norms 5 and 0.5
    aggregate = optax.contrib.differentially_private_aggregate(1.0, 0.0, key=jax.random.key(0))
    updates, _ = aggregate.update(grads, aggregate.init(None))
    np.testing.assert_allclose(updates["w"], (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 2, rtol=1e-6)

"""Evaluation scores every example once, and scores it as the model does one example at a time.

Compared in float64 (JAX's x64 mode): the per-device and the whole-batch logits then differ by
~1e-15 relative, so an argmax cannot flip on a near-tie on any CPU, as it could in float32.
"""

import functools

import jax
import numpy as np
from conftest import float64_state

from alexnet_jax import augment, datasets
from alexnet_jax.evaluation import ResidentEvaluator, View, eval_step, scorer
from alexnet_jax.parallel import DataParallel
from alexnet_jax.report import confusion_matrix
from alexnet_jax.train_step import state_variables


def test_every_example_is_scored_exactly_once(config):
    assert jax.device_count() == 8
    config.model.dtype = "float64"
    split = datasets.load_split(config.dataset, "validation")  # 128 examples
    split = datasets.ArraySplit(split.images[:100], split.labels[:100], split.class_names)
    with jax.enable_x64(True):
        state = float64_state(config, split, steps_per_epoch=1)
        parallel = DataParallel("pmap")
        step = functools.partial(eval_step, scored=scorer(state.apply_fn, View.from_config(config)))
        evaluator = ResidentEvaluator(parallel, step, split, global_batch=16)
        assert evaluator.num_batches == 7  # 100 examples -> 7 batches of 16, the last one 12 short
        metrics, predictions, labels = evaluator(parallel.replicate(state_variables(state)))
        images = augment.normalize(split.images, config.dataset.normalization).astype(np.float64)
        logits = np.asarray(state.apply_fn({"params": state.params}, images))
        log_softmax = np.asarray(jax.nn.log_softmax(logits))
    assert logits.dtype == np.float64
    want = logits.argmax(-1)
    assert predictions.shape == (100,)
    np.testing.assert_array_equal(labels, split.labels)
    np.testing.assert_array_equal(predictions, want)
    assert metrics["top1"] == np.mean(want == split.labels)
    cross_entropy = -np.mean(log_softmax[np.arange(100), split.labels])
    np.testing.assert_allclose(metrics["loss"], cross_entropy, rtol=1e-12)  # padding adds no loss
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert metrics["top5"] == np.mean((top5 == split.labels[:, None]).any(-1))
    assert confusion_matrix(split.labels, predictions, 10).sum() == 100

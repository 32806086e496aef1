import jax
import numpy as np

from alexnet_jax import augment, datasets
from alexnet_jax.evaluation import Evaluator, confusion_matrix
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train import create_state, step_constants


def test_every_example_is_scored_exactly_once(config):
    split = datasets.load_split(config.dataset, "validation")  # 128 examples
    split = datasets.ArraySplit(split.images[:100], split.labels[:100], split.class_names)
    state, _ = create_state(config, 10, (32, 32, 3), steps_per_epoch=1)
    parallel = DataParallel("pmap")
    evaluator = Evaluator(parallel, state.apply_fn, step_constants(config, 10), split, global_batch=16)
    assert evaluator.num_batches == 7  # 100 examples -> 7 batches of 16, the last one 12 short
    metrics, predictions = evaluator(parallel.replicate(state.params))
    logits = state.apply_fn({"params": state.params}, augment.normalize(split.images, config.dataset.normalization))
    want = np.asarray(logits.argmax(-1))
    assert predictions.shape == (100,)
    np.testing.assert_array_equal(predictions, want)
    assert metrics["top1"] == np.mean(want == split.labels)
    top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    assert abs(metrics["top5"] - np.mean((top5 == split.labels[:, None]).any(-1))) < 1e-6
    assert confusion_matrix(split.labels, predictions, 10).sum() == 100
    assert jax.device_count() == 8

"""Evaluation, on a device-resident or a streamed split: every example scored exactly once."""

import functools

import jax
import numpy as np

from alexnet_jax import ensemble, input_pipeline
from alexnet_jax.datasets import ArraySplit
from alexnet_jax.input_pipeline import EvalBatch, ProcessShare
from alexnet_jax.parallel import MODEL, REPLICATED, SHARDED, DataParallel, process_share
from alexnet_jax.train_step import StepConstants, eval_step, resident_eval_step


def pad_to_batches(split: ArraySplit, global_batch: int) -> dict[str, np.ndarray]:
    """Pads a split to whole global batches; ``mask`` is 1 for real examples, 0 for padding."""
    padding = -len(split) % global_batch
    pad = lambda x: np.concatenate([x, np.zeros((padding, *x.shape[1:]), x.dtype)])  # noqa: E731
    mask = np.concatenate([np.ones(len(split), np.int32), np.zeros(padding, np.int32)])
    return {"image": pad(split.images), "label": pad(split.labels), "mask": mask}


class Evaluator:
    """Scores model variables (``state_variables``) on one split; subclasses say how the batches reach the devices."""

    def __init__(self, parallel: DataParallel, split, global_batch: int):
        self.parallel, self.split, self.global_batch = parallel, split, global_batch
        self.num_batches = -(-len(split) // global_batch)

    def _scored_batches(self, variables):
        """Yields (global sums, sharded predictions, sharded labels) per batch."""
        raise NotImplementedError

    def __call__(self, variables) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Mean ``loss`` (cross-entropy), ``top1``, ``top5`` (an ensemble's, and each member's as
        ``member<k>_top1`` ...); every example's predicted class and label."""
        totals, predictions, labels = None, [], []
        for sums, batch_predictions, batch_labels in self._scored_batches(variables):
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            predictions.append(self.parallel.unshard(batch_predictions))
            labels.append(self.parallel.unshard(batch_labels))
        totals = jax.device_get(self.parallel.unreplicate(totals))
        count = float(totals["count"])
        metrics = ensemble.flatten({k: np.asarray(v, np.float64) / count for k, v in totals.items() if k != "count"})
        real = slice(0, len(self.split))
        return metrics, np.concatenate(jax.device_get(predictions))[real], np.concatenate(jax.device_get(labels))[real]


class ResidentEvaluator(Evaluator):
    """Holds the split on every device, padded to whole batches."""

    def __init__(self, parallel: DataParallel, apply_fn, constants: StepConstants, split, global_batch: int):
        super().__init__(parallel, split, global_batch)
        padded = pad_to_batches(split, global_batch)
        self._data = parallel.replicate(padded)
        self._order = parallel.replicate(np.arange(len(padded["label"]), dtype=np.int32))
        self._starts = [parallel.replicate(np.int32(i * global_batch)) for i in range(self.num_batches)]
        step = functools.partial(
            resident_eval_step, apply_fn=apply_fn, local_batch=global_batch // parallel.num_devices, constants=constants
        )
        self._step = parallel.wrap(step, (MODEL, REPLICATED, REPLICATED, REPLICATED), (REPLICATED, SHARDED, SHARDED))

    def _scored_batches(self, variables):
        for start in self._starts:
            yield self._step(variables, self._data, self._order, start)


class StreamingEvaluator(Evaluator):
    """Streams the split in order through a Grain pipeline (``workers`` processes)."""

    def __init__(self, parallel, apply_fn, constants, split, global_batch: int, workers: int, share: ProcessShare):
        super().__init__(parallel, split, global_batch)
        self._batch_fn = EvalBatch(split.read, len(split), global_batch, share)
        self._workers = workers
        step = functools.partial(eval_step, apply_fn=apply_fn, constants=constants)
        self._step = parallel.wrap(step, (MODEL, SHARDED), (REPLICATED, SHARDED, SHARDED))

    def _scored_batches(self, variables):
        stream = input_pipeline.pipeline(self._batch_fn, 0, self.num_batches, self._workers)
        batches = input_pipeline.batches(input_pipeline.to_devices(stream, self.parallel.shard))
        try:
            for batch in batches:
                yield self._step(variables, batch)
        finally:
            batches.close()


def create_evaluator(parallel: DataParallel, apply_fn, constants: StepConstants, split, config) -> Evaluator:
    """The evaluator for ``config.input.pipeline``, batches of ``config.eval_batch_size``."""
    if config.input.pipeline == "streaming":
        workers, share = config.input.workers, process_share()
        return StreamingEvaluator(parallel, apply_fn, constants, split, config.eval_batch_size, workers, share)
    return ResidentEvaluator(parallel, apply_fn, constants, split, config.eval_batch_size)

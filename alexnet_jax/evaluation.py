"""Evaluation: the test-time view of images (a centre crop, the paper's ten crops, mirrors), the pure
eval step, and evaluators on a device-resident or a streamed split: every example scored exactly once."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import augment, ensemble, input_pipeline
from alexnet_jax.datasets import ArraySplit
from alexnet_jax.feeds import resident_batch
from alexnet_jax.input_pipeline import EvalBatch, ProcessShare
from alexnet_jax.parallel import AXIS, MODEL, REPLICATED, SHARDED, DataParallel, process_share

# Research hook (docs/research.md), named by the config's eval_scores: name -> (log probabilities
# [N, classes], labels [N]) -> a value per example, whose mean evaluation reports as <name> beside
# loss, top1, top5.
EVAL_SCORES = {}


@dataclasses.dataclass(frozen=True)
class View:
    """How evaluation looks at uint8 images: the centre ``crop_size`` crop (or the whole image), or
    the paper's ten crops (``crops=10``), with the mirror image too (``flip``), normalised with the
    statistics ``normalization`` names. Constants of the compiled programs."""

    crop_size: int | None = None
    crops: int = 1
    flip: bool = False
    normalization: str = "cifar10"

    @classmethod
    def from_config(cls, config) -> "View":
        return cls(config.augment.crop_size, config.eval_crops, config.eval_flip, config.dataset.normalization)

    def log_probabilities(self, apply_fn, variables: dict, images: jax.Array) -> jax.Array:
        """Log class probabilities of uint8 NHWC ``images``: of one view, or of the mean softmax over
        the ten crops or over the view and its mirror. Several views are scored one after another
        (``jax.lax.map``), in the memory of one batch of views: on a CPU, the paper config's 1,280
        crops at once took 23 GB (BENCHMARKS.md, "ImageNet's shape")."""

        def log_softmax(views):
            logits = apply_fn(variables, augment.normalize(views, self.normalization), train=False)
            return jax.nn.log_softmax(logits, axis=-1)

        def mean_over(views):  # [V, N, ...] -> log of the mean probability over the V views
            each = jax.lax.map(log_softmax, views)
            return jax.nn.logsumexp(each, axis=0) - jnp.log(float(each.shape[0]))

        if self.crops == 10:
            return mean_over(augment.ten_crops(images, self.crop_size))  # [10, N, size, size, C]
        if self.crop_size is not None:
            images = augment.centre_crop(images, self.crop_size)
        if self.flip:
            return mean_over(jnp.stack([images, images[:, :, ::-1]]))
        return log_softmax(images)


def scorer(apply_fn, view: View, members: int = 1):
    """``(variables, images) -> {name: log probabilities}``: the model's under "", and for an
    ensemble of ``members`` stacked models its members' too (``ensemble.averaged``)."""
    one = lambda variables, images: {"": view.log_probabilities(apply_fn, variables, images)}
    return ensemble.averaged(one, members)


def eval_step(variables: dict, batch: dict, scored, scores: tuple[str, ...] = ()):
    """Scores a batch (``batch['mask']`` marks real examples; padding scores nothing) with ``scored``
    (``scorer``'s). Returns global sums for each of its outputs (``loss``, ``top1``, ``top5``, the
    ``EVAL_SCORES`` named in ``scores``; a member's prefixed ``member<k>_``) and ``count``; this
    device's predictions and labels."""
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    outputs = scored(variables, batch["image"])
    sums = {f"{name}{key}": value for name, log_probs in outputs.items() for key, value in
            _scores(log_probs, labels, mask, scores).items()}  # fmt: skip
    return jax.lax.psum({**sums, "count": jnp.sum(mask)}, AXIS), jnp.argmax(outputs[""], -1), labels


def _topk_correct(log_probs: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    k = min(k, log_probs.shape[-1])
    return jnp.any(jax.lax.top_k(log_probs, k)[1] == labels[:, None], axis=-1)


def _scores(log_probs: jax.Array, labels: jax.Array, mask: jax.Array, extra: tuple[str, ...]) -> dict:
    """Sums over the real examples of the cross-entropy, of top-1 and top-5 hits, and of the
    ``EVAL_SCORES`` named in ``extra``."""
    loss = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    sums = {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum(_topk_correct(log_probs, labels, 1) * mask),
        "top5": jnp.sum(_topk_correct(log_probs, labels, 5) * mask),
    }
    return {**sums, **{name: jnp.sum(EVAL_SCORES[name](log_probs, labels) * mask) for name in extra}}


def pad_to_batches(split: ArraySplit, global_batch: int) -> dict[str, np.ndarray]:
    """Pads a split to whole global batches; ``mask`` is 1 for real examples, 0 for padding."""
    padding = -len(split) % global_batch
    pad = lambda x: np.concatenate([x, np.zeros((padding, *x.shape[1:]), x.dtype)])
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
        count = float(totals.pop("count"))
        metrics = {key: float(np.asarray(value, np.float64) / count) for key, value in totals.items()}
        real = slice(0, len(self.split))
        return metrics, np.concatenate(jax.device_get(predictions))[real], np.concatenate(jax.device_get(labels))[real]


class ResidentEvaluator(Evaluator):
    """Holds the split on every device, padded to whole batches."""

    def __init__(self, parallel: DataParallel, step, split, global_batch: int):
        super().__init__(parallel, split, global_batch)
        padded = pad_to_batches(split, global_batch)
        self._data = parallel.replicate(padded)
        self._order = parallel.replicate(np.arange(len(padded["label"]), dtype=np.int32))
        self._starts = [parallel.replicate(np.int32(i * global_batch)) for i in range(self.num_batches)]
        local_batch = global_batch // parallel.num_devices

        def resident_step(variables, data, order, start):
            return step(variables, resident_batch(data, order, start, local_batch))

        self._step = parallel.wrap(
            resident_step, (MODEL, REPLICATED, REPLICATED, REPLICATED), (REPLICATED, SHARDED, SHARDED)
        )

    def _scored_batches(self, variables):
        for start in self._starts:
            yield self._step(variables, self._data, self._order, start)


class StreamingEvaluator(Evaluator):
    """Streams the split in order through a Grain pipeline (``workers`` processes)."""

    def __init__(self, parallel, step, split, global_batch: int, workers: int, share: ProcessShare):
        super().__init__(parallel, split, global_batch)
        self._batch_fn = EvalBatch(split.read, len(split), global_batch, share)
        self._workers = workers
        self._step = parallel.wrap(step, (MODEL, SHARDED), (REPLICATED, SHARDED, SHARDED))

    def _scored_batches(self, variables):
        stream = input_pipeline.pipeline(self._batch_fn, 0, self.num_batches, self._workers)
        batches = input_pipeline.batches(input_pipeline.to_devices(stream, self.parallel.shard))
        try:
            for batch in batches:
                yield self._step(variables, batch)
        finally:
            batches.close()


def create_evaluator(parallel: DataParallel, apply_fn, split, config, members: int = 1) -> Evaluator:
    """The evaluator of ``apply_fn``'s variables (``members`` stacked models) for
    ``config.input.pipeline``, in batches of ``config.eval_batch_size``."""
    scored = scorer(apply_fn, View.from_config(config), members)
    step = functools.partial(eval_step, scored=scored, scores=tuple(config.get("eval_scores", ())))
    if config.input.pipeline == "streaming":
        workers, share = config.input.workers, process_share()
        return StreamingEvaluator(parallel, step, split, config.eval_batch_size, workers, share)
    return ResidentEvaluator(parallel, step, split, config.eval_batch_size)

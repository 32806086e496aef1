"""What the train step is fed, step by step: batches from a device-resident dataset, or streamed.

Both feeds visit the examples in the same order (``input_pipeline.epoch_order``) and yield each
step's global batch, sharded over the devices, so the training loop and its compiled step do not
depend on which one runs:

* ``ResidentFeed``: the whole split on every device (the fast path for data that fits); a small
  compiled program gathers each device's block of the batch from the epoch's order on the device.
* ``StreamingFeed``: a Grain pipeline reads and decodes each step's batch in worker processes and
  puts it on the devices ahead of the step.

``batches(step)`` is a generator from ``step`` on; closing it (before an evaluation, say) stops a
streaming feed's workers, and the next ``batches`` starts them again at its step: batches are a
function of the step, so nothing changes but the time to start.
"""

import jax
import numpy as np

from alexnet_jax import images, input_pipeline
from alexnet_jax.parallel import AXIS, REPLICATED, SHARDED, DataParallel, process_share

PIPELINES = ("resident", "streaming")


def host_views(input_config) -> tuple:
    """The host's (training, evaluation) views of streamed images; None: the images as stored."""
    train_view = eval_view = None
    if input_config.random_resized_crop is not None:
        area, aspect = tuple(input_config.crop_area), tuple(input_config.crop_aspect)
        train_view = images.RandomResizedCrop(input_config.random_resized_crop, area, aspect)
    if input_config.eval_resize is not None:
        eval_view = images.CentreSquare(input_config.eval_resize)
    return train_view, eval_view


def resident_batch(data: dict[str, jax.Array], order: jax.Array, start: jax.Array, local_batch: int):
    """This device's share of a global batch gathered from a device-resident dataset.

    ``order`` lists example indices (an epoch's permutation, or 0..N-1 for evaluation); the
    global batch is ``order[..., start : start + global batch]`` and device i takes its i-th block.
    Several orders stacked on a leading axis give a batch per order on axis 1: [local batch, orders, ...].
    """
    offset = start + jax.lax.axis_index(AXIS) * local_batch
    indices = jax.lax.dynamic_slice_in_dim(order, offset, local_batch, axis=order.ndim - 1)
    return jax.tree.map(lambda column: column[indices.T], data)


class ResidentFeed:
    """The training split on every device, batches gathered in the current epoch's order (with
    several ``seeds``, a batch in each seed's order: batches [batch, seeds, ...])."""

    def __init__(self, parallel: DataParallel, split, global_batch: int, seeds: list[int]):
        self.parallel, self.split, self.seeds = parallel, split, seeds
        self.steps_per_epoch = len(split) // global_batch
        self.data = parallel.replicate({"image": split.images, "label": split.labels})
        local = global_batch // parallel.num_devices
        gather = lambda data, order, start: resident_batch(data, order, start, local)
        self._gather = parallel.wrap(gather, (REPLICATED,) * 3, SHARDED)
        self._starts = [parallel.replicate(np.int32(i * global_batch)) for i in range(self.steps_per_epoch)]

    def order(self, epoch: int) -> jax.Array:
        """Epoch ``epoch``'s order on every device (several: stacked)."""
        orders = [input_pipeline.epoch_order(seed, epoch, len(self.split)) for seed in self.seeds]
        return self.parallel.replicate(np.stack(orders) if len(orders) > 1 else orders[0])

    def batches(self, step: int):
        """The batches of steps ``step``, ``step + 1``, ..."""
        epoch, order = None, None
        while True:
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.order(epoch)
            yield self._gather(self.data, order, self._starts[step % self.steps_per_epoch])
            step += 1


class StreamingFeed:
    """Batches read, decoded and put on the devices ahead of the step, up to ``total_steps``; the
    workers start with the first batch asked for."""

    def __init__(self, parallel: DataParallel, split, global_batch: int, seed: int, total_steps: int, workers):
        self._batch_fn = input_pipeline.TrainBatch(split.read, len(split), global_batch, seed, process_share())
        self._total_steps, self._workers, self._put = total_steps, workers, parallel.shard

    def batches(self, step: int):
        """The batches of steps ``step``, ``step + 1``, ...; closing it stops the workers."""
        stream = input_pipeline.pipeline(self._batch_fn, step, self._total_steps, self._workers)
        yield from input_pipeline.batches(input_pipeline.to_devices(stream, self._put))


def create_feed(parallel: DataParallel, config, split, total_steps: int, seeds: list[int]):
    """The feed for ``config.input.pipeline``; ``seeds``: of the data orders read (several: a batch in each)."""
    if config.input.pipeline == "streaming":
        return StreamingFeed(parallel, split, config.batch_size, seeds[0], total_steps, config.input.workers)
    return ResidentFeed(parallel, split, config.batch_size, seeds)

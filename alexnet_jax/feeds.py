"""What the train step is fed, step by step: a device-resident dataset, or streamed batches.

Both feeds visit the examples in the same order (``input_pipeline.epoch_order``) and give the
compiled step function its inputs between the train state and the key, ``step_fn(state, *inputs,
rng)``, so the training loop does not depend on which one runs:

* ``ResidentFeed``: the whole split on every device (the fast path for data that fits); the step
  gathers its batch from the epoch's order on the device.
* ``StreamingFeed``: a Grain pipeline reads and decodes each step's batch in worker processes and
  puts it on the devices ahead of the step.
"""

import functools

import jax
import numpy as np

from alexnet_jax import ensemble, images, input_pipeline
from alexnet_jax.parallel import MODEL, REPLICATED, SHARDED, DataParallel, process_share
from alexnet_jax.train_step import StepConstants, resident_train_step, train_step

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


# How an ensemble's members share the step: vectorised (jax.vmap), or one after another in one
# program (unrolled). None: vectorised on accelerators; unrolled on CPUs, where the vmap-ed step,
# whose members' convolutions become grouped ones, runs 2.9x slower (BENCHMARKS.md, "Ensembles").
VECTORIZE_MEMBERS: bool | None = None


def over_members(step, config, input_axes: tuple):
    """``step(state, *inputs, rng)``, or for an ensemble the same step over each member: the stacked
    state and keys member by member, each input shared (axis None) or per member (0), as
    ``input_axes`` says; the metrics come back per member."""
    members = ensemble.size(config)
    if members == 1:
        return step
    vectorize = VECTORIZE_MEMBERS if VECTORIZE_MEMBERS is not None else jax.default_backend() != "cpu"

    def members_step(state, *inputs_and_rng):
        axes = (*input_axes, 0)
        if vectorize:
            stacked = ensemble.state_axes(state)
            return jax.vmap(step, in_axes=(stacked, *axes), out_axes=(stacked, 0))(state, *inputs_and_rng)
        pick = lambda x, axis, k: x if axis is None else ensemble.member(x, k)  # noqa: E731
        results = [
            step(
                ensemble.member_state(state, k),
                *(pick(x, axis, k) for x, axis in zip(inputs_and_rng, axes, strict=True)),
            )
            for k in range(members)
        ]
        return ensemble.stack_states([r[0] for r in results]), ensemble.stack([r[1] for r in results])

    return members_step


def compile_train_step(parallel: DataParallel, config, steps_per_epoch: int, constants: StepConstants):
    """The resident train step for all devices: (state, data, epoch order, rng) -> (state, metrics)."""
    step = functools.partial(
        resident_train_step,
        local_batch=config.batch_size // parallel.num_devices,
        steps_per_epoch=steps_per_epoch,
        constants=constants,
    )
    step = over_members(step, config, (None, 0 if own_order(config) else None))
    return parallel.wrap(step, (MODEL, REPLICATED, REPLICATED, REPLICATED), (MODEL, REPLICATED), donate_argnums=(0,))


def compile_batch_step(parallel: DataParallel, config, constants: StepConstants):
    """The train step on a given batch: (state, sharded batch, rng) -> (state, metrics)."""
    step = over_members(functools.partial(train_step, constants=constants), config, (None,))
    return parallel.wrap(step, (MODEL, SHARDED, REPLICATED), (MODEL, REPLICATED), donate_argnums=(0,))


def own_order(config) -> bool:
    """Whether each ensemble member reads the data in its own order."""
    return ensemble.size(config) > 1 and config.ensemble_data_order == "own"


class ResidentFeed:
    """The training split on every device, and the current epoch's order (an ensemble whose members
    each have their own: the members' orders, stacked)."""

    def __init__(self, parallel: DataParallel, config, split, steps_per_epoch: int, constants: StepConstants):
        self.parallel, self.split, self.steps_per_epoch = parallel, split, steps_per_epoch
        seed, members = ensemble.data_seed(config), ensemble.size(config)
        self.seeds = [seed + k for k in range(members)] if own_order(config) else [seed]
        self.data = parallel.replicate({"image": split.images, "label": split.labels})
        self.step_fn = compile_train_step(parallel, config, steps_per_epoch, constants)
        self._epoch, self._order = None, None

    def inputs(self, step: int) -> tuple:
        epoch = step // self.steps_per_epoch
        if epoch != self._epoch:
            orders = [input_pipeline.epoch_order(seed, epoch, len(self.split)) for seed in self.seeds]
            order = np.stack(orders) if len(orders) > 1 else orders[0]
            self._epoch, self._order = epoch, self.parallel.replicate(order)
        return self.data, self._order

    def pause(self):
        pass

    close = pause


class StreamingFeed:
    """Batches read, decoded and put on the devices ahead of the step, from ``start_step`` on. The
    workers start with the first batch asked for; ``pause`` stops them (during evaluation, so that
    two sets of workers never hold memory at once) and the next batch asked for starts them again
    at its step: batches are a function of the step, so nothing changes but the time to start."""

    def __init__(self, parallel: DataParallel, config, split, total_steps: int, start_step: int, constants):
        self._batch_fn = input_pipeline.TrainBatch(
            split.read, len(split), config.batch_size, ensemble.data_seed(config), process_share()
        )
        self._total_steps, self._workers, self._put = total_steps, config.input.workers, parallel.shard
        self.step_fn = compile_batch_step(parallel, config, constants)
        self._batches, self._next_step, self._current = None, start_step, None

    def inputs(self, step: int) -> tuple:
        if self._current is None or self._current[0] != step:
            if step != self._next_step:
                raise ValueError(f"the stream is at step {self._next_step}, not {step}: it is read in order")
            if self._batches is None:
                stream = input_pipeline.pipeline(self._batch_fn, step, self._total_steps, self._workers)
                self._batches = input_pipeline.batches(input_pipeline.to_devices(stream, self._put))
            self._current, self._next_step = (step, next(self._batches)), step + 1
        return (self._current[1],)

    def pause(self):
        """Stops the workers, dropping what they read ahead."""
        self._current = None
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    close = pause


def create_feed(parallel: DataParallel, config, split, steps: range, steps_per_epoch: int, constants):
    """The feed for ``config.input.pipeline``, from ``steps.start`` to before ``steps.stop``."""
    if config.input.pipeline == "streaming":
        return StreamingFeed(parallel, config, split, steps.stop, steps.start, constants)
    return ResidentFeed(parallel, config, split, steps_per_epoch, constants)

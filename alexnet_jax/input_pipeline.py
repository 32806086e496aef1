"""Streaming input: Grain pipelines whose element ``i`` is this process's share of global batch ``i``.

A batch's contents are a pure function of (seed, step): the epoch's example order comes from
``epoch_order`` (the resident path uses the same order), and the pipeline is a Grain
``MapDataset`` indexed by step. A resumed run starts the pipeline at its step and sees exactly the
batches an uninterrupted run would have; nothing but the step needs saving.

Worker processes read and decode (``images.py``: JPEG with libjpeg-turbo through simplejpeg,
other formats with PIL), make the split's host view where it has one (torchvision's random
resized crops, drawn from a key per example), and stack uint8 images; cropping, flipping, colour
noise and normalisation happen on the devices, inside the compiled step. Each process reads only
its own block of each global batch.
"""

import dataclasses
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from absl import flags

from alexnet_jax import cpus
from alexnet_jax.errors import InputWorkerDied

if TYPE_CHECKING:
    import grain

ORDER_STREAM = 1  # the data order's random stream, apart from parameter initialisation and augmentation


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the examples: the same on every host and platform."""
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, ORDER_STREAM, epoch])))
    return rng.permutation(num_examples).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ProcessShare:
    """Which block of each global batch this process reads: ``index`` of ``count`` equal blocks
    (the mesh puts process p's devices at block p: ``parallel.check_process_blocks``)."""

    index: int = 0
    count: int = 1

    def block(self, global_batch: int) -> slice:
        local = global_batch // self.count
        return slice(self.index * local, (self.index + 1) * local)


@dataclasses.dataclass
class TrainBatch:
    """Step -> this process's block of that step's global batch (picklable, for Grain workers)."""

    read: Callable  # (indices, keys) -> {"image": [n, H, W, C] uint8, "label": [n] int32}
    num_examples: int
    global_batch: int
    seed: int
    share: ProcessShare

    def __post_init__(self):
        self._orders: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.seed, epoch, self.num_examples)}  # one epoch cached
        batch = self._orders[epoch][position * self.global_batch : (position + 1) * self.global_batch]
        return batch[self.share.block(self.global_batch)]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        step = int(step)
        block = self.share.block(self.global_batch)
        keys = [(self.seed, step, position) for position in range(block.start, block.stop)]  # host views' keys
        return self.read(self.indices(step), keys)


@dataclasses.dataclass(frozen=True)
class EvalBatch:
    """Batch number -> this process's block of that batch of the split in order, padded with
    ``mask`` 0 past the end, so that every example is scored exactly once."""

    read: Callable
    num_examples: int
    global_batch: int
    share: ProcessShare

    def __call__(self, number: int) -> dict[str, np.ndarray]:
        block = self.share.block(self.global_batch)
        positions = np.arange(self.global_batch)[block] + int(number) * self.global_batch
        real = positions < self.num_examples
        batch = self.read(np.where(real, positions, 0))
        return {**batch, "mask": real.astype(np.int32)}


def pipeline(batch_fn: Callable, start: int, stop: int, workers: int | None) -> "grain.IterDataset":
    """Elements ``batch_fn(i)`` for i in [start, stop), made by ``workers`` processes (0: this one;
    None: one per core)."""
    import grain  # here, not at the top: the resident path's runs never pay for importing it

    workers = cpus.usable_cpus() if workers is None else workers
    dataset = grain.MapDataset.range(start, stop).map(batch_fn)
    # One thread per process: parallelism comes from worker processes, one batch at a time each.
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain reads its settings from absl's global flags: take the defaults
            flags.FLAGS.mark_as_parsed()
        # A worker that dies (killed, or stopped with the run) leaves its batches' shared memory to
        # multiprocessing's resource tracker, which removes it, warning at exit: noise after the
        # one line the run has said. The tracker is a process started later, hence the variable.
        quiet, previous = "ignore:resource_tracker:UserWarning", os.environ.get("PYTHONWARNINGS", "")
        if quiet not in previous:
            os.environ["PYTHONWARNINGS"] = f"{previous},{quiet}" if previous else quiet
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return dataset


def to_devices(dataset: "grain.IterDataset", put: Callable, host_buffer: int = 4, device_buffer: int = 2):
    """Prefetches elements on the host, then puts them on the devices ``device_buffer`` ahead."""
    import grain

    dataset = grain.experimental.ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=host_buffer)
    dataset = dataset.map(put)
    return grain.experimental.ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=device_buffer)


def batches(dataset: "grain.IterDataset"):
    """Iterates ``dataset``; a worker process that died (Grain raises ``RuntimeError``) becomes
    ``InputWorkerDied``, in one line. Closing the generator stops the workers."""
    iterator = iter(dataset)
    try:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as e:
                died = re.search(r"Worker process was terminated unexpectedly with exit code (-?\d+)", str(e))
                if died is None:
                    raise
                code = int(died.group(1))
                how = f"killed by signal {-code}{' (as by the out-of-memory killer)' if code == -9 else ''}"
                raise InputWorkerDied(
                    f"an input worker process died ({how if code < 0 else f'exit code {code}'})"
                ) from None
            yield batch
    finally:
        iterator.close()

"""Data parallelism over all devices: one per-device function, wrapped by pmap or jit(shard_map).

Arguments are either *replicated* (the same value on every device: train state, resident dataset,
keys) or *sharded* (split along the leading axis: a batch). ``DataParallel`` places arguments in
the layout its wrapper expects and turns results back into plain global values, so the training
loop does not depend on which wrapper runs.

With several processes (shard_map only), the mesh spans every device of every process: each
process gives ``shard`` its own block of the global batch, and ``unshard`` gathers the global
batch from all of them.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax.errors import ConfigError
from alexnet_jax.input_pipeline import ProcessShare

MODES = ("pmap", "shard_map", "towers")
AXIS = "batch"  # the device axis the batch is split over; the steps' collectives name it
TOWER = "tower"  # the axis of the paper's two GPUs (``towers``)
# An argument or result is the same on every device (REPLICATED), split along its leading batch
# axis (SHARDED), or a train state or model variables (MODEL): replicated under data parallelism,
# split between the two towers under ``towers``.
REPLICATED, SHARDED, MODEL = "replicated", "sharded", "model"


def _require(condition: bool, message: str):
    if not condition:
        raise ConfigError(message)


def batch_devices(mode: str, num_devices: int) -> int:
    """The number of shards the batch splits into: every device, or every pair of towers."""
    return num_devices // TowerParallel.TOWERS if mode == "towers" else num_devices


def check(config, num_devices: int):
    """Raises ``ConfigError`` unless ``config.parallel`` fits ``num_devices`` devices (of every
    process): batches split evenly, pmap in one process, towers on pairs of devices for alexnet2012."""
    processes, mode = jax.process_count(), config.parallel
    layout = f" ({processes} processes x {num_devices // processes})" if processes > 1 else ""
    if mode == "towers":
        _check_towers(config, num_devices)
        layout = f" pairs of towers{layout}"
    shards = batch_devices(mode, num_devices)
    for key in ("batch_size", "eval_batch_size"):
        value = config[key]
        _require(
            value % shards == 0,
            f"--config.{key}={value} is not divisible by the {shards} devices{layout}; "
            f"use a multiple of {shards}, e.g. {value + (-value % shards)}",
        )
    _require(
        processes == 1 or mode != "pmap",
        f"--config.parallel={mode} runs in one process; with {processes} use --config.parallel=shard_map",
    )


def _check_towers(config, num_devices: int):
    """The paper's two-GPU split: alexnet2012 alone, on pairs of devices."""
    _require(
        config.model.name == "alexnet2012",
        f"--config.parallel=towers splits alexnet2012 as the paper did; --config.model.name={config.model.name} "
        "has no towers (use shard_map)",
    )
    per_process = num_devices // jax.process_count()
    _require(
        per_process % 2 == 0, f"--config.parallel=towers needs an even number of devices per process, not {per_process}"
    )


def check_classes(config, num_classes: int):
    """The paper's towers split fc8's outputs, the classes, in two halves."""
    _require(
        config.parallel != "towers" or num_classes % 2 == 0,
        f"--config.parallel=towers splits fc8's outputs between two towers, and the dataset's {num_classes} "
        "classes do not halve; use --config.parallel=shard_map (the same model, data parallel)",
    )


def process_share() -> ProcessShare:
    """This process's block of every global batch."""
    return ProcessShare(jax.process_index(), jax.process_count())


def by_process(devices: Sequence) -> list:
    """``devices`` with each process's devices next to each other, in process order (each
    process's in their given order): process p's devices then hold block p of the mesh, which
    ``ProcessShare`` assumes (``jax.devices()`` need not be in that order, e.g. on TPU slices)."""
    return sorted(devices, key=lambda device: device.process_index)  # a stable sort


def check_process_blocks(devices: Sequence):
    """Raises ``ValueError`` unless process p's devices are block p of ``devices`` (equal blocks)."""
    per_process = len(devices) // len({device.process_index for device in devices})
    for position, device in enumerate(devices):
        if device.process_index != position // per_process:
            raise ValueError(
                f"device {position} of the mesh belongs to process {device.process_index}, not to process "
                f"{position // per_process}: each process's batch block would land on other processes' devices"
            )


class DataParallel:
    """Places data on, and runs per-device functions over, a 1-D ``'batch'`` mesh of ``devices``
    (default: every device, grouped by process)."""

    def __init__(self, mode: str, devices: Sequence[jax.Device] | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown parallel mode {mode!r}; choose one of {MODES}")
        self.mode = mode
        self.devices = list(devices if devices is not None else by_process(jax.devices()))
        check_process_blocks(self.devices)
        self.mesh = self._mesh()
        self._split = NamedSharding(self.mesh, P(AXIS))
        self._whole = NamedSharding(self.mesh, P())
        # pmap layouts, each one program per tree (not one per leaf shape): a copy per device
        # stacked on a leading axis, and the copy on the first device.
        stack = lambda x: jnp.broadcast_to(x, (self.num_devices, *jnp.shape(x)))
        self._stack = jax.jit(lambda tree: jax.tree.map(stack, tree), out_shardings=self._split)
        self._first = jax.jit(lambda tree: jax.tree.map(lambda x: x[0], tree))

    def _mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (AXIS,))

    @property
    def num_devices(self) -> int:
        """The devices the batch is split over."""
        return len(self.devices)

    def describe(self) -> str:
        """What the platform line adds about the layout."""
        return ""

    def model(self, module):
        """The module that applies the parameters on each device: the model itself."""
        return module

    def compile_step(self, step: Callable) -> Callable:
        """``step(state, batch, rng) -> (state, metrics)`` for all devices, the state donated."""
        return self.wrap(step, (MODEL, SHARDED, REPLICATED), (MODEL, REPLICATED), donate_argnums=(0,))

    def place_model(self, tree):
        """Puts a train state or model variables on the devices (MODEL arguments)."""
        return self.replicate(tree)

    @property
    def replicated_sharding(self) -> NamedSharding:
        """The layout of a value every device holds whole (shard_map's replicated arguments)."""
        return self._whole

    def replicate(self, tree):
        """Puts the same value on every device (pmap: with a leading device axis)."""
        if self.mode == "pmap":
            return self._stack(tree)
        return jax.tree.map(self._put_whole, tree)

    def _put_whole(self, x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            # PRNG keys cannot be put on other processes' devices; their raw data can.
            return jax.random.wrap_key_data(self._put_whole(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.device_put(x, self._whole)

    def shard(self, tree):
        """Splits the leading (batch) axis across devices (pmap: reshaped to [devices, local, ...]).

        With several processes, ``tree`` is this process's block of the global batch."""
        if self.mode == "pmap":
            split = lambda x: x.reshape(self.num_devices, -1, *x.shape[1:])
            return jax.device_put(jax.tree.map(split, tree), self._split)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._split, x), tree)

    def unreplicate(self, tree):
        """One copy of a replicated value."""
        return self._first(tree) if self.mode == "pmap" else tree

    def fetch(self, tree):
        """A value on the devices (replicated, sharded or split between towers) whole, as host arrays
        on every process (with several processes: gathered from all of them; every process calls it)."""
        if self.mode == "pmap":
            return jax.device_get(tree)
        return multihost_utils.process_allgather(tree, tiled=True)

    def unshard(self, tree):
        """A sharded value as one global batch (with several processes: gathered from all, on the host)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)
        if jax.process_count() > 1:
            return multihost_utils.process_allgather(tree, tiled=True)
        return tree

    def wrap(
        self,
        per_device_fn: Callable,
        in_kinds: Sequence[str],
        out_kinds: Sequence[str] | str,
        donate_argnums: Sequence[int] = (),
    ) -> Callable:
        """Compiles ``per_device_fn`` for all devices; kinds say which args/outputs are split.

        ``out_kinds`` is a sequence for a function returning a tuple, a single kind otherwise.
        """
        donate = tuple(donate_argnums)
        if self.mode == "pmap":
            return jax.pmap(per_device_fn, axis_name=AXIS, donate_argnums=donate)
        spec = {REPLICATED: P(), SHARDED: P(AXIS), MODEL: P()}
        mapped = jax.shard_map(
            per_device_fn,
            mesh=self.mesh,
            in_specs=tuple(spec[k] for k in in_kinds),
            out_specs=spec[out_kinds] if isinstance(out_kinds, str) else tuple(spec[k] for k in out_kinds),
            # Without this, JAX's replication tracking would already sum the gradients of
            # replicated parameters over devices, and the step's explicit pmean would be wrong by
            # a factor of the device count: the step must mean the same under pmap and shard_map.
            check_vma=False,
        )
        return jax.jit(mapped, donate_argnums=donate)


class TowerParallel(DataParallel):
    """The paper's model parallelism, composed with data parallelism: a 2-D mesh (``'batch'``,
    ``'tower'``) of device pairs, each pair one model split in two as the paper split it over two
    GPUs (``models.AlexNet2012`` with ``tower_axis``). A train state's arrays are split on their
    last axis between the two towers (every kernel and bias on its outputs, the optimizer state
    alike; scalars replicated); a batch is split over ``'batch'``, each pair's half on both towers."""

    TOWERS = 2

    def _mesh(self) -> Mesh:
        if len(self.devices) % self.TOWERS:
            raise ValueError(f"towers need an even number of devices, not {len(self.devices)}")
        return Mesh(np.array(self.devices).reshape(-1, self.TOWERS), (AXIS, TOWER))

    @property
    def num_devices(self) -> int:
        return len(self.devices) // self.TOWERS

    def describe(self) -> str:
        return f"; {self.num_devices} pairs of towers"

    def model(self, module):
        """One tower's half of ``module`` (``alexnet2012``), applied to its half of the parameters."""
        return module.clone(tower_axis=TOWER)

    @staticmethod
    def _model_spec(x) -> P:
        return P(*[None] * (np.ndim(x) - 1), TOWER) if np.ndim(x) else P()

    def place_model(self, tree):
        place = lambda x: (
            self._put_whole(x) if not np.ndim(x) else jax.device_put(x, NamedSharding(self.mesh, self._model_spec(x)))
        )
        return jax.tree.map(place, tree)

    def wrap(self, per_device_fn, in_kinds, out_kinds, donate_argnums=()) -> Callable:
        """As ``DataParallel.wrap`` (shard_map), MODEL arguments split between the towers, and a
        MODEL result laid out as the first MODEL argument (the train step's state in and out)."""
        kinds = (out_kinds,) if isinstance(out_kinds, str) else tuple(out_kinds)

        def spec(kind, model_specs):
            return {REPLICATED: P(), SHARDED: P(AXIS)}.get(kind, model_specs)

        def call(*args):
            models = [jax.tree.map(self._model_spec, a) for a, k in zip(args, in_kinds, strict=True) if k == MODEL]
            in_specs = tuple(spec(k, jax.tree.map(self._model_spec, a)) for a, k in zip(args, in_kinds, strict=True))
            out_specs = tuple(spec(k, models[0] if models else None) for k in kinds)
            mapped = jax.shard_map(
                per_device_fn,
                mesh=self.mesh,
                in_specs=in_specs,
                out_specs=out_specs[0] if isinstance(out_kinds, str) else out_specs,
                check_vma=False,  # as DataParallel's
            )
            return mapped(*args)

        return jax.jit(call, donate_argnums=tuple(donate_argnums))


def for_evaluation(mode: str) -> str:
    """The mode that scores a checkpoint trained in ``mode``: the towers' parameters are the grouped
    model's, which evaluation runs data parallel (on any number of devices)."""
    return "shard_map" if mode == "towers" else mode


def create(mode: str, devices: Sequence[jax.Device] | None = None) -> DataParallel:
    """The parallelism ``--config.parallel`` names."""
    return TowerParallel(mode, devices) if mode == "towers" else DataParallel(mode, devices)

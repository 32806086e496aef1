"""Several processes, one per host, on JAX's distributed runtime: start-up, the checks that every
process runs the same thing on the same devices and directory, and agreement on when to stop.

Every function is free in a single process. The checks are collective: every process calls them
at the same point and each raises the same error, so that all stop together and none is left
waiting in a collective for a process that has gone.
"""

import collections
import dataclasses
import hashlib
import importlib.metadata
import json
import pathlib
import secrets
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from alexnet_jax import files, runtime
from alexnet_jax.errors import UserError

CLUSTERS = "SLURM, Open MPI, Cloud TPU pods, Kubernetes"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain")
SOURCE_ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKER = ".seen_by_every_process"


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins the others: the coordinator (process 0's host:port), the number of
    processes and this one's id; all None: JAX detects them, or there is one process."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300
    heartbeat_timeout: int = 100


def _wait_for_coordinator(address: str, timeout: int):
    """Returns once ``address`` accepts connections; ``UserError`` after ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--coordinator_address={address} must be host:port, e.g. node001:12345")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(
                    f"the coordinator {address} did not answer within {timeout} s; start process 0 with the same "
                    "--coordinator_address, check the host name and that the port is open between the hosts, "
                    "or raise --initialization_timeout"
                ) from None
            time.sleep(0.5)


def initialize(launch: Launch):
    """Joins the other processes (from the flags, or as JAX detects the cluster); one process: nothing."""
    given = (launch.coordinator_address, launch.num_processes, launch.process_id)
    if jax.distributed.is_initialized() or given[1] == 1:
        return
    timeouts = {
        "initialization_timeout": launch.initialization_timeout,
        "heartbeat_timeout_seconds": launch.heartbeat_timeout,
        # A process that leaves on its own waits this long for the others at exit; then the others
        # notice, within the heartbeat timeout, that it has gone.
        "shutdown_timeout_seconds": launch.heartbeat_timeout,
    }
    if None in given:
        if any(value is not None for value in given):
            raise UserError(
                "--coordinator_address, --num_processes and --process_id go together: give all three, "
                f"or none where JAX detects the cluster ({CLUSTERS})"
            )
        try:
            jax.distributed.initialize(**timeouts)
        except RuntimeError as e:
            if ALREADY_RUNNING in str(e):  # JAX already ran in this process (a caller of main()): one process
                return
            raise _not_joined(e, "the cluster it detected") from None
        except ValueError as e:
            if "coordinator_address" in str(e):  # no cluster detected: one process
                return
            raise UserError(f"JAX could not join the cluster it detected: {e}; pass the three flags instead") from None
    else:
        if not 0 <= launch.process_id < launch.num_processes:
            raise UserError(f"--process_id={launch.process_id} must be in 0..{launch.num_processes - 1}")
        if launch.process_id != 0:
            _wait_for_coordinator(launch.coordinator_address, launch.initialization_timeout)
        try:
            jax.distributed.initialize(*given, **timeouts)
        except RuntimeError as e:  # e.g. process 0 cannot bind the coordinator's port
            raise _not_joined(e, launch.coordinator_address) from None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes


# The one RuntimeError of jax.distributed.initialize that leaves a run of one process: JAX has run
# in this process already. Any other (a port that cannot be bound, a deadline exceeded, a TPU
# detector that cannot find its coordinator) must not become a silent run of one process.
ALREADY_RUNNING = "must be called before any JAX calls"


def _not_joined(error: RuntimeError, where: str) -> UserError:
    """The one line for a process that could not join the others."""
    reason = " ".join(str(error).split())[:300]
    return UserError(
        f"JAX could not join {where}: {reason}; check that every process started and that the coordinator's "
        "port is free and open between the hosts, or raise --initialization_timeout"
    )


def is_main_process() -> bool:
    """Whether this process writes logs, plots and reports and prints progress (process 0)."""
    return jax.process_index() == 0


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, default=str)
    return flat


def run_description(config) -> dict[str, str]:
    """What every process must share, item by item: the config, the code, the package versions."""
    description = _flatten(config.to_dict(), "--config.")
    sources = [SOURCE_ROOT / "main.py", *sorted((SOURCE_ROOT / "alexnet_jax").glob("*.py"))]
    for path in sources:
        description[f"{path.relative_to(SOURCE_ROOT)}"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    for package in PACKAGES:
        description[f"{package} version"] = importlib.metadata.version(package)
    return description


def _gather_texts(text: str) -> list[str]:
    """Every process's ``text``, by process index."""
    data = text.encode()
    lengths = multihost_utils.process_allgather(np.array([len(data)]))[:, 0]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: len(data)] = np.frombuffer(data, np.uint8)
    gathered = multihost_utils.process_allgather(padded)
    return [row[:length].tobytes().decode() for row, length in zip(gathered, lengths, strict=True)]


def _first_difference(reference: dict, other: dict) -> tuple[str, str, str]:
    """(item, other's value, reference's value) for the first item, in sorted order, that differs."""
    key = next(k for k in sorted(reference.keys() | other.keys()) if reference.get(k) != other.get(k))
    return key, other.get(key, "(absent)"), reference.get(key, "(absent)")


def check_same_everywhere(description: dict[str, str]):
    """Raises ``UserError`` on every process unless all were started with the same ``description``;
    the message names the first process and item that differ from process 0's."""
    if jax.process_count() == 1:
        return
    texts = _gather_texts(json.dumps(description, sort_keys=True))
    differing = [i for i, text in enumerate(texts) if text != texts[0]]
    if differing:
        first = differing[0]
        key, theirs, ours = _first_difference(json.loads(texts[0]), json.loads(texts[first]))
        raise UserError(
            f"process {first} was started differently from process 0: {key} is {theirs} there, {ours} on process 0; "
            "start every process with the same command, code and packages"
        )


def check_device_layout():
    """Raises ``UserError`` on every process unless all have the same number of devices (the other
    checks' collectives need that)."""
    counts = collections.Counter(device.process_index for device in jax.devices())  # every process knows all
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"process {i}: {count}" for i, count in sorted(counts.items()))
        raise UserError(
            f"the processes have different numbers of devices ({listed}); give every process the same number, "
            "e.g. one process per host with all of its accelerators"
        )


def check_shared_directory(directory: pathlib.Path):
    """Raises ``UserError`` on every process unless all see what process 0 writes in ``directory``."""
    if jax.process_count() == 1:
        return
    try:
        runtime.check_workdir(directory)
        problem = ""
    except UserError as e:
        problem = str(e)
    for i, found in enumerate(_gather_texts(problem)):
        if found:
            raise UserError(f"on process {i}: {found}")
    token = multihost_utils.broadcast_one_to_all(np.frombuffer(secrets.token_bytes(16), np.uint8)).tobytes()
    marker = directory / MARKER
    if is_main_process():
        directory.mkdir(parents=True, exist_ok=True)
        files.write_bytes(marker, token)
    multihost_utils.sync_global_devices("shared directory: marker written")
    try:
        seen = marker.read_bytes() == token
    except OSError:
        seen = False
    seen_by = multihost_utils.process_allgather(np.array(seen))
    multihost_utils.sync_global_devices("shared directory: marker read")
    if is_main_process():
        marker.unlink(missing_ok=True)
    blind = [i for i, seen in enumerate(seen_by.tolist()) if not seen]
    if blind:
        raise UserError(
            f"process {', '.join(map(str, blind))} cannot see what process 0 writes in {directory}: the workdir "
            "(checkpoints included) must be one directory that every host shares, e.g. on NFS or a mounted bucket"
        )


def agree(value: bool) -> bool:
    """Process 0's ``value``, on every process (for decisions read from files only process 0 writes)."""
    if jax.process_count() == 1:
        return value
    return bool(multihost_utils.broadcast_one_to_all(np.array(value)))


class AgreedStop:
    """Stop requests that every process honours at the same step.

    With several processes, each ``poll`` sends this process's request to all the others (a small
    all-reduce, asynchronous) and answers with the previous poll's result, so that the host never
    waits for the step it has just started: a stop requested anywhere stops every process one step
    later, the same step everywhere. One process: the request itself.
    """

    def __init__(self, stop, parallel):
        self.stop, self.parallel, self._pending = stop, parallel, None
        self._any = jax.jit(jnp.max, out_shardings=parallel.replicated_sharding)

    def poll(self) -> bool:
        requested = self.stop.poll()
        if jax.process_count() == 1:
            return requested
        flags = self.parallel.shard(np.full(jax.local_device_count(), requested, np.int32))
        previous, self._pending = self._pending, self._any(flags)
        return previous is not None and bool(previous)

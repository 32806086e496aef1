"""A run's start where the system fails it: joining the other processes (``distributed.initialize``:
only JAX having run in this process already leaves a run of one process; any other failure to join
is one line, never a silent run of one process; JAX's start is replaced by one failing as JAX's
does, a real cluster's failures are in test_cross_host_errors.py), and locking the workdir."""

import jax
import pytest

from alexnet_jax import distributed
from alexnet_jax.errors import UserError

JAX_FAILURES = {
    "port taken": "UNAVAILABLE: Failed to bind to address 0.0.0.0:61441 (Address already in use)",
    "deadline": "DEADLINE_EXCEEDED: Deadline Exceeded\n\nRPC: /xla.coordination.CoordinationService/RegisterTask",
    "tpu detector": "Failed to recognize coordinator address",
}


def _failing_start(message):
    def start(*args, **kwargs):
        raise RuntimeError(message)

    return start


@pytest.mark.parametrize("failure", JAX_FAILURES)
@pytest.mark.parametrize("launch", ["detected", "flags"])
def test_a_process_that_cannot_join_the_others_stops_in_one_line(failure, launch, monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", _failing_start(JAX_FAILURES[failure]))
    flags = ("127.0.0.1:61441", 2, 0) if launch == "flags" else (None, None, None)
    with pytest.raises(UserError) as raised:
        distributed.initialize(distributed.Launch(*flags))
    line, reason = str(raised.value), " ".join(JAX_FAILURES[failure].split())
    assert "\n" not in line and line.startswith("JAX could not join ") and reason in line


def test_jax_already_running_in_this_process_leaves_one_process(monkeypatch):
    message = "jax.distributed.initialize() must be called before any JAX calls that might initialise the XLA backend."
    monkeypatch.setattr(jax.distributed, "initialize", _failing_start(message))
    distributed.initialize(distributed.Launch())  # no error: this process runs alone


def test_a_workdir_whose_filesystem_cannot_lock_is_one_line_and_a_held_one_is_in_use(tmp_path, monkeypatch):
    """Only "would block" means another run holds the workdir; a filesystem without ``flock``
    (ENOLCK, as some network filesystems answer) is said as such, not as a busy workdir."""
    import errno
    import fcntl

    from alexnet_jax import workdir

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with pytest.raises(UserError) as raised:
        workdir._lock(tmp_path / "run")
    assert not isinstance(raised.value, workdir.WorkdirInUse)
    assert str(raised.value).startswith(f"{tmp_path / 'run'} cannot be locked (No locks available): its filesystem")
    monkeypatch.undo()
    held = workdir._lock(tmp_path / "run")  # this process holds it; another open file of it would block
    try:
        with pytest.raises(workdir.WorkdirInUse, match="is in use by another run"):
            workdir._lock(tmp_path / "run")
    finally:
        import os

        os.close(held)

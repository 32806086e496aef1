"""A pytest plugin (loaded by conftest.py): a pytest-xdist worker that dies takes the processes it
forked with it, so that the run ends with the crash reported as a failure instead of waiting for
ever on the pipe those processes inherited (a library that forks, torch.compile's worker pool say,
then a worker killed by a segmentation fault or by pytest-timeout's per-test limit)."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_forking = [0]  # the pid of the process that forks, set just before it does


def _remember_the_parent():
    _forking[0] = os.getpid()


def _die_with_the_parent():
    """In a forked child: SIGKILL it when the process that forked it ends, however that ends."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forking[0]:  # the parent died before the line above
        os._exit(1)


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") and sys.platform == "linux":
        os.register_at_fork(before=_remember_the_parent, after_in_child=_die_with_the_parent)

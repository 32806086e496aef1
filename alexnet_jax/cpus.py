"""How many CPUs this process may use: the cores it may run on (its affinity, which taskset and
SLURM set), capped by its container's CPU quota (cgroups, which Docker's --cpus and Kubernetes'
CPU limits set), not the host's core count. Worker counts that default to "one per core" use it."""

import math
import os
import pathlib

CGROUP = pathlib.Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: pathlib.Path = CGROUP) -> float | None:
    """CPUs the cgroup at ``root`` may use per period (cgroup v2 ``cpu.max``, or v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``); None where there is no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def usable_cpus(root: pathlib.Path = CGROUP) -> int:
    """The cores this process may run on, at most its cgroup's quota (rounded down, at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    return cores if quota is None else max(1, min(cores, math.floor(quota)))

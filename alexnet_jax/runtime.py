"""What a run says about where it runs: the platform line, the CPU warning, the compilation cache,
a writable workdir."""

import pathlib
import sys
import tempfile

import jax

from alexnet_jax.errors import UserError

# A model above this many parameters is one of the accelerator-sized configs (cifar10.py has 14.9 M,
# the ImageNet models 61 M); cifar10_cpu.py has 1.7 M.
CPU_PARAMETER_BUDGET = 5_000_000
GPU_INSTALL = "pip install -r requirements.lock -r requirements-cuda13.lock"


def platform_line() -> str:
    """e.g. ``JAX 0.10.2: 8 x NVIDIA H100 80GB HBM3 (gpu), 1 process``."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    processes = jax.process_count()
    return (
        f"JAX {jax.__version__}: {len(devices)} x {', '.join(kinds)} ({devices[0].platform}), "
        f"{processes} process{'es' if processes > 1 else ''}"
    )


def accelerator_settings(config, params) -> list[str]:
    """The settings of ``config`` that only pay off on a GPU or TPU."""
    settings = []
    if config.model.get("dtype") == "bfloat16":
        settings.append("bfloat16 compute")
    count = sum(x.size for x in jax.tree.leaves(params))
    if count > CPU_PARAMETER_BUDGET:
        settings.append(f"a {count / 1e6:.1f} M-parameter model")
    return settings


def warn_if_accelerator_config_on_cpu(config, params):
    """One warning line when a GPU/TPU config runs on the CPU; the run goes on."""
    settings = accelerator_settings(config, params)
    if jax.default_backend() == "cpu" and settings:
        print(
            f"warning: JAX runs on the CPU, but this config asks for {' and '.join(settings)}, made for a GPU/TPU; "
            f"on a CPU use --config=configs/cifar10_cpu.py, on an NVIDIA GPU install JAX's CUDA build: {GPU_INSTALL}",
            file=sys.stderr,
            flush=True,
        )


def use_compilation_cache(directory: str) -> str | None:
    """Turns on JAX's persistent compilation cache in ``directory`` ('' leaves it off): a run that
    compiles a program an earlier run compiled (same code, config, JAX and devices) reads it from
    disk instead. ``JAX_COMPILATION_CACHE_DIR``, where set, wins. The cache is not pruned (delete
    the directory to reclaim its space). Returns the directory in use."""
    if jax.config.jax_compilation_cache_dir is None and directory:
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(directory).expanduser()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)  # JAX's default, 1 s, skips the eval steps
    return jax.config.jax_compilation_cache_dir


def check_workdir(workdir: pathlib.Path):
    """Raises ``UserError`` unless ``workdir`` is, or can be made, a writable directory. Writes nothing
    that stays: the check creates and removes a temporary file in the nearest existing directory."""
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a directory"
    else:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as e:
            problem = f"{existing} is not writable ({e.strerror})"
    if problem:
        raise UserError(f"--workdir={workdir} cannot be used: {problem}; choose a directory you can write to")

"""``--mode=train`` (the default): trains, or resumes, the run in ``--workdir``; with several
processes, each joins the others first (the flags below)."""

import json
import pathlib

from absl import flags

from alexnet_jax.cli import EXIT_STOPPED
from alexnet_jax.errors import UserError


def define_flags(flag_values: flags.FlagValues) -> dict:
    fv = {"flag_values": flag_values}
    return {
        "coordinator_address": flags.DEFINE_string(
            "coordinator_address", None, "Several processes: process 0's host:port, the same for every process.", **fv
        ),
        "num_processes": flags.DEFINE_integer(
            "num_processes", None, "Several processes: how many (one per host).", lower_bound=1, **fv
        ),
        "process_id": flags.DEFINE_integer(
            "process_id", None, "Several processes: this one's id, 0..num_processes-1.", lower_bound=0, **fv
        ),
        "initialization_timeout": flags.DEFINE_integer(
            "initialization_timeout", 300, "Several processes: seconds to wait for all of them at start.", **fv
        ),
        "heartbeat_timeout": flags.DEFINE_integer(
            "heartbeat_timeout",
            100,
            "Several processes: seconds after which a silent process counts as dead and the others stop.",
            lower_bound=1,
            **fv,
        ),
    }


def join_processes(args):
    """Checks the config and workdir are given, sets up the compilation cache, joins the other
    processes if any, and checks that all run the same thing on equal devices and share the workdir."""
    import jax

    from alexnet_jax import distributed
    from alexnet_jax.runtime import use_compilation_cache

    if args.config is None or not args.workdir:
        raise UserError(f"--mode={args.mode} needs --config=configs/<name>.py and --workdir=DIR")
    use_compilation_cache(args.compilation_cache)
    launch = distributed.Launch(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        args.initialization_timeout,
        args.heartbeat_timeout,
    )
    distributed.initialize(launch)
    if jax.process_count() > 1:
        distributed.check_device_layout()
        distributed.check_same_everywhere(distributed.run_description(args.config))
        distributed.check_shared_directory(pathlib.Path(args.workdir))


def run(args) -> int:
    from alexnet_jax.distributed import is_main_process
    from alexnet_jax.train import train_and_evaluate

    join_processes(args)
    summary = train_and_evaluate(args.config, args.workdir)
    if is_main_process():
        print(json.dumps(summary))
    return EXIT_STOPPED if summary.get("stopped") else 0

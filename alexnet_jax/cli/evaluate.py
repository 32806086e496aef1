"""``--mode=evaluate``: scores a checkpoint of ``--workdir`` (``--checkpoint``) on the config's
evaluation split, as one process or several (the train mode's flags)."""

from absl import flags

from alexnet_jax.cli.train import join_processes


def define_flags(flag_values: flags.FlagValues) -> dict:
    return {}  # --checkpoint, --member and --ema are shared with predict


def take_arguments(values: dict, positional: list[str]) -> list[str]:
    return positional


def run(args) -> int:
    from alexnet_jax.evaluate import evaluate_checkpoint

    join_processes(args)
    evaluate_checkpoint(args.config, args.workdir, args.checkpoint, args.member, "ema" if args.ema else "raw")
    return 0

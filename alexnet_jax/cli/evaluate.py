"""``--mode=evaluate``: scores a checkpoint of ``--workdir`` (``--checkpoint``) on the config's
evaluation split, as one process or several (the train mode's flags)."""

from alexnet_jax.cli.train import join_processes


def run(args) -> int:
    from alexnet_jax.evaluate import evaluate_checkpoint

    join_processes(args)
    evaluate_checkpoint(args.config, args.workdir, args.checkpoint, args.member, "ema" if args.ema else "raw")
    return 0

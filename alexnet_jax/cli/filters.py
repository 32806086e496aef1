"""``--mode=filters``: the first layer's filters of a checkpoint of ``--workdir`` (``--checkpoint``)
as a PNG, the paper's Figure 3 (alexnet2012's split by tower): ``--output``, by default
``<workdir>/conv1_filters_<step>.png``. Every training run writes its final model's as
``conv1_filters.png``."""

import pathlib

from absl import flags

from alexnet_jax.errors import UserError


def define_flags(flag_values: flags.FlagValues) -> dict:
    return {}  # --workdir, --checkpoint; --output is predict's


def take_arguments(values: dict, positional: list[str]) -> list[str]:
    return positional


def run(args) -> int:
    from alexnet_jax import ensemble, models, plots
    from alexnet_jax.checkpointing import Checkpoints, read_variables
    from alexnet_jax.evaluate import resolve_checkpoint
    from alexnet_jax.predict import saved_config

    if not args.workdir:
        raise UserError("--mode=filters needs --workdir=DIR")
    workdir = pathlib.Path(args.workdir)
    config = saved_config(workdir)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1, async_save=False)
    which = "latest" if args.checkpoint == "best" and checkpoints.best_step() is None else args.checkpoint
    step = resolve_checkpoint(checkpoints, which, workdir / "checkpoints")
    checkpoints.close()
    params, _ = read_variables(workdir / "checkpoints" / str(step), "ema" if args.ema else "raw")
    path = pathlib.Path(args.output) if args.output else workdir / f"conv1_filters_{step}.png"
    member = 0 if args.member is None else args.member  # an ensemble's first by default
    params, _ = ensemble.chosen(config, params, member, workdir)
    plots.plot_first_layer(models.first_layer_kernel(params), path, models.towers(config.model.name))
    print(f"the first layer's filters of checkpoint {step}: {path}")
    return 0

"""``--mode=filters``: the first layer's filters of a checkpoint of ``--workdir`` (``--checkpoint``)
as a PNG, the paper's Figure 3 (alexnet2012's split by tower): ``--output``, by default
``<workdir>/conv1_filters_<step>.png``. Every training run writes its final model's as
``conv1_filters.png``."""

import pathlib

from alexnet_jax.errors import UserError


def run(args) -> int:
    from alexnet_jax import ensemble, models, plots
    from alexnet_jax.checkpointing import read_model
    from alexnet_jax.predict import saved_config

    if not args.workdir:
        raise UserError("--mode=filters needs --workdir=DIR")
    workdir = pathlib.Path(args.workdir)
    config = saved_config(workdir)
    step, _, variables = read_model(workdir, args.checkpoint, "ema" if args.ema else "raw")
    member = 0 if args.member is None else args.member  # an ensemble's first by default
    variables, _ = ensemble.chosen(config, variables, member, workdir)
    path = pathlib.Path(args.output) if args.output else workdir / f"conv1_filters_{step}.png"
    plots.plot_first_layer(models.first_layer_kernel(variables["params"]), path, models.towers(config.model.name))
    print(f"the first layer's filters of checkpoint {step}: {path}")
    return 0

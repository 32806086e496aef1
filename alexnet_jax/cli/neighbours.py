"""``--mode=neighbours``: the paper's Figure 4 from a checkpoint of ``--workdir``: the first
``--queries`` validation images, each beside the 6 training images nearest in ``--layer``'s
features (fc7), as a PNG (``--output``, by default ``<workdir>/neighbours_<layer>.png``)."""

import pathlib

from absl import flags

from alexnet_jax.errors import UserError

NEIGHBOURS = 6  # per query, as in the paper's figure


def define_flags(flag_values: flags.FlagValues) -> dict:
    return {
        "queries": flags.DEFINE_integer("queries", 5, "neighbours: validation images to show.", flag_values=flag_values)
    }


def run(args) -> int:
    from alexnet_jax.cli.features import extractor
    from alexnet_jax.features import plot_neighbours

    if args.queries < 1:
        raise UserError(f"--queries={args.queries} must be >= 1")
    features = extractor(args)
    output = pathlib.Path(args.output or pathlib.Path(args.workdir) / f"neighbours_{args.layer}.png")
    plot_neighbours(features, args.queries, NEIGHBOURS, output)
    print(f"{args.queries} validation images and their nearest training images by {args.layer}: {output}")
    return 0

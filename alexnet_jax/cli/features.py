"""``--mode=features``: a named layer's activations (``--layer``, fc7 by default) from a checkpoint of
``--workdir``, for a split of its dataset (``--split``, by default its validation split) or for image
files (``--images``), written to ``--output`` (.npy; a split's labels, or the files' paths, beside it)."""

import pathlib

from absl import flags

from alexnet_jax.errors import UserError


def define_flags(flag_values: flags.FlagValues) -> dict:
    fv = {"flag_values": flag_values}
    return {
        "layer": flags.DEFINE_string("layer", "fc7", "features, neighbours: conv1 ... conv5, fc6, fc7, fc8.", **fv),
        "split": flags.DEFINE_string(
            "split", None, "features: a split of the workdir's dataset (default: its eval_split).", **fv
        ),
    }


def extractor(args):
    """The workdir's model as a features function (``--checkpoint``; ``--member``, by default an
    ensemble's first; ``--ema``)."""
    from alexnet_jax.features import FeatureExtractor
    from alexnet_jax.predict import Predictor
    from alexnet_jax.runtime import use_compilation_cache

    if not args.workdir:
        raise UserError(f"--mode={args.mode} needs --workdir=DIR")
    use_compilation_cache(args.compilation_cache)
    member = 0 if args.member is None else args.member  # an ensemble's first by default
    predictor = Predictor(pathlib.Path(args.workdir), args.checkpoint, False, member, "ema" if args.ema else "raw")
    return FeatureExtractor(predictor, args.layer)


def run(args) -> int:
    from alexnet_jax import predict
    from alexnet_jax.features import open_split, write_folder_features, write_split_features

    output = pathlib.Path(args.output or "features.npy")
    if output.suffix != ".npy":
        raise UserError(f"--output={output} must end in .npy")
    features = extractor(args)
    if args.images:
        shape = write_folder_features(features, predict.find_images(args.images), output)
    else:
        split = open_split(features.config, args.split or features.config.dataset.eval_split)
        shape = write_split_features(features, split, output)
    print(f"{args.layer} features of {shape[0]} images, {shape[1]} each: {output}")
    return 0

"""``--mode=predict``: the top-5 classes of image files (``--images``) by a checkpoint of
``--workdir``: a table, a CSV or JSONL file (``--output``), a grid of the images."""

from absl import flags

from alexnet_jax.errors import UserError


def define_flags(flag_values: flags.FlagValues) -> dict:
    fv = {"flag_values": flag_values}
    return {
        "images": flags.DEFINE_multi_string(
            "images", [], "predict: image files, folders or globs (repeat the flag, or list them after it).", **fv
        ),
        "ten_crop": flags.DEFINE_bool("ten_crop", False, "predict: the paper's ten crops instead of the centre.", **fv),
        "grid": flags.DEFINE_string(
            "grid", None, "predict: the PNG grid of images (default WORKDIR/predictions.png).", **fv
        ),
    }


def take_arguments(values: dict, positional: list[str]) -> list[str]:
    """``--images photos/*.jpg``: the shell's expansion follows the flag; the files are images."""
    values["images"] = [*values["images"], *positional[1:]]
    return positional[:1]


def run(args) -> int:
    from alexnet_jax.predict import predict
    from alexnet_jax.runtime import use_compilation_cache

    if not args.workdir:
        raise UserError("--mode=predict needs --workdir=DIR")
    use_compilation_cache(args.compilation_cache)
    chosen = {"member": args.member, "weights": "ema" if args.ema else "raw"}
    predict(args.workdir, args.checkpoint, args.images, args.output, args.ten_crop, args.grid, **chosen)
    return 0

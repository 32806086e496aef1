"""``--mode=convert``: torchvision's AlexNet weights (``--weights``) as checkpoint 0 of an
``alexnet_owt`` workdir (``--workdir``), with torchvision's config unless ``--config`` is given."""

import pathlib

from absl import flags

from alexnet_jax.errors import UserError

DEFAULT_CONFIG = pathlib.Path(__file__).parents[2] / "configs" / "imagenet_torchvision.py"


def define_flags(flag_values: flags.FlagValues) -> dict:
    fv = {"flag_values": flag_values}
    return {
        "weights": flags.DEFINE_string(
            "weights", None, "convert: torchvision's AlexNet weights, a .pth (state dict) or .safetensors file.", **fv
        ),
    }


def run(args) -> int:
    from alexnet_jax.runtime import use_compilation_cache
    from alexnet_jax.torchvision_weights import convert

    if not args.workdir:
        raise UserError("--mode=convert needs --workdir=DIR")
    if not args.weights:
        raise UserError("--mode=convert needs --weights=FILE.pth or FILE.safetensors (torchvision's AlexNet)")
    use_compilation_cache(args.compilation_cache)
    data = convert(args.weights, args.config, args.workdir)
    print(f"converted {args.weights} into {args.workdir} (alexnet_owt, {data['num_classes']} ImageNet classes)")
    return 0

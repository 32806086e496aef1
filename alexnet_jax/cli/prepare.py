"""``--mode=prepare``: an image folder (``--image_folder``) or a TFDS dataset (``--tfds_source``)
written as a TFDS dataset (``--dataset_name`` under ``--data_dir``)."""

from absl import flags


def define_flags(flag_values: flags.FlagValues) -> dict:
    fv = {"flag_values": flag_values}
    return {
        "image_folder": flags.DEFINE_string("image_folder", None, "prepare: <split>/<class>/<image> folder.", **fv),
        "cifar10_archive": flags.DEFINE_string(
            "cifar10_archive",
            None,
            "prepare: CIFAR-10's official archive, binary version (cifar-10-binary.tar.gz), as splits train and test.",
            **fv,
        ),
        "tfds_source": flags.DEFINE_string(
            "tfds_source", None, "prepare: a TFDS dataset to re-encode instead of a folder, e.g. imagenet2012.", **fv
        ),
        "manual_dir": flags.DEFINE_string(
            "manual_dir", None, "prepare: where --tfds_source's builder finds its files (ImageNet's tars).", **fv
        ),
        "splits": flags.DEFINE_list("splits", ["train", "validation"], "prepare: --tfds_source's splits.", **fv),
        "dataset_name": flags.DEFINE_string("dataset_name", None, "prepare: name of the TFDS dataset to write.", **fv),
        "data_dir": flags.DEFINE_string("data_dir", None, "prepare: TFDS data directory to write into.", **fv),
        "skip_bad_images": flags.DEFINE_bool("skip_bad_images", False, "prepare: skip undecodable images.", **fv),
        "image_size": flags.DEFINE_integer(
            "image_size",
            None,
            "prepare: store the paper's format, shorter side to this size and the centre square, as JPEG "
            "(256 for ImageNet); unset keeps the images' sizes, as --image_format.",
            lower_bound=1,
            **fv,
        ),
        "image_format": flags.DEFINE_enum(
            "image_format",
            "png",
            ["png", "jpeg"],
            "prepare, without --image_size: png stores images lossless (CIFAR); jpeg keeps full-size photos, "
            "RGB JPEGs byte for byte (ImageNet for torchvision's recipe).",
            **fv,
        ),
        "workers": flags.DEFINE_integer(
            "workers", None, "prepare: encoding processes (default: one per core the process may use).", **fv
        ),
    }


def run(args) -> int:
    from alexnet_jax import prepare
    from alexnet_jax.errors import UserError

    for name in ("dataset_name", "data_dir"):
        if not getattr(args, name):
            raise UserError(f"--mode=prepare needs --{name}")
    given = [source for source in (args.image_folder, args.tfds_source, args.cifar10_archive) if source is not None]
    if len(given) != 1:
        raise UserError(
            "--mode=prepare needs one of --image_folder (a folder of images), --tfds_source (a TFDS name) or "
            "--cifar10_archive (cifar-10-binary.tar.gz)"
        )
    prepared = prepare.prepared_version(args.dataset_name, args.data_dir)
    if prepared is not None:
        print(f"{args.dataset_name} is already prepared in {prepared}; nothing to do (remove it to prepare it again)")
        return 0
    options = {"image_size": args.image_size, "workers": args.workers, "image_format": args.image_format}
    if args.tfds_source:
        sources = prepare.open_tfds_splits(args.tfds_source, args.data_dir, args.splits, args.manual_dir)
        skipped = prepare.prepare_tfds_splits(
            sources, args.dataset_name, args.data_dir, args.skip_bad_images, **options
        )
    elif args.cifar10_archive:
        skipped = prepare.prepare_cifar10_archive(
            args.cifar10_archive, args.dataset_name, args.data_dir, args.skip_bad_images, **options
        )
    else:
        skipped = prepare.prepare_image_folder(
            args.image_folder, args.dataset_name, args.data_dir, args.skip_bad_images, **options
        )
    skipped_note = f"; skipped {len(skipped)} bad images" if skipped else ""
    print(f"prepared {args.dataset_name} in {args.data_dir}{skipped_note}")
    return 0

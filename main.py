r"""alexnet_jax command line: train (default), evaluate, prepare a dataset, convert torchvision's
weights, or predict the classes of image files.

  python main.py --config=configs/cifar10_cpu.py --workdir=runs/cifar10_cpu
  python main.py --mode=evaluate --config=configs/cifar10_cpu.py --workdir=runs/cifar10_cpu --checkpoint=best
  python main.py --mode=prepare --image_folder=DIR --dataset_name=NAME --data_dir=DATA_DIR \
      [--image_size=256 | --image_format=jpeg]
  python main.py --mode=prepare --tfds_source=imagenet2012 --manual_dir=TARS --dataset_name=NAME \
      --data_dir=DATA_DIR [--image_size=256]
  python main.py --config=... --workdir=SHARED_DIR --coordinator_address=HOST0:PORT --num_processes=N \
      --process_id=I     (one process per host; on SLURM, TPU pods, ... JAX finds the three itself)
  python main.py --mode=convert --weights=alexnet-owt-7be5be79.pth --workdir=runs/torchvision_alexnet
  python main.py --mode=predict --workdir=runs/torchvision_alexnet --images=photos/ [--output=preds.csv]
  python main.py --config=configs/finetune_folder.py --workdir=runs/finetune \
      --config.init_from=runs/torchvision_alexnet --config.dataset.name=NAME --config.dataset.data_dir=DATA_DIR

Any config field can be overridden with --config.<key>=<value>. Every mistake the program can
recognise (see docs/troubleshooting.md) ends in one line on stderr, ``error: ...``, and exit code 2;
a training step whose loss or gradients are not finite, in one such line and exit code 3; a dead
input worker process, in one such line and exit code 4 (the last completed step saved); a stop
signal saves and exits with 130.
"""

import dataclasses
import json
import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_FAULT, EXIT_STOPPED = 2, 3, 4, 130
MODES = ["train", "evaluate", "prepare", "convert", "predict"]
CONVERT_CONFIG = pathlib.Path(__file__).parent / "configs" / "imagenet_torchvision.py"
_CONFIG_MODULE = "config_config"  # where ml_collections loads the --config file (sys.modules key)


@dataclasses.dataclass(frozen=True)
class Args:
    """The parsed command line."""

    mode: str
    config: object
    workdir: str | None
    checkpoint: str
    image_folder: str | None
    tfds_source: str | None
    manual_dir: str | None
    splits: list[str]
    dataset_name: str | None
    data_dir: str | None
    skip_bad_images: bool
    image_size: int | None
    image_format: str
    workers: int | None
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    initialization_timeout: int
    heartbeat_timeout: int
    compilation_cache: str
    weights: str | None
    images: list[str]
    output: str | None
    ten_crop: bool
    grid: str | None


def _define_flags(flag_values: flags.FlagValues, argv: list[str]) -> dict:
    """Defines the flags on a fresh ``FlagValues``, so the command line can be parsed more than once."""
    fv = {"flag_values": flag_values}
    return {
        "config": config_flags.DEFINE_config_file(
            "config", None, "Config file, e.g. configs/cifar10_cpu.py.", sys_argv=argv, **fv
        ),
        "mode": flags.DEFINE_enum("mode", "train", MODES, "What to do.", **fv),
        "workdir": flags.DEFINE_string("workdir", None, "Run directory: config, metrics, checkpoints, plots.", **fv),
        "checkpoint": flags.DEFINE_string(
            "checkpoint", "best", "evaluate, predict: 'best', 'latest' or a step number.", **fv
        ),
        "weights": flags.DEFINE_string(
            "weights", None, "convert: torchvision's AlexNet weights, a .pth (state dict) or .safetensors file.", **fv
        ),
        "images": flags.DEFINE_multi_string(
            "images", [], "predict: image files, folders or globs (repeat the flag, or list them after it).", **fv
        ),
        "output": flags.DEFINE_string("output", None, "predict: also write the top-5 to this .csv or .jsonl.", **fv),
        "ten_crop": flags.DEFINE_bool("ten_crop", False, "predict: the paper's ten crops instead of the centre.", **fv),
        "grid": flags.DEFINE_string(
            "grid", None, "predict: the PNG grid of images (default WORKDIR/predictions.png).", **fv
        ),
        "image_folder": flags.DEFINE_string("image_folder", None, "prepare: <split>/<class>/<image> folder.", **fv),
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
        "compilation_cache": flags.DEFINE_string(
            "compilation_cache",
            "~/.cache/alexnet_jax/xla",
            "JAX's persistent compilation cache: a later run of the same program skips compiling it "
            "(JAX_COMPILATION_CACHE_DIR, where set, wins; '' turns it off).",
            **fv,
        ),
        "verbosity": flags.DEFINE_integer("verbosity", -1, "absl logging level: -1 warnings, 0 info, 1 debug.", **fv),
    }


def _config_path(argv: list[str]) -> str | None:
    for arg in argv:
        match = re.fullmatch(r"--?config=(.*)", arg)
        if match:
            return match.group(1)
    return None


def _unknown_override(config, argv: list[str]) -> str | None:
    """The first ``--config.a.b`` override naming a field the config lacks, as an error message."""
    for arg in argv:
        match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if not match:
            continue
        node, path = config, match.group(1).split(".")
        for depth, key in enumerate(path):
            fields = list(node.keys()) if hasattr(node, "keys") else []
            if key not in fields:
                where = ".".join(["config", *path[:depth]])
                return f"--config.{match.group(1)}: {where} has no field {key!r}; its fields are {', '.join(fields)}"
            node = node[key]
    return None


def _load_config(argv: list[str]):
    """Loads --config without overrides; raises UserError for a missing or broken file."""
    from alexnet_jax.errors import UserError

    path = _config_path(argv)
    if path is None:
        return None
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=[argv[0]])
    sys.modules.pop(_CONFIG_MODULE, None)  # ml_collections re-executes the file into a cached module
    try:
        flag_values([argv[0], f"--config={path}"])
        config = holder.value
        config.keys()  # a file that failed to load raises here
    except OSError:
        raise UserError(f"--config={path}: no such file; the configs are in configs/ (e.g. configs/smoke.py)") from None
    except SyntaxError as e:
        raise UserError(f"--config={path} does not parse: {e.msg} at line {e.lineno}; fix the file") from None
    except AttributeError:
        raise UserError(f"--config={path} has no get_config() function returning a ConfigDict") from None
    return config


def parse_args(argv: list[str]) -> Args:
    """Parses the command line; every mistake becomes a ``UserError`` with a one-line message."""
    from alexnet_jax.errors import UserError

    base = _load_config(argv)
    unknown = _unknown_override(base, argv) if base is not None else None
    if unknown:
        raise UserError(unknown)
    if base is None and any(re.match(r"--?(no)?config\.", arg) for arg in argv):
        raise UserError("--config.<key> overrides need --config=configs/<name>.py before them")
    flag_values = flags.FlagValues()
    holders = _define_flags(flag_values, argv)
    sys.modules.pop(_CONFIG_MODULE, None)
    try:
        positional = flag_values(argv)
    except (flags.Error, TypeError, ValueError) as e:  # bad flag name or value: absl names the flag
        raise UserError(f"{str(e).splitlines()[0]}; see python main.py --help") from None
    values = {name: holder.value for name, holder in holders.items() if name != "verbosity"}
    if values["mode"] == "predict":  # `--images photos/*.jpg`: the shell's expansion follows the flag
        values["images"], positional = [*values["images"], *positional[1:]], positional[:1]
    if len(positional) > 1:
        raise UserError(f"unexpected arguments {positional[1:]}; flags take the form --name=value")
    logging.set_verbosity(holders["verbosity"].value)
    if values["mode"] == "convert" and values["config"] is None:
        values["config"] = _load_config([argv[0], f"--config={CONVERT_CONFIG}"])
    return Args(**values)


def _prepare(args: Args) -> int:
    from alexnet_jax import prepare
    from alexnet_jax.errors import UserError

    for name in ("dataset_name", "data_dir"):
        if not getattr(args, name):
            raise UserError(f"--mode=prepare needs --{name}")
    if (args.image_folder is None) == (args.tfds_source is None):
        raise UserError(
            "--mode=prepare needs one of --image_folder (a folder of images) or --tfds_source (a TFDS name)"
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
    else:
        skipped = prepare.prepare_image_folder(
            args.image_folder, args.dataset_name, args.data_dir, args.skip_bad_images, **options
        )
    skipped_note = f"; skipped {len(skipped)} bad images" if skipped else ""
    print(f"prepared {args.dataset_name} in {args.data_dir}{skipped_note}")
    return 0


def _join_processes(args: Args):
    """Joins the other processes, if any, and checks that all run the same thing on equal devices
    and share the workdir."""
    import jax

    from alexnet_jax import distributed

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


def _convert_or_predict(args: Args) -> int:
    from alexnet_jax.errors import UserError

    if not args.workdir:
        raise UserError(f"--mode={args.mode} needs --workdir=DIR")
    if args.mode == "convert":
        from alexnet_jax.torchvision_weights import convert

        if not args.weights:
            raise UserError("--mode=convert needs --weights=FILE.pth or FILE.safetensors (torchvision's AlexNet)")
        data = convert(args.weights, args.config, args.workdir)
        print(f"converted {args.weights} into {args.workdir} (alexnet_owt, {data['num_classes']} ImageNet classes)")
        return 0
    from alexnet_jax.predict import predict

    predict(args.workdir, args.checkpoint, args.images, args.output, args.ten_crop, args.grid)
    return 0


def run(args: Args) -> int:
    """Does what ``args.mode`` says; returns the exit code."""
    from alexnet_jax.errors import UserError

    if args.mode == "prepare":
        return _prepare(args)
    from alexnet_jax.runtime import use_compilation_cache

    use_compilation_cache(args.compilation_cache)
    if args.mode in ("convert", "predict"):
        return _convert_or_predict(args)
    if args.config is None or not args.workdir:
        raise UserError(f"--mode={args.mode} needs --config=configs/<name>.py and --workdir=DIR")
    _join_processes(args)
    if args.mode == "train":
        from alexnet_jax.distributed import is_main_process
        from alexnet_jax.train import train_and_evaluate

        summary = train_and_evaluate(args.config, args.workdir)
        if is_main_process():
            print(json.dumps(summary))
        return EXIT_STOPPED if summary.get("stopped") else 0
    from alexnet_jax.evaluate import evaluate_checkpoint

    evaluate_checkpoint(args.config, args.workdir, args.checkpoint)
    return 0


def main(argv: list[str]) -> int:
    """The whole command: parse, run, and turn a ``UserError`` into one line and exit code 2, a
    ``TrainingDiverged`` into one line and exit code 3, an ``InputWorkerDied`` into one line and
    exit code 4."""
    from alexnet_jax.errors import InputWorkerDied, TrainingDiverged, UserError

    if any(arg in ("-h", "--help", "--helpfull", "-?") for arg in argv[1:]):
        flag_values = flags.FlagValues()
        _define_flags(flag_values, argv[:1])
        print(__doc__ + "\n" + flag_values.get_help())
        return 0
    try:
        return run(parse_args(argv))
    except UserError as e:  # bad flag, config, dataset, workdir or checkpoint: one line, what to do
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingDiverged as e:  # a non-finite step: one line, the step and the last good checkpoint
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except InputWorkerDied as e:  # a fault, not a mistake: one line, what was saved
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, the latest checkpoint stays
        return EXIT_STOPPED


def _leave_flags_to_main(argv: list[str]) -> list[str]:
    """app.run's flag parser: main() parses its own FlagValues; absl's global flags keep their defaults."""
    flags.FLAGS.mark_as_parsed()
    return argv


if __name__ == "__main__":
    app.run(main, flags_parser=_leave_flags_to_main)

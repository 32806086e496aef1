"""alexnet_jax command line: train (default), evaluate, or prepare an image folder.

  python main.py --config=configs/cifar10_cpu.py --workdir=runs/cifar10_cpu
  python main.py --mode=evaluate --config=configs/cifar10_cpu.py --workdir=runs/cifar10_cpu --checkpoint=best
  python main.py --mode=prepare --image_folder=DIR --dataset_name=NAME --data_dir=DATA_DIR

Any config field can be overridden with --config.<key>=<value>.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar10_cpu.py.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "prepare"], "What to do.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config, metrics, TensorBoard, checkpoints, plots.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "evaluate: 'best', 'latest' or a step number.")
_IMAGE_FOLDER = flags.DEFINE_string("image_folder", None, "prepare: folder with <split>/<class>/<image> inside.")
_DATASET_NAME = flags.DEFINE_string("dataset_name", None, "prepare: name of the TFDS dataset to write.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "prepare: TFDS data directory to write into.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad_images", False, "prepare: skip undecodable images instead of stopping.")


def _run(mode: str):
    from alexnet_jax.errors import UserError

    if mode == "prepare":
        from alexnet_jax.prepare import prepare_image_folder

        for flag in (_IMAGE_FOLDER, _DATASET_NAME, _DATA_DIR):
            if not flag.value:
                raise UserError(f"--mode=prepare needs --{flag.name}")
        skipped = prepare_image_folder(_IMAGE_FOLDER.value, _DATASET_NAME.value, _DATA_DIR.value, _SKIP_BAD.value)
        print(
            f"prepared {_DATASET_NAME.value} in {_DATA_DIR.value}"
            + (f"; skipped {len(skipped)} bad images" if skipped else "")
        )
        return
    if _CONFIG.value is None or not _WORKDIR.value:
        raise UserError(f"--mode={mode} needs --config=configs/<name>.py and --workdir=DIR")
    if mode == "train":
        from alexnet_jax.train import train_and_evaluate

        summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
        print(json.dumps(summary))
        if summary.get("stopped"):
            sys.exit(130)  # stopped by SIGINT/SIGTERM after saving a checkpoint
    else:
        from alexnet_jax.evaluate import evaluate_checkpoint

        evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _CHECKPOINT.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and TFDS are chatty at INFO
    from alexnet_jax.errors import UserError

    try:
        _run(_MODE.value)
    except UserError as e:  # bad config, dataset or checkpoint: one line, what to do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, the latest checkpoint stays
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)

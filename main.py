r"""alexnet_jax command line: train (default), evaluate, prepare a dataset, convert torchvision's
weights, predict the classes of image files, or draw a checkpoint's first-layer filters.

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
  python main.py --mode=filters --workdir=runs/cifar10_cpu [--checkpoint=latest] [--output=filters.png]
  python main.py --config=configs/finetune_folder.py --workdir=runs/finetune \
      --config.init_from=runs/torchvision_alexnet --config.dataset.name=NAME --config.dataset.data_dir=DATA_DIR

Any config field can be overridden with --config.<key>=<value>. Every mistake the program can
recognise (see docs/troubleshooting.md) ends in one line on stderr, ``error: ...``, and exit code 2;
a training step whose loss or gradients are not finite, in one such line and exit code 3; a dead
input worker process, in one such line and exit code 4 (the last completed step saved); a stop
signal saves and exits with 130.
"""

import sys

from absl import app, flags

from alexnet_jax.cli import EXIT_DIVERGED, EXIT_FAULT, EXIT_STOPPED, EXIT_USER_ERROR
from alexnet_jax.cli.parsing import MODES, MODULES, help_text, parse_args

__all__ = ["MODES", "main", "parse_args"]


def main(argv: list[str]) -> int:
    """The whole command: parse, run the mode, and turn a ``UserError`` into one line and exit code
    2, a ``TrainingDiverged`` into one line and exit code 3, an ``InputWorkerDied`` into one line
    and exit code 4."""
    from alexnet_jax.errors import InputWorkerDied, TrainingDiverged, UserError

    if any(arg in ("-h", "--help", "--helpfull", "-?") for arg in argv[1:]):
        print(__doc__ + "\n" + help_text(argv[0]))
        return 0
    try:
        args = parse_args(argv)
        return MODULES[args.mode].run(args)
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

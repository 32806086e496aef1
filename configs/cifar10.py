"""CIFAR-10 on GPUs: alexnet_cifar (five 3x3 convolutions, three dense layers) at full width with
batch norm, the recipe the defaults hold (configs/default.py says what each field means).

  python main.py --config=configs/cifar10.py --workdir=runs/cifar10

Expected: 92.18% validation accuracy (train[90%:]) after 30 epochs, 58 s for the whole command on
one H100 (BENCHMARKS.md, "CIFAR-10 time to accuracy, one H100").

Changed from the paper's recipe, for a run of seconds rather than days: batch norm after each
convolution, no dropout, label smoothing 0.2, Nesterov SGD on a one-cycle schedule peaking at 0.4
with batch 512, and the mirror image averaged in at evaluation. The structure (5 conv, 3 max-pools,
2 hidden dense layers of 2048 and the classifier) is AlexNet's.
"""

from configs import default


def get_config():
    return default.get_config()

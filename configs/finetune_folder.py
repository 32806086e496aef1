"""Fine-tuning torchvision's pretrained AlexNet (``alexnet_owt``) on a folder of your own classes.

Commands: torchvision's IMAGENET1K_V1 weights (``alexnet-owt-7be5be79.pth``, downloaded with
torchvision, or the same tensors as .safetensors) converted once, a folder
``/data/my_images/train/<class>/*.jpg`` prepared once, then fine-tuned:
  python main.py --mode=convert --weights=alexnet-owt-7be5be79.pth --workdir=runs/torchvision_alexnet
  python main.py --mode=prepare --image_folder=/data/my_images --dataset_name=my_images \\
      --data_dir=/data/tfds --image_format=jpeg
  python main.py --config=configs/finetune_folder.py --workdir=runs/finetune \\
      --config.dataset.data_dir=/data/tfds
  python main.py --mode=predict --workdir=runs/finetune --images=/data/new_photos/

The recipe: every layer starts from the converted weights but the classifier (Dense_2, 1000 ->
your number of classes), which starts afresh; the pretrained layers learn at a tenth of the rate
(``finetune.pretrained_lr_scale``; ``--config.finetune.freeze_convs=True`` keeps the convolutions
fixed instead); SGD with momentum 0.9 as PyTorch's, weight decay 1e-4, rate 0.01 on a cosine
schedule, batch 64, 10 epochs; torchvision's preprocessing (random resized crops and mirrors for
training; shorter side 256, centre 224, ImageNet mean and standard deviation for validation and
prediction). Validation: the last 10% of the folder's ``train`` split (``train[90%:]``).

Measured (2026-11-29, JAX 0.10.2, on a 2-core Intel Xeon VM with no accelerator): torchvision's
real weights cannot be downloaded there, so this config ran from synthetic weights (drawn at random
as in tests/torchvision_reference.py, converted as above) on 500 CIFAR-10 training images, 10
classes, 32x32, scaled up to 224 (450 to train, 50 to validate):
  python main.py --config=configs/finetune_folder.py --workdir=/tmp/p9/ft_owt --config.init_from=/tmp/p9/conv \
      --config.dataset.name=cifar_small --config.dataset.data_dir=/tmp/p9/tfds
4 min 24 s for the whole command (10 epochs of 7 steps), validation top-1 14%
(chance: 10%): the command works; what it reaches from torchvision's weights is not yet measured.
What fine-tuning gives on a small real folder was measured with alexnet_cifar on CIFAR-10 classes
(README, "Fine-tuning": 70.44% validation top-1 fine-tuned against 61.28% from scratch).
"""

from configs import imagenet_torchvision


def get_config():
    config = imagenet_torchvision.get_config()
    config.init_from = "runs/torchvision_alexnet"  # what the convert command above writes
    config.finetune.pretrained_lr_scale = 0.1
    config.finetune.freeze_convs = False

    config.dataset.name = "my_images"  # what the prepare command above writes
    config.dataset.train_split = "train[:90%]"
    config.dataset.eval_split = "train[90%:]"

    config.optimizer.learning_rate = 0.01
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 0.0
    config.num_epochs = 10
    config.batch_size = 64
    config.eval_batch_size = 64
    config.log_every_steps = 10
    config.checkpoint_every_steps = 500
    return config

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

Measured: see README, "Fine-tuning" (with the commands and the machine).
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

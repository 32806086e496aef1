"""Fine-tuning torchvision's pretrained AlexNet (``alexnet_owt``) on a folder of your own classes.

  python main.py --mode=convert --weights=alexnet-owt-7be5be79.pth --workdir=runs/torchvision_alexnet
  python main.py --mode=prepare --image_folder=/data/my_images --dataset_name=my_images \\
      --data_dir=/data/tfds --image_format=jpeg
  python main.py --config=configs/finetune_folder.py --workdir=runs/finetune \\
      --config.dataset.data_dir=/data/tfds
  python main.py --mode=predict --workdir=runs/finetune --images=/data/new_photos/

Expected: not yet measured from torchvision's real weights; the command runs end to end in 4 min
24 s on a 2-core CPU from synthetic weights (BENCHMARKS.md, "Converting weights, and the
fine-tuning config end to end"). The recipe: every layer from the converted weights but the
classifier, which starts afresh; the pretrained layers at a tenth of the rate; docs/pretrained.md.
"""

from configs import imagenet_torchvision


def get_config():
    config = imagenet_torchvision.get_config()
    config.init_from = "runs/torchvision_alexnet"  # what the convert command above writes
    config.finetune.pretrained_lr_scale = 0.1

    config.dataset.name = "my_images"  # what the prepare command above writes
    config.dataset.train_split = "train[:90%]"
    config.dataset.eval_split = "train[90%:]"

    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_epochs = 0.0
    config.num_epochs = 10
    config.batch_size = 64
    config.eval_batch_size = 64
    config.log_every_steps = 10
    config.checkpoint_every_steps = 500
    return config

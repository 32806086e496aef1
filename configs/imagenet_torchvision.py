"""AlexNet on ImageNet (ILSVRC-2012) by torchvision's reference recipe (``references/classification``).

  python main.py --mode=prepare --image_folder=/data/imagenet --dataset_name=imagenet2012_full \\
      --data_dir=/data/tfds --image_format=jpeg
  python main.py --config=configs/imagenet_torchvision.py --workdir=runs/alexnet_owt \\
      --config.dataset.data_dir=/data/tfds

Expected: torchvision's IMAGENET1K_V1 result, 56.52% top-1 / 79.07% top-5 validation accuracy
(centre crop); not yet measured with this config. Its rehearsal at ImageNet's shape on a 2-core
CPU: BENCHMARKS.md, "ImageNet's shape, rehearsed on a CPU". The recipe and where it differs from
torchvision's: docs/imagenet.md.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset.name = "imagenet2012_full"  # the dataset the prepare command above writes
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.download = False
    config.dataset.normalization = "imagenet"  # mean and standard deviation, as torchvision

    config.input.pipeline = "streaming"
    config.input.random_resized_crop = 224
    config.input.eval_resize = 256

    config.model.name = "alexnet_owt"
    config.model.dtype = "float32"
    config.model.dropout_rate = 0.5

    config.augment.crop_padding = 0
    config.augment.crop_size = 224  # training images are 224 already; validation: the centre 224 of 256

    config.optimizer.learning_rate = 0.01
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_biases = True
    config.optimizer.update_rule = "pytorch"
    config.optimizer.label_smoothing = 0.0

    config.schedule.name = "step"
    config.schedule.step_epochs = (30, 60)

    config.num_epochs = 90
    config.batch_size = 256
    config.eval_batch_size = 256
    config.eval_flip = False
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    return config

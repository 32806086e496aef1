"""AlexNet on ImageNet (ILSVRC-2012) by torchvision's reference recipe (``references/classification``).

Commands, for a user with ImageNet as an image folder ``/data/imagenet/{train,validation}/<wnid>/*.JPEG``
(README, "ImageNet", says how to get there from the ILSVRC2012 tars):
  python main.py --mode=prepare --image_folder=/data/imagenet --dataset_name=imagenet2012_full \\
      --data_dir=/data/tfds --image_format=jpeg
  python main.py --config=configs/imagenet_torchvision.py --workdir=runs/alexnet_owt \\
      --config.dataset.data_dir=/data/tfds
  python main.py --mode=evaluate --config=configs/imagenet_torchvision.py --workdir=runs/alexnet_owt \\
      --config.dataset.data_dir=/data/tfds --checkpoint=best
Straight from the ILSVRC2012 tars instead of a folder (TFDS's imagenet2012 builder reads them;
the full-size dataset it builds on the way can be read as it is, --config.dataset.name=imagenet2012):
  python main.py --mode=prepare --tfds_source=imagenet2012 --manual_dir=/data/ilsvrc2012_tars \\
      --dataset_name=imagenet2012_full --data_dir=/data/tfds --image_format=jpeg

The recipe: ``alexnet_owt`` (torchvision.models.alexnet), SGD batch 256, momentum 0.9, weight
decay 1e-4 on every parameter, PyTorch's SGD update, rate 0.01 multiplied by 0.1 every 30
epochs, 90 epochs. Full-size images (kept as they are by the prepare command above) are streamed;
the host draws each training image's random resized crop (0.08-1 of the area, aspect 3/4-4/3,
scaled to 224, bilinear) and scales each validation image's shorter side to 256 (centre square);
the devices mirror at random, crop the validation images' centre 224 and normalise with
ImageNet's mean and standard deviation. Differences from torchvision: the model's initialisation
is Flax's default (LeCun normal), not PyTorch's; resizing is PIL's, the same filters torchvision's
PIL backend uses.

Reference results (ILSVRC-2012 validation, centre crop): torchvision's IMAGENET1K_V1 weights,
56.52% top-1 / 79.07% top-5 accuracy.
Measured with this config: no ImageNet run yet (not yet measured on a GPU). At ImageNet's shape
(1,000 classes of full-size photos, benchmarks/imagenet_rehearsal.py; BENCHMARKS.md, "ImageNet's
shape"), on a 2-core CPU: 4 steps and a centre-crop evaluation of 1,000 images with the report
in 80 s, 4.3 GB of memory at batch 256, unchanged with 4x the photos. Rehearse any change the same
way with --config.max_steps=N. Its host input rate on 500 ImageNet photos is in BENCHMARKS.md
("Host input"), with the command.
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset.name = "imagenet2012_full"  # the dataset the prepare command above writes
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.download = False
    config.dataset.normalization = "imagenet"  # mean and standard deviation, as torchvision

    config.input.pipeline = "streaming"
    config.input.workers = None  # one decoding process per core
    config.input.random_resized_crop = 224
    config.input.crop_area = (0.08, 1.0)
    config.input.crop_aspect = (3 / 4, 4 / 3)
    config.input.eval_resize = 256

    config.model.name = "alexnet_owt"
    config.model.dtype = "float32"
    config.model.dropout_rate = 0.5

    config.augment.crop_padding = 0
    config.augment.crop_size = 224  # training images are 224 already; validation: the centre 224 of 256
    config.augment.flip = True
    config.augment.pca_noise = 0.0

    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_biases = True
    config.optimizer.update_rule = "pytorch"
    config.optimizer.label_smoothing = 0.0

    config.schedule.name = "step"
    config.schedule.step_epochs = (30, 60)
    config.schedule.step_factor = 0.1

    config.num_epochs = 90
    config.batch_size = 256
    config.eval_batch_size = 256
    config.eval_crops = 1
    config.eval_flip = False
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    return config

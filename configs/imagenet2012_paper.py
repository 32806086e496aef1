"""AlexNet on ImageNet (ILSVRC-2012) by the paper's recipe: Krizhevsky, Sutskever & Hinton (2012).

Commands, for a user with ImageNet as an image folder ``/data/imagenet/{train,validation}/<wnid>/*.JPEG``
(README, "ImageNet", says how to get there from the ILSVRC2012 tars):
  python main.py --mode=prepare --image_folder=/data/imagenet --dataset_name=imagenet2012_256 \\
      --data_dir=/data/tfds --image_size=256
  python main.py --config=configs/imagenet2012_paper.py --workdir=runs/alexnet2012 \\
      --config.dataset.data_dir=/data/tfds
  python main.py --mode=evaluate --config=configs/imagenet2012_paper.py --workdir=runs/alexnet2012 \\
      --config.dataset.data_dir=/data/tfds --checkpoint=best
Straight from the ILSVRC2012 tars instead of a folder (TFDS's imagenet2012 builder reads them):
  python main.py --mode=prepare --tfds_source=imagenet2012 --manual_dir=/data/ilsvrc2012_tars \\
      --dataset_name=imagenet2012_256 --data_dir=/data/tfds --image_size=256

What is the paper's (Sections 3-5) and where it lives: README, "The 2012 recipe, point by point".
Training images are stored once at 256x256 (shorter side 256, centre crop, JPEG) and streamed by
Grain workers; random 224 crops, mirrors and PCA colour noise are drawn on the devices; SGD batch
128, momentum 0.9, weight decay 0.0005 in the paper's update rule, rate 0.01 multiplied by 0.1
when the validation error stops improving (at most 3 times), 90 epochs; evaluation on the paper's
ten crops.

Reference results (ILSVRC-2012 validation, one CNN): the paper, 40.7% top-1 / 18.2% top-5 error.
Measured with this config: no ImageNet run yet (not yet measured on a GPU). At ImageNet's shape
(1,000 classes of full-size photos, benchmarks/imagenet_rehearsal.py; BENCHMARKS.md, "ImageNet's
shape"), on a 2-core CPU: 4 steps, stopped and resumed, then a ten-crop evaluation of 1,000 images
and the report, 5.5 GB of memory at batch 128; about 5 images/s of training there. Rehearse any
change the same way with --config.max_steps=N. Its host input rate on 500 ImageNet photos is in
BENCHMARKS.md ("Host input"), with the command.
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset.name = "imagenet2012_256"  # the dataset the prepare command above writes
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.download = False
    config.dataset.normalization = "imagenet_mean"  # the paper subtracts the mean, nothing else

    config.input.pipeline = "streaming"
    config.input.workers = None  # one decoding process per core

    config.model.name = "alexnet2012"
    config.model.dtype = "float32"  # as in 2012; bfloat16 is one flag away on GPUs and TPUs
    config.model.dropout_rate = 0.5

    config.augment.crop_padding = 0
    config.augment.crop_size = 224
    config.augment.flip = True
    config.augment.pca_noise = 0.1

    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 0.0005
    config.optimizer.label_smoothing = 0.0

    config.schedule.name = "plateau"
    config.schedule.step_factor = 0.1
    config.schedule.patience = 5  # the paper gives none; 3 reductions in 90 epochs leave room for 5
    config.schedule.max_reductions = 3

    config.num_epochs = 90
    config.batch_size = 128
    config.eval_batch_size = 128  # x 10 crops: 1,280 images per evaluation step
    config.eval_crops = 10
    config.eval_flip = False
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    return config

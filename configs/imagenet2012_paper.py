"""AlexNet on ImageNet (ILSVRC-2012) by the paper's recipe: Krizhevsky, Sutskever & Hinton (2012).

  python main.py --mode=prepare --image_folder=/data/imagenet --dataset_name=imagenet2012_256 \\
      --data_dir=/data/tfds --image_size=256
  python main.py --config=configs/imagenet2012_paper.py --workdir=runs/alexnet2012 \\
      --config.dataset.data_dir=/data/tfds

Expected: the paper's 40.7% top-1 / 18.2% top-5 validation error (one CNN, ten crops); not yet
measured with this config. Its rehearsal at ImageNet's shape on a 2-core CPU: BENCHMARKS.md,
"ImageNet's shape, rehearsed on a CPU". The recipe point by point, and how to get the image folder
from the ILSVRC2012 tars: docs/imagenet.md.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset.name = "imagenet2012_256"  # the dataset the prepare command above writes
    config.dataset.train_split = "train"
    config.dataset.eval_split = "validation"
    config.dataset.download = False
    config.dataset.normalization = "imagenet_mean"  # the paper subtracts the mean, nothing else

    config.input.pipeline = "streaming"

    config.model.name = "alexnet2012"
    config.model.dtype = "float32"  # as in 2012; bfloat16 is one flag away on GPUs and TPUs
    config.model.dropout_rate = 0.5

    config.augment.crop_padding = 0
    config.augment.crop_size = 224
    config.augment.pca_noise = 0.1

    config.optimizer.learning_rate = 0.01
    config.optimizer.nesterov = False
    config.optimizer.label_smoothing = 0.0

    config.schedule.name = "plateau"
    config.schedule.patience = 5  # the paper gives none; 3 reductions in 90 epochs leave room for 5

    config.num_epochs = 90
    config.batch_size = 128
    config.eval_batch_size = 128  # x 10 crops: 1,280 images per evaluation step
    config.eval_crops = 10
    config.eval_flip = False
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2000
    return config

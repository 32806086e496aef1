"""Every config field, once, with what it means: the defaults every other config starts from.

The defaults are the CIFAR-10 recipe for GPUs (``configs/cifar10.py``); the other configs override
only what differs, and any field can be overridden on the command line with
``--config.<field>=<value>``. Fields a model does not take are ignored by it (and by the signature
a checkpoint must match to resume), so ``--config.model.name`` switches models.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # parameter initialisation, data order, augmentation and dropout keys
    config.data_seed = config_dict.placeholder(int)  # the data order (and host crops) alone; None: seed

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "cifar10"  # a TFDS name, or "synthetic"
    config.dataset.data_dir = config_dict.placeholder(str)  # None: TFDS's default (~/tensorflow_datasets)
    config.dataset.train_split = "train[:90%]"  # TFDS split syntax; slices are fixed subsets
    config.dataset.eval_split = "train[90%:]"  # validation: carved from training, the test split held out
    config.dataset.download = True  # let TFDS download and prepare a registered dataset if missing
    config.dataset.normalization = "cifar10"  # channel statistics: cifar10 | imagenet
    config.dataset.synthetic_examples = 2048  # only for name="synthetic"
    config.dataset.synthetic_classes = 10  # only for name="synthetic"
    config.dataset.synthetic_image_size = 32  # only for name="synthetic"

    config.input = ml_collections.ConfigDict()
    # resident: the whole split on every device, batches gathered there (fast, for data that fits);
    # streaming: Grain worker processes read and decode each batch (for data that does not).
    config.input.pipeline = "resident"
    # Decoding processes: streaming, for every batch; resident, for the first read of a split of 8,192
    # or more images (at most one per 8 chunks of 1,024). None: one per core this process may use
    # (its affinity and container CPU quota count; cpus.py); 0: the training process.
    config.input.workers = config_dict.placeholder(int)
    # streaming, for full-size photos (torchvision's recipe): the host scales each training image's
    # random box (crop_area fraction, crop_aspect width/height) to this size, and each evaluation
    # image's shorter side to eval_resize, keeping the centre square. None: images as stored.
    config.input.random_resized_crop = config_dict.placeholder(int)
    config.input.crop_area = (0.08, 1.0)
    config.input.crop_aspect = (3 / 4, 4 / 3)
    config.input.eval_resize = config_dict.placeholder(int)

    config.model = ml_collections.ConfigDict()
    config.model.name = "alexnet_cifar"  # alexnet_cifar | alexnet2012 | alexnet_owt
    config.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
    config.model.width = 1.0  # alexnet_cifar: channels and fc_features scaled by this
    config.model.channels = (64, 192, 384, 256, 256)  # alexnet_cifar: the five convolutions' outputs
    config.model.fc_features = 2048  # alexnet_cifar: the two hidden dense layers' width
    config.model.lrn = False  # alexnet_cifar: the paper's local response normalisation after conv1, conv2
    config.model.norm = "batch"  # none | batch: batch normalisation after each convolution
    config.model.dropout_rate = 0.0  # before each hidden dense layer (the paper: 0.5)

    config.augment = ml_collections.ConfigDict()
    config.augment.crop_padding = 4  # pad, then crop back to the image size
    config.augment.crop_size = config_dict.placeholder(int)  # else: random crops of this size (no padding)
    config.augment.flip = True  # random horizontal mirrors
    config.augment.pca_noise = 0.0  # std of the paper's PCA colour noise (0.1 in the paper)
    config.augment.custom = ""  # a research augmentation: a name in augment.CUSTOM (docs/research.md)

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 0.4  # the peak rate of the schedule
    config.optimizer.momentum = 0.9  # SGD momentum
    config.optimizer.nesterov = True  # Nesterov momentum (the paper: plain)
    config.optimizer.weight_decay = 5e-4  # L2, in the update rule below
    config.optimizer.decay_biases = False  # weight decay on kernels only, as cuda-convnet; True: PyTorch's
    config.optimizer.update_rule = "paper"  # paper | pytorch: where the rate sits (optim.create_optimizer)
    config.optimizer.label_smoothing = 0.2  # 0: the paper's plain cross-entropy

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "onecycle"  # constant | step | warmup_cosine | onecycle | plateau
    config.schedule.pct_start = 0.25  # onecycle: fraction of steps spent warming up
    config.schedule.warmup_epochs = 1.0  # warmup_cosine
    # step: multiply the rate by step_factor at these epochs; None: at 1/3 and 2/3 of num_epochs.
    # Override with e.g. --config.schedule.step_epochs='(10, 20)'.
    config.schedule.step_epochs = config_dict.placeholder(tuple)
    config.schedule.step_factor = 0.1  # step and plateau: the factor the rate is multiplied by
    # plateau (the paper's rule): divide when validation error has not improved for `patience` evaluations
    config.schedule.patience = 2
    config.schedule.max_reductions = 3  # plateau: divisions at most

    config.num_epochs = 30  # the schedule's length
    # Ends the run after this many steps (with its final evaluation and report), the schedule still
    # that of num_epochs: for rehearsals of a long run. None: num_epochs.
    config.max_steps = config_dict.placeholder(int)
    config.batch_size = 512  # global, over all devices
    # Each device's share of the batch in this many micro-batches, one after another, gradients
    # averaged: the same step with less memory (k devices' numbers on one). Not with batch norm.
    config.grad_accum_steps = 1
    config.loss_term = ""  # a research loss term: a name in train_step.LOSS_TERMS (docs/research.md)
    config.eval_scores = ()  # research scores evaluation reports: names in evaluation.EVAL_SCORES
    # > 0: also keep an exponential moving average of the weights (and batch statistics), updated
    # after every step with this decay (e.g. 0.999), checkpointed and evaluated beside them.
    config.ema_decay = 0.0
    config.eval_batch_size = 1000  # global, over all devices
    config.eval_crops = 1  # 1: one view (centre crop_size crop, or the whole image); 10: the paper's ten crops
    config.eval_flip = True  # also score each view's mirror image (softmax averaged)
    config.parallel = "shard_map"  # shard_map | pmap
    config.log_every_steps = 50  # and at every epoch's end
    config.eval_every_epochs = 1  # and at the last step
    config.checkpoint_every_steps = 1000  # and at every evaluation, and when stopped
    config.keep_checkpoints = 2  # latest kept, besides the best by validation top-1
    config.async_checkpointing = True  # write checkpoints in the background
    # A step whose loss or gradients are not finite is never applied (optax.apply_if_finite); then
    # stop: end the run there (exit code 3), saving nothing after the last good checkpoint;
    # skip: go on, counting such steps in the train metrics (skipped_updates).
    config.nonfinite_updates = "stop"
    # (start, count): a JAX profiler trace of the train steps after step `start`, `count` of them,
    # written to <workdir>/profile (TensorBoard's profile plugin or Perfetto read it). None: off.
    config.profile_steps = config_dict.placeholder(tuple)
    # The run's last figures: curves.png and the validation report's confusion, per-class and
    # prediction figures (matplotlib, ~1 s). False: validation_report.json and conv1_filters.png
    # only, e.g. for many short runs; --mode=evaluate draws the report's figures from the checkpoint.
    config.figures = True

    # N models trained together by one vmap-ed step (member k: seed + k), saved as one checkpoint,
    # evaluated one by one and as an ensemble (softmax averaged). shared: every member sees the same
    # batches (data_seed's order); own: each its own order (seed + k; the resident pipeline only).
    config.ensemble_size = 1
    config.ensemble_data_order = "shared"
    # Per-member hyperparameters, a sweep in one program: tuples of ensemble_size values, e.g.
    # --config.members.learning_rate='(0.01, 0.02)'. None: the single value above, for every member.
    config.members = ml_collections.ConfigDict()
    for field in ("learning_rate", "weight_decay", "label_smoothing", "dropout_rate"):
        config.members[field] = config_dict.placeholder(tuple)

    # Fine-tuning: start a new run from the weights of a workdir (its best checkpoint, else its latest)
    # or of one checkpoint folder (.../checkpoints/<step>): a run of this code or torchvision's weights
    # converted with --mode=convert. The classifier head (every model's fc8) starts afresh when the
    # classes differ; every other layer must fit.
    config.init_from = ""
    config.finetune = ml_collections.ConfigDict()
    config.finetune.freeze_convs = False  # keep the convolutional layers (and their batch norm) as loaded
    config.finetune.pretrained_lr_scale = 1.0  # the rate of every layer but the head, times this
    return config

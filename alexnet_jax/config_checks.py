"""Checks a config before any work starts; each problem is one line saying what to change."""

import jax

from alexnet_jax import augment, ensemble, feeds, models, optim, parallel
from alexnet_jax.errors import ConfigError


def _require(condition: bool, message: str):
    if not condition:
        raise ConfigError(message)


def _one_of(key: str, value, choices):
    _require(value in choices, f"--config.{key}={value!r} is not one of {tuple(choices)}")


WHOLE_NUMBERS = ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints", "eval_every_epochs")  # fmt: skip


def validate(config, num_devices: int):
    """Raises ``ConfigError`` for the first invalid value in ``config``."""
    _check_choices(config)
    _check_counts(config)
    parallel.check(config, num_devices)
    _check_accumulation(config, config.batch_size // parallel.batch_devices(config.parallel, num_devices))
    _check_optimizer(config.optimizer, config.get("ema_decay", 0.0))
    _check_augmentation(config)
    _check_host_views(config.input)
    _check_model_and_schedule(config)
    _check_finetune(config)
    _check_ensemble(config, num_devices)
    _check_research_hooks(config)


def _check_choices(config):
    """Every named choice is one the code has."""
    _one_of("model.name", config.model.name, models.MODELS)
    _one_of("model.dtype", config.model.get("dtype", "float32"), models.DTYPES)
    _require(
        config.model.get("dtype") != "float64" or jax.config.jax_enable_x64,
        "--config.model.dtype=float64 needs 64-bit JAX: set JAX_ENABLE_X64=1",
    )
    _one_of("schedule.name", config.schedule.name, optim.SCHEDULES)
    _one_of("parallel", config.parallel, parallel.MODES)
    _one_of("dataset.normalization", config.dataset.normalization, augment.CHANNEL_STATS)
    _one_of("input.pipeline", config.input.pipeline, feeds.PIPELINES)
    _one_of("optimizer.update_rule", config.optimizer.update_rule, optim.UPDATE_RULES)
    _one_of("nonfinite_updates", config.nonfinite_updates, optim.NONFINITE_UPDATES)


def _check_counts(config):
    """Sizes, counts and intervals are whole numbers in their ranges."""
    workers = config.input.workers
    _require(
        workers is None or (isinstance(workers, int) and workers >= 0),
        f"--config.input.workers={workers!r} must be a whole number >= 0 (0: decode in the training process)",
    )
    for key in WHOLE_NUMBERS:
        value = config[key]
        _require(isinstance(value, int) and value >= 1, f"--config.{key}={value!r} must be a whole number >= 1")
    max_steps = config.get("max_steps")
    _require(
        max_steps is None or (isinstance(max_steps, int) and max_steps >= 1),
        f"--config.max_steps={max_steps!r} must be a whole number >= 1 (or unset: num_epochs decides)",
    )
    _check_profile(config.get("profile_steps"))


def _check_optimizer(opt, ema_decay: float):
    """The optimizer's values, and the moving average's decay, in their ranges."""
    _require(opt.learning_rate > 0, f"--config.optimizer.learning_rate={opt.learning_rate} must be > 0")
    _require(0 <= opt.momentum < 1, f"--config.optimizer.momentum={opt.momentum} must be in [0, 1)")
    _require(opt.weight_decay >= 0, f"--config.optimizer.weight_decay={opt.weight_decay} must be >= 0")
    _require(
        0 <= opt.label_smoothing < 1, f"--config.optimizer.label_smoothing={opt.label_smoothing} must be in [0, 1)"
    )
    _require(
        0 <= ema_decay < 1,
        f"--config.ema_decay={ema_decay} must be in [0, 1): 0 keeps no moving average, e.g. 0.999 keeps one",
    )


def _check_research_hooks(config):
    """Names of research pieces (docs/research.md) must be registered where the config says."""
    from alexnet_jax import evaluation, train_step

    _one_of("augment.custom", config.augment.get("custom", ""), ("", *augment.CUSTOM))
    _one_of("loss_term", config.get("loss_term", ""), ("", *train_step.LOSS_TERMS))
    for name in config.get("eval_scores", ()):
        _one_of("eval_scores", name, tuple(evaluation.EVAL_SCORES))


def _check_ensemble(config, num_devices: int):
    """The ensemble's size, data order and per-member values; each member's config as a single run's."""
    members = ensemble.size(config)
    _require(
        isinstance(members, int) and members >= 1, f"--config.ensemble_size={members!r} must be a whole number >= 1"
    )
    given = {field: values for field, values in config.get("members", {}).items() if values is not None}
    if members == 1:
        _require(
            not given,
            f"--config.members.{next(iter(given), '')} holds an ensemble's per-member values, and "
            "--config.ensemble_size=1 trains one model: set ensemble_size to their number, or give the one "
            "value where the config keeps it (e.g. --config.optimizer.learning_rate)",
        )
        return
    for field, values in given.items():
        _require(
            len(values) == members,
            f"--config.members.{field} has {len(values)} values for --config.ensemble_size={members}: "
            "give one per member",
        )
    _require(
        "dropout_rate" not in given or "dropout_rate" in models.model_fields(config.model.name),
        f"--config.members.dropout_rate: {config.model.name} has no dropout; leave it unset",
    )
    _one_of("ensemble_data_order", config.ensemble_data_order, ensemble.DATA_ORDERS)
    _require(
        config.ensemble_data_order == "shared" or config.input.pipeline == "resident",
        "--config.ensemble_data_order=own needs --config.input.pipeline=resident (streamed members share batches)",
    )
    _require(not config.get("init_from"), "--config.init_from starts one model; train ensembles from scratch")
    _require(config.parallel != "towers", "--config.parallel=towers trains one model; use shard_map for ensembles")
    for k in range(members):
        try:
            validate(ensemble.member_config(config, k), num_devices)
        except ConfigError as e:
            raise ConfigError(f"ensemble member {k}: {e}") from None


def _check_profile(profile):
    whole = profile is None or (len(profile) == 2 and all(isinstance(n, int) for n in profile))
    _require(
        whole and (profile is None or (profile[0] >= 0 and profile[1] >= 1)),
        f"--config.profile_steps={profile!r} must be (start, count): whole numbers, start >= 0, count >= 1",
    )


def _check_finetune(config):
    finetune = config.get("finetune")
    if finetune is None:
        return
    scale = finetune.pretrained_lr_scale
    _require(scale >= 0, f"--config.finetune.pretrained_lr_scale={scale} must be >= 0")
    _require(
        config.get("init_from") or (not finetune.freeze_convs and scale == 1),
        "--config.finetune.* applies to pretrained layers: give --config.init_from=WORKDIR_OR_CHECKPOINT too",
    )


def _check_accumulation(config, per_device: int):
    micro = config.get("grad_accum_steps", 1)
    _require(isinstance(micro, int) and micro >= 1, f"--config.grad_accum_steps={micro!r} must be a whole number >= 1")
    _require(
        per_device % micro == 0,
        f"--config.grad_accum_steps={micro} does not divide each device's {per_device} examples of the batch; "
        "use a divisor of it",
    )
    batch_norm = "norm" in models.model_fields(config.model.name) and config.model.get("norm", "none") != "none"
    _require(
        micro == 1 or not batch_norm,
        f"--config.grad_accum_steps={micro} with batch norm would take statistics over micro-batches; "
        "use --config.model.norm=none, or 1",
    )


def check_crop(config, image_shape):
    """The crops must fit in the stored images."""
    size = config.augment.crop_size
    _require(
        size is None or size <= min(image_shape[:2]),
        f"--config.augment.crop_size={size} is larger than the dataset's {image_shape[0]}x{image_shape[1]} images; "
        "use a smaller crop or prepare the images larger (--image_size)",
    )


def _check_augmentation(config):
    aug = config.augment
    _require(aug.crop_padding >= 0, f"--config.augment.crop_padding={aug.crop_padding} must be >= 0")
    _require(aug.crop_size is None or aug.crop_size >= 1, f"--config.augment.crop_size={aug.crop_size} must be >= 1")
    _require(aug.pca_noise >= 0, f"--config.augment.pca_noise={aug.pca_noise} must be >= 0")
    _one_of("eval_crops", config.eval_crops, (1, 10))
    _require(
        config.eval_crops == 1 or aug.crop_size is not None,
        "--config.eval_crops=10 takes crops of --config.augment.crop_size: set it (224 for ImageNet)",
    )
    _require(
        not (config.eval_flip and config.eval_crops == 10),
        "--config.eval_flip=True adds mirror images, which the paper's ten crops already hold: use one or the other",
    )


def _check_host_views(inputs):
    crop, resize = inputs.random_resized_crop, inputs.eval_resize
    for key, value in (("random_resized_crop", crop), ("eval_resize", resize)):
        if value is not None:
            _require(
                isinstance(value, int) and value >= 1, f"--config.input.{key}={value!r} must be a whole number >= 1"
            )
            _require(
                inputs.pipeline == "streaming",
                f"--config.input.{key} is made on the host while streaming: set --config.input.pipeline=streaming",
            )
    if crop is None:
        return
    _require(
        resize is not None,
        "--config.input.random_resized_crop needs --config.input.eval_resize for the evaluation images "
        "(256 in torchvision's recipe)",
    )
    low, high = inputs.crop_area
    _require(0 < low <= high <= 1, f"--config.input.crop_area={(low, high)} must satisfy 0 < low <= high <= 1")
    low, high = inputs.crop_aspect
    _require(0 < low <= high, f"--config.input.crop_aspect={(low, high)} must satisfy 0 < low <= high")


def _positive(key: str, value, upper=None):
    inside = value > 0 and (upper is None or value < upper)
    _require(inside, f"--config.{key}={value} must be > 0" + (f" and < {upper}" if upper is not None else ""))


def _check_model_and_schedule(config):
    model = config.model
    if "width" in model:
        _positive("model.width", model.width)
    if "norm" in model:
        _one_of("model.norm", model.norm, models.NORMS)
    if "dropout_rate" in model:
        _require(0 <= model.dropout_rate < 1, f"--config.model.dropout_rate={model.dropout_rate} must be in [0, 1)")
    if config.dataset.name == "synthetic":
        for key in ("synthetic_examples", "synthetic_classes", "synthetic_image_size"):
            _positive(f"dataset.{key}", config.dataset[key])
    if config.schedule.name == "step":
        epochs = list(optim.step_epochs(config))
        _require(
            epochs == sorted(epochs) and all(0 < e < config.num_epochs for e in epochs),
            f"--config.schedule.step_epochs={tuple(epochs)} must increase and lie inside (0, "
            f"num_epochs={config.num_epochs}); leave it unset for 1/3 and 2/3 of the run",
        )
        _positive("schedule.step_factor", config.schedule.step_factor)
    if config.schedule.name == "plateau":
        _positive("schedule.step_factor", config.schedule.step_factor, upper=1)
        _require(
            isinstance(config.schedule.patience, int) and config.schedule.patience >= 1,
            f"--config.schedule.patience={config.schedule.patience!r} must be a whole number >= 1",
        )
        _require(
            isinstance(config.schedule.max_reductions, int) and config.schedule.max_reductions >= 0,
            f"--config.schedule.max_reductions={config.schedule.max_reductions!r} must be a whole number >= 0",
        )
    if config.schedule.name == "warmup_cosine":
        warmup = config.schedule.warmup_epochs
        _require(
            0 <= warmup < config.num_epochs,
            f"--config.schedule.warmup_epochs={warmup} must be in [0, num_epochs={config.num_epochs})",
        )
    if config.schedule.name == "onecycle":
        _positive("schedule.pct_start", config.schedule.pct_start, upper=1)
    known = set().union(*(models.model_fields(name) for name in models.MODELS))
    unknown = sorted(set(config.model.keys()) - known - {"name"})
    _require(not unknown, f"no model takes the field(s) {unknown}; model fields are {sorted(known)}")

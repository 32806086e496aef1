"""An experiment's fixed parts, built from its config: the data splits, the model and its freshly
initialised train state, and the signature a checkpoint must match. Training (``train.py``),
evaluation, prediction and weight conversion build on these."""

import dataclasses
import pathlib
import sys

import jax
import numpy as np
import tqdm

from alexnet_jax import config_checks, datasets, ema, ensemble, models, optim, parallel, runtime
from alexnet_jax.datasets import ArraySplit, StreamSplit
from alexnet_jax.distributed import is_main_process
from alexnet_jax.feeds import host_views
from alexnet_jax.parallel import DataParallel
from alexnet_jax.train_step import create_train_state


def model_input_shape(config, image_shape) -> tuple[int, ...]:
    """What the model sees: ``crop_size`` crops of the stored images, or the images whole."""
    size = config.augment.crop_size
    return tuple(image_shape) if size is None else (size, size, image_shape[-1])


def create_state(config, num_classes: int, image_shape, steps_per_epoch: int):
    """The freshly initialised train state of ``config``'s model and optimizer (an ensemble's
    members stacked), with its moving average if it keeps one."""
    model = models.create_model(config.model, num_classes)
    schedule = optim.create_schedule(config, steps_per_epoch)
    tx = optim.create_optimizer(config, schedule, per_member=ensemble.size(config) > 1)
    shape, dtype = model_input_shape(config, image_shape), models.param_dtype(config.model)
    state = ensemble.initialised(lambda key: create_train_state(model, tx, shape, key, dtype), config)
    return ema.started(state, config)


def say(message: str):
    """Prints ``message`` above the progress bar, from process 0 only."""
    if is_main_process():
        tqdm.tqdm.write(message)
        sys.stdout.flush()


def model_signature(model_config) -> dict:
    """The model's name and the fields it takes that shape its parameters (not the compute dtype,
    not dropout; not the fields only other models take), JSON-ready."""
    shaping = models.model_fields(model_config.name) - {"dtype", "dropout_rate"}
    fields = {k: v for k, v in model_config.items() if k == "name" or k in shaping}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


@dataclasses.dataclass(frozen=True)
class Run:
    """What one training run is made of, fixed before its first step."""

    config: object
    workdir: pathlib.Path
    parallel: DataParallel
    train_split: ArraySplit | StreamSplit
    val_split: ArraySplit | StreamSplit
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        """``num_epochs`` of steps, or ``max_steps`` if fewer (the same schedule, cut short)."""
        return min(self.config.num_epochs * self.steps_per_epoch, self.config.get("max_steps") or np.inf)

    @property
    def num_classes(self) -> int:
        return len(self.train_split.class_names)

    def evaluates_at(self, step: int) -> bool:
        """Whether ``step`` is evaluated: the run's last step, and the ends of every ``eval_every_epochs``-th epoch."""
        epoch, rest = divmod(step, self.steps_per_epoch)
        return step == self.total_steps or (step > 0 and rest == 0 and epoch % self.config.eval_every_epochs == 0)

    def signature(self) -> dict:
        """What the parameters and the data order depend on: a checkpoint resumes only where it matches."""
        return {
            "model": model_signature(self.config.model),
            "num_classes": self.num_classes,
            "image_shape": list(self.train_split.image_shape),
            "global_batch_size": self.config.batch_size,
            "dataset": self.config.dataset.name,
            "train_split": self.config.dataset.train_split,
            "train_examples": len(self.train_split),
            "seed": self.config.seed,  # the data order, the augmentation and dropout keys
            **ensemble.signature(self.config),
        }

    def checkpoint_data(self, step: int) -> dict:
        position = {"epoch": step // self.steps_per_epoch, "step_in_epoch": step % self.steps_per_epoch}
        names = {"class_names": list(self.train_split.class_names)}  # for --mode=predict; not compared
        return {**position, **self.signature(), **names}


def load_split(config, split: str, train: bool) -> ArraySplit | StreamSplit:
    """A split as the config's input pipeline reads it for training or evaluation; checks the crops fit."""
    views = host_views(config.input)
    stream = config.input.pipeline == "streaming"
    loaded = datasets.load_split(config.dataset, split, stream, views[0] if train else views[1], config.input.workers)
    config_checks.check_crop(config, loaded.image_shape)
    return loaded


def load_run(config, workdir: pathlib.Path) -> Run:
    """Checks the config and the workdir and reads the data; raises ``UserError`` before writing anything."""
    config_checks.validate(config, jax.device_count())
    runtime.check_workdir(workdir)
    data_parallel = parallel.create(config.parallel)
    say(runtime.platform_line() + data_parallel.describe())
    train_split = load_split(config, config.dataset.train_split, train=True)
    val_split = load_split(config, config.dataset.eval_split, train=False)
    parallel.check_classes(config, len(train_split.class_names))
    if config.batch_size > len(train_split):
        raise config_checks.ConfigError(
            f"--config.batch_size={config.batch_size} exceeds the {len(train_split)} training examples; lower it"
        )
    steps_per_epoch = len(train_split) // config.batch_size
    return Run(config, workdir, data_parallel, train_split, val_split, steps_per_epoch)

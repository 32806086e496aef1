"""Starting a run from pretrained weights (``config.init_from``): read them, check they fit, and
start the classifier head afresh when the classes differ (in number, or by name).

The weights come from a workdir (its best checkpoint, else its latest) or from one checkpoint
folder (``<workdir>/checkpoints/<step>``): a run of this code, or torchvision's weights converted
with ``--mode=convert``. The update scales per layer (frozen, pretrained, head) live in
``optim.create_optimizer``.
"""

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax import models
from alexnet_jax.checkpointing import CheckpointError, Checkpoints, read_variables
from alexnet_jax.torchvision_weights import readable_class_names


def _checkpoint_folder(init_from: str) -> pathlib.Path:
    """The step folder ``init_from`` names: a checkpoint folder itself, or a workdir's best (else latest)."""
    path = pathlib.Path(init_from).absolute()
    if (path / "state").is_dir() and path.name.isdigit():
        return path
    directory = path / "checkpoints"
    if not (directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())):
        raise CheckpointError(
            f"--config.init_from={init_from}: no checkpoint there; give a workdir of a run or of --mode=convert, "
            "or one of its checkpoints/<step> folders"
        )
    checkpoints = Checkpoints(directory, keep=1, async_save=False)
    try:
        return directory / str(checkpoints.resolve("best", best_or_latest=True))
    finally:
        checkpoints.close()


def read_pretrained(init_from: str) -> tuple[dict, dict | None, dict, pathlib.Path]:
    """(params, batch-norm statistics or None, the checkpoint's data, its folder) as host arrays."""
    folder = _checkpoint_folder(init_from)
    params, batch_stats = read_variables(folder)
    data = ocp.JsonCheckpointHandler().restore(folder / "data") if (folder / "data").is_dir() else {}
    return params, batch_stats, dict(data), folder


def merge(fresh: dict, pretrained: dict, head: str, where: pathlib.Path, new_head: bool) -> tuple[dict, list[str]]:
    """``pretrained``'s arrays in ``fresh``'s tree; the head keeps its fresh initialisation if
    ``new_head`` or where its shape differs (another number of classes). Returns (tree, names of the
    modules started afresh). Any other difference raises ``CheckpointError`` naming the tensor."""
    merged, afresh = {}, []
    for module, leaves in fresh.items():
        if module not in pretrained:
            raise CheckpointError(f"{where} has no layer {module}; is it a checkpoint of this model?")
        missing = sorted(set(leaves) - set(pretrained[module]))
        if missing:
            raise CheckpointError(
                f"{where}: {module}/{missing[0]} is not in that checkpoint, whose {module} holds "
                f"{', '.join(sorted(pretrained[module]))}; use the model settings it was trained with "
                "(e.g. --config.model.norm)"
            )
        shapes_differ = any(leaves[k].shape != pretrained[module][k].shape for k in leaves)
        if module == head and (shapes_differ or new_head):
            merged[module], afresh = leaves, [*afresh, module]
            continue
        for key, array in leaves.items():
            if array.shape != pretrained[module][key].shape:
                raise CheckpointError(
                    f"{where}: {module}/{key} has shape {pretrained[module][key].shape} there, "
                    f"{array.shape} in this model; use the model, image size and width it was trained with"
                )
        merged[module] = {k: np.asarray(pretrained[module][k], np.asarray(v).dtype) for k, v in leaves.items()}
    return merged, afresh


def same_classes(saved, current) -> bool:
    """Whether two lists name the same classes in the same order: by their ids (ImageNet's WordNet
    ids, which --mode=convert records), or, for a checkpoint that recorded ImageNet's readable names,
    by those names."""
    saved, current = list(saved), list(current)
    return saved == current or readable_class_names(saved) == readable_class_names(current)


def initialise_from(config, state, class_names):
    """``state`` with the parameters (and batch-norm statistics) of ``config.init_from``; the head
    starts afresh unless the checkpoint was trained on the same ``class_names`` (where it records
    them; else on as many classes). Returns (state, a line saying what was loaded and what not)."""
    params, batch_stats, data, folder = read_pretrained(config.init_from)
    saved_model = data.get("model", {}).get("name", config.model.name)
    if saved_model != config.model.name:
        raise CheckpointError(
            f"--config.init_from={config.init_from} holds {saved_model}, this config trains {config.model.name}; "
            f"use --config.model.name={saved_model} and its settings"
        )
    head = models.HEAD
    saved_names = data.get("class_names")
    new_head = saved_names is not None and not same_classes(saved_names, class_names)
    merged, afresh = merge(jax.device_get(state.params), params, head, folder, new_head)
    state = state.replace(params=jax.device_put(merged))
    if state.batch_stats is not None and batch_stats is not None:
        stats, _ = merge(jax.device_get(state.batch_stats), batch_stats, head, folder, new_head)
        state = state.replace(batch_stats=jax.device_put(stats))
    line = f"initialised from {folder}: every layer"
    if afresh:
        there = f"{len(saved_names)} other classes" if new_head else f"{data.get('num_classes', 'other')} classes"
        line += f" but {', '.join(afresh)} ({there} there), which starts afresh"
    return state, line

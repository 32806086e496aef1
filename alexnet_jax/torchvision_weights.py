"""torchvision's AlexNet weights (``IMAGENET1K_V1``) as parameters of ``alexnet_owt``, and the
ImageNet class names that go with them.

Reading never runs pickled code: a ``.safetensors`` file is plain tensors (read with the
``safetensors`` package, no PyTorch needed); a ``.pth`` file is a pickle, read with
``torch.load(weights_only=True)``, PyTorch's restricted unpickler, which builds tensors and
containers only and refuses any other object. PyTorch is therefore needed for ``.pth`` files only
(anyone who downloaded them with torchvision has it).

The layouts: PyTorch convolutions are OIHW, Flax's HWIO; PyTorch linear layers are (out, in), Flax's
(in, out); and torchvision flattens conv5's output as (channel, row, column) where this
codebase's NHWC models flatten (row, column, channel), so fc6's inputs are permuted to match.
"""

import importlib.resources
import pathlib
import pickle
import re

import numpy as np

from alexnet_jax.errors import UserError

# torchvision's module names -> alexnet_owt's (the paper's layer names).
MODULES = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}
FC6 = "classifier.1"
POOLED_GRID = 6  # conv5's output is average-pooled to 6 x 6 before fc6
SUFFIXES = (".pth", ".pt", ".safetensors")


class WeightsError(UserError):
    """A weights file that is not torchvision's AlexNet; the message names the file or the tensor."""


def imagenet_classes() -> list[tuple[str, str]]:
    """ImageNet's 1000 classes in torchvision's order (sorted WordNet ids): (wnid, name) pairs."""
    text = importlib.resources.files("alexnet_jax").joinpath("imagenet_classes.tsv").read_text()
    return [tuple(line.split("\t")) for line in text.splitlines()]


def readable_class_names(names) -> list[str]:
    """ImageNet WordNet ids (a dataset prepared from ImageNet's folders) as their names; other
    names as they are."""
    by_wnid = dict(imagenet_classes())
    return [by_wnid.get(name, name) for name in names]


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.pth``/``.pt`` (PyTorch, weights only) or ``.safetensors`` file, as float32 arrays."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights={path}: no such file")
    if path.suffix not in SUFFIXES:
        raise WeightsError(f"--weights={path}: expected a {', '.join(SUFFIXES)} file")
    tensors = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pth(path)
    return {name: np.asarray(value, np.float32) for name, value in tensors.items()}


def _read_safetensors(path: pathlib.Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({_first_line(e)})") from None


def _read_pth(path: pathlib.Path) -> dict:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"reading {path} needs PyTorch (pip install torch; the CPU build will do), "
            "or give the same tensors as a .safetensors file"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path} holds pickled objects other than tensors, which are never loaded (torch.load's weights_only); "
            "save and give model.state_dict()"
        ) from None
    except Exception as e:  # truncated zip, a pickle of other objects: torch raises many kinds
        raise WeightsError(f"{path} cannot be read as a PyTorch state dict ({_first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no state dict of tensors; save model.state_dict(), not the model")
    return {name: tensor.float().numpy() for name, tensor in state.items()}


def _first_line(error: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # no terminal colours
    return (text.splitlines() or [type(error).__name__])[0][:200]


def torch_layout(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape PyTorch stores a parameter of Flax shape ``flax_shape`` in."""
    if len(flax_shape) == 4:  # HWIO -> OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    return tuple(reversed(flax_shape))


def _to_flax(module: str, kind: str, tensor: np.ndarray) -> np.ndarray:
    if kind == "bias":
        return tensor
    if tensor.ndim == 4:
        return tensor.transpose(2, 3, 1, 0)
    if module == FC6:  # (out, channel * row * column) -> (row * column * channel, out)
        out, features = tensor.shape
        grid = tensor.reshape(out, features // POOLED_GRID**2, POOLED_GRID, POOLED_GRID)
        return grid.transpose(2, 3, 1, 0).reshape(features, out)
    return tensor.T


def params_from_torchvision(state_dict: dict[str, np.ndarray], expected) -> dict:
    """``alexnet_owt`` parameters from torchvision's state dict; ``expected`` is the Flax parameter
    tree (arrays or shape structs) they must fit. Raises ``WeightsError`` naming the first tensor
    that is missing, unexpected or of another shape."""
    wanted = {
        f"{torch_name}.{kind}": (flax_name, kind)
        for torch_name, flax_name in MODULES.items()
        for kind in ("weight", "bias")
    }
    unexpected = sorted(set(state_dict) - set(wanted))
    if unexpected:
        raise WeightsError(f"tensor {unexpected[0]!r} is not in torchvision's alexnet; is this another network?")
    params = {}
    for torch_name, (flax_name, kind) in wanted.items():
        if torch_name not in state_dict:
            raise WeightsError(f"tensor {torch_name!r} of torchvision's alexnet is missing")
        flax_kind = "kernel" if kind == "weight" else "bias"
        want = torch_layout(tuple(expected[flax_name][flax_kind].shape))
        tensor = state_dict[torch_name]
        if tensor.shape != want:
            raise WeightsError(
                f"tensor {torch_name!r} has shape {tuple(tensor.shape)}; torchvision's alexnet (1000 classes): {want}"
            )
        params.setdefault(flax_name, {})[flax_kind] = _to_flax(torch_name.rsplit(".", 1)[0], kind, tensor)
    return params


def converted_data(weights: str) -> dict:
    """What a converted checkpoint records of its classes and source (besides the model): ImageNet's
    1,000 classes by WordNet id, as ImageNet's datasets name them (predict shows their names)."""
    return {
        "num_classes": 1000,
        "class_names": [wnid for wnid, _ in imagenet_classes()],
        "converted_from": str(pathlib.Path(weights).absolute()),
    }


def convert(weights: str, config, workdir: str) -> dict:
    """Writes torchvision's AlexNet weights from ``weights`` into ``workdir`` as checkpoint 0 of an
    ``alexnet_owt`` run of ``config`` (with ``config.json`` and the class names), which
    ``--mode=predict``, ``--mode=evaluate`` and ``--config.init_from`` read. Returns the checkpoint's data."""
    import jax

    from alexnet_jax import files, runtime
    from alexnet_jax.checkpointing import Checkpoints
    from alexnet_jax.experiment import create_state, model_signature

    if config.model.name != "alexnet_owt":
        raise UserError(
            f"--mode=convert makes an alexnet_owt checkpoint, not {config.model.name}; "
            "use --config=configs/imagenet_torchvision.py"
        )
    workdir = pathlib.Path(workdir)
    runtime.check_workdir(workdir)
    if (workdir / "checkpoints").exists():
        raise UserError(f"{workdir} holds checkpoints already; convert into a new --workdir")
    state_dict = read_state_dict(weights)
    size = config.input.eval_resize or 256
    state = create_state(config, 1000, (size, size, 3), steps_per_epoch=1)
    params = params_from_torchvision(state_dict, state.params)
    state = state.replace(params=jax.device_put(params))
    data = {"model": model_signature(config.model), **converted_data(weights)}
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_text(workdir / "config.json", config.to_json_best_effort(indent=1))
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1, async_save=False)
    checkpoints.save(state, jax.random.key(config.seed), data, force=True)
    checkpoints.close()
    return data

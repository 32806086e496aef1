"""torchvision's AlexNet on deterministic weights: the reference that tests/test_pretrained.py checks
the conversion against, without PyTorch in the suite.

The weights and the input are drawn with NumPy's PCG64 from fixed seeds (the same bits on every
machine; the test compares the weights' SHA-256 with the stored one, so a NumPy release that drew
other numbers would be caught), so the test draws them again itself; this script also feeds them to torchvision's own
``alexnet`` and stores what it outputs. Run it where torch and torchvision are installed; it
rewrites the two data files it makes:

  python tests/torchvision_reference.py      # tests/data/torchvision_alexnet_logits.npz
                                             # alexnet_jax/imagenet_classes.tsv

``torchvision_alexnet_logits.npz``: torchvision's logits in float64 and float32 for the input, and
the torch and torchvision versions; ``imagenet_classes.tsv``: ImageNet's WordNet ids in class order
(TFDS's ``imagenet2012`` labels) beside the class names torchvision ships with its weights.
"""

import hashlib
import pathlib
import sys

import numpy as np

WEIGHTS_SEED, INPUT_SEED, IMAGES = 2012, 224, 2
HERE = pathlib.Path(__file__).parent
LOGITS = HERE / "data" / "torchvision_alexnet_logits.npz"

# torchvision.models.alexnet's state dict: name -> shape (PyTorch layouts).
SHAPES = {
    "features.0": ((64, 3, 11, 11), 64),
    "features.3": ((192, 64, 5, 5), 192),
    "features.6": ((384, 192, 3, 3), 384),
    "features.8": ((256, 384, 3, 3), 256),
    "features.10": ((256, 256, 3, 3), 256),
    "classifier.1": ((4096, 9216), 4096),
    "classifier.4": ((4096, 4096), 4096),
    "classifier.6": ((1000, 4096), 1000),
}


def synthetic_state_dict() -> dict[str, np.ndarray]:
    """He-scaled normal weights and small biases (float32), so activations neither vanish nor blow up."""
    rng = np.random.default_rng(WEIGHTS_SEED)
    tensors = {}
    for name, (shape, outputs) in SHAPES.items():
        scale = np.float32(np.sqrt(2 / np.prod(shape[1:])))
        tensors[f"{name}.weight"] = rng.standard_normal(shape, dtype=np.float32) * scale
        tensors[f"{name}.bias"] = np.float32(0.1) * rng.standard_normal(outputs, dtype=np.float32)
    return tensors


def zero_state_dict() -> dict[str, np.ndarray]:
    """torchvision's tensor names and shapes, all zeros (for the error checks)."""
    zeros = {f"{name}.weight": np.zeros(shape, np.float32) for name, (shape, _) in SHAPES.items()}
    return {**zeros, **{f"{name}.bias": np.zeros(outputs, np.float32) for name, (_, outputs) in SHAPES.items()}}


def synthetic_input() -> np.ndarray:
    """Two normalised 224 x 224 images, NCHW as torchvision takes them."""
    return np.random.default_rng(INPUT_SEED).standard_normal((IMAGES, 3, 224, 224))


def fingerprint(tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


def _torchvision_logits(state_dict, images, dtype):
    import torch
    import torchvision

    model = torchvision.models.alexnet().to(dtype).eval()
    model.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in state_dict.items()})
    with torch.no_grad():
        return model(torch.from_numpy(images).to(dtype)).numpy()


def _write_class_names():
    import importlib.util

    import torchvision

    tfds_root = pathlib.Path(importlib.util.find_spec("tensorflow_datasets").origin).parent  # not imported
    wnids = (tfds_root / "datasets" / "imagenet2012" / "labels.txt").read_text().split()
    names = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(wnids) == len(names) == 1000
    lines = [f"{wnid}\t{name}" for wnid, name in zip(wnids, names, strict=True)]
    (HERE.parent / "alexnet_jax" / "imagenet_classes.tsv").write_text("\n".join(lines) + "\n")


def main():
    import torch
    import torchvision

    state_dict, images = synthetic_state_dict(), synthetic_input()
    LOGITS.parent.mkdir(exist_ok=True)
    np.savez(
        LOGITS,
        logits_float64=_torchvision_logits(state_dict, images, torch.float64),  # float32 weights, float64 sums
        logits_float32=_torchvision_logits(state_dict, images.astype(np.float32), torch.float32),
        weights_sha256=fingerprint(state_dict),
        versions=f"torch {torch.__version__}, torchvision {torchvision.__version__}",
    )
    if len(sys.argv) < 2 or sys.argv[1] != "--no-class-names":
        _write_class_names()
    print(f"wrote {LOGITS}")


if __name__ == "__main__":
    main()

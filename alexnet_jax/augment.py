"""Pure, jit-able image augmentation and normalisation on uint8 NHWC batches, and the test crops.

Every random choice is drawn from a key per example, so a batch is augmented identically however
it is split across devices.

The paper's colour augmentation ("fancy PCA", Krizhevsky et al. 2012, Section 4.1) adds to every
pixel of an image ``eigenvectors @ (alpha * eigenvalues)``, alpha ~ N(0, 0.1^2) per component,
drawn once per image. The paper does not publish its eigen-decomposition; ``IMAGENET_PCA`` is the
one of fb.resnet.torch (``datasets/imagenet.lua``, ``pca``), computed on ImageNet training pixels
scaled to [0, 1]; it is applied here on the 0..255 scale (eigenvalues times 255).
"""

import dataclasses

import jax
import jax.numpy as jnp

# Per-channel statistics of the CIFAR-10 training images and of ImageNet, on the 0..255 scale.
CHANNEL_STATS = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "imagenet": ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),
    "imagenet_mean": ((123.7, 116.3, 103.5), (1.0, 1.0, 1.0)),  # the paper: mean subtraction only
}


# RGB covariance of ImageNet training pixels on the [0, 1] scale: eigenvalues and eigenvectors (columns).
IMAGENET_PCA = (
    (0.2175, 0.0188, 0.0045),
    ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203)),
)


# name -> (float32 pixels [N, H, W, C] on the 0..255 scale, one key per example) -> pixels: research
# augmentations, applied after the crops, flips and colour noise, before normalisation, when
# --config.augment.custom names one (docs/research.md).
CUSTOM = {}


def pca_noise(key: jax.Array, std: float) -> jax.Array:
    """One image's RGB offset, on the 0..255 scale: eigenvectors @ (alpha * eigenvalues), alpha ~ N(0, std^2)."""
    eigenvalues, eigenvectors = (jnp.asarray(v, jnp.float32) for v in IMAGENET_PCA)
    alpha = std * jax.random.normal(key, (3,))
    return 255.0 * eigenvectors @ (alpha * eigenvalues)


def random_crop(image: jax.Array, key: jax.Array, size: int) -> jax.Array:
    """A ``size`` x ``size`` window of one HWC image at a uniformly random position."""
    height, width, channels = image.shape
    top = jax.random.randint(key, (), 0, height - size + 1)
    left = jax.random.randint(jax.random.fold_in(key, 1), (), 0, width - size + 1)
    return jax.lax.dynamic_slice(image, (top, left, 0), (size, size, channels))


def centre_crop(images: jax.Array, size: int) -> jax.Array:
    """The central ``size`` x ``size`` of NHWC images."""
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return images[:, top : top + size, left : left + size]


def ten_crops(images: jax.Array, size: int) -> jax.Array:
    """The paper's test crops of NHWC images: the four corners and the centre, and their mirrors.
    Returns [10, N, size, size, C]."""
    corners = [images[:, :size, :size], images[:, :size, -size:], images[:, -size:, :size], images[:, -size:, -size:]]
    five = jnp.stack([*corners, centre_crop(images, size)])
    return jnp.concatenate([five, five[:, :, :, ::-1]])


def random_crop_with_padding(image: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Pads one HWC image by ``padding`` pixels (reflect) and crops back to its size at random."""
    if padding == 0:
        return image
    height, width, channels = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
    top, left = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, channels))


def random_flip(image: jax.Array, key: jax.Array) -> jax.Array:
    """Mirrors one HWC image left-right with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def augment_one(image: jax.Array, key: jax.Array, crop_padding: int, crop_size: int | None, flip: bool):
    """Random crop (``crop_size`` window, or padded by ``crop_padding`` and cropped back) and flip."""
    crop_key, flip_key = jax.random.split(key)
    if crop_size is not None:
        image = random_crop(image, crop_key, crop_size)
    else:
        image = random_crop_with_padding(image, crop_key, crop_padding)
    return random_flip(image, flip_key) if flip else image


def augment_batch(images: jax.Array, keys: jax.Array, crop_padding: int, flip: bool, crop_size: int | None = None):
    """Augments a batch; ``keys`` holds one PRNG key per image."""
    return jax.vmap(augment_one, in_axes=(0, 0, None, None, None))(images, keys, crop_padding, crop_size, flip)


def normalize(images: jax.Array, stats: str) -> jax.Array:
    """uint8 images -> float32, standardised per channel with the named statistics."""
    mean, std = (jnp.asarray(v, jnp.float32) for v in CHANNEL_STATS[stats])
    return (images.astype(jnp.float32) - mean) / std


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the train step does to a uint8 batch before the model sees it: random crops (``crop_size``
    windows, or padded by ``crop_padding`` and cropped back) and mirrors, the paper's colour noise
    (``pca_noise``, its coefficients' std), a research augmentation (a name in ``CUSTOM``), then
    normalisation (``normalization``: a name in ``CHANNEL_STATS``). Constants of the compiled step."""

    crop_padding: int = 0
    crop_size: int | None = None
    flip: bool = False
    pca_noise: float = 0.0
    custom: str = ""
    normalization: str = "cifar10"

    @classmethod
    def from_config(cls, config) -> "Augmentation":
        aug = config.augment
        return cls(aug.crop_padding, aug.crop_size, aug.flip, aug.pca_noise, aug.get("custom", ""),
                   config.dataset.normalization)  # fmt: skip

    def __call__(self, images: jax.Array, keys: jax.Array) -> jax.Array:
        """Normalised float32 inputs from uint8 ``images``, with one key per image."""
        images = augment_batch(images, keys, self.crop_padding, self.flip, self.crop_size)
        pixels = images.astype(jnp.float32)
        if self.pca_noise > 0:
            noise_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 2)
            pixels = pixels + jax.vmap(pca_noise, (0, None))(noise_keys, self.pca_noise)[:, None, None, :]
        if self.custom:
            pixels = CUSTOM[self.custom](pixels, jax.vmap(jax.random.fold_in, (0, None))(keys, 3))
        return normalize(pixels, self.normalization)

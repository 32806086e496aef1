"""Pure, jit-able image augmentation and normalisation on uint8 NHWC batches.

Every random choice is drawn from a key per example, so a batch is augmented identically however
it is split across devices.
"""

import jax
import jax.numpy as jnp

# Per-channel statistics of the CIFAR-10 training images and of ImageNet, on the 0..255 scale.
CHANNEL_STATS = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "imagenet": ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),
}


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


def augment_one(image: jax.Array, key: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
    crop_key, flip_key = jax.random.split(key)
    image = random_crop_with_padding(image, crop_key, crop_padding)
    return random_flip(image, flip_key) if flip else image


def augment_batch(images: jax.Array, keys: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
    """Augments a batch; ``keys`` holds one PRNG key per image."""
    return jax.vmap(augment_one, in_axes=(0, 0, None, None))(images, keys, crop_padding, flip)


def normalize(images: jax.Array, stats: str) -> jax.Array:
    """uint8 images -> float32, standardised per channel with the named statistics."""
    mean, std = (jnp.asarray(v, jnp.float32) for v in CHANNEL_STATS[stats])
    return (images.astype(jnp.float32) - mean) / std

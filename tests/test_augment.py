"""The paper's augmentation and test crops: random crops stay inside and reach every position; the
PCA colour noise has the covariance the paper states; ten-crop scores are the mean of the crops'."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import augment, models
from alexnet_jax.evaluation import View


def test_random_crops_stay_inside_and_reach_every_position():
    image = jnp.arange(6 * 7, dtype=jnp.int32).reshape(6, 7, 1)  # each pixel names its position
    keys = jax.random.split(jax.random.key(0), 2000)
    crops = jax.vmap(augment.random_crop, (None, 0, None))(image, keys, 4)
    corners = np.asarray(crops[:, 0, 0, 0])
    tops, lefts = corners // 7, corners % 7
    assert set(tops) == {0, 1, 2} and set(lefts) == {0, 1, 2, 3}  # every window that fits, no other
    np.testing.assert_array_equal(crops[:, 3, 3, 0], corners + 3 * 7 + 3)  # a window, not a resample


def test_pca_noise_has_the_papers_covariance():
    """alpha ~ N(0, s^2 I) gives noise = 255 P diag(lambda) alpha, so Cov = (255 s)^2 P diag(lambda^2) P^T."""
    std, n = 0.1, 200_000
    noise = np.asarray(jax.vmap(augment.pca_noise, (0, None))(jax.random.split(jax.random.key(1), n), std), np.float64)
    eigenvalues, eigenvectors = (np.asarray(v, np.float64) for v in augment.IMAGENET_PCA)
    want = (255 * std) ** 2 * eigenvectors @ np.diag(eigenvalues**2) @ eigenvectors.T
    got = np.cov(noise, rowvar=False)
    # Standard error of a sample covariance of Gaussian data: sqrt((S_ii S_jj + S_ij^2) / n). 5 of them.
    stderr = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / n)
    assert np.all(np.abs(got - want) < 5 * stderr), (got, want)
    assert np.all(np.abs(noise.mean(0)) < 5 * np.sqrt(np.diag(want) / n))
    assert want[0, 0] > 10  # several grey levels: the noise is not negligible on the 0..255 scale


def numpy_ten_crops(images, size):
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    windows = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
    five = [images[:, y : y + size, x : x + size] for y, x in windows]
    return five + [crop[:, :, ::-1] for crop in five]


def test_ten_crop_and_mirror_scores_are_the_mean_softmax_of_the_views_one_by_one():
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    with jax.enable_x64(True):  # float64, so agreement means ~1e-15 and a tight bound is principled
        model = models.AlexNetCIFAR(num_classes=5, width=0.125, fc_features=64, dropout_rate=0.0, dtype=jnp.float64)
        params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
        params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
        view = View(crop_size=16, crops=10, normalization="imagenet")
        scores = jax.jit(lambda variables, x, view: view.log_probabilities(model.apply, variables, x), static_argnums=2)
        got = np.asarray(scores({"params": params}, jnp.asarray(images), view))

        apply = jax.jit(model.apply)

        def probabilities(crop):
            logits = apply({"params": params}, augment.normalize(jnp.asarray(crop), "imagenet"))
            return np.asarray(jax.nn.softmax(logits, axis=-1))

        crops = numpy_ten_crops(images, 16)
        per_crop = [probabilities(crop) for crop in crops]
        centre_view = View(crop_size=16, normalization="imagenet")
        centre = np.asarray(scores({"params": params}, jnp.asarray(images), centre_view))
        mirror_view = dataclasses.replace(centre_view, flip=True)
        mirrored = np.asarray(scores({"params": params}, jnp.asarray(images), mirror_view))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.log(np.mean(per_crop, axis=0)), rtol=1e-12, atol=1e-12)
    assert not np.allclose(
        np.log(per_crop[0]), np.log(per_crop[4]), rtol=1e-3
    )  # the crops differ: the mean means something
    np.testing.assert_allclose(centre, np.log(per_crop[4]), rtol=1e-12, atol=1e-12)  # one view: the centre crop
    assert not np.allclose(np.log(per_crop[4]), np.log(per_crop[9]), rtol=1e-3)  # the mirror image scores otherwise
    want = np.log((per_crop[4] + per_crop[9]) / 2)  # eval_flip: the centre crop's and its mirror's mean softmax
    np.testing.assert_allclose(mirrored, want, rtol=1e-12, atol=1e-12)


def test_ten_crops_are_scored_in_the_memory_of_one_crop_batch():
    """The ten views go through the model one after another: the compiled evaluation's scratch
    memory is that of one batch of crops plus the crops themselves, not ten batches' activations
    (the paper config's 1,280 crops at once took 23 GB on a CPU)."""
    model = models.AlexNetCIFAR(num_classes=5, width=0.5, fc_features=64, dropout_rate=0.0)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    images = jnp.zeros((64, 36, 36, 3), jnp.uint8)

    def scratch_bytes(eval_crops: int) -> int:
        view = View(crop_size=32, crops=eval_crops, normalization="imagenet")
        scores = jax.jit(lambda p, x: view.log_probabilities(model.apply, {"params": p}, x))
        return scores.lower(params, images).compile().memory_analysis().temp_size_in_bytes

    one, ten = scratch_bytes(1), scratch_bytes(10)
    crops = 10 * images.size  # values in the ten crops of the batch, held whole (uint8, float32 at most)
    assert ten <= one + 4 * crops, (one, ten)  # ten batches' activations at once: about 10x one

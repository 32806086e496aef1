"""Decoding stored images on the host, and the views the host makes of them before batching.

JPEGs are decoded with libjpeg-turbo (simplejpeg), at a reduced DCT scale (1/2, 1/4, 1/8) where
the view needs fewer pixels than the photo has; other formats with PIL. Two views make
variable-sized images batchable (torchvision's ImageNet recipe, on full-size images):

* ``RandomResizedCrop``: training; a random box of the image scaled to ``size`` x ``size``;
* ``CentreSquare``: evaluation; shorter side scaled to ``size``, the central square kept.

With no view, images must be stored at one size (the paper's 256x256, CIFAR's 32x32) and are
cropped on the devices. No JAX here: Grain worker processes import this module.
"""

import dataclasses
import io
import math
import pathlib

import numpy as np
import simplejpeg
from PIL import Image

HOST_AUGMENT_STREAM = 2  # random stream of the host's views, apart from the data order's (1)


def _is_jpeg(encoded: bytes) -> bool:
    return encoded[:2] == b"\xff\xd8" and simplejpeg.is_jpeg(encoded)


def decode_image(encoded, min_width: int = 0, min_height: int = 0) -> np.ndarray:
    """Encoded bytes (JPEG, PNG, ...) -> uint8 HWC RGB; an array passes through. A JPEG is decoded
    at the smallest scale of 1, 1/2, 1/4 or 1/8 that keeps at least ``min_width`` x ``min_height``
    pixels (0: full size)."""
    if isinstance(encoded, np.ndarray):
        return encoded
    if _is_jpeg(encoded):
        if min_width or min_height:
            height, width, _, _ = simplejpeg.decode_jpeg_header(encoded)
            min_width, min_height = _power_of_two_scale(width, height, min_width, min_height)
        return simplejpeg.decode_jpeg(encoded, colorspace="RGB", min_width=min_width, min_height=min_height)
    with Image.open(io.BytesIO(encoded)) as image:
        return np.asarray(image.convert("RGB"))


def decode_into(encoded, out: np.ndarray) -> tuple[int, ...]:
    """Decodes an image into ``out`` (uint8 HWC) if it has that shape, a JPEG straight into it (no
    copy); returns the image's shape, which the caller checks."""
    if not isinstance(encoded, np.ndarray) and _is_jpeg(encoded):
        height, width, _, _ = simplejpeg.decode_jpeg_header(encoded)
        if (height, width, 3) == out.shape:
            simplejpeg.decode_jpeg(encoded, colorspace="RGB", buffer=out)
            return out.shape
    image = decode_image(encoded)
    if image.shape == out.shape:
        out[...] = image
    return image.shape


def _power_of_two_scale(width: int, height: int, min_width: int, min_height: int) -> tuple[int, int]:
    """The ``min_width``, ``min_height`` to ask libjpeg-turbo for so that it scales by 1/2, 1/4 or 1/8
    (fast inverse DCTs; its other factors, such as 7/8, decode slower than full size), or (0, 0): full size."""
    factor = 1
    while factor < 8 and width // (2 * factor) >= min_width and height // (2 * factor) >= min_height:
        factor *= 2
    return (0, 0) if factor == 1 else (-(-width // factor), -(-height // factor))


def image_dimensions(encoded) -> tuple[int, int]:
    """(width, height) of an encoded image, from its header."""
    if isinstance(encoded, np.ndarray):
        return encoded.shape[1], encoded.shape[0]
    if _is_jpeg(encoded):
        height, width, _, _ = simplejpeg.decode_jpeg_header(encoded)
        return width, height
    with Image.open(io.BytesIO(encoded)) as image:
        return image.size


def centre_square(image: Image.Image, size: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """Scales the shorter side to ``size`` (antialiased) and keeps the central ``size`` x ``size``."""
    width, height = image.size
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (width - size) // 2, (height - size) // 2
    return image.resize((width, height), resample).crop((left, top, left + size, top + size))


# JPEG quality of the stored JPEGs that are encoded anew (the paper's 256x256; non-RGB photos at full size).
JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How ``--mode=prepare`` stores an image: its shorter side scaled to ``size`` (bicubic,
    antialiased) and the centre square kept, or at its own size (``size`` None); as ``format``
    (PNG: lossless; JPEG: at ``quality``, but an RGB JPEG at its own size is kept byte for byte).

    The scaled image is the paper's definition applied to the full-size photo. A JPEG whose shorter
    side is at least twice ``size`` is decoded at a reduced scale (libjpeg's 1/2, 1/4 or 1/8, through
    PIL's ``draft``) that keeps it at least twice ``size``: 2.2x faster for those photos, and closer
    to the full-size decode than JPEG at quality 90 is (BENCHMARKS.md, "What prepare stores").
    Decoding down to ``size`` itself would change 5% of ImageNet's photos by as much as q90 does.
    """

    size: int | None = None
    format: str = "png"
    quality: int = JPEG_QUALITY

    def encode(self, source: pathlib.Path | bytes | np.ndarray) -> bytes:
        """One image, from its file, its encoded bytes or its pixels (uint8, height x width x 3), in
        this encoding."""
        image = Image.fromarray(source) if isinstance(source, np.ndarray) else self._decode(source)
        if isinstance(image, bytes):  # an RGB JPEG, kept as it is
            return image
        buffer = io.BytesIO()
        if self.size:
            image = centre_square(image, self.size)
        image.save(buffer, format=self.format.upper(), **({"quality": self.quality} if self.format == "jpeg" else {}))
        return buffer.getvalue()

    def _decode(self, source: pathlib.Path | bytes) -> Image.Image | bytes:
        """The RGB image of an encoded one, or its bytes where they are stored as they are."""
        with Image.open(source if isinstance(source, pathlib.Path) else io.BytesIO(source)) as image:
            if self.size:
                image.draft("RGB", (2 * self.size, 2 * self.size))  # JPEG: no smaller than twice the size
            image.load()  # a broken file fails here, whatever the format
            if self.format == "jpeg" and not self.size and image.format == "JPEG" and image.mode == "RGB":
                return source.read_bytes() if isinstance(source, pathlib.Path) else source
            return image.convert("RGB")


def encode_each(encoding: Encoding, sources: list) -> list[tuple[bytes | None, str | None]]:
    """(encoded image, None), or (None, why not) for an image that cannot be read, per source (a
    file or encoded bytes): what --mode=prepare's worker processes run."""
    results = []
    for source in sources:
        try:
            results.append((encoding.encode(source), None))
        except Exception as e:  # PIL raises many types for broken files
            results.append((None, f"{type(e).__name__}: {e}"))
    return results


def example_rng(seed: int, step: int, position: int) -> np.random.Generator:
    """The host's random stream for the example at ``position`` of global batch ``step``: the same
    whichever process or worker reads it."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, HOST_AUGMENT_STREAM, step, position])))


@dataclasses.dataclass(frozen=True)
class CentreSquare:
    """Evaluation view: shorter side scaled to ``size`` (bilinear, as torchvision's ``Resize``), the
    central ``size`` x ``size`` kept."""

    size: int
    random: bool = dataclasses.field(default=False, init=False)

    def __call__(self, encoded, rng=None) -> np.ndarray:
        width, height = image_dimensions(encoded)
        scale = self.size / min(width, height)
        pixels = decode_image(encoded, math.ceil(width * scale), math.ceil(height * scale))
        return np.asarray(centre_square(Image.fromarray(pixels), self.size, Image.Resampling.BILINEAR))


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
    """Training view of torchvision's recipe: a box covering a uniform ``area`` fraction of the
    image, with a log-uniform ``aspect`` ratio (width / height), at a uniform position, scaled to
    ``size`` x ``size`` (bilinear, antialiased). Ten draws that do not fit fall back to the whole
    image cut to the nearest allowed aspect ratio, centred."""

    size: int
    area: tuple[float, float] = (0.08, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    random: bool = dataclasses.field(default=True, init=False)

    def box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(left, top, box width, box height) in the image's pixels."""
        log_aspect = (math.log(self.aspect[0]), math.log(self.aspect[1]))
        for _ in range(10):
            area = width * height * rng.uniform(*self.area)
            ratio = math.exp(rng.uniform(*log_aspect))
            box_width, box_height = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < box_width <= width and 0 < box_height <= height:
                left = int(rng.integers(0, width - box_width + 1))
                return left, int(rng.integers(0, height - box_height + 1)), box_width, box_height
        ratio = min(max(width / height, self.aspect[0]), self.aspect[1])
        box_width, box_height = min(width, round(height * ratio)), min(height, round(width / ratio))
        return (width - box_width) // 2, (height - box_height) // 2, box_width, box_height

    def __call__(self, encoded, rng: np.random.Generator) -> np.ndarray:
        width, height = image_dimensions(encoded)
        left, top, box_width, box_height = self.box(width, height, rng)
        needed = (math.ceil(width * self.size / box_width), math.ceil(height * self.size / box_height))
        pixels = decode_image(encoded, *needed)
        scale_x, scale_y = pixels.shape[1] / width, pixels.shape[0] / height
        box = (left * scale_x, top * scale_y, (left + box_width) * scale_x, (top + box_height) * scale_y)
        resized = Image.fromarray(pixels).resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(resized)


@dataclasses.dataclass(frozen=True)
class EvaluationInput:
    """What evaluation feeds the model for a photo, as one function: ``--mode=prepare``'s
    ``encoding`` of it, then the host's evaluation ``view`` of the stored image, or plain decoding
    (``--mode=predict`` runs a photo through this, so it sees what a validation image would)."""

    encoding: Encoding
    view: CentreSquare | None = None

    @property
    def size(self) -> int:
        """The side of the images it makes."""
        return self.view.size if self.view is not None else self.encoding.size

    def __call__(self, encoded: bytes) -> np.ndarray:
        stored = self.encoding.encode(encoded)
        return self.view(stored) if self.view is not None else decode_image(stored)

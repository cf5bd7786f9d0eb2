"""PIL images of any mode -> float tensors in [0, 1], the one conversion every model input goes through."""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from spae.errors import InvalidConfigError, InvalidInputError

# 16/32-bit integer modes carry values beyond 0..255; they are rescaled by their own range.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageDecodeError(InvalidInputError):
    """An image that cannot be used: empty, truncated, not an image, or too large to decode safely."""


def _too_large(width: int, height: int) -> bool:
    # PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS, about 89 Mpx; PIL refuses twice that on
    # open): decoding such a header would allocate gigabytes before anything could fail.
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and width * height > limit


def open_image(source: Any, where: str = "image") -> Image.Image:
    """A path, bytes or a datasets {"bytes", "path"} dict -> a fully decoded PIL image.

    Damaged, empty, non-image and oversized files raise ImageDecodeError naming the file and the fix,
    instead of PIL's errors from deep inside the decoder."""
    if isinstance(source, dict):
        where = source.get("path") or where
        source = source.get("bytes") if source.get("bytes") is not None else source.get("path")
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        if os.path.getsize(source) == 0:
            raise ImageDecodeError(f"{where} is an empty (zero-byte) file; delete it or replace it with the image")
        handle: Any = source
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageDecodeError(f"{where} is empty (zero bytes); delete it or replace it with the image")
        handle = io.BytesIO(source)
    else:
        raise ImageDecodeError(f"{where}: expected a path, bytes or an {{'bytes', 'path'}} dict, got "
                               f"{type(source).__name__}")
    try:
        image = Image.open(handle)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{where} is too large to decode safely ({err}); downscale it (e.g. to a few "
                               "thousand pixels per side) or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageDecodeError(f"{where} is not a readable image ({err}); the file is damaged, truncated or "
                               "not an image: replace or delete it") from None
    return _decoded(image, where)


def _decoded(image: Image.Image, where: str) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise ImageDecodeError(f"{where} has zero size ({image.width}x{image.height}); delete or replace it")
    if _too_large(image.width, image.height):
        raise ImageDecodeError(f"{where} is {image.width}x{image.height} pixels, above the safe decoding limit "
                               f"of {Image.MAX_IMAGE_PIXELS} pixels; downscale it or remove it")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{where} could not be decoded ({err}); the file is damaged or truncated: "
                               "replace or delete it") from None
    return image


def unreadable_reason(source: Any) -> str | None:
    """None if the image decodes, else why not (used to skip damaged files and count them)."""
    try:
        open_image(source)
    except ImageDecodeError as err:
        return str(err)
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels are composited on white (what a viewer shows)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    image = _decoded(image, getattr(image, "filename", "") or "image")
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES:
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions


def to_tensor(images: list[Image.Image], size: int, channels: int = 3) -> torch.Tensor:
    """Images -> FloatTensor[B, channels, size, size] in [0, 1] (bicubic resize with antialiasing).

    channels=1 gives luminance, channels=3 RGB. Aspect ratio is not kept: inputs are squashed to a
    square, as the small embedded datasets are square anyway; crop beforehand for natural photos.
    """
    if channels not in (1, 3):
        raise InvalidConfigError(f"channels must be 1 or 3, got {channels}")
    if size <= 0:
        raise InvalidConfigError(f"image size must be a positive number of pixels, got {size}")
    if len(images) == 0:
        return torch.empty(0, channels, size, size)
    batch = []
    for index, image in enumerate(images):
        try:
            rgb = to_rgb(image)
        except (TypeError, ImageDecodeError) as err:
            raise ImageDecodeError(f"image {index} of the batch: {err}") from None
        if rgb.size != (size, size):
            # PIL's bicubic resize filters over the whole footprint, i.e. antialiases when shrinking.
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        if channels == 1:
            rgb = rgb.convert("L")
        array = np.asarray(rgb, dtype=np.uint8).reshape(size, size, channels)
        batch.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    return torch.stack(batch).float().div_(255.0)

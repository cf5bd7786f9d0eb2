"""PIL images of any mode -> float tensors in [0, 1], the one conversion every model input goes through."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# 16/32-bit integer modes carry values beyond 0..255; they are rescaled by their own range.
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels are composited on white (what a viewer shows)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has zero size ({image.width}x{image.height}); it cannot be used")
    try:
        image.load()
    except (OSError, SyntaxError) as err:
        raise ValueError(f"image could not be decoded ({err}); the file is damaged or truncated") from err
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
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if len(images) == 0:
        return torch.empty(0, channels, size, size)
    batch = []
    for index, image in enumerate(images):
        try:
            rgb = to_rgb(image)
        except (TypeError, ValueError) as err:
            raise ValueError(f"image {index} of the batch: {err}") from err
        if rgb.size != (size, size):
            # PIL's bicubic resize filters over the whole footprint, i.e. antialiases when shrinking.
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        if channels == 1:
            rgb = rgb.convert("L")
        array = np.asarray(rgb, dtype=np.uint8).reshape(size, size, channels)
        batch.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    return torch.stack(batch).float().div_(255.0)

"""to_tensor: any PIL mode -> [B, C, size, size] floats in [0, 1], clear errors on bad images."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from spae.data.images import to_rgb, to_tensor


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "RGB", "YCbCr"])
def test_every_mode_becomes_rgb_in_unit_range(mode):
    image = Image.new(mode, (7, 5))
    out = to_tensor([image], size=16)
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_sixteen_bit_images_use_their_full_range():
    ramp = np.linspace(0, 60000, 16, dtype=np.uint16).reshape(4, 4)
    out = to_tensor([_i16(ramp)], size=4)
    assert out.min() == 0.0 and out.max() == 1.0  # not clipped to 255 nor all white


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert torch.allclose(to_tensor([image], size=2), torch.ones(1, 3, 2, 2))
    palette = Image.new("P", (2, 2), 0)
    palette.info["transparency"] = 0
    assert torch.allclose(to_tensor([palette], size=2), torch.ones(1, 3, 2, 2))


def test_values_and_channels():
    gray = Image.new("L", (3, 3), 51)
    rgb = to_tensor([gray], size=3)
    assert torch.allclose(rgb, torch.full((1, 3, 3, 3), 0.2))
    assert to_tensor([Image.new("RGB", (3, 3), (255, 0, 0))], size=3, channels=1).shape == (1, 1, 3, 3)


def test_one_pixel_image_is_upsampled():
    out = to_tensor([Image.new("RGB", (1, 1), (0, 255, 0))], size=8)
    assert out.shape == (1, 3, 8, 8)
    assert torch.allclose(out[0, 1], torch.ones(8, 8))


def test_batch_keeps_order():
    images = [Image.new("L", (4, 4), v) for v in (0, 255, 128)]
    out = to_tensor(images, size=4)
    assert out[:, 0, 0, 0].tolist() == pytest.approx([0.0, 1.0, 128 / 255])


def test_zero_size_image_is_a_clear_error():
    with pytest.raises(ValueError, match="image 1 of the batch: image has zero size"):
        to_tensor([Image.new("RGB", (2, 2)), Image.new("RGB", (0, 3))], size=4)


def test_truncated_file_is_a_clear_error():
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    broken = Image.open(io.BytesIO(buffer.getvalue()[: len(buffer.getvalue()) // 2]))  # header intact
    with pytest.raises(ValueError, match="could not be decoded"):
        to_tensor([broken], size=8)


def test_not_an_image_and_bad_arguments():
    with pytest.raises(ValueError, match="expected a PIL image"):
        to_tensor([np.zeros((2, 2))], size=4)
    with pytest.raises(ValueError, match="channels"):
        to_tensor([Image.new("RGB", (2, 2))], size=4, channels=2)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def _i16(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)  # uint16 -> mode I;16
    assert image.mode == "I;16"
    return image

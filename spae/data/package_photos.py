"""Natural photos that ship inside installed packages (scikit-image's data module), for reconstruction
checks outside the training domain. Far too few to train on; enough to see how a tokenizer trained on
28 px clothes and shapes copes with real photographs.

    photos = package_photos()              # [(name, PIL.Image RGB, centre-cropped square)]
    photos = package_photos(["astronaut", "chelsea"])

Only images bundled in the scikit-image wheel are listed (its other images are downloaded on first use,
which offline mode forbids).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

# name -> scikit-image loader; all bundled in the wheel (no download), all photographs
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut", "coffee": "coffee", "chelsea": "chelsea", "rocket": "rocket",
    "camera": "camera", "coins": "coins", "moon": "moon", "hubble_deep_field": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry", "retina": "retina", "motorcycle": "stereo_motorcycle",
}


def centre_square(image: Image.Image) -> Image.Image:
    """The largest centred square (the tokenizers take square images; squashing would distort photos)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def _load(loader: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("the natural photos come from scikit-image: `pip install scikit-image==0.26.0`") from err
    array = getattr(skimage.data, loader)()
    if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
        array = array[0]
    return np.asarray(array)


def package_photos(names: Sequence[str] | None = None) -> list[tuple[str, Image.Image]]:
    """[(name, RGB PIL image cropped to a centred square)] for the named photos (default: all)."""
    names = list(SKIMAGE_PHOTOS) if names is None else list(names)
    unknown = [n for n in names if n not in SKIMAGE_PHOTOS]
    if unknown:
        raise ValueError(f"unknown package photo(s) {unknown}; valid: {', '.join(SKIMAGE_PHOTOS)}")
    out = []
    for name in names:
        array = _load(SKIMAGE_PHOTOS[name])
        if array.dtype != np.uint8:  # e.g. float images in [0, 1]
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
        out.append((name, centre_square(Image.fromarray(array).convert("RGB"))))
    return out

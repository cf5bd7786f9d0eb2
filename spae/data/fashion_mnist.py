"""Fashion-MNIST from the Debian package dataset-fashion-mnist (the original idx .gz files)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from spae.data.cache import cached_dataset, file_fingerprint
from spae.data.registry import ADAPTERS
from spae.data.schema import CAPTION_TEMPLATED, from_columns, with_article

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
# The dataset's own class order; "T-shirt/top" shortened to one real word that an LLM prompt can use.
CLASS_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# Picked per image by its index, so captions vary but are reproducible.
CAPTION_TEMPLATES = ["a photo of {}", "a black and white photo of {}", "a small grayscale picture of {}",
                     "a product photo of {}", "{} on a black background"]
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
VERSION = 3  # bump when the rows this adapter produces change (3: reference_answers column)


def read_idx(path: Path, magic: int, offset: int) -> np.ndarray:
    """Raw uint8 payload of an idx file after its header (images offset 16, labels offset 8)."""
    with gzip.open(path, "rb") as handle:
        blob = handle.read()
    found = int.from_bytes(blob[:4], "big")
    if found != magic:
        raise ValueError(f"{path} is not an idx file of the expected kind (magic {found}, expected {magic})")
    return np.frombuffer(blob, dtype=np.uint8, offset=offset)


def pgm_bytes(array: np.ndarray) -> dict:
    """A 2-D uint8 array as an encoded image for datasets.Image: binary PGM (netpbm), which PIL reads.
    Why not PNG: zlib-encoding 60k images was most of the build time; PGM is a 15-byte header + pixels."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape
    return {"bytes": b"P5\n%d %d\n255\n" % (width, height) + array.tobytes(), "path": None}


def templated_captions(names: list[str]) -> list[str]:
    return [CAPTION_TEMPLATES[i % len(CAPTION_TEMPLATES)].format(with_article(n)) for i, n in enumerate(names)]


def source_files(spec: dict, split: str) -> tuple[Path, Path]:
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST has splits {sorted(FILES)}, not {split!r}")
    folder = Path(spec.get("path") or DEFAULT_PATH)
    paths = tuple(folder / name for name in FILES[split])
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        hint = ("install the Debian package: `apt-get install -y dataset-fashion-mnist`"
                if str(folder) == DEFAULT_PATH else f"point the dataset's path at a folder holding {FILES[split]}")
        raise FileNotFoundError(f"Fashion-MNIST files not found: {missing}; {hint}")
    return paths  # type: ignore[return-value]


@ADAPTERS.register("fashion_mnist")
def load_fashion_mnist(spec: dict, split: str, offline: bool = True):
    image_path, label_path = source_files(spec, split)

    def build():
        labels = read_idx(label_path, LABEL_MAGIC, 8)
        pixels = read_idx(image_path, IMAGE_MAGIC, 16).reshape(-1, 28, 28)
        if len(pixels) != len(labels):
            raise ValueError(f"{image_path} has {len(pixels)} images but {label_path} {len(labels)} labels")
        names = [CLASS_NAMES[i] for i in labels]
        return from_columns([pgm_bytes(a) for a in pixels], labels=labels, label_names=CLASS_NAMES,
                            captions=templated_captions(names), caption_source=CAPTION_TEMPLATED)

    fingerprint = {"adapter": "fashion_mnist", "version": VERSION,
                   "files": file_fingerprint([image_path, label_path])}
    return cached_dataset(spec.get("cache_dir"), "fashion_mnist", split, fingerprint, build)

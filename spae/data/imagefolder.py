"""A local folder of class sub-folders (optionally under train/ and test/), via datasets' imagefolder."""
from __future__ import annotations

import os
from pathlib import Path

import datasets

from spae.data.hf import conform, hf_cache_dir, pick_split
from spae.data.registry import ADAPTERS


@ADAPTERS.register("imagefolder")
def load_imagefolder(spec: dict, split: str, offline: bool = True) -> datasets.Dataset:
    raw_path = spec.get("path")
    if not raw_path or raw_path == "???":
        raise ValueError("the imagefolder dataset needs a folder: set its path, e.g. "
                         "data=imagefolder data.classification.path=/path/to/folder")
    folder = Path(os.path.expanduser(str(raw_path)))
    if not folder.is_dir():
        raise FileNotFoundError(f"imagefolder path {folder} is not a folder of class sub-folders")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=hf_cache_dir(spec))
    raw = pick_split(loaded, split, str(folder))
    if "label" not in raw.column_names:
        raise ValueError(f"{folder} gave no labels: put the images in one sub-folder per class "
                         f"(e.g. {folder}/cat/1.jpg, {folder}/dog/2.jpg); columns found: {raw.column_names}")
    # Folder names are class names: "golden_retriever" and "golden-retriever" both read "golden retriever".
    conform_spec = {**spec, "image_column": "image", "label_column": "label", "label_separators": "_-"}
    return conform(raw, conform_spec, where=f"imagefolder {folder} (split {split!r})")

"""A local folder of class sub-folders (optionally under train/ and test/), via datasets' imagefolder."""
from __future__ import annotations

import os
from pathlib import Path

import datasets

from spae.data.hf import conform, hf_cache_dir, pick_split
from spae.data.registry import ADAPTERS
from spae.errors import InvalidConfigError, InvalidInputError, MissingFileError


@ADAPTERS.register("imagefolder")
def load_imagefolder(spec: dict, split: str, offline: bool = True) -> datasets.Dataset:
    raw = load_imagefolder_raw(spec, split)
    folder = Path(os.path.expanduser(str(spec["path"])))
    # Folder names are class names: "golden_retriever" and "golden-retriever" both read "golden retriever".
    conform_spec = {**spec, "image_column": "image", "label_column": "label", "label_separators": "_-"}
    return conform(raw, conform_spec, where=f"imagefolder {folder} (split {split!r})")


def load_imagefolder_raw(spec: dict, split: str) -> datasets.Dataset:
    """The folder's split as datasets reads it: `image` and a ClassLabel `label` of the folder names."""
    raw_path = spec.get("path")
    if not raw_path or raw_path == "???":
        raise InvalidConfigError("the imagefolder dataset needs a folder: set its path, e.g. "
                         "data=imagefolder data.classification.path=/path/to/folder")
    folder = Path(os.path.expanduser(str(raw_path)))
    if not folder.is_dir():
        raise MissingFileError(f"imagefolder path {folder} is not a folder; set data.classification.path to "
                               "a folder of class sub-folders (e.g. cat/1.jpg, dog/2.jpg)")
    if not any(p.is_file() for p in folder.rglob("*")):
        raise InvalidInputError(f"imagefolder {folder} holds no files: put the images in one sub-folder per "
                                f"class (e.g. {folder}/cat/1.jpg)")
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=hf_cache_dir(spec))
    except (FileNotFoundError, datasets.exceptions.DataFilesNotFoundError) as err:
        raise InvalidInputError(f"imagefolder {folder} holds no image files datasets can read ({err}); put "
                                f"the images (.jpg, .png, ...) in one sub-folder per class") from None
    raw = pick_split(loaded, split, str(folder))
    if "label" not in raw.column_names:
        raise InvalidInputError(f"{folder} gave no labels: put the images in one sub-folder per class "
                         f"(e.g. {folder}/cat/1.jpg, {folder}/dog/2.jpg); columns found: {raw.column_names}")
    return raw

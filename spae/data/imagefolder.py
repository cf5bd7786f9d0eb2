"""A local folder of images, read as it comes: classes and splits are decided here, never from file names.

Layouts (the first level of the folder decides; the choice is logged and kept in the dataset's description):
- split folders: every first-level folder is a split name (spec `split_folders`, by default train/test/
  validation/val); each split is then read as below. Only then: a class called "train" beside "test tube"
  is a class, not a split.
- class folders: every first-level folder is one class, whatever its name ("test tube", "Validation",
  "café au lait"); its images at any depth below belong to it. A folder without splits serves both splits.
- flat: images directly in the folder, no sub-folders with images: one unlabelled set (reconstruction needs
  no labels; the few-shot bench says it needs class folders).
Symlinked folders and files are followed; a folder reached twice (a symlink loop, or a link to a folder
already read) is read once. Everything skipped (hidden files, non-images, broken links, loops, loose files
beside class folders, empty class folders) is counted with its reason and logged. The file lists go to
`datasets` explicitly (Image and ClassLabel features), so nothing is inferred from folder or file names.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import datasets

from spae.data.hf import conform, hf_cache_dir
from spae.data.registry import ADAPTERS
from spae.errors import InvalidConfigError, InvalidInputError, MissingFileError

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "test", "validation", "val")  # default `split_folders`
SHOWN = 5  # skipped paths named per reason


def image_extensions() -> frozenset[str]:
    """The file endings datasets' own imagefolder reads (PIL's formats)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(e.lower() for e in ImageFolder.EXTENSIONS)


@dataclass
class FolderScan:
    """What one folder holds: images per class ("" = unlabelled), and what was skipped and why."""
    root: Path
    classes: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> paths (relative to root)

    def skip(self, reason: str, path: Path) -> None:
        self.skipped.setdefault(reason, []).append(_relative(path, self.root))

    @property
    def labelled(self) -> bool:
        return "" not in self.classes

    def images(self) -> int:
        return sum(len(v) for v in self.classes.values())

    def skipped_summary(self) -> str:
        if not self.skipped:
            return "nothing skipped"
        parts = []
        for reason, paths in sorted(self.skipped.items()):
            more = f", ... (+{len(paths) - SHOWN})" if len(paths) > SHOWN else ""
            parts.append(f"{len(paths)} {reason} ({', '.join(paths[:SHOWN])}{more})")
        return "skipped: " + "; ".join(parts)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------ scanning

def _entries(folder: Path, scan: FolderScan, extensions: frozenset[str]) -> tuple[list, list]:
    """(sub-folders, image files) directly in `folder`, links followed; the rest recorded as skipped."""
    folders, files = [], []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            scan.skip("hidden", entry)
        elif entry.is_dir():
            folders.append(entry)
        elif entry.is_file():
            if entry.suffix.lower() in extensions:
                files.append(entry)
            else:
                scan.skip("not an image file", entry)
        elif entry.is_symlink():
            scan.skip("broken symlink", entry)
        else:
            scan.skip("not a regular file", entry)
    return folders, files


def _visit(folder: Path, scan: FolderScan, seen: set) -> bool:
    """False (recorded) when `folder` was already read: a symlink loop or a second link to it."""
    real = folder.resolve()
    if real in seen:
        scan.skip("symlink loop or folder already read", folder)
        return False
    seen.add(real)
    return True


def _images_below(folder: Path, scan: FolderScan, seen: set, extensions: frozenset[str]) -> list[Path]:
    """Every image file at any depth below `folder` (links followed, each real folder once), sorted."""
    found: list[Path] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        subfolders, files = _entries(current, scan, extensions)
        found.extend(files)
        stack.extend(sub for sub in reversed(subfolders) if _visit(sub, scan, seen))
    return sorted(found, key=lambda p: _relative(p, scan.root))


def scan_classes(folder: Path, root: Path | None = None, extensions: frozenset[str] | None = None) -> FolderScan:
    """Classes = first-level sub-folders with images; a folder with images only at the top is unlabelled."""
    extensions = extensions or image_extensions()
    scan = FolderScan(root or folder)
    seen = {folder.resolve()}
    subfolders, loose = _entries(folder, scan, extensions)
    for sub in subfolders:
        if not _visit(sub, scan, seen):
            continue
        images = _images_below(sub, scan, seen, extensions)
        if images:
            scan.classes[sub.name] = images
        else:
            scan.skip("class folder without images", sub)
    if scan.classes:
        for path in loose:
            scan.skip("image beside the class folders (in no class)", path)
    elif loose:
        scan.classes[""] = loose
    return scan


def split_layout(folder: Path, split_folders) -> list[str] | None:
    """The split folders' names when every first-level (non-hidden) folder is a split name and no image
    lies beside them; else None (the first-level folders are classes)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in image_extensions()]
    if names and not loose and all(n in split_folders for n in names):
        return names
    return None


# ------------------------------------------------------------------------------------------ the dataset

def _check_folder(raw_path) -> Path:
    if not raw_path or raw_path == "???":
        raise InvalidConfigError("the imagefolder dataset needs a folder: set its path, e.g. "
                                 "data=imagefolder data.classification.path=/path/to/folder")
    folder = Path(os.path.expanduser(str(raw_path)))
    if not folder.is_dir():
        raise MissingFileError(f"imagefolder path {folder} is not a folder; set data.classification.path to "
                               "a folder of class sub-folders (e.g. cat/1.jpg, dog/2.jpg)")
    return folder


def choose_folder(folder: Path, split: str, split_folders) -> tuple[Path, str]:
    """(the folder to read for `split`, a sentence saying why)."""
    splits = split_layout(folder, split_folders)
    if splits is None:
        return folder, (f"{folder}: first-level folders are classes (not all of them are split names "
                        f"{list(split_folders)}); the whole folder serves split {split!r}")
    if split in splits:
        return folder / split, f"{folder}: split folders {splits}; reading {split!r}"
    if len(splits) == 1:
        return folder / splits[0], (f"{folder}: split folders {splits}, no {split!r}; reading {splits[0]!r} "
                                    f"for it")
    raise InvalidConfigError(f"imagefolder {folder} has the split folders {splits} but no {split!r}; set the "
                             "dataset spec's train_split/eval_split to one of them (or rename the folder)")


def _rows(files: list, labels: list, stamps: list) -> Iterator[dict]:
    for path, label in zip(files, labels):
        row = {"image": {"path": path, "bytes": Path(path).read_bytes()}}
        if label is not None:
            row["label"] = label
        yield row


def to_dataset(scan: FolderScan, description: str, cache_dir: str | None) -> datasets.Dataset:
    """The scan as a Dataset (image bytes embedded; `label` a ClassLabel of the folder names when labelled)."""
    names = sorted(scan.classes)
    files = [str(p) for n in names for p in scan.classes[n]]
    features = {"image": datasets.Image(decode=False)}
    labels: list = [None] * len(files)
    if scan.labelled:
        features["label"] = datasets.ClassLabel(names=names)
        labels = [i for i, n in enumerate(names) for _ in scan.classes[n]]
    # sizes and mtimes among the generator's arguments: datasets' cache key then sees an edited image too
    stamps = [(os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    ds = datasets.Dataset.from_generator(_rows, features=datasets.Features(features), cache_dir=cache_dir,
                                         gen_kwargs={"files": files, "labels": labels, "stamps": stamps})
    ds.info.description = description
    return ds


def read_folder(folder: Path, split: str, split_folders=SPLIT_FOLDERS, cache_dir: str | None = None
                ) -> datasets.Dataset:
    """One split of an image folder as a raw Dataset (`image`, and `label` when it has class folders)."""
    chosen, layout = choose_folder(folder, split, split_folders)
    scan = scan_classes(chosen, root=folder)
    if not scan.classes:
        raise InvalidInputError(f"imagefolder {chosen} holds no image files ({scan.skipped_summary()}); put the "
                                f"images (.jpg, .png, ...) in one sub-folder per class (e.g. {folder}/cat/1.jpg)")
    kind = (f"{len(scan.classes)} classes" if scan.labelled else "no class folders: unlabelled images")
    description = f"{layout}; {kind}, {scan.images()} images; {scan.skipped_summary()}"
    log.info("imagefolder %s", description)
    if scan.skipped:
        log.warning("imagefolder %s: %s", chosen, scan.skipped_summary())
    return to_dataset(scan, description, cache_dir)


def class_counts_line(counts: dict[str, int], shown: int = 20) -> str:
    """Images per class as one line; past `shown` classes a summary (range and the smallest classes)."""
    if len(counts) <= shown:
        return ", ".join(f"{name}: {n}" for name, n in counts.items())
    ordered = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    spread = Counter(counts.values())
    common = ", ".join(f"{k} classes with {n}" for n, k in sorted(spread.items())[:5])
    return (f"{len(counts)} classes, {ordered[0][1]}-{ordered[-1][1]} images each ({common}); smallest: "
            + ", ".join(f"{name}: {n}" for name, n in ordered[:5]))


def load_imagefolder_raw(spec: dict, split: str) -> datasets.Dataset:
    """The folder's split as read by the rules above: `image`, and a ClassLabel `label` of the folder names
    (as written, before conform's "_"/"-" -> space) when it has class folders."""
    folder = _check_folder(spec.get("path"))
    split_folders = tuple(spec.get("split_folders") or SPLIT_FOLDERS)
    return read_folder(folder, split, split_folders, hf_cache_dir(spec))


@ADAPTERS.register("imagefolder")
def load_imagefolder(spec: dict, split: str, offline: bool = True) -> datasets.Dataset:
    folder = _check_folder(spec.get("path"))
    raw = load_imagefolder_raw(spec, split)
    labelled = "label" in raw.column_names
    # Folder names are class names: "golden_retriever" and "golden-retriever" both read "golden retriever".
    conform_spec = {**spec, "image_column": "image", "label_column": "label" if labelled else None,
                    "label_separators": "_-"}
    ds = conform(raw, conform_spec, where=f"imagefolder {folder} (split {split!r})")
    ds.info.description = raw.info.description
    return ds

"""Data adapters: every dataset (embedded, HF hub, local) as a datasets.Dataset with uniform columns.

    from spae.data import load_split, class_names
    ds = load_split(spec, "train", offline=True, limit=1000, seed=0)

`spec` is a conf/dataset/*.yaml dict; columns are spae.data.schema.COLUMNS.
"""
from __future__ import annotations

import datasets

# Importing the adapter modules registers them.
from spae.data import easy_vqa, fashion_mnist, hf, imagefolder, mnist, openclipart, tuxpaint  # noqa: F401
from spae.data.hf import OfflineDatasetError
from spae.data.images import unreadable_reason
from spae.data.prepared import load_prepared, save_prepared
from spae.data.registry import ADAPTERS
from spae.data.schema import COLUMNS, FEATURES, check_uniform
from spae.data.subset import stratified_indices
from spae.errors import InvalidInputError

SPLITS = ("train", "eval")

__all__ = ["ADAPTERS", "COLUMNS", "FEATURES", "OfflineDatasetError", "class_names", "drop_unreadable_images",
           "explode_qa", "load_prepared", "load_split", "save_prepared", "split_name"]


def split_name(spec: dict, split: str) -> str:
    """"train"/"eval" -> the dataset's own split name (spec train_split / eval_split)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    key = f"{split}_split"
    if not spec.get(key):
        raise ValueError(f"dataset spec {spec.get('name')!r} has no {key}")
    return str(spec[key])


def load_split(spec: dict, split: str, *, offline: bool = True, limit: int | None = None,
               seed: int = 0) -> datasets.Dataset:
    """One split of a dataset with the uniform columns; `limit` keeps a seeded, label-stratified subset.
    A spec with `classes: [...]` keeps only those classes, relabelled 0..K-1 in that order."""
    if not isinstance(spec, dict) or "adapter" not in spec:
        raise ValueError(f"a dataset spec is a conf/dataset/*.yaml dict with an `adapter` key; got {spec!r}")
    loader = ADAPTERS.get(spec["adapter"])
    ds = check_uniform(loader(spec, split_name(spec, split), offline))
    if spec.get("classes") is not None:
        from spae.data.classes import keep_classes

        ds = keep_classes(ds, list(spec["classes"]), spec.get("name", "?"))
    if len(ds) == 0:
        raise InvalidInputError(f"dataset {spec.get('name')!r} (split {split_name(spec, split)!r}) has no rows; "
                                "check its path / split names, or remove it from the data setup")
    if limit is not None and limit < len(ds):
        ds = ds.select(stratified_indices(ds["label"], int(limit), seed))
    return ds


def drop_unreadable_images(ds: datasets.Dataset) -> tuple[datasets.Dataset, list[str]]:
    """Rows whose image decodes, and why each other row was dropped (damaged, empty or oversized files).

    Every image is decoded once, row by row (never all in memory). A damaged file among thousands should
    not stop a run; the caller reports how many were skipped."""
    raw = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    keep, reasons = [], []
    for index, row in enumerate(raw):
        reason = unreadable_reason(row["image"])
        if reason is None:
            keep.append(index)
        else:
            reasons.append(f"row {index}: {reason}")
    if not keep:
        raise InvalidInputError(f"none of the {len(ds)} images could be decoded (first: {reasons[0]}); "
                                "check that the dataset files are images")
    return (ds if not reasons else ds.select(keep)), reasons


def class_names(ds: datasets.Dataset) -> list[str]:
    """The unique non-empty label names ordered by label id: names[label] == label_name whenever
    every class id 0..K-1 occurs in `ds` (a tiny subset may miss some; then the order is still by id)."""
    by_id: dict[int, str] = {}
    for label, name in zip(ds["label"], ds["label_name"]):
        if name and by_id.setdefault(label, name) != name:
            raise ValueError(f"label {label} has two names: {by_id[label]!r} and {name!r}")
    names = [by_id[i] for i in sorted(by_id)]
    if len(set(names)) != len(names):
        raise ValueError(f"two label ids share a name: {names}")
    return names


def explode_qa(ds: datasets.Dataset) -> datasets.Dataset:
    """One row per (image, question, answer): `question`, `answer` (str) and `references` (every reference
    answer) replace the lists. Rows without questions disappear. Images are not decoded."""
    counts = [len(q) for q in ds["questions"]]
    rows = [i for i, c in enumerate(counts) for _ in range(c)]
    questions = [q for qs in ds["questions"] for q in qs]
    answers = [a for ans in ds["answers"] for a in ans]
    if len(questions) != len(answers):
        raise ValueError("questions and answers are not aligned in this dataset")
    references = [r for refs in ds["reference_answers"] for r in refs]
    if len(questions) != len(references):
        raise ValueError("questions and reference_answers are not aligned in this dataset")
    exploded = ds.select(rows).remove_columns(["questions", "answers", "reference_answers"])
    exploded = exploded.add_column("question", questions, feature=datasets.Value("string"))
    exploded = exploded.add_column("references", references, feature=datasets.List(datasets.Value("string")))
    return exploded.add_column("answer", answers, feature=datasets.Value("string"))

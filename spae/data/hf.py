"""Any Hugging Face dataset (hub id online, or a local copy) mapped onto the uniform columns.

Local copies: a save_to_disk folder (Dataset or DatasetDict, or one such folder per split), a folder of
parquet files (splits from the file names, as datasets infers them), a single .parquet file, or a folder
of images (read by spae.data.imagefolder's rules: a `label` column from the class folders).
Spec keys: hub_id, path, config_name, image_column, label_column, caption_column, question_column,
answer_column (the target answer; a list of answers, e.g. VQAv2's ten, gives all of them as references and
their consensus as the target), reference_answers_column (every reference answer, when answer_column holds
only the consensus), group_column (rows sharing this value, e.g. VQAv2's image_id, become one row whose
questions/answers are merged), label_names (for plain int labels), first_synonym, offline_alternative
(named in the offline error).
"""
from __future__ import annotations

from spae.errors import InvalidConfigError, InvalidInputError, MissingFileError, UserError

import logging
import os
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Image, Value

from spae.data.labels import readable_name
from spae.data.registry import ADAPTERS
from spae.data.schema import (CAPTION_REAL, CAPTION_TEMPLATED, COLUMNS, FEATURES, NO_LABEL, check_uniform,
                              with_article)

log = logging.getLogger(__name__)

GROUP = "_group"
LABELLED_CAPTION = "a photo of {}"  # templated caption for labelled data without captions
TABLE_SUFFIXES = {".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl"}  # a local folder of these is a table


class OfflineDatasetError(UserError, ValueError):
    """A dataset that needs the network was asked for in offline mode."""


# ---------------------------------------------------------------- finding the raw split

def hf_cache_dir(spec: dict) -> str | None:
    return str(Path(spec["cache_dir"]) / "hf") if spec.get("cache_dir") else None


def pick_split(splits: datasets.DatasetDict, split: str, where: str) -> datasets.Dataset:
    if split in splits:
        return splits[split]
    if len(splits) == 1:
        (only,) = splits
        log.warning("%s has only the split %r; using it for the requested split %r", where, only, split)
        return splits[only]
    raise InvalidConfigError(f"{where} has no split {split!r}; it has {sorted(splits)}. Set the dataset spec's "
                     "train_split/eval_split to one of them.")


def load_local(path: Path, split: str, spec: dict) -> datasets.Dataset:
    if not path.exists():
        raise MissingFileError(f"dataset path {path} does not exist; point the dataset spec's path at a "
                                "save_to_disk folder, a folder of parquet files or an imagefolder")
    if (path / "state.json").exists():
        log.warning("%s is a single saved Dataset; using it for split %r", path, split)
        return _load_saved(path)
    if (path / split / "state.json").exists():  # a DatasetDict's split, or one folder per split
        return _load_saved(path / split)
    if (path / "dataset_dict.json").exists():
        return pick_split(datasets.load_from_disk(str(path)), split, str(path))
    if path.is_file() and path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=hf_cache_dir(spec))
    if path.is_dir() and not any(p.suffix.lower() in TABLE_SUFFIXES for p in path.rglob("*")):
        # A folder of images: read by the imagefolder adapter's rules (classes are first-level folders, split
        # folders only when every first-level folder is one), never inferred from folder or file names.
        from spae.data.imagefolder import SPLIT_FOLDERS, read_folder

        return read_folder(path, split, tuple(spec.get("split_folders") or SPLIT_FOLDERS), hf_cache_dir(spec))
    # A folder of parquet/csv/json files: datasets infers the builder and the splits.
    loaded = datasets.load_dataset(str(path), cache_dir=hf_cache_dir(spec))
    return pick_split(loaded, split, str(path))


def _load_saved(path: Path) -> datasets.Dataset:
    """datasets.load_from_disk of one saved Dataset; a saved empty one (no data files) is refused clearly,
    as datasets itself fails on it with an IndexError deep inside."""
    import json

    state = json.loads((path / "state.json").read_text())
    if not state.get("_data_files"):
        raise InvalidInputError(f"the saved dataset at {path} has no rows; check its path / split names, or "
                                "save it again from a non-empty dataset")
    return datasets.load_from_disk(str(path))


def offline_error(spec: dict) -> OfflineDatasetError:
    name = spec.get("name", "this dataset")
    alternative = spec.get("offline_alternative") or "data=embedded: fashion_mnist, easy_vqa, mnist"
    where = spec.get("config_path") or "data.<role>"  # where the spec sits in the config, if known
    return OfflineDatasetError(
        f"dataset {name!r} comes from the Hugging Face hub ({spec.get('hub_id')}) and offline=true, so "
        f"nothing is downloaded. Use the embedded alternative ({alternative}), or save a copy once online "
        f"(datasets.load_dataset({spec.get('hub_id')!r}).save_to_disk(DIR)) and point {where}.path=DIR at "
        f"it (a folder of parquet files or an imagefolder works too), or run with offline=false.")


def load_raw(spec: dict, split: str, offline: bool) -> datasets.Dataset:
    if spec.get("path"):
        return load_local(Path(os.path.expanduser(str(spec["path"]))), split, spec)
    hub_id = spec.get("hub_id")
    if not hub_id:
        raise InvalidConfigError(f"dataset {spec.get('name')!r} has neither `path` (a local copy) nor `hub_id`")
    if offline:
        raise offline_error(spec)
    return datasets.load_dataset(hub_id, name=spec.get("config_name"), split=split,
                                 cache_dir=hf_cache_dir(spec))


# ---------------------------------------------------------------- mapping onto the uniform columns

def require_columns(raw: datasets.Dataset, spec: dict, where: str) -> dict[str, str | None]:
    wanted = {"image": spec.get("image_column") or "image"}
    for role in ("label", "caption", "question", "answer", "reference_answers", "group"):
        wanted[role] = spec.get(f"{role}_column")
    for role, column in wanted.items():
        if column is not None and column not in raw.column_names:
            raise InvalidConfigError(f"{where}: the {role} column {column!r} is not in the dataset; its columns are "
                             f"{raw.column_names}. Set the spec's {role}_column to one of them.")
    return wanted


def label_vocabulary(raw: datasets.Dataset, column: str, spec: dict) -> tuple[list[str], dict | None]:
    """(class names in id order, raw value -> id map or None when raw values already are the ids)."""
    feature = raw.features[column]
    style = {"separators": spec.get("label_separators", "_"), "first_synonym": bool(spec.get("first_synonym"))}
    if spec.get("label_names"):
        return [readable_name(n, **style) for n in spec["label_names"]], None
    if isinstance(feature, ClassLabel):
        return [readable_name(n, **style) for n in feature.names], None
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        values = sorted(v for v in raw.unique(column) if v is not None and str(v).strip())
        return [readable_name(v, **style) for v in values], {v: i for i, v in enumerate(values)}
    raise InvalidConfigError(f"label column {column!r} holds {feature} without class names; give the dataset spec "
                     "`label_names: [...]` (one real word or phrase per label id)")


def as_text_list(value: Any) -> list[str]:
    """A caption/answer cell -> list of strings (str, list of str, or VQAv2-style [{'answer': ...}])."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict):
        for key in ("answer", "raw", "caption", "text"):
            if key in value:
                return as_text_list(value[key])
        raise ValueError(f"cannot read text from {value!r}")
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in as_text_list(v)]
    return [str(value)]


def question_answers(answer_cells: list, reference_cells: list | None) -> tuple[list[str], list[list[str]]]:
    """(target answer, every reference answer) per row. Without a reference column the answer column's cell is
    the reference list (VQAv2's ten answers, or one string) and the target is its consensus after normalisation."""
    from spae.tasks.vqa import consensus_answer

    answers = [as_text_list(a) for a in answer_cells]
    if reference_cells is None:
        return [consensus_answer(a) for a in answers], answers
    return [a[0] if a else "" for a in answers], [as_text_list(r) for r in reference_cells]


def conform(raw: datasets.Dataset, spec: dict, where: str = "dataset") -> datasets.Dataset:
    """Map a raw HF split onto the uniform columns; images pass through without being decoded."""
    if len(raw) == 0:
        raise InvalidInputError(f"{where} has no rows; check its path / split names, or remove it from the "
                                "data setup")
    cols = require_columns(raw, spec, where)
    names, to_id = label_vocabulary(raw, cols["label"], spec) if cols["label"] else ([], None)

    roles = ("label", "caption", "question", "answer", "reference_answers", "group")
    inputs = [c for c in dict.fromkeys(cols[r] for r in roles) if c]

    def convert(*args) -> dict:
        # map passes only the `inputs` columns (never the image bytes), then the row indices.
        *columns, indices = args
        batch, n = dict(zip(inputs, columns)), len(indices)
        out = uniform_labels(batch, cols["label"], names, to_id, n, where)
        out.update(uniform_captions(batch, cols["caption"], cols["label"], out["label_name"], n))
        out.update(uniform_questions(batch, cols, n))
        if cols["group"]:
            out[GROUP] = [str(g) for g in batch[cols["group"]]]
        return out

    if cols["question"] and not cols["answer"]:
        raise InvalidConfigError(f"{where}: question_column is set but answer_column is not")
    if cols["reference_answers"] and not cols["question"]:
        raise InvalidConfigError(f"{where}: reference_answers_column is set but question_column is not")
    image = cols["image"]
    # Images stay encoded (decode=False) while the other columns are rewritten: nothing is decoded,
    # and string columns of paths or URLs become Image features here too.
    raw = raw.cast_column(image, Image(decode=False))
    features = datasets.Features({image: Image(decode=False),
                                  **{k: FEATURES[k] for k in COLUMNS if k != "image"}})
    if cols["group"]:
        features[GROUP] = Value("string")
    # With an empty input_columns datasets drops the untouched image column, so an image-only dataset
    # takes the whole batch instead.
    fn = convert if inputs else (lambda batch, indices: convert(indices))
    ds = raw.map(fn, batched=True, with_indices=True, input_columns=inputs or None,
                 remove_columns=[c for c in raw.column_names if c != image], features=features,
                 desc="uniform columns")
    if image != "image":
        ds = ds.rename_column(image, "image")
    ds = ds.cast_column("image", Image())
    if cols["group"]:
        ds = merge_groups(ds)
    return check_uniform(ds.select_columns(list(COLUMNS)))


def uniform_labels(batch: dict, column: str | None, names: list[str], to_id, n: int, where: str) -> dict:
    """label (class id, NO_LABEL without a label column) and label_name of each row of a batch."""
    if column:
        ids = [NO_LABEL if v is None else int(to_id[v] if to_id is not None else v) for v in batch[column]]
        for i in ids:
            if i >= len(names) or i < NO_LABEL:
                raise InvalidConfigError(f"{where}: label id {i} has no class name ({len(names)} names); "
                                         "give the spec `label_names:` covering every label id")
    else:
        ids = [NO_LABEL] * n
    return {"label": ids, "label_name": [names[i] if i >= 0 else "" for i in ids]}


def uniform_captions(batch: dict, column: str | None, label_column: str | None, label_names: list[str],
                     n: int) -> dict:
    """captions, caption and caption_source: the dataset's own captions, else one templated from the label."""
    if column:
        caps = [as_text_list(v) for v in batch[column]]
        source = CAPTION_REAL
    elif label_column:
        caps = [[LABELLED_CAPTION.format(with_article(nm))] if nm else [] for nm in label_names]
        source = CAPTION_TEMPLATED
    else:
        caps, source = [[] for _ in range(n)], ""
    return {"captions": caps, "caption": [c[0] if c else "" for c in caps],
            "caption_source": [source if c else "" for c in caps]}


def uniform_questions(batch: dict, cols: dict, n: int) -> dict:
    """questions (at most one per row), answers and reference_answers; empty lists without a question column."""
    if not cols["question"]:
        return {"questions": [[] for _ in range(n)], "answers": [[] for _ in range(n)],
                "reference_answers": [[] for _ in range(n)]}
    questions = [as_text_list(q)[:1] for q in batch[cols["question"]]]
    refs_column = cols["reference_answers"]
    answers, references = question_answers(batch[cols["answer"]], batch[refs_column] if refs_column else None)
    return {"questions": questions, "answers": [[a] if q else [] for a, q in zip(answers, questions)],
            "reference_answers": [[r] if q else [] for r, q in zip(references, questions)]}


def merge_groups(ds: datasets.Dataset) -> datasets.Dataset:
    """One row per group (image): its first row, with every row's questions and answers."""
    keys = ds[GROUP]
    merged_columns = ("questions", "answers", "reference_answers")
    first: dict[str, int] = {}
    lists: dict[str, dict[str, list]] = {c: {} for c in merged_columns}
    for index, (key, *values) in enumerate(zip(keys, *(ds[c] for c in merged_columns))):
        first.setdefault(key, index)
        for column, value in zip(merged_columns, values):
            lists[column].setdefault(key, []).extend(value)
    order = list(first)
    merged = ds.select([first[k] for k in order]).remove_columns([*merged_columns, GROUP])
    for column in merged_columns:
        merged = merged.add_column(column, [lists[column][k] for k in order], feature=FEATURES[column])
    return merged


@ADAPTERS.register("hf")
def load_hf(spec: dict, split: str, offline: bool = True) -> datasets.Dataset:
    raw = load_raw(spec, split, offline)
    where = f"dataset {spec.get('name')!r} ({spec.get('path') or spec.get('hub_id')}, split {split!r})"
    return conform(raw, spec, where)

"""Keep the evaluation classes out of pretraining, by class id (WordNet ids such as n01532829), never by pixels.

mini-ImageNet's images are ImageNet-1k train images, so a tokenizer pretrained on ImageNet-1k has seen the
very classes (and images) the few-shot benchmark asks about. `pretraining_split` drops every row whose class
is one of the evaluation classes before the pretraining limit is applied.

Where a dataset's class ids come from (dataset spec):
- class names that are WordNet ids (timm/mini-imagenet, an ImageNet imagefolder of n0xxxxxxx folders,
  string labels in parquet files): the names themselves;
- `wordnet_ids: imagenet_1k`: integer labels in ImageNet-1k's standard order (ILSVRC/imagenet-1k on the hub
  names its classes "tench, Tinca tinca", ...; label i is the i-th synset of timm's sorted imagenet_synsets.txt);
  or `wordnet_ids: [n0..., ...]`, one id per label id;
- anything else has no class ids (the embedded stand-ins): nothing can be excluded by id, and the report says so.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Collection

import datasets

from spae.errors import InvalidConfigError, InvalidInputError

SYNSET = re.compile(r"^n\d{8}$")
EVAL_ROLES = ("classification", "vqa", "captioning", "generation")
# wordnet_ids orders that ship as files in the timm wheel (timm/data/_info)
ORDERS = {"imagenet_1k": "imagenet_synsets.txt"}


@functools.lru_cache(maxsize=None)
def timm_synsets(file_name: str) -> tuple[str, ...]:
    found = importlib.util.find_spec("timm")  # located, not imported: importing timm takes seconds
    if found is None or not found.submodule_search_locations:
        raise ImportError("WordNet id lists ship in timm: `pip install timm`")
    path = Path(found.submodule_search_locations[0]) / "data" / "_info" / file_name
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def declared_order(spec: dict) -> list[str] | None:
    """The spec's `wordnet_ids` (label id -> WordNet id), or None when it declares none."""
    order = spec.get("wordnet_ids")
    if order is None:
        return None
    if isinstance(order, str):
        if order not in ORDERS:
            raise InvalidConfigError(f"dataset {spec.get('name')!r}: wordnet_ids={order!r} is not a known order; use "
                                     f"one of {sorted(ORDERS)} or a list of WordNet ids, one per label id")
        return list(timm_synsets(ORDERS[order]))
    ids = [str(i).strip() for i in order]
    bad = [i for i in ids if not SYNSET.match(i)]
    if bad:
        raise InvalidConfigError(f"dataset {spec.get('name')!r}: wordnet_ids holds {bad[:3]}, not WordNet ids "
                                 "(n followed by 8 digits)")
    return ids


def _raw_split(spec: dict, split: str, offline: bool) -> datasets.Dataset:
    """The split before mapping onto the uniform columns (its label column keeps the raw class names)."""
    if spec["adapter"] == "imagefolder":
        from spae.data.imagefolder import load_imagefolder_raw

        return load_imagefolder_raw(spec, split)
    from spae.data.hf import load_raw

    return load_raw(spec, split, offline)


def _label_column(spec: dict) -> str | None:
    return "label" if spec["adapter"] == "imagefolder" else spec.get("label_column")


def raw_class_keys(raw: datasets.Dataset, column: str, spec: dict) -> list[str] | None:
    """Class names in label-id order, as spae.data.hf.label_vocabulary numbers them (before readable_name)."""
    feature = raw.features[column]
    if spec.get("label_names"):
        return [str(n) for n in spec["label_names"]]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return sorted(str(v) for v in raw.unique(column) if v is not None and str(v).strip())
    return None


def label_wordnet_ids(spec: dict, split: str, offline: bool = True,
                      present_only: bool = False) -> list[str | None] | None:
    """WordNet id of each label id of load_split(spec, split) (None where a class has none), or None when the
    dataset names no WordNet ids. present_only: ids of classes without a row in the split become None."""
    from spae.data import split_name

    order = declared_order(spec)
    column = _label_column(spec)
    if spec.get("adapter") not in ("hf", "imagefolder") or (column is None and order is None):
        return None  # embedded stand-ins: no WordNet ids
    if order is not None and not present_only:
        return order
    raw = _raw_split(spec, split_name(spec, split), offline)
    keys = order if order is not None else raw_class_keys(raw, column, spec)
    ids: list[str | None] = [k if SYNSET.match(k.strip()) else None for k in keys or []]
    if not any(ids):
        return None
    if present_only:
        present = present_label_ids(raw, column, keys)
        ids = [w if i in present else None for i, w in enumerate(ids)]
    return ids


def present_label_ids(raw: datasets.Dataset, column: str, keys: list[str]) -> set[int]:
    """Label ids (as the uniform dataset numbers them) that have at least one row in the raw split."""
    values = [v for v in raw.unique(column) if v is not None]
    feature = raw.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        position = {k: i for i, k in enumerate(keys)}
        return {position[str(v)] for v in values if str(v) in position}
    return {int(v) for v in values}


def evaluation_wordnet_ids(data_cfg: dict, offline: bool = True) -> dict[str, list[str]]:
    """{role/name: sorted WordNet ids of the classes its evaluation split holds} for every evaluation set
    that names WordNet ids."""
    out = {}
    for role in EVAL_ROLES:
        spec = data_cfg.get(role)
        if not spec:
            continue
        ids = label_wordnet_ids(spec, "eval", offline, present_only=True)
        if ids:
            out[f"{role}/{spec.get('name', role)}"] = sorted({w for w in ids if w})
    return out


def drop_classes(ds: datasets.Dataset, ids_by_label: list[str | None] | None,
                 excluded: Collection[str]) -> tuple[datasets.Dataset, dict]:
    """The rows whose class is not among `excluded` WordNet ids, and what was dropped."""
    excluded = set(excluded)
    if not ids_by_label:
        return ds, {"class_ids": False, "rows_dropped": 0, "classes_dropped": []}
    drop = {i for i, w in enumerate(ids_by_label) if w in excluded}
    labels = ds["label"]
    keep = [i for i, label in enumerate(labels) if label not in drop]
    dropped = sorted({ids_by_label[label] for label in labels if label in drop})
    if not keep:
        raise InvalidInputError(f"excluding the {len(excluded)} evaluation classes leaves no pretraining rows; "
                                "pretrain on other classes, or set data.exclude_eval_classes=false")
    kept = ds if len(keep) == len(ds) else ds.select(keep)
    return kept, {"class_ids": True, "rows_dropped": len(ds) - len(keep), "classes_dropped": dropped}


def pretraining_split(spec: dict, *, offline: bool, limit: int | None, seed: int,
                      excluded: Collection[str] = ()) -> tuple[datasets.Dataset, dict]:
    """A pretraining set's train split without the `excluded` classes, then limited (seeded, label-stratified)
    as load_split limits; with nothing excluded the rows are exactly load_split's."""
    from spae.data import load_split
    from spae.data.subset import stratified_indices

    if not excluded:
        return load_split(spec, "train", offline=offline, limit=limit, seed=seed), \
            {"class_ids": None, "rows_dropped": 0, "classes_dropped": []}
    ds = load_split(spec, "train", offline=offline, seed=seed)
    ds, report = drop_classes(ds, label_wordnet_ids(spec, "train", offline), excluded)
    if limit is not None and limit < len(ds):
        ds = ds.select(stratified_indices(ds["label"], int(limit), seed))
    return ds, report

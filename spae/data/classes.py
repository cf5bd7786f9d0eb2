"""A class filter on any labelled dataset (the dataset spec's `classes:`): the class-disjoint split of the
open embedded world keeps Fashion-MNIST's seen classes for pretraining and its held-out ones for evaluation."""
from __future__ import annotations

import datasets

from spae.errors import InvalidConfigError


def keep_classes(ds: datasets.Dataset, classes: list[str], dataset_name: str = "?") -> datasets.Dataset:
    """Rows whose label_name is one of `classes`, relabelled 0..K-1 in the order of `classes` (so that
    label ids index the class list, as every consumer expects)."""
    wanted = [str(c) for c in classes]
    if not wanted:
        raise InvalidConfigError(f"dataset {dataset_name!r}: `classes` is empty; list the class names to keep "
                                 "or remove the key")
    if len(set(wanted)) != len(wanted):
        raise InvalidConfigError(f"dataset {dataset_name!r}: `classes` lists a class twice: {wanted}")
    present = set(ds.unique("label_name")) - {""}
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise InvalidConfigError(f"dataset {dataset_name!r}: classes {unknown} are not among its classes "
                                 f"{sorted(present)}; fix the `classes` list")
    new_id = {name: i for i, name in enumerate(wanted)}
    names = ds["label_name"]
    rows = [i for i, name in enumerate(names) if name in new_id]
    kept = ds.select(rows)
    labels = [new_id[names[i]] for i in rows]
    return kept.remove_columns("label").add_column("label", labels, feature=datasets.Value("int64")) \
        .select_columns(list(ds.column_names))

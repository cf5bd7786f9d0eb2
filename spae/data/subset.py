"""Deterministic, label-stratified subsets (the `limit` of load_split)."""
from __future__ import annotations

import numpy as np


def stratified_indices(labels: list[int] | np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """`limit` row indices, sorted; each label keeps (to within one) its share of the rows.

    Rows of each class are shuffled with `seed`; every row is then placed at the evenly spaced position
    (rank + 0.5) / class_size, and the `limit` smallest positions win. That is proportional allocation
    without rounding trouble, and a prefix of a larger limit's choice per class.
    Labels < 0 (unlabelled) are one more stratum.
    """
    labels = np.asarray(labels)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels), dtype=np.float64)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        members = members[rng.permutation(len(members))]
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    tiebreak = rng.random(len(labels))  # spreads equal positions across classes at random
    chosen = np.lexsort((tiebreak, position))[:limit]
    return np.sort(chosen)

"""The class-disjoint guarantee of the open world: no training stage sees an image of an evaluation class.

Two checks:
- `check_class_disjoint` (config only, before anything trains): a pretraining set that is the evaluation
  dataset itself (same adapter and files) may not keep an evaluation class;
- `class_exposure` (after training, on the data): per pretraining set and evaluation class, the images it
  holds of that class: by label where the set is the evaluation dataset, else by pixel hash of the
  evaluation images. `FairnessError` when any count is not zero, unless the setup is declared closed-world.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

from spae.errors import UserError

CLOSED_WORLD = "closed-world"


class FairnessError(UserError, RuntimeError):
    """A training stage saw images of an evaluation class in a setup that promises it does not."""


def same_dataset(a: dict, b: dict) -> bool:
    """Whether two dataset specs read the same files (then labels, not pixels, tell the classes apart)."""
    keys = ("adapter", "path", "hub_id", "png_path")
    return all(a.get(k) == b.get(k) for k in keys) and a.get("adapter") is not None


def is_closed_world(data_cfg: dict) -> bool:
    return str(data_cfg.get("world", "")) == CLOSED_WORLD


def check_class_disjoint(data_cfg: dict, all_classes: Iterable[str] | None = None) -> None:
    """Fail before training when a pretraining set is the evaluation dataset and keeps an evaluation class
    (a missing `classes` list means every class). Closed-world setups are exempt (and labelled so)."""
    evaluation = data_cfg.get("classification") or {}
    if not evaluation or is_closed_world(data_cfg):
        return
    for name, spec in sorted((data_cfg.get("pretrain") or {}).items()):
        if not same_dataset(spec, evaluation):
            continue
        seen, held = spec.get("classes"), evaluation.get("classes")
        if seen is None or held is None:
            raise FairnessError(
                f"data.pretrain.{name} and data.classification are the same dataset ({spec.get('name')}) and one of "
                "them keeps every class, so evaluation classes would be trained on; give both a disjoint `classes` "
                "list (see data.class_split), or declare the setup closed-world (data.world=closed-world, e.g. "
                "data=embedded_closed)")
        shared = sorted(set(seen) & set(held))
        if shared:
            raise FairnessError(f"data.pretrain.{name} keeps evaluation classes {shared}; remove them from its "
                                "`classes` (data.class_split.seen and held_out must be disjoint)")


def image_digest(image) -> str:
    """Hash of an image's pixels (mode and size included)."""
    return hashlib.sha1(f"{image.mode}{image.size}".encode() + np.asarray(image).tobytes()).hexdigest()


def class_exposure(pretrain: dict, evaluation_spec: dict, eval_images: list, eval_labels: list[str],
                   max_images: int | None = None) -> dict[str, dict]:
    """{pretraining set: {"per_class": {evaluation class: images of it}, "by": "label"|"pixel hash",
    "images_checked", "complete"}}. `pretrain` maps a set name to (spec, prepared dataset)."""
    classes = sorted(set(eval_labels))
    digest_class = {image_digest(img): label for img, label in zip(eval_images, eval_labels)}
    out, budget = {}, max_images
    for name, (spec, ds) in sorted(pretrain.items()):
        counts = dict.fromkeys(classes, 0)
        if same_dataset(spec, evaluation_spec):
            for label in ds["label_name"]:
                if label in counts:
                    counts[label] += 1
            out[name] = {"per_class": counts, "by": "label", "images_checked": len(ds), "complete": True}
            continue
        n = len(ds) if budget is None else min(len(ds), max(0, budget))
        for start in range(0, n, 1024):  # decoded in chunks: never all images in memory
            for img in ds.select(range(start, min(n, start + 1024)))["image"]:
                label = digest_class.get(image_digest(img))
                if label is not None:
                    counts[label] += 1
        budget = None if budget is None else budget - n
        out[name] = {"per_class": counts, "by": "pixel hash", "images_checked": n, "complete": n == len(ds)}
    return out


def stage_exposure(per_set: dict[str, dict], stage_sets: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """{training stage: {evaluation class: images it could train on}} from the sets each stage reads."""
    out = {}
    for stage, sets in stage_sets.items():
        total: dict[str, int] = {}
        for name in sets:
            for cls, n in per_set[name]["per_class"].items():
                total[cls] = total.get(cls, 0) + n
        out[stage] = total
    return out


def enforce(exposure: dict[str, dict[str, int]], data_cfg: dict) -> None:
    """FairnessError naming the stages and classes with a non-zero count (closed-world setups report only)."""
    bad = {stage: {c: n for c, n in counts.items() if n} for stage, counts in exposure.items()}
    bad = {stage: counts for stage, counts in bad.items() if counts}
    if bad and not is_closed_world(data_cfg):
        raise FairnessError(f"training stages saw images of evaluation classes: {bad}. The {data_cfg.get('name')} "
                            "setup promises novel classes; remove those classes/images from data.pretrain, or run "
                            "the closed-world setup on purpose (data=embedded_closed)")

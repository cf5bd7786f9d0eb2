"""The class-disjoint split: class filters, the config-time disjointness check and the per-stage exposure count."""
from __future__ import annotations

import pytest
from _data_fixtures import spec, tiny_fashion_mnist
from PIL import Image

from spae.data import class_names, load_split
from spae.data.fairness import (FairnessError, check_class_disjoint, class_exposure, enforce, stage_exposure)
from spae.errors import InvalidConfigError

SEEN = ["t-shirt", "pullover", "shirt", "sandal", "ankle boot"]
HELD = ["trouser", "dress", "bag", "coat", "sneaker"]


def fm_spec(folder, classes=None):
    return spec(adapter="fashion_mnist", path=str(folder), classes=classes)


def test_class_filter_keeps_only_those_classes_relabelled_in_order(tmp_path):
    folder = tiny_fashion_mnist(tmp_path / "fm")
    ds = load_split(fm_spec(folder, HELD), "eval")
    assert set(ds["label_name"]) == set(HELD) and len(ds) == 10
    assert class_names(ds) == HELD
    assert all(HELD[label] == name for label, name in zip(ds["label"], ds["label_name"]))


def test_class_filter_rejects_unknown_names(tmp_path):
    folder = tiny_fashion_mnist(tmp_path / "fm")
    with pytest.raises(InvalidConfigError, match="'jumper'.*not among its classes"):
        load_split(fm_spec(folder, ["jumper"]), "train")


def data_cfg(seen, held, world="novel-class"):
    base = {"adapter": "fashion_mnist", "path": "/x", "name": "fashion_mnist"}
    return {"name": "t", "world": world, "pretrain": {"fashion_mnist": {**base, "classes": seen}},
            "classification": {**base, "classes": held}}


def test_disjointness_check_fails_on_shared_or_unfiltered_classes():
    check_class_disjoint(data_cfg(SEEN, HELD))
    with pytest.raises(FairnessError, match=r"\['coat'\]"):
        check_class_disjoint(data_cfg(SEEN + ["coat"], HELD))
    with pytest.raises(FairnessError, match="keeps every class"):
        check_class_disjoint(data_cfg(None, HELD))
    check_class_disjoint(data_cfg(None, None, world="closed-world"))  # declared closed-world: allowed


def test_embedded_config_split_is_disjoint_and_covers_all_classes():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from spae.data.fashion_mnist import CLASS_NAMES
    from pathlib import Path

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        for option in ("embedded", "embedded_mnist", "imagefolder"):
            data = OmegaConf.to_container(compose("config", overrides=[f"data={option}"]).data, resolve=True)
            split = data["class_split"]
            assert not set(split["seen"]) & set(split["held_out"])
            assert sorted(split["seen"] + split["held_out"]) == sorted(CLASS_NAMES)
            assert data["pretrain"]["fashion_mnist"]["classes"] == split["seen"]
            assert "mnist" not in data["pretrain"]
            check_class_disjoint(data)
        data = OmegaConf.to_container(compose("config", overrides=["data=embedded"]).data, resolve=True)
        assert data["classification"]["classes"] == data["class_split"]["held_out"]
        closed = OmegaConf.to_container(compose("config", overrides=["data=embedded_closed"]).data, resolve=True)
        assert closed["world"] == "closed-world"


class Rows(list):
    """Enough of a datasets.Dataset for class_exposure: label_name column, select(range), image column."""

    def __init__(self, images, labels):
        super().__init__(range(len(images)))
        self.images, self.labels = images, labels

    def __getitem__(self, key):
        if key == "label_name":
            return self.labels
        if key == "image":
            return self.images
        return super().__getitem__(key)

    def select(self, idx):
        idx = list(idx)
        return Rows([self.images[i] for i in idx], [self.labels[i] for i in idx])


def test_exposure_counts_by_label_for_the_same_dataset_and_by_pixels_otherwise():
    spec_fm = {"adapter": "fashion_mnist", "path": "/x"}
    evaluation = [Image.new("L", (4, 4), v) for v in (10, 20, 30)]
    labels = ["trouser", "dress", "trouser"]
    pretrain = {"fashion_mnist": (spec_fm, Rows([Image.new("L", (4, 4), 1)] * 3, ["t-shirt", "dress", "shirt"])),
                "openclipart": ({"adapter": "openclipart"}, Rows([Image.new("L", (4, 4), 30), Image.new("L", (4, 4), 99)],
                                                                 ["", ""]))}
    per_set = class_exposure(pretrain, spec_fm, evaluation, labels)
    assert per_set["fashion_mnist"]["by"] == "label" and per_set["fashion_mnist"]["per_class"] == {"dress": 1, "trouser": 0}
    assert per_set["openclipart"]["by"] == "pixel hash" and per_set["openclipart"]["per_class"] == {"dress": 0, "trouser": 1}
    per_stage = stage_exposure(per_set, {"clip": ["fashion_mnist", "openclipart"], "train:spae": ["openclipart"]})
    assert per_stage == {"clip": {"dress": 1, "trouser": 1}, "train:spae": {"dress": 0, "trouser": 1}}
    with pytest.raises(FairnessError, match="train:spae"):
        enforce(per_stage, {"name": "embedded", "world": "novel-class"})
    enforce(per_stage, {"name": "embedded_closed", "world": "closed-world"})  # reported, not failed
    enforce({"clip": {"dress": 0}}, {"name": "embedded", "world": "novel-class"})

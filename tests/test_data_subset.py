"""`limit`: deterministic, seeded, label-stratified subsets; class_names; explode_qa."""
from __future__ import annotations

from collections import Counter

import datasets
import numpy as np
import pytest
from _data_fixtures import spec, tiny_fashion_mnist
from PIL import Image

from spae.data import class_names, explode_qa, load_split
from spae.data.schema import from_columns
from spae.data.subset import stratified_indices


def test_same_seed_same_subset_other_seed_other_subset():
    labels = np.repeat(np.arange(5), 40)
    a, b = stratified_indices(labels, 50, seed=3), stratified_indices(labels, 50, seed=3)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50
    assert not np.array_equal(a, stratified_indices(labels, 50, seed=4))


def test_balanced_labels_give_equal_counts():
    labels = np.repeat(np.arange(10), 100)
    counts = Counter(labels[stratified_indices(labels, 30, seed=0)].tolist())
    assert counts == {c: 3 for c in range(10)}


def test_imbalanced_labels_keep_their_shares():
    labels = np.array([0] * 900 + [1] * 100)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    counts = Counter(labels[stratified_indices(labels, 100, seed=1)].tolist())
    assert counts == {0: 90, 1: 10}


def test_limit_above_size_keeps_everything_and_negative_is_an_error():
    assert stratified_indices([0, 1, 1], 10).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="limit"):
        stratified_indices([0, 1], -1)


def test_load_split_limit_is_stratified_and_deterministic(tmp_path):
    folder = tiny_fashion_mnist(tmp_path / "fm", n_train=100)
    s = spec(adapter="fashion_mnist", path=str(folder))
    first = load_split(s, "train", limit=20, seed=5)
    again = load_split(s, "train", limit=20, seed=5)
    assert first["label"] == again["label"] and first["caption"] == again["caption"]
    assert Counter(first["label"]) == {c: 2 for c in range(10)}
    assert class_names(first) == class_names(load_split(s, "train"))


def test_load_split_rejects_unknown_split_names(tmp_path):
    with pytest.raises(ValueError, match="train"):
        load_split(spec(adapter="fashion_mnist", path=str(tiny_fashion_mnist(tmp_path / "fm"))), "test")


def test_class_names_follow_label_ids_not_the_alphabet():
    images = [Image.new("L", (2, 2))] * 3
    ds = from_columns(images, labels=[1, 0, 1], label_names=["zebra", "ant"])
    assert class_names(ds) == ["zebra", "ant"]
    assert class_names(from_columns(images)) == []


def test_explode_qa_gives_one_row_per_question():
    images = [Image.new("RGB", (2, 2), (i, 0, 0)) for i in range(3)]
    ds = from_columns(images, questions=[["q1", "q2"], [], ["q3"]], answers=[["a1", "a2"], [], ["a3"]])
    rows = explode_qa(ds)
    assert rows["question"] == ["q1", "q2", "q3"] and rows["answer"] == ["a1", "a2", "a3"]
    assert [r["image"].getpixel((0, 0))[0] for r in rows] == [0, 0, 2]
    assert "questions" not in rows.column_names


def test_misaligned_columns_are_rejected():
    with pytest.raises(ValueError, match="captions has 1 entries for 2 images"):
        from_columns([Image.new("L", (1, 1))] * 2, captions=["x"])
    assert isinstance(from_columns([Image.new("L", (1, 1))]), datasets.Dataset)

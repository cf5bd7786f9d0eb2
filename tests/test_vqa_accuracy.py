"""VQAv2 accuracy and answer normalisation (spae.tasks.vqa), against hand-computed values."""
from __future__ import annotations

import pytest

from spae.tasks.vqa import (accuracy_by_type, answer_type, normalize_answer, plan_vqa_items, prior_answer,
                            qa_entries, score_answers, vqa_accuracy)


@pytest.mark.parametrize("raw, expected", [
    ("Two.", "2"), ("the dog", "dog"), ("A Red-Circle", "red circle"), ("dont", "don't"), ("isnt", "isn't"),
    ("yes!", "yes"), ("1,000", "1000"), ("3.5", "3.5"), ("  Yes\n", "yes"), ("an apple", "apple"),
    ("ten", "10"), ("none", "0"), ("well", "well"), ("red, white", "red white"), ("(blue)", "blue"),
])
def test_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_ten_human_answers_leave_one_out_average():
    # 2 of 10 say "2": dropping one of them leaves 1 match (1/3), dropping another leaves 2 (2/3)
    assert vqa_accuracy("two", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_accuracy("Yes.", ["yes"] * 4 + ["no"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("maybe", ["yes"] * 10) == 0.0
    assert vqa_accuracy("the cat", ["cat"] + ["dog"] * 9) == pytest.approx(9 * (1 / 3) / 10)


def test_single_reference_is_normalised_exact_match():
    assert vqa_accuracy("Circle.", ["circle"]) == 1.0
    assert vqa_accuracy("a circle", ["circle"]) == 1.0
    assert vqa_accuracy("circles", ["circle"]) == 0.0
    assert vqa_accuracy("", ["circle"]) == 0.0
    with pytest.raises(ValueError, match="reference"):
        vqa_accuracy("x", [])


def test_answer_types_and_breakdown():
    assert answer_type(["Yes", "yes", "no"]) == "yes/no"
    assert answer_type(["two"]) == "number"
    assert answer_type(["red"]) == "other"
    scores = accuracy_by_type(["yes", "2", "blue"], [["yes"], ["3"], ["blue"]])
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["items"] == 3
    assert scores["by_type"] == {"number": {"accuracy": 0.0, "items": 1}, "other": {"accuracy": 1.0, "items": 1},
                                 "yes/no": {"accuracy": 1.0, "items": 1}}
    records = [{"answer": "", "references": ["no"]}, {"answer": "No", "references": ["no"]}]
    assert score_answers(records)["empty_answers"] == 1 and score_answers(records)["accuracy"] == 0.5
    with pytest.raises(ValueError):
        accuracy_by_type(["a"], [])


def test_prior_answer_and_entries():
    assert prior_answer([["yes", "no"], ["Yes"], ["red"]]) == "yes"
    entries = qa_entries([["q1", "q2"], [], ["q3"]], [["a1", "a2"], [], ["a3"]], "x")
    assert entries == [("x0", "q1", "a1"), ("x0", "q2", "a2"), ("x2", "q3", "a3")]
    with pytest.raises(ValueError, match="aligned"):
        qa_entries([["q1", "q2"]], [["a1"]], "x")


def test_vqa_items_never_show_the_query_image_when_splits_coincide():
    questions = [[f"q{r}a", f"q{r}b"] for r in range(6)]
    answers = [["yes", "no"] for _ in range(6)]
    items = plan_vqa_items(questions, answers, questions, answers, n_items=12, shots=4, seed=3, same_split=True)
    assert len(items) == 12
    for item in items:
        assert item.question and item.references in (("yes",), ("no",))
        assert all(e.image != item.image for e in item.examples)
        assert len({(e.image, e.question) for e in item.examples}) == 4

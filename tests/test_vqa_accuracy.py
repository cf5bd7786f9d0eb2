"""VQAv2 accuracy and answer normalisation (spae.tasks.vqa), against hand-computed values."""
from __future__ import annotations

import pytest

from spae.tasks.vqa import (accuracy_by_type, answer_type, consensus_answer, exact_match, metric_name,
                            normalize_answer, plan_vqa_items, prior_answer, qa_entries, score_answers, vqa_accuracy)


@pytest.mark.parametrize("raw, expected", [
    ("Two.", "2"), ("the dog", "dog"), ("A Red-Circle", "red circle"), ("dont", "don't"), ("isnt", "isn't"),
    ("yes!", "yes"), ("1,000", "1000"), ("3.5", "3.5"), ("  Yes\n", "yes"), ("an apple", "apple"),
    ("ten", "10"), ("none", "0"), ("well", "well"), ("red, white", "red white"), ("(blue)", "blue"),
    ("3.", "3"), ("Two dogs.", "2 dogs"), ("couldntve", "couldn't've"), ("wont", "won't"), ("ill", "ill"),
    ("8:00", "8:00"), ("it's", "it's"), ("left-hand side", "left hand side"), ("yes , it is", "yes it is"),
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


def test_mixed_spellings_of_one_number_all_count():
    # 3 x "2", 2 x "two", 2 x "Two." and 3 x "3": after normalisation 7 humans say "2", 3 say "3".
    humans = ["2", "2", "2", "two", "two", "Two.", "Two.", "3", "3", "3"]
    # "2": each of the 10 leave-one-out subsets keeps >= 6 matches -> min(., 1) = 1
    assert vqa_accuracy("two", humans) == pytest.approx(1.0)
    # "3": leaving out one of the 3 "3"s leaves 2 (2/3), leaving out a "2" leaves 3 (1); (3*2/3 + 7*1) / 10
    assert vqa_accuracy("3", humans) == pytest.approx(0.9)
    assert vqa_accuracy("4", humans) == 0.0
    assert consensus_answer(["Two.", "3", "3", "two", "2"]) == "Two."  # counted after normalisation


def test_single_reference_is_exact_match_not_vqa_accuracy():
    assert exact_match("Circle.", "circle") == 1.0
    assert exact_match("a circle", "circle") == 1.0
    assert exact_match("circles", "circle") == 0.0
    assert exact_match("", "circle") == 0.0
    with pytest.raises(ValueError, match="exact_match"):
        vqa_accuracy("circle", ["circle"])
    assert metric_name([["a"], ["b"]]) == "exact_match"
    assert metric_name([["a", "b"], ["b"] * 10]) == "vqa_accuracy"
    with pytest.raises(ValueError, match="one reference answer"):
        metric_name([["a"], ["a"] * 10])
    with pytest.raises(ValueError, match="reference"):
        metric_name([["a"], []])


def test_answer_types_and_breakdown():
    assert answer_type(["Yes", "yes", "no"]) == "yes/no"
    assert answer_type(["two"]) == "number"
    assert answer_type(["red"]) == "other"
    scores = accuracy_by_type(["yes", "2", "blue"], [["yes"], ["3"], ["blue"]])
    assert scores["metric"] == "exact_match" and "accuracy" not in scores and "vqa_accuracy" not in scores
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["items"] == 3
    assert scores["by_type"] == {"number": {"exact_match": 0.0, "items": 1},
                                 "other": {"exact_match": 1.0, "items": 1}, "yes/no": {"exact_match": 1.0, "items": 1}}
    records = [{"answer": "", "references": ["no"]}, {"answer": "No", "references": ["no"]}]
    assert score_answers(records)["empty_answers"] == 1 and score_answers(records)["exact_match"] == 0.5
    ten = accuracy_by_type(["two", "yes"], [["2"] * 2 + ["3"] * 8, ["yes"] * 10])
    assert ten["metric"] == "vqa_accuracy" and ten["vqa_accuracy"] == pytest.approx((0.6 + 1.0) / 2)
    assert ten["by_type"]["number"] == {"vqa_accuracy": pytest.approx(0.6), "items": 1}
    with pytest.raises(ValueError):
        accuracy_by_type(["a"], [])


def test_prior_answer_and_entries():
    assert prior_answer([["yes", "no"], ["Yes"], ["red"]]) == "yes"
    entries = qa_entries([["q1", "q2"], [], ["q3"]], [["a1", "a2"], [], ["a3"]], "x")
    assert entries == [("x0", "q1", "a1"), ("x0", "q2", "a2"), ("x2", "q3", "a3")]
    refs = qa_entries([["q1", "q2"]], [[["a", " ", "b"], [" "]]], "q")  # reference lists: blanks dropped
    assert refs == [("q0", "q1", ["a", "b"])]
    with pytest.raises(ValueError, match="aligned"):
        qa_entries([["q1", "q2"]], [["a1"]], "x")


def test_vqa_items_never_show_the_query_image_when_splits_coincide():
    questions = [[f"q{r}a", f"q{r}b"] for r in range(6)]
    answers = [["yes", "no"] for _ in range(6)]
    references = [[["yes"] * 9 + ["no"], ["no"] * 10] for _ in range(6)]
    items = plan_vqa_items(questions, references, questions, answers, n_items=12, shots=4, seed=3, same_split=True)
    assert len(items) == 12
    for item in items:
        assert item.question and item.references in (("yes",) * 9 + ("no",), ("no",) * 10)
        assert all(e.answer in ("yes", "no") for e in item.examples)  # examples show the one target answer
        assert all(e.image != item.image for e in item.examples)
        assert len({(e.image, e.question) for e in item.examples}) == 4

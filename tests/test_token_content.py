"""What the renderings carry without an LLM (spae.fewshot.token_content), on hand-built renderings whose
measures are worked out by hand in the comments."""
from __future__ import annotations

import pytest
import torch

from spae.fewshot.token_content import (class_examples, jaccard_matrix, method_token_content,
                                        nearest_neighbour_accuracy, report)

# A pyramid renderer: layer 1 one word, layer 2 four. Image 3 (class B) renders like class A's images.
PYRAMID = {0: [["x"], ["s", "s", "s", "s"]],
           1: [["x"], ["s", "t", "s", "s"]],
           2: [["y"], ["u", "v", "w", "z"]],
           3: [["x"], ["s", "s", "s", "s"]]}
LABELS = {0: "A", 1: "A", 2: "B", 3: "B"}


def test_pyramid_measures_by_hand():
    c = method_token_content(PYRAMID, LABELS)
    assert c["images"] == 4 and c["tokens_per_image"] == 5 and c["words_used"] == 8  # x s t y u v w z
    assert c["distinct_ratio"] == pytest.approx((2 + 3 + 5 + 2) / 20)  # distinct / tokens, per image
    layer1, layer2 = c["per_layer"]
    assert layer1 == {"layer": 1, "tokens_per_image": 1, "distinct_ratio": 1.0}  # one word: no all-same share
    assert layer2["distinct_ratio"] == pytest.approx((1 / 4 + 2 / 4 + 4 / 4 + 1 / 4) / 4)
    assert layer2["all_one_word_share"] == 0.5  # images 0 and 3: "s s s s"
    # word sets {x,s} {x,s,t} {y,u,v,w,z} {x,s}. Leave-one-out nearest neighbours:
    # 0 -> 3 (Jaccard 1, class B): wrong; 1 -> 0 and 3 tied at 2/3 (A, B): 1/2; 2 -> all tied at 0 (A, A, B): 1/3;
    # 3 -> 0 (class A): wrong
    assert c["class_1nn_accuracy"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 0) / 4)
    assert c["chance"] == 0.5


def test_one_nn_accuracy_does_not_depend_on_the_images_order():
    reordered = {k: PYRAMID[k] for k in (3, 1, 2, 0)}
    assert method_token_content(reordered, LABELS)["class_1nn_accuracy"] == \
        method_token_content(PYRAMID, LABELS)["class_1nn_accuracy"]


def test_words_that_separate_the_classes_give_full_accuracy_and_flat_lists_are_one_layer():
    clip = {0: ["cat", "fur"], 1: ["cat", "paw"], 2: ["dog", "fur"], 3: ["dog", "paw"], 4: ["dog", "bone"]}
    labels = {0: "cat", 1: "cat", 2: "dog", 3: "dog", 4: "dog"}
    c = method_token_content(clip, labels)
    # Jaccard 1/3 for every pair sharing a word, so each image's tied neighbours share its vote: 0 -> 1, 2 (1/2);
    # 1 -> 0, 3 (1/2); 2 -> 0, 3, 4 (2/3); 3 -> 1, 2, 4 (2/3); 4 -> 2, 3 (1)
    assert c["class_1nn_accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 3 + 2 / 3 + 1) / 5)
    assert c["chance"] == pytest.approx(3 / 5)
    (layer,) = c["per_layer"]
    assert layer["all_one_word_share"] == 0.0 and layer["distinct_ratio"] == 1.0
    separated = {0: ["cat"], 1: ["cat"], 2: ["dog"], 3: ["dog"]}
    assert method_token_content(separated, {0: "c", 1: "c", 2: "d", 3: "d"})["class_1nn_accuracy"] == 1.0


def test_embeddings_use_cosine_of_the_flattened_prefix():
    e = lambda *v: torch.tensor(v, dtype=torch.float32).view(2, 2)  # noqa: E731  (2 embeddings of width 2)
    frozen = {0: e(1, 0, 0, 0), 1: e(2, 0.1, 0, 0), 2: e(0, 0, 1, 0), 3: e(0, 0, 3, 0.2)}
    c = method_token_content(frozen, {0: "a", 1: "a", 2: "b", 3: "b"})
    assert c["class_1nn_accuracy"] == 1.0 and c["tokens_per_image"] == 2 and "per_layer" not in c
    flipped = method_token_content(frozen, {0: "a", 1: "b", 2: "a", 3: "b"})
    assert flipped["class_1nn_accuracy"] == 0.0


def test_nearest_neighbour_needs_two_images_and_matching_shapes():
    assert nearest_neighbour_accuracy(torch.zeros(1, 1), ["a"]) is None
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        nearest_neighbour_accuracy(torch.zeros(2, 2), ["a", "b", "c"])
    with pytest.raises(ValueError, match="no class name"):
        method_token_content(PYRAMID, {0: "A"})
    assert jaccard_matrix([set(), set()]).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # empty sets: no similarity


def test_class_examples_list_the_first_images_per_class_for_word_methods_only():
    many = {i: [["x"], [f"w{i}"] * 4] for i in range(8)}
    labels = {i: "A" if i < 7 else "B" for i in range(8)}
    renderings = {"spae-l2": many, "frozen": {i: torch.zeros(2, 3) for i in range(8)},
                  "clip_topk-k2": {i: ["top", f"c{i}"] for i in range(8)}}
    examples = class_examples(renderings, labels)
    assert list(examples) == ["A", "B"] and set(examples["A"]) == {"spae-l2", "clip_topk-k2"}
    assert examples["A"]["spae-l2"] == [f"x | w{i} w{i} w{i} w{i}" for i in range(5)]
    assert examples["B"]["clip_topk-k2"] == ["top c7"]


def test_report_has_the_table_and_the_per_class_section():
    content, md = report({"spae-l2": PYRAMID}, LABELS, {"spae-l2": "SPAE (5 tokens, layers 1-2)"})
    assert set(content) == {"spae-l2"}
    assert "What the tokens carry (no LLM)" in md and "Top words of 5 images per class" in md
    row = next(line for line in md.splitlines() if line.startswith("| SPAE (5 tokens"))
    assert row == "| SPAE (5 tokens, layers 1-2) | 5 | 100 / 50 | - / 50 | 8 | 21 | 50 |"
    assert "- SPAE (5 tokens, layers 1-2): `x | s s s s`; `x | s t s s`" in md


def _episode(support, query):
    from spae.fewshot.episodes import Episode

    classes = sorted({name for _, name in support})
    return Episode(support=support, query=query, classes=classes, n_way=len(classes), shots=1, repeats=0,
                   task_induction=True)


def test_nearest_support_reader_on_hand_built_episodes():
    from spae.fewshot.token_content import nearest_support_accuracy

    episodes = {
        # query 1 {x,s,t}: support 0 {x,s} (A) Jaccard 2/3 beats support 2 (B) 0: right
        # query 3 {x,s} (B): support 0 {x,s} (A) Jaccard 1 beats support 2 (B): wrong
        "cell1": [_episode([(0, "A"), (2, "B")], (1, "A")), _episode([(0, "A"), (2, "B")], (3, "B"))],
        # query 2 {y,u,v,w,z} shares nothing with either support: the tie splits, credit 1/2
        "cell2": [_episode([(1, "A"), (3, "B")], (2, "B"))],
    }
    out = nearest_support_accuracy({"spae-l2": PYRAMID}, episodes)["spae-l2"]
    assert out["cell1"] == {"accuracy": 0.5, "n": 2}
    assert out["cell2"] == {"accuracy": 0.5, "n": 1}
    embeddings = {i: torch.tensor([[1.0, 0.0]]) if LABELS[i] == "A" else torch.tensor([[0.0, 1.0]]) for i in PYRAMID}
    assert nearest_support_accuracy({"frozen": embeddings}, episodes)["frozen"]["cell1"]["accuracy"] == 1.0


def test_report_adds_the_nearest_support_table_when_given_episodes():
    episodes = {"2way": [_episode([(0, "A"), (2, "B")], (1, "A"))]}
    content, markdown = report({"spae-l2": PYRAMID}, LABELS, {"spae-l2": "SPAE"}, episodes)
    assert content["spae-l2"]["nearest_support"] == {"2way": {"accuracy": 1.0, "n": 1}}
    assert "Nearest-support reader on the same episodes (no LLM)" in markdown and "| SPAE | 100 |" in markdown
    assert "nearest_support" not in report({"spae-l2": PYRAMID}, LABELS, {"spae-l2": "SPAE"})[0]["spae-l2"]

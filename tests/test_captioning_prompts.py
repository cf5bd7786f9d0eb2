"""In-context items, prompts and answering with resume (spae.tasks.incontext, spae.tasks.captioning)."""
from __future__ import annotations

import json

import pytest
import torch

from spae.llm.dummy import DummyBackend
from spae.tasks.captioning import caption_queries, plan_caption_items, score_captions
from spae.tasks.incontext import Example, InContextTemplate, Item, answer_items, build_prompt, plan_items

CAPTION = InContextTemplate(name="caption", example_item="{image} Caption: {answer}.", query_item="{image} Caption:")
QA = InContextTemplate(name="qa", example_item="{image} Q: {question} A: {answer}.", query_item="{image} Q: {question} A:",
                       header="Answer the question.")
WORDS = {"x0": [["red"], ["round", "ball"]], "x1": ["blue", "box"], "q0": "red round"}


def test_caption_prompt_renders_layers_and_examples_in_order():
    item = Item("i0", "q0", ("a red ball",), (Example("x0", "a red ball"), Example("x1", "a blue box")))
    assert build_prompt(item, CAPTION, WORDS.__getitem__) == (
        " red round ball Caption: a red ball.\n blue box Caption: a blue box.\n red round Caption:")


def test_qa_prompt_has_header_questions_and_embedding_segments():
    emb = {"x0": torch.ones(2, 4), "q0": torch.zeros(2, 4)}
    item = Item("i0", "q0", ("yes",), (Example("x0", "no", "is it red?"),), question="is it round?")
    prompt = build_prompt(item, QA, emb.__getitem__)
    assert isinstance(prompt, list) and len(prompt) == 5
    assert prompt[0] == "Answer the question.\n" and torch.equal(prompt[1], emb["x0"])
    assert prompt[2] == " Q: is it red? A: no.\n" and torch.equal(prompt[3], emb["q0"]) and prompt[4] == " Q: is it round? A:"


@pytest.mark.parametrize("spec, match", [
    ({"example_item": "Caption: {answer}", "query_item": "{image} Caption:"}, "image"),
    ({"example_item": "{image} Caption:", "query_item": "{image} Caption:"}, "answer"),
    ({"example_item": "{image} {answer}", "query_item": "{image} {answer}"}, "must not"),
    ({"example_item": "{image} {question} {answer}", "query_item": "{image}"}, "question"),
    ({"example_item": "{image} {answer}", "query_item": "{image}", "colour": 1}, "unknown"),
])
def test_bad_templates_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        InContextTemplate.from_dict({"name": "bad", **spec})


def test_items_are_seeded_prefix_stable_and_use_the_training_pool():
    eval_caps = [[f"eval {i}"] for i in range(10)] + [[]]
    train_caps = [f"train {i}" for i in range(20)] + [""]
    a = plan_caption_items(eval_caps, train_caps, n_items=5, shots=3, seed=0)
    b = plan_caption_items(eval_caps, train_caps, n_items=8, shots=3, seed=0)
    assert b[:5] == a and plan_caption_items(eval_caps, train_caps, 5, 3, seed=1) != a
    for item in b:
        assert item.image.startswith("q") and item.image != "q10" and len(item.examples) == 3
        assert all(e.image.startswith("x") and e.image != "x20" for e in item.examples)
        assert item.references == (f"eval {item.image[1:]}",)
        assert all(e.answer == f"train {e.image[1:]}" for e in item.examples)
    assert len(plan_caption_items(eval_caps, train_caps, n_items=100, shots=1, seed=0)) == 10
    with pytest.raises(ValueError, match="pool"):
        plan_caption_items(eval_caps, train_caps[:2], n_items=2, shots=3, seed=0)
    with pytest.raises(ValueError, match="no evaluation"):
        plan_items([], [("x0", "", "a")], 2, 1, 0, "caption")
    assert caption_queries([["a", " "], [""]], "q") == [("q0", "", ["a"])]


def _items():
    words = {f"x{i}": [f"w{i}", "shape"] for i in range(6)} | {f"q{i}": [f"w{i}", "shape"] for i in range(6)}
    caps = [f"a small thing number {i} here" for i in range(6)]
    items = plan_caption_items([[c] for c in caps], caps, n_items=6, shots=6, seed=0)
    return items, words


def test_answers_follow_the_examples_and_a_rerun_resumes(tmp_path):
    items, words = _items()
    path = tmp_path / "records.jsonl"
    records = answer_items(DummyBackend(), items, words.__getitem__, CAPTION, jsonl_path=path, chunk_size=4)
    # the dummy copies the caption of the example sharing the query's words: its own image's caption
    assert [r["answer"] for r in records] == [item.references[0] for item in items]
    assert score_captions(records)["bleu4"] == pytest.approx(1.0)
    assert len(path.read_text().splitlines()) == 6

    class Counting(DummyBackend):
        calls = 0

        def generate(self, prompts, max_new_tokens, stop):
            Counting.calls += len(prompts)
            return super().generate(prompts, max_new_tokens, stop)

    # a torn last line (killed mid-write) is dropped and only the missing items are asked again
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:10])
    again = answer_items(Counting(), items, words.__getitem__, CAPTION, jsonl_path=path, chunk_size=4)
    assert Counting.calls == 3 and again == records
    assert [json.loads(x)["item_id"] for x in path.read_text().splitlines()] == [r["item_id"] for r in records[:3]] + \
        [r["item_id"] for r in records[3:]]
    # another template is another evaluation: nothing is reused
    other = InContextTemplate(name="other", example_item="{image} Title: {answer}.", query_item="{image} Title:")
    Counting.calls = 0
    answer_items(Counting(), items, words.__getitem__, other, jsonl_path=path)
    assert Counting.calls == 6

"""Prompt rendering from templates, answer extraction, matching rules and intervals."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spae.fewshot.episodes import Episode
from spae.fewshot.prompts import PromptTemplate, render_prompt
from spae.fewshot.scoring import accuracy_summary, extract_answer, is_correct, wilson_interval

CONF = Path(__file__).resolve().parents[1] / "conf" / "prompt"
FROZEN = PromptTemplate.from_yaml(CONF / "frozen.yaml")
WORDS = {0: ["fur", "whiskers"], 1: ["bark", "tail"], 2: ["fur", "paws"]}


def _episode(induction=True) -> Episode:
    return Episode(support=[(0, "cat"), (1, "dog")], query=(2, "cat"), classes=["dog", "cat"], n_way=2, shots=1,
                   repeats=0, task_induction=induction, episode_id="e0")


def test_frozen_prompt_rendering():
    prompt = render_prompt(_episode(), FROZEN, WORDS.__getitem__)
    # image words after a newline get a space: each is then its codebook token ("▁fur"), not "fur"
    assert prompt == ("Answer with dog or cat.\n fur whiskers This is a cat.\n bark tail This is a dog.\n"
                      " fur paws This is a")
    assert not render_prompt(_episode(False), FROZEN, WORDS.__getitem__).startswith("Answer")


def test_pyramid_layers_and_class_lists():
    t = PromptTemplate.from_yaml(CONF / "arrow.yaml")
    layers = {0: [["animal"], ["fur", "cat"]], 1: [["animal"], ["dog", "bark"]], 2: [["animal"], ["paw", "fur"]]}
    prompt = render_prompt(_episode(), t, layers.__getitem__)
    assert prompt.splitlines()[1] == " animal | fur cat => cat"
    assert prompt.endswith("\n animal | paw fur =>")
    assert FROZEN.class_list(["a", "b", "c"]) == "a, b or c"


def test_every_config_template_renders():
    for path in sorted(CONF.glob("*.yaml")):
        t = PromptTemplate.from_yaml(path)
        prompt = render_prompt(_episode(), t, WORDS.__getitem__)
        assert "fur whiskers" in prompt and "cat" in prompt and "{" not in prompt, path.name
        # rank_loglik relies on: query item + answer text == the support item of that label
        before = t.query_item.split("{image}")[0]
        query = t.query_item.replace("{image}", ("" if before.endswith(" ") else " ") + "fur whiskers")
        assert query + t.answer_text("cat") in prompt, path.name


def test_embedding_images_give_segments():
    emb = {i: torch.full((2, 4), float(i)) for i in range(3)}
    prompt = render_prompt(_episode(), FROZEN, emb.__getitem__)
    assert isinstance(prompt, list)
    tensors = [s for s in prompt if isinstance(s, torch.Tensor)]
    texts = [s for s in prompt if isinstance(s, str)]
    assert [int(t[0, 0]) for t in tensors] == [0, 1, 2]
    assert texts[0] == "Answer with dog or cat.\n" and texts[-1] == " This is a"


def test_bad_templates_and_renderings():
    with pytest.raises(ValueError, match="must contain '{image}'"):
        PromptTemplate(name="x", support_item="This is a {label}.", query_item="{image} This is a")
    with pytest.raises(ValueError, match="set answer_item"):
        PromptTemplate(name="x", support_item="{image} is {label}", query_item="{image} what is it?")
    with pytest.raises(ValueError, match="unknown prompt template keys"):
        PromptTemplate.from_dict({"name": "x", "support_item": "{image} {label}", "query_item": "{image}", "foo": 1})
    with pytest.raises(ValueError, match="layer_separator ' \\|' must end with a space"):
        PromptTemplate(name="x", support_item="{image} {label}", query_item="{image}", layer_separator=" |")
    with pytest.raises(ValueError, match="word_separator"):
        PromptTemplate(name="x", support_item="{image} {label}", query_item="{image}", word_separator=",")
    with pytest.raises(TypeError, match="render_image must return"):
        render_prompt(_episode(), FROZEN, lambda i: 42)


@pytest.mark.parametrize("generation,answer", [
    (" cat. This is a dog.", "cat"), (" golden retriever\nnext", "golden retriever"), ("", ""), (None, ""),
    ("\n", ""), ("   ", ""), ("@@##", "@@##"), (" Cat", "Cat")])
def test_answer_extraction(generation, answer):
    assert extract_answer(generation) == answer


def test_matching_rules():
    assert is_correct("Cat", "cat") and is_correct(" ankle  boot", "ankle boot")
    assert not is_correct("boot", "ankle boot") and not is_correct("", "cat") and not is_correct("@@", "cat")
    assert not is_correct("cats", "cat", "exact") and not is_correct("cats", "cat", "prefix")
    assert is_correct("cat house", "cat", "prefix") and not is_correct("cat house", "cat", "exact")
    with pytest.raises(ValueError, match="unknown scoring"):
        is_correct("a", "a", "fuzzy")


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    s = accuracy_summary([True, False, True, True])
    assert s["accuracy"] == 0.75 and s["n"] == 4 and s["ci_low"] < 0.75 < s["ci_high"]

"""The few-shot engine: batching, scoring modes, JSONL records and resume after an interruption."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _tiny_lm import one_thread, tiny_llama, tiny_tokenizer
from spae.fewshot.engine import evaluate_episodes, summarize, summarize_choice
from spae.fewshot.episodes import sample_episodes
from spae.fewshot.prompts import PromptTemplate
from spae.llm.backends import LLMBackend
from spae.llm.dummy import DummyBackend
from spae.llm.hf_local import HFLocalBackend
from spae.llm.openai_http import OpenAIHTTPBackend

CONF = Path(__file__).resolve().parents[1] / "conf" / "prompt"
FROZEN = PromptTemplate.from_yaml(CONF / "frozen.yaml")
NAMES = ["cat", "dog", "ship", "car", "bird"]
LABELS = [i % 5 for i in range(50)]


def informative(i: int) -> list[str]:  # image words that name a class-specific feature
    return [f"f{LABELS[i]}", f"noise{i}"]


class CountingBackend(DummyBackend):
    """The dummy model, counting prompts; optionally 'crashes' after some generate calls."""

    def __init__(self, crash_after_calls: int | None = None):
        self.prompts, self.calls, self.crash_after = [], 0, crash_after_calls

    def generate(self, prompts, max_new_tokens, stop):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.prompts.extend(prompts)
        return super().generate(prompts, max_new_tokens, stop)


def _episodes(n=12, **kw):
    return sample_episodes(LABELS, 5, 1, n, seed=1, label_names=NAMES, **kw)


def test_informative_words_solve_the_task_and_garbage_does_not_crash():
    results = evaluate_episodes(DummyBackend(), _episodes(), informative, FROZEN)
    assert summarize(results)["accuracy"] == 1.0
    assert all(r.answer == r.target and r.prompt.startswith("Answer with") for r in results)
    garbage = evaluate_episodes(DummyBackend(), _episodes(), lambda i: ["@@", "##"], FROZEN)
    assert all(isinstance(r.answer, str) for r in garbage)
    assert summarize(garbage)["accuracy"] < 1.0


def test_rank_loglik_scoring_is_labelled_and_works():
    results = evaluate_episodes(DummyBackend(), _episodes(), informative, FROZEN, scoring="rank_loglik")
    assert all(r.scoring == "rank_loglik" and set(r.scores) == set(r.classes) for r in results)
    assert summarize(results)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown scoring"):
        evaluate_episodes(DummyBackend(), _episodes(), informative, FROZEN, scoring="fuzzy")


def test_jsonl_resume_after_interruption(tmp_path):
    path = tmp_path / "cell.jsonl"
    episodes = _episodes(10)
    reference = evaluate_episodes(DummyBackend(), episodes, informative, FROZEN)
    with pytest.raises(KeyboardInterrupt):
        evaluate_episodes(CountingBackend(crash_after_calls=2), episodes, informative, FROZEN, jsonl_path=path,
                          chunk_size=3)
    lines = path.read_text().splitlines()
    assert len(lines) == 6  # two finished chunks of 3 were kept
    with path.open("a") as f:  # a torn record, as if the process died mid-write
        f.write('{"key": "half')
    backend = CountingBackend()
    results = evaluate_episodes(backend, episodes, informative, FROZEN, jsonl_path=path, chunk_size=3)
    assert len(backend.prompts) == 4  # only the unfinished episodes ran
    assert [(r.key, r.answer, r.correct) for r in results] == [(r.key, r.answer, r.correct) for r in reference]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 10 and len({r["key"] for r in records}) == 10
    assert all(r["prompt"] and "generation" in r for r in records)
    # a different template is a different evaluation: nothing is reused
    other = PromptTemplate.from_yaml(CONF / "arrow.yaml")
    backend = CountingBackend()
    evaluate_episodes(backend, episodes, informative, other, jsonl_path=path)
    assert len(backend.prompts) == 10
    # resume=False starts the file afresh
    backend = CountingBackend()
    evaluate_episodes(backend, episodes, informative, FROZEN, jsonl_path=path, resume=False)
    assert len(backend.prompts) == 10 and len(path.read_text().splitlines()) == 10


_one_thread = pytest.fixture(scope="module")(one_thread)


def test_embedding_images_go_through_generate_from_embeds(_one_thread):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    backend = HFLocalBackend(model, tok, batch_size=4)
    dim = model.get_input_embeddings().weight.shape[1]
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(len(LABELS), 2, dim, generator=gen)
    episodes = _episodes(5)
    results = evaluate_episodes(backend, episodes, lambda i: table[i], FROZEN)
    assert all("<embeds 2x64>" in r.prompt for r in results)
    # the same as running each episode alone: batching does not change answers
    alone = [evaluate_episodes(backend, [e], lambda i: table[i], FROZEN)[0].generation for e in episodes]
    assert [r.generation for r in results] == alone


class TableLoglik(DummyBackend):
    """Generates like the dummy; log-likelihood of an answer text = a fixed score per class name."""

    def __init__(self, table: dict[str, float]):
        super().__init__()
        self.table = table

    def loglikelihood(self, pairs):
        return [self.table[c.strip(" .")] for _, c in pairs]


def test_constrained_choice_picks_the_class_with_the_highest_loglikelihood():
    table = {"cat": -3.0, "dog": -1.0, "ship": -7.0, "car": -0.5, "bird": -2.0}
    episodes = _episodes(10)
    results = evaluate_episodes(TableLoglik(table), episodes, informative, FROZEN, choice=True)
    for r, e in zip(results, episodes):
        assert r.scores == {c: table[c] for c in e.classes}
        assert r.choice == max(e.classes, key=table.get)
        assert r.choice_correct == (r.choice == e.answer)
        assert r.correct and r.answer == e.answer  # the headline is still the generated answer, untouched
    assert summarize_choice(results)["accuracy"] == sum(r.choice == r.target for r in results) / 10 < 1.0


def test_constrained_choice_unavailable_is_reported_with_its_reason_never_silently():
    class GenerateOnly(LLMBackend):
        name = "generate-only"

        def generate(self, prompts, max_new_tokens, stop):
            return DummyBackend().generate(prompts, max_new_tokens, stop)

    results = evaluate_episodes(GenerateOnly(), _episodes(4), informative, FROZEN, choice=True)
    assert all(r.choice_correct is None and "does not score log-likelihoods" in r.choice_unavailable for r in results)
    assert summarize(results)["accuracy"] == 1.0
    summary = summarize_choice(results)
    assert summary["n"] == 0 and "does not score log-likelihoods" in summary["unavailable"]
    http = OpenAIHTTPBackend(model_id="m")
    assert "given continuations" in http.choice_scoring_unavailable()
    with pytest.raises(ValueError, match="given continuations"):
        evaluate_episodes(http, _episodes(2), informative, FROZEN, scoring="rank_loglik")

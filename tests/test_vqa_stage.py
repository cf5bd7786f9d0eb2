"""The VQA bench end to end through experiments.run (fast): real orchestration, items, prompts, JSONL records,
VQA accuracy and results; fake models/renderers, the rule-based dummy LLM, tiny local VQAv2-format data."""
from __future__ import annotations

import json

import pytest
from _incontext_fixtures import base_overrides, execute_with_fakes, install_fakes, tiny_captioned_vqa
from conftest import compose

import experiments.stages  # noqa: F401  (registers the stages)
from spae.tasks.vqa import normalize_answer, vqa_accuracy


@pytest.fixture
def vqa_cfg(tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    data = tiny_captioned_vqa(tmp_path / "data")

    def cfg(*extra, cache="cache", runs="runs"):
        return compose([*base_overrides(tmp_path, "vqa", cache, runs), "dataset@data.vqa=vqav2",
                        f"data.vqa.path={data}", "data.vqa.answer_column=answer", "data.vqa.train_split=train",
                        "data.vqa.eval_split=test", "bench.items=16", *extra])

    return cfg


def _records(root):
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()]
            for p in sorted(root.rglob("vqa_eval/*/records/*.jsonl"))}


def test_vqa_bench_scores_the_recorded_answers(vqa_cfg, tmp_path):
    results = json.loads(execute_with_fakes(vqa_cfg()).read_text())
    assert results["task"] == "vqa" and results["dataset"] == "vqav2"
    metrics = results["metrics"]["vqa_eval"]
    assert metrics["metric"] == "vqa_accuracy"
    records = _records(tmp_path / "cache")
    assert set(records) == set(metrics["methods"]) == {"spae-l2", "lqae", "clip_topk-k3"}
    items = [[(r["item_id"], r["question"], r["references"]) for r in rows] for rows in records.values()]
    assert all(i == items[0] for i in items) and len(items[0]) == 16
    for slug, m in metrics["methods"].items():
        rows = records[slug]
        assert all(len(r["references"]) == 10 for r in rows)  # every human answer, not the consensus
        assert m["vqa_accuracy"] == pytest.approx(sum(vqa_accuracy(r["answer"], r["references"]) for r in rows) / 16)
        assert sum(t["items"] for t in m["by_type"].values()) == 16 and set(m["by_type"]) <= {"yes/no", "other"}
        for r in rows:  # examples and the query each carry their question; the answer comes from an example
            assert r["prompt"].count("Question:") == 5 and r["prompt"].endswith(f"Question: {r['question']} Answer:")
            assert not r["answer"] or f"Answer: {r['answer']}." in r["prompt"]
    prior = metrics["answer_prior"]
    assert prior["answer"] in ("yes", "no", "red", "green", "blue") and 0 <= prior["vqa_accuracy"] <= 1
    # colour questions: the dummy copies the answer of an example with the query's colour word and question
    colour_rows = [r for r in records["clip_topk-k3"] if r["question"].startswith("what color")]
    assert colour_rows and metrics["methods"]["clip_topk-k3"]["by_type"]["other"]["vqa_accuracy"] > 0
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "In-context VQA" in md and "answer prior" in md and "| CLIP top-3 words |" in md
    assert "| method | vqa_accuracy |" in md and "10 human answers" in md
    assert len(list((tmp_path / "runs").rglob("vqa_eval/*.jsonl"))) == 3


def test_one_split_datasets_never_show_the_query_image(vqa_cfg, tmp_path):
    # VQAv2 on the hub has no train split: examples come from the evaluation split, never the query's image
    results = json.loads(execute_with_fakes(vqa_cfg("data.vqa.train_split=test")).read_text())
    assert results["metrics"]["vqa_eval"]["methods"]
    for rows in _records(tmp_path / "cache").values():
        for r in rows:
            assert len(r["prompt"].split("\n")) == 5 and len(r["example_images"]) == 4
            assert r["image"] not in r["example_images"] and all(k.startswith("q") for k in r["example_images"])
    # separate splits: the examples are training images
    other = json.loads(execute_with_fakes(vqa_cfg(cache="c2", runs="r2")).read_text())
    assert other["metrics"]["vqa_eval"]["methods"]
    assert all(k.startswith("x") for rows in _records(tmp_path / "c2").values() for r in rows for k in r["example_images"])
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "no separate training split" in md


def test_one_answer_per_question_is_reported_as_exact_match(vqa_cfg, tmp_path):
    # a dataset with one answer per question (as easy-VQA): scored and named exact match, never VQA accuracy
    results = json.loads(execute_with_fakes(vqa_cfg("data.vqa.reference_answers_column=null")).read_text())
    metrics = results["metrics"]["vqa_eval"]
    assert metrics["metric"] == "exact_match"
    for m in [*metrics["methods"].values(), metrics["answer_prior"]]:
        assert "exact_match" in m and "vqa_accuracy" not in m and "accuracy" not in m
    records = _records(tmp_path / "cache")
    for slug, m in metrics["methods"].items():
        rows = records[slug]
        assert all(len(r["references"]) == 1 for r in rows)
        hits = [normalize_answer(r["answer"]) == normalize_answer(r["references"][0]) for r in rows]
        assert m["exact_match"] == pytest.approx(sum(hits) / len(hits))
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "| method | exact_match |" in md and "not VQAv2 accuracy" in md and "VQA accuracy (VQAv2)" not in md

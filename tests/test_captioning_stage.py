"""The captioning bench end to end through experiments.run (fast): real orchestration, items, prompts, JSONL
with resume, metrics and results; fake models/renderers and CLIP, the rule-based dummy LLM, tiny local data."""
from __future__ import annotations

import json

import pytest
from _incontext_fixtures import base_overrides, execute_with_fakes, install_fakes, tiny_captioned_vqa
from conftest import compose

import experiments.stages  # noqa: F401  (registers the stages)
from tests._backend_spy import count_generate_calls
from spae.tasks.text_metrics import bleu4, cider_d, rouge_l


@pytest.fixture
def caption_cfg(tmp_path, monkeypatch):
    install_fakes(monkeypatch)
    data = tiny_captioned_vqa(tmp_path / "data")

    def cfg(*extra, cache="cache", runs="runs"):
        return compose([*base_overrides(tmp_path, "captioning", cache, runs), "~data.vqa",
                        "+dataset@data.captioning=coco_captions", "bench.data_role=captioning", f"data.captioning.path={data}",
                        "data.captioning.image_column=image", "data.captioning.caption_column=captions",
                        "+data.captioning.group_column=image_id", *extra])

    return cfg


def _records(root):
    """{method slug: records} of the one caption_eval stage folder under root (or of the folder root itself)."""
    paths = sorted(root.glob("records/*.jsonl")) or sorted(root.rglob("caption_eval/*/records/*.jsonl"))
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()] for p in paths}


def test_caption_bench_scores_every_method_on_the_same_items(caption_cfg, tmp_path):
    results = json.loads(execute_with_fakes(caption_cfg()).read_text())
    metrics = results["metrics"]["caption_eval"]
    assert metrics["caption_source"] == "real" and metrics["clip"] == "colour probe"
    assert set(metrics["methods"]) == {"spae-l2", "lqae", "clip_topk-k3"}  # stable ids, display names beside
    assert results["method_labels"] == {"spae-l2": "SPAE (2 tokens, layers 1-2)", "lqae": "LQAE (2 tokens, all layers)",
                                        "clip_topk-k3": "CLIP top-3 words"}
    records = _records(tmp_path / "cache")
    assert set(records) == {"spae-l2", "lqae", "clip_topk-k3"}
    firsts = [[(r["item_id"], r["references"]) for r in rows] for rows in records.values()]
    assert all(f == firsts[0] for f in firsts) and len(firsts[0]) == 10
    for slug, rows in records.items():  # the reported numbers are the metrics of the recorded answers
        m = metrics["methods"][slug]
        answers, refs = [r["answer"] for r in rows], [r["references"] for r in rows]
        assert m["bleu4"] == pytest.approx(bleu4(answers, refs)) and m["rouge_l"] == pytest.approx(rouge_l(answers, refs))
        assert m["cider_d"] == pytest.approx(cider_d(answers, refs)[0]) and m["items"] == 10
        assert -1.0 <= m["clip_score"] <= 1.0
        assert all(r["prompt"].count("Caption:") == 5 for r in rows)
    # the dummy copies the caption of an example whose words (here: the colour) match the query's
    for rows in records.values():
        for r in rows:
            lines = r["prompt"].split("\n")
            assert f"Caption: {r['answer']}." in r["prompt"]
            same_colour = [x for x in lines[:-1] if x.split()[0] == lines[-1].split()[0]]
            if same_colour:
                assert r["answer"].split()[1] == r["references"][0].split()[1]
    assert 0.8 < metrics["reference_clip_score"] <= 1.0
    assert all(m["clip_score"] <= metrics["reference_clip_score"] + 1e-6 for m in metrics["methods"].values())
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "In-context captioning" in md and "| CLIP top-3 words |" in md and "human-written" in md
    assert "BLEU-4 is 0 by construction here: no reference caption has 4 words (longest: 3)" in md
    assert len(list((tmp_path / "runs").rglob("caption_eval/*.jsonl"))) == 3


def test_templated_captions_are_labelled(caption_cfg, tmp_path):
    # no caption column, a label column: the data adapter templates "a photo of a red" (as easy-VQA's captions
    # are templated); the label reaches results.json and results.md
    results = json.loads(execute_with_fakes(caption_cfg("data.captioning.caption_column=null",
                                                        "+data.captioning.label_column=colour")).read_text())
    assert results["metrics"]["caption_eval"]["caption_source"] == "templated"
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "TEMPLATED" in md and "BLEU-4 is 0 by construction" not in md  # "a photo of a red": 5 words


def test_rerun_reuses_answers_and_more_items_extend_them(caption_cfg, tmp_path, monkeypatch):
    execute_with_fakes(caption_cfg())
    before = _records(tmp_path / "cache")
    calls = count_generate_calls(monkeypatch)
    execute_with_fakes(caption_cfg("force=[caption_eval]"))  # recomputed stage, same folder: every answer reused
    assert sum(calls) == 0 and _records(tmp_path / "cache") == before
    execute_with_fakes(caption_cfg("bench.items=12", runs="runs2"))  # another key: a new folder, all 3 x 12 asked
    assert sum(calls) == 3 * 12
    folders = {p.parent.parent for p in (tmp_path / "cache").rglob("caption_eval/*/records/*.jsonl")}
    assert len(folders) == 2
    grown = [_records(f) for f in folders if _records(f) != before]
    assert len(grown) == 1 and all(len(rows) == 12 for rows in grown[0].values())
    for slug, rows in before.items():  # prefix-stable items: the first 10 are the same items, same answers
        assert [(r["item_id"], r["answer"]) for r in grown[0][slug][:10]] == [(r["item_id"], r["answer"]) for r in rows]


def test_missing_role_and_frozen_without_local_llm_fail_clearly(caption_cfg):
    with pytest.raises(ValueError, match=r"evaluates data\.vqa"):
        execute_with_fakes(caption_cfg("bench.data_role=vqa"))  # the fixture's data setup has no vqa role
    with pytest.raises(ValueError, match="hf_local"):
        execute_with_fakes(caption_cfg("bench.compare=[{method: frozen}]"))

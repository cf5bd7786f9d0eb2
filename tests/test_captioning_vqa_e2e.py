"""Both in-context benches end to end with every real stage (data, codebook, CLIP, SPAE/LQAE/Frozen training,
evaluation) at toy size: a tiny random HF LLM (word-level tokenizer) as codebook source and reader, tiny
Fashion-MNIST idx files for pretraining, a tiny VQAv2/COCO-format dataset to evaluate, 2 training steps per
model. Slow: it trains four small models (once; the second bench reuses them)."""
from __future__ import annotations

import json

import pytest
from _data_fixtures import tiny_fashion_mnist
from _incontext_fixtures import tiny_captioned_vqa
from _llm_fixtures import save_tiny_lm
from conftest import compose
from test_fewshot_stage_e2e import METHODS, TINY

import experiments.stages  # noqa: F401  (registers the stages)
from experiments.run import execute

pytestmark = pytest.mark.slow


def test_captioning_and_vqa_benches_with_real_tiny_models(tmp_path):
    lm = save_tiny_lm(tmp_path / "lm")
    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=40, n_test=10)
    data = tiny_captioned_vqa(tmp_path / "data")
    spec = f"{{name: tiny, backend: hf_local, source: hf, model_id: '{lm}', dtype: float32}}"

    def cfg(bench, *extra):
        return compose([f"+bench={bench}", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}",
                        "logger=none", "llm=hf", f"llm.model_id={lm}", "llm.dtype=float32", "llm.name=tiny",
                        "~codebook.source", f"+codebook.source={spec}", "codebook.min_zipf=null",
                        f"data.pretrain.fashion_mnist.path={fm}", "~data.pretrain.easy_vqa", "~data.pretrain.openclipart", "~data.pretrain.tuxpaint", "~data.classification",
                        "~data.generation", "dataset@data.vqa=vqav2", f"data.vqa.path={data}",
                        "data.vqa.answer_column=answer", "data.vqa.train_split=train", "data.vqa.eval_split=test",
                        "+dataset@data.captioning=coco_captions", f"data.captioning.path={data}",
                        "data.captioning.image_column=image", "data.captioning.caption_column=captions",
                        "+data.captioning.group_column=image_id", "bench.items=4", "bench.shots=2",
                        "bench.llm_batch_size=4", *TINY, *METHODS, *extra])

    captions = json.loads(execute(cfg("captioning", "bench.data_role=captioning")).read_text())
    metrics = captions["metrics"]["caption_eval"]
    assert len(metrics["methods"]) == 5 and metrics["caption_source"] == "real"
    for m in metrics["methods"].values():
        assert m["items"] == 4 and 0 <= m["bleu4"] <= 1 and 0 <= m["rouge_l"] <= 1 and m["cider_d"] >= 0
    frozen = metrics["methods"]["frozen"]
    assert -1 <= frozen["clip_score"] <= 1
    vqa = json.loads(execute(cfg("vqa")).read_text())
    assert {"clip", "codebook", "pretrain_data", "eval_data"} <= set(vqa["stages_reused"])
    success = next((tmp_path / "cache" / "stages" / "vqa_eval").glob("*/_SUCCESS.json"))
    info = json.loads(success.read_text())["summary"]["methods"]
    assert all(m["model_reused"] for m in info.values() if m["model_stage"])  # the captioning bench trained them
    assert len({m["model_stage"] for m in info.values() if m["model_stage"]}) == 3
    methods = vqa["metrics"]["vqa_eval"]["methods"]
    assert len(methods) == 5 and all(0 <= m["vqa_accuracy"] <= 1 and m["items"] == 4 for m in methods.values())
    records = list((tmp_path / "runs").rglob("vqa_eval/frozen.jsonl"))
    assert records and "<embeds 2x" in json.loads(records[0].read_text().splitlines()[0])["prompt"]

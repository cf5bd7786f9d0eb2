"""The few-shot bench end to end with every real stage (data, codebook, CLIP, SPAE/LQAE/Frozen training,
evaluation) at toy size: a tiny random HF LLM (word-level tokenizer) as both codebook source and reader,
tiny Fashion-MNIST idx files, 2 training steps per model. Slow: it trains four small models."""
from __future__ import annotations

import json

import pytest
from _data_fixtures import tiny_fashion_mnist
from _llm_fixtures import save_tiny_lm
from conftest import compose

import experiments.stages  # noqa: F401  (registers the stages)
from experiments.pipeline import STAGES
from experiments.run import execute

pytestmark = pytest.mark.slow

TINY = ["model.image_size=16", "model.latent_size=4", "model.channels=[8,16,16]", "model.groups=4",
        "model.layers=[1,2,4]", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.max_time_s=null",
        "trainer.progress_bar=false", "trainer.checkpoint_every_n_steps=1", "clip.train.steps=2",
        "clip.train.batch_size=4", "clip.train.warmup_steps=1", "clip.train.checkpoint_every=1"]
METHODS = ["bench.methods.spae.loss.perceptual=none", "bench.methods.lqae.loss.perceptual=none",
           "bench.methods.spae.semantic.num_negatives=null", "bench.methods.frozen.backbone=conv",
           "bench.methods.frozen.pretrained_backbone=false", "bench.methods.frozen.images_seen_ratio=1.0",
           "bench.methods.frozen.batch_size=4", "bench.methods.frozen.heldout_images=2",
           "bench.methods.frozen.heldout_max_new_tokens=2", "bench.methods.frozen.image_size=16"]


def test_real_stages_train_once_and_the_bench_reuses_them(tmp_path):
    if "clip" not in STAGES:
        pytest.skip("the clip stage is not registered yet")
    lm = save_tiny_lm(tmp_path / "lm")
    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=40, n_test=40)
    spec = f"{{name: tiny, backend: hf_local, source: hf, model_id: '{lm}', dtype: float32}}"

    def cfg(*extra):
        return compose(["+bench=mini_imagenet", f"paths.cache_dir={tmp_path / 'cache'}",
                        f"paths.runs_dir={tmp_path / 'runs'}", "logger=none",
                        "llm=hf", f"llm.model_id={lm}", "llm.dtype=float32", "llm.name=tiny",
                        "~codebook.source", f"+codebook.source={spec}", "codebook.min_zipf=null",
                        f"data.pretrain.fashion_mnist.path={fm}", f"data.classification.path={fm}",
                        "~data.pretrain.easy_vqa", "~data.pretrain.openclipart", "~data.pretrain.tuxpaint", "~data.vqa", "~data.generation",
                        "bench.max_episodes=4", "bench.llm_batch_size=4", *TINY, *METHODS, *extra])

    results = json.loads(execute(cfg()).read_text())
    metrics = results["metrics"]["fewshot_eval"]
    # SPAE 5 and 21 tokens, LQAE, Frozen, CLIP top-5: keyed by stable id, the display names beside them
    assert set(metrics) == set(results["method_labels"]) == {"spae-l2", "spae-l3", "lqae", "frozen", "clip_topk-k5"}
    assert results["method_labels"]["spae-l2"] == "SPAE (5 tokens, layers 1-2)"
    assert all(v["episodes"] == 4 for per_cell in metrics.values() for k, v in per_cell.items() if k != "average")
    summary = json.loads(next((tmp_path / "cache" / "stages" / "fewshot_eval").glob("*/_SUCCESS.json")).read_text())
    info = summary["summary"]["methods"]
    assert {m["tokens_per_image"] for m in info.values() if m["method"] == "spae"} == {5, 21}
    assert next(m for m in info.values() if m["method"] == "frozen")["tokens_per_image"] == 2
    trained = {m["model_stage"] for m in info.values() if m["model_stage"]}
    assert len(trained) == 3  # spae, lqae, frozen: one model each, SPAE's shared by its two entries
    # every trained method read the same pretraining images (2 steps x 4), listed in results.json and the report
    budgets = results["training"]["fewshot_eval"]
    assert {m: b["images_seen"] for m, b in budgets.items()} == {"spae": 8, "lqae": 8, "frozen": 8}
    assert budgets["frozen"]["images_seen_ratio"] == 1.0 and summary["summary"]["fairness"]["training"] == budgets
    assert "Pretraining images seen (steps x effective batch): frozen 8, lqae 8, spae 8." in \
        summary["summary"]["fairness"]["note"]
    # another bench (other cells) reuses every trained model
    again = json.loads(execute(cfg("bench.cells=[{n_way: 2, shots: 1, repeats: 0, task_induction: false}]")).read_text())
    info2 = json.loads(next(p for p in (tmp_path / "cache" / "stages" / "fewshot_eval").glob("*/_SUCCESS.json")
                            if json.loads(p.read_text())["summary"]["cells"] == ["2way-noti-1shot-0rep"])
                       .read_text())["summary"]["methods"]
    assert {m["model_stage"] for m in info2.values() if m["model_stage"]} == trained
    assert not any(m["model_reused"] for m in info.values() if m["model_stage"])
    assert all(m["model_reused"] for m in info2.values() if m["model_stage"])
    assert set(again["metrics"]["fewshot_eval"]) == set(metrics)
    models = {"train[spae]", "train[lqae]", "frozen_train[frozen]"}  # DAG nodes: timed, then reused
    assert models <= set(results["stage_seconds"]) - set(results["stages_reused"])
    assert models <= set(again["stages_reused"])

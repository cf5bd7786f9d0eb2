"""The frozen_train stage end to end through experiments.run.execute: tiny data, tiny LLM folder, 3 steps."""
from __future__ import annotations

import json

import pytest
from _data_fixtures import tiny_fashion_mnist
from _tiny_lm import one_thread
from conftest import compose
from test_frozen_baseline import peaky_llama

from experiments.run import execute
from experiments.stages.frozen_train import frozen_method
from spae.frozen_baseline import load_frozen_encoder, prefix_embeddings

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


def overrides(tmp_path, fm, llm_dir) -> list[str]:
    return ["+bench=smoke", "bench.stages=[frozen_train]", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.runs_dir={tmp_path / 'runs'}", "logger=none", "trainer.progress_bar=false",
            f"data.pretrain.fashion_mnist.path={fm}", f"data.classification.path={fm}",
            "~data.pretrain.easy_vqa", "~data.pretrain.openclipart", "~data.pretrain.tuxpaint", "~data.vqa", "~data.generation",
            "llm=hf", f"llm.model_id={llm_dir}", "llm.dtype=float32",
            "method=frozen", "method.backbone=conv", "method.pretrained_backbone=false", "method.image_size=32",
            "trainer.max_steps=3", "trainer.batch_size=4", "method.batch_size=4", "method.images_seen_ratio=1.0",
            "method.heldout_images=4",
            "method.heldout_max_new_tokens=3", "method.checkpoint_every_n_steps=1"]


def test_frozen_train_stage_trains_saves_checks_and_is_reused(tmp_path):
    from _tiny_lm import tiny_tokenizer
    from PIL import Image

    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=24, n_test=10)
    tok = tiny_tokenizer()
    llm_dir = tmp_path / "llm"
    peaky_llama(len(tok)).save_pretrained(llm_dir)
    tok.save_pretrained(llm_dir)

    results = json.loads(execute(compose(overrides(tmp_path, fm, llm_dir))).read_text())
    metrics = results["metrics"]["frozen_train"]
    for key in ("heldout_loss_before", "heldout_loss_after", "heldout_caption_names_class"):
        assert set(metrics[key]) == {"all", "classification/fashion_mnist"}
    assert 0.0 <= metrics["heldout_caption_names_class"]["all"] <= 1.0
    # what the run read is in results.json whatever the bench's targets, images per class included
    assert results["metrics"]["pretrain_data"]["pretrain/fashion_mnist"]["images_per_class"]["t-shirt"] == 3

    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "frozen_train").iterdir() if p.is_dir()]
    summary = json.loads((stage_dir / "_SUCCESS.json").read_text())["summary"]
    # the 5 seen classes of the 24 train images (data.class_split): 12
    assert summary["steps"] == 3 and summary["pretrain_images"] == 12 and summary["heldout_images"] == 4
    # its steps follow from the tokenizers' budget: 3 steps x 4 images, as many images as they read
    assert summary["images_seen"] == summary["reference_images"] == 12 and summary["images_seen_ratio"] == 1.0
    assert "12 images seen (1 x the tokenizers' 12)" in summary["markdown"]
    assert len(summary["samples"]) == 4 and "| classification/fashion_mnist |" in summary["markdown"]
    assert (stage_dir / "checkpoints" / "last.ckpt").is_file()
    encoder = load_frozen_encoder(stage_dir, expected_llm="hf")
    assert prefix_embeddings(encoder, [Image.new("L", (28, 28))]).shape == (1, 2, 32)

    again = json.loads(execute(compose(overrides(tmp_path, fm, llm_dir))).read_text())
    assert again["stages_reused"] == ["eval_data", "frozen_train", "pretrain_data"]


def test_frozen_train_refuses_other_methods_and_remote_llms():
    with pytest.raises(ValueError, match="method=frozen"):
        frozen_method({"method": {"name": "spae", "kind": "tokenizer"}, "llm": {"backend": "hf_local"}})
    with pytest.raises(ValueError, match="hf_local"):
        frozen_method({"method": {"name": "frozen", "kind": "prefix"}, "llm": {"name": "openai", "backend": "openai_http"}})

"""The generation_eval stage end to end at toy size: a tiny random tokenizer over a random word codebook,
a tiny random CLIP, the rule-based dummy LLM (which copies the in-context example it matches best), tiny
labelled images. The stage runs through the pipeline, its inputs (the data, the codebook, the tokenizer it
declares as `train[spae]`) written by substitute stages. Checks the results contract, the grids, the counts
and resume from saved generations."""
from __future__ import annotations

import copy
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import experiments.stages.generation_eval as gen_mod
from experiments.pipeline import run_stages
from spae.clip.handle import ClipHandle
from spae.codebook import Codebook
from spae.data import save_prepared
from spae.data.schema import from_columns
from spae.tokenizer import SPAETokenizer, save_tokenizer
from tests.tokenizer_helpers import TINY_METHOD, TINY_MODEL, random_codebook

CLASSES = ["zero", "one", "two"]
TINY_CLIP = {"embed_dim": 24,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def labelled_images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    images = [Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8) // (1 + l)).convert("RGB")
              for l in labels]
    return from_columns(images, labels=labels, label_names=CLASSES)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    torch.manual_seed(0)
    emb, words = random_codebook(64, 16)
    tokenizer = SPAETokenizer({"model": copy.deepcopy(TINY_MODEL), "method": copy.deepcopy(TINY_METHOD),
                               "seed": 0, "offline": True}, emb, words, with_perceptual=False).eval()
    monkeypatch.setattr(gen_mod, "training_pool", lambda cfg, size: labelled_images(24, 0))
    clip = ClipHandle(model=open_clip.CLIP(**TINY_CLIP).eval(),
                      tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16), image_size=32,
                      mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), identity="tiny-random")
    import spae.clip.loading

    monkeypatch.setattr(spae.clip.loading, "load_clip_from_stage", lambda stage_dir, cache_dir=None: clip)
    cfg = {
        "seed": 0, "offline": True, "paths": {"cache_dir": str(tmp_path / "cache")},
        "data": {"name": "tiny", "generation": {"name": "digits"}},
        "clip": {"name": "tiny", "templates": ["a photo of {word}."]}, "trainer": {"batch_size": 2},
        "llm": {"name": "dummy", "backend": "dummy"},
        "bench": {"name": "generation", "compare": ["spae"], "methods": {"spae": {"kind": "tokenizer"}},
                  "layers": 2, "tokens_per_word": 3, "eval_images": 12, "real_images": 12, "fid": "efficientnet_lite0",
                  "fid_image_size": 32, "llm_batch_size": 4, "format": {"layer_tag": "L{n}:"},
                  "class_conditional": {"examples": 6, "samples_per_class": 2},
                  "denoising": {"examples": 3, "example_rate_high": 0.6, "example_rate_low": 0.2,
                                "query_rate": 0.4, "queries": 4}},
    }

    def eval_data(ctx):
        save_prepared(labelled_images(12, 1), ctx.out_dir, "generation", "digits")
        return {}

    def codebook(ctx):
        Codebook(emb, words, torch.arange(len(words)), "random").save(ctx.out_dir)
        return {}

    def trained_spae(ctx):
        save_tokenizer(tokenizer, ctx.out_dir)
        return {}

    # the stages generation_eval reads, written here instead of computed (the CLIP is the loader's, above)
    substitutes = {"pretrain_data": lambda ctx: {}, "clip": lambda ctx: {}, "eval_data": eval_data,
                   "codebook": codebook, "train[spae]": trained_spae}
    return cfg, substitutes, tmp_path


def run(cfg, substitutes, tmp_path, force=()):
    """The generation_eval node's result (it runs last: after the data, codebook, clip and train[spae] nodes)."""
    results = run_stages(["generation_eval"], cfg, tmp_path / "cache", tmp_path / "run", force=force,
                         substitutes=substitutes)
    assert list(results)[-2:] == ["train[spae]", "generation_eval"]
    return results["generation_eval"]


def test_generation_stage_end_to_end(setup):
    cfg, substitutes, tmp_path = setup
    result = run(cfg, substitutes, tmp_path)
    out = result.summary
    json.dumps(out)  # the summary is JSON-able
    cc, dn = out["metrics"]["spae"]["class_conditional"], out["metrics"]["spae"]["denoising"]
    assert cc["queries"] == 6 and cc["tokens_per_image"] == 5 and cc["tokens"] == 30
    # the dummy LLM continues the best-matching example line, so every word is a codebook word and every
    # generated pyramid is a copy of an in-context example of the class
    assert cc["valid_word_rate"] == 1.0 and cc["replaced_rate"] == 0.0 and cc["copied_example_rate"] == 1.0
    assert 0.0 <= cc["clip_accuracy"] <= 1.0 and cc["chance"] == pytest.approx(1 / 3, abs=1e-3)
    assert cc["fid_generated"] >= 0 and cc["fid_reconstructed"] >= 0
    assert dn["queries"] == 4 and dn["token_accuracy_corrupted_input"] == pytest.approx(0.6)  # round(0.4 x 5) = 2
    assert 0.0 <= dn["token_accuracy"] <= 1.0 and dn["valid_word_rate"] == 1.0
    assert dn["example_corruption"] == pytest.approx([0.6, 0.4, 0.2])
    for name in ("generation_class_spae.png", "generation_denoise_spae.png"):
        assert Image.open(result.dir / name).size[0] > 0
        assert (tmp_path / "run" / "generation_eval" / name).is_file()
    assert "FID-style (EfficientNet-lite0 features, not Inception)" in out["markdown"]
    assert "| generated by the LLM |" in out["markdown"]
    details = out["details"]["spae"]["class_conditional"]["samples"][0]
    assert [len(l) for l in details["words"]] == [1, 4]


def test_generation_stage_resumes_from_saved_generations(setup, monkeypatch):
    cfg, substitutes, tmp_path = setup
    first = run(cfg, substitutes, tmp_path).summary
    calls = []

    def no_llm(*args, **kwargs):
        calls.append(1)
        raise AssertionError("saved generations should be reloaded, not regenerated")

    monkeypatch.setattr("spae.generation.generate_layers", no_llm)
    again = run(cfg, substitutes, tmp_path, force=("generation_eval",))
    assert not again.cached
    again = again.summary
    assert not calls
    assert again["metrics"]["spae"]["class_conditional"]["valid"] == first["metrics"]["spae"]["class_conditional"]["valid"]


def test_generation_stage_rejects_bad_configs(setup):
    cfg, substitutes, tmp_path = setup
    bad = copy.deepcopy(cfg)
    bad["bench"]["layers"] = 9
    with pytest.raises(ValueError, match="bench.layers=9"):
        run(bad, substitutes, tmp_path)
    bad = copy.deepcopy(cfg)
    bad["bench"]["compare"] = ["frozen"]
    with pytest.raises(ValueError, match="needs a tokenizer method"):
        run(bad, substitutes, tmp_path)


def test_compare_entries():
    methods = {"spae": {"kind": "tokenizer"}, "lqae": {"kind": "tokenizer"}, "frozen": {"kind": "prefix"}}
    out = gen_mod.compared({"compare": ["spae", {"method": "lqae", "layers": 1}], "methods": methods})
    assert [(e["method"], e["layers"], e["slug"]) for e in out] == [("spae", None, "spae"), ("lqae", 1, "lqae-l1")]
    with pytest.raises(ValueError, match="unknown keys"):
        gen_mod.compared({"compare": [{"method": "spae", "k": 5}], "methods": methods})
    with pytest.raises(ValueError, match="is empty"):
        gen_mod.compared({"compare": [], "methods": methods})

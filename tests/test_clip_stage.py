"""The `clip` stage with a real-CLIP config (an open_clip file), and the clip_quality bench end to end (slow)."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

from experiments.pipeline import StageContext
from spae.clip.open_clip_loader import ClipConfigError, save_open_clip_checkpoint
from spae.clip.scorer import RelevanceScorer

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _ctx(tmp_path, clip_spec):
    out = tmp_path / "clip_stage"
    out.mkdir()
    cfg = {"clip": clip_spec, "paths": {"cache_dir": str(tmp_path / "cache")}, "seed": 0}
    return StageContext(cfg=cfg, out_dir=out, run_dir=tmp_path / "run")


def test_open_clip_stage_records_identity_and_scorer_loads_from_it(tmp_path):
    import experiments.stages.clip as clip_stages

    folder = tmp_path / "cfgs"
    folder.mkdir()
    (folder / "spae-stage-tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder)
    weights = tmp_path / "tiny.safetensors"
    save_open_clip_checkpoint(open_clip.create_model("spae-stage-tiny"), weights, quick_gelu=False)
    spec = {"name": "tiny", "kind": "open_clip", "arch": "spae-stage-tiny", "pretrained": str(weights),
            "templates": ["a photo of {word}."]}
    ctx = _ctx(tmp_path, spec)
    summary = clip_stages.clip_stage(ctx)
    assert summary["identity"].startswith("open_clip:spae-stage-tiny:file-")
    scorer = RelevanceScorer.from_stage(ctx.out_dir, ["cat", "dog", "boot"], spec["templates"],
                                        cache_dir=tmp_path / "cache", progress=False)
    assert scorer.normalized_scores(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert scorer.cache_path.is_file()


def test_open_clip_stage_fails_fast_on_a_quickgelu_mismatch(tmp_path):
    import experiments.stages.clip as clip_stages

    with pytest.raises(ClipConfigError, match="QuickGELU"):
        clip_stages.clip_stage(_ctx(tmp_path, {"kind": "open_clip", "arch": "ViT-B-32", "pretrained": "openai",
                                               "templates": ["{word}"]}))


@pytest.mark.slow
def test_clip_quality_bench_meets_the_issue_targets(tmp_dirs):
    """Cold: trains the embedded CLIP (minutes on 2 cores), embeds the Gemma vocabulary, evaluates."""
    from experiments.run import execute
    from conftest import compose

    path = execute(compose(["+bench=clip_quality", "logger=none", *tmp_dirs]))
    metrics = json.loads(path.read_text())["metrics"]["clip_quality"]
    # the open world: names of classes whose images the CLIP never saw, chance 0.20
    assert metrics["fashion_mnist_held_out"]["zero_shot_accuracy"] >= 0.40
    assert metrics["fashion_mnist_held_out"]["classes"] == ["trouser", "dress", "bag", "coat", "sneaker"]
    assert metrics["fashion_mnist_seen"]["zero_shot_accuracy"] >= 0.80
    assert metrics["mnist_digits"]["images"] > 0 and "zero_shot_accuracy" in metrics["mnist_digits"]
    assert metrics["easy_vqa_shapes"]["zero_shot_accuracy"] >= 0.95
    clip_art = metrics["retrieval"]["openclipart_test"]
    assert clip_art["recall_at_5"] > 5 * clip_art["chance_at_1"]  # well above chance among ~600 captions
    # meaning over spelling on the held-out classes: related words rank above chance (0.5)
    assert metrics["fashion_mnist_held_out"]["semantic"]["mean_percentile"] < 0.3

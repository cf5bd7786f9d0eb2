"""The train and recon_eval stages on tiny local data, a tiny random codebook and a stand-in relevance
function (the CLIP stage is tested elsewhere): artefacts, metrics, markdown, resume and reuse."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.pipeline import StageContext, StageResult
from spae.codebook import Codebook
from spae.data import save_prepared
from spae.data.schema import from_columns
from tests.tokenizer_helpers import TINY_METHOD, TINY_MODEL, fake_relevance


def tiny_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def stage_inputs(tmp_path, monkeypatch):
    data_dir, cb_dir = tmp_path / "data", tmp_path / "codebook"
    save_prepared(from_columns(tiny_images(24, 0)), data_dir, "pretrain", "shapes")
    save_prepared(from_columns(tiny_images(12, 1), labels=[i % 2 for i in range(12)], label_names=["cat", "dog"]),
                  data_dir, "classification", "pets")
    gen = torch.Generator().manual_seed(0)
    Codebook(torch.randn(64, 16, generator=gen), [f"word{i}" for i in range(64)], torch.arange(64),
             "random").save(cb_dir)
    from experiments import clip_relevance

    monkeypatch.setattr(clip_relevance, "relevance_function", lambda ctx, codebook: fake_relevance(codebook.size))
    cfg = {
        "model": copy.deepcopy(TINY_MODEL), "method": copy.deepcopy(TINY_METHOD), "seed": 0, "offline": True,
        "trainer": {"accelerator": "cpu", "max_steps": 3, "batch_size": 4, "checkpoint_every_n_steps": 1,
                    "progress_bar": False, "log_every_n_steps": 1},
        "data": {"pretrain": {"shapes": {}}, "classification": {"name": "pets"}},
        "bench": {"recon": {"roles": ["classification"], "batch_size": 5, "word_examples": 3, "grid_images": 4}},
        "paths": {"cache_dir": str(tmp_path / "cache")},
    }
    inputs = {"pretrain_data": StageResult("pretrain_data", "k", data_dir, {}, True, 0.0),
              "eval_data": StageResult("eval_data", "k", data_dir, {}, True, 0.0),
              "codebook": StageResult("codebook", "k", cb_dir, {}, True, 0.0),
              "clip": StageResult("clip", "k", tmp_path / "clip", {}, True, 0.0)}
    return cfg, inputs, tmp_path


def test_train_then_recon_eval(stage_inputs):
    from experiments.stages.recon_eval import recon_eval_stage
    from experiments.stages.train import train_stage

    cfg, inputs, tmp_path = stage_inputs
    train_dir = tmp_path / "train"
    summary = train_stage(StageContext(cfg, train_dir, tmp_path / "run", inputs))
    assert summary["steps"] == 3 and summary["describe"]["cumulative_tokens"] == [1, 5, 21]
    assert (train_dir / "tokenizer.safetensors").is_file() and (train_dir / "checkpoints" / "last.ckpt").is_file()
    assert set(summary["step_seconds"]) >= {"encoder", "quantizer", "decoder", "semantic_loss", "backward"}
    # a finished-but-unmarked stage folder is reused, not retrained
    assert train_stage(StageContext(cfg, train_dir, tmp_path / "run", inputs)) == summary

    eval_inputs = {**inputs, "train": StageResult("train", "k", train_dir, summary, True, 0.0)}
    out = recon_eval_stage(StageContext(cfg, tmp_path / "eval", tmp_path / "run", eval_inputs))
    m = out["metrics"]["classification/pets"]
    assert m["images"] == 12
    assert {f"psnr_l{l}" for l in (1, 2, 3)} <= m.keys() and 0 <= m["relevance_l1"] <= 1
    assert m["codes_used"] >= m["codes_used_l1"] >= 1
    assert len(out["examples"]["classification/pets"]) == 3
    assert out["examples"]["classification/pets"][0]["label"] in ("cat", "dog")
    assert "| layers | tokens | PSNR (mean per image) |" in out["markdown"] and "dog" in out["markdown"]
    assert (tmp_path / "eval" / "recon_grid_classification.png").is_file()


def test_train_stage_rejects_other_methods(stage_inputs):
    from experiments.stages.train import train_stage

    cfg, inputs, tmp_path = stage_inputs
    cfg["method"] = {"name": "frozen", "kind": "prefix"}
    with pytest.raises(ValueError, match="method=spae or method=lqae"):
        train_stage(StageContext(cfg, tmp_path / "train", tmp_path / "run", inputs))


def test_a_binding_time_cap_pauses_training_and_a_rerun_finishes_it(stage_inputs, monkeypatch):
    """A cap that stops training early must not leave a shorter model behind as if it were the configured one."""
    import spae.tokenizer as tok_mod
    from experiments.stages.train import train_stage
    from spae.training import TrainingPaused
    from spae.errors import UserError

    cfg, inputs, tmp_path = stage_inputs
    reference = train_stage(StageContext(cfg, tmp_path / "ref", tmp_path / "run", inputs))
    capped = copy.deepcopy(cfg)
    capped["trainer"]["max_time_s"] = 1e-6  # binds after the first batch
    paused_dir = tmp_path / "paused"
    with pytest.raises(TrainingPaused, match=r"trainer.max_time_s.*rerun the same command") as err:
        train_stage(StageContext(capped, paused_dir, tmp_path / "run", inputs))
    assert isinstance(err.value, UserError)
    assert (paused_dir / "checkpoints" / "last.ckpt").is_file() and not (paused_dir / tok_mod.WEIGHTS_FILE).exists()
    resumed = train_stage(StageContext(cfg, paused_dir, tmp_path / "run", inputs))
    assert resumed["steps"] == reference["steps"] == 3 and resumed["resumed"]
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "ref" / tok_mod.WEIGHTS_FILE)), load_file(str(paused_dir / tok_mod.WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recon_eval_reads_a_flat_folder_of_unlabelled_photos(stage_inputs):
    """Reconstruction needs no labels: data=imagefolder on a folder of photos without class sub-folders."""
    from experiments.stages.recon_eval import recon_eval_stage
    from experiments.stages.train import train_stage
    from spae.data import load_split

    cfg, inputs, tmp_path = stage_inputs
    cfg["trainer"]["max_steps"] = 1
    summary = train_stage(StageContext(cfg, tmp_path / "train", tmp_path / "run", inputs))
    photos = tmp_path / "holiday"
    photos.mkdir()
    for i, image in enumerate(tiny_images(5, 3)):
        image.save(photos / f"IMG_train_{i:04d}.png")
    spec = {"name": "holiday", "adapter": "imagefolder", "path": str(photos), "train_split": "train",
            "eval_split": "test", "cache_dir": str(tmp_path / "hf")}
    eval_dir = tmp_path / "eval_data"
    save_prepared(load_split(spec, "eval"), eval_dir, "classification", "holiday")
    cfg["data"]["classification"] = {"name": "holiday"}
    eval_inputs = {**inputs, "eval_data": StageResult("eval_data", "k", eval_dir, {}, True, 0.0),
                   "train": StageResult("train", "k", tmp_path / "train", summary, True, 0.0)}
    out = recon_eval_stage(StageContext(cfg, tmp_path / "eval", tmp_path / "run", eval_inputs))
    assert out["metrics"]["classification/holiday"]["images"] == 5
    assert all(ex["label"] == "" for ex in out["examples"]["classification/holiday"])
    assert Image.open(tmp_path / "eval" / "recon_grid_classification.png").size[0] > 0

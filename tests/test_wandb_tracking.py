"""W&B tracking (issue 18, item 6), offline: one run per trained model in the bench run's group, step axes,
the final weights as a model artifact, pyramid images at the logger's interval, and the dashboard spec."""
from __future__ import annotations

import copy

import pytest
import torch

from experiments.pipeline import StageContext
from spae.logging_utils import RunLogger
from tests._wandb_offline import offline_runs
from tests.test_tokenizer_stages import stage_inputs  # noqa: F401  (fixture: tiny data, codebook, relevance)


def logger_cfg(cfg: dict, **logger) -> dict:
    return {**copy.deepcopy(cfg), "logger": {"kind": "wandb", "mode": "offline", "project": "spae-test",
                                             "group": "sweep-a", **logger}}


def train(cfg: dict, inputs, out_dir, bench: RunLogger | None):
    from experiments.stages.train import train_stage

    return train_stage(StageContext(cfg, out_dir, bench.run_dir if bench else out_dir.parent, inputs, logger=bench))


def lqae(cfg: dict) -> dict:
    out = copy.deepcopy(cfg)
    out["method"].update(name="lqae", quantizer="vq", single_layer=True, semantic_loss=False)
    return out


@pytest.fixture
def two_methods(stage_inputs):  # noqa: F811
    """SPAE and LQAE trained inside one offline W&B bench run (as a few-shot run does), images every 2 batches."""
    cfg, inputs, tmp_path = stage_inputs
    cfg = logger_cfg(cfg, image_every_n_steps=2, image_count=3)
    run_dir = tmp_path / "run"
    with RunLogger.from_config(cfg, run_dir, "fewshot-bench-abc") as bench:
        train(cfg, inputs, tmp_path / "stages" / "train" / "spaekey0000000001", bench)
        train(lqae(cfg), inputs, tmp_path / "stages" / "train" / "lqaekey0000000002", bench)
        bench.log_metrics({"fewshot": {"spae-l2": {"2way": {"accuracy": 0.5}}}})
    return {run.name: run for run in offline_runs(run_dir)}, tmp_path


def test_each_trained_model_gets_its_own_run_in_the_bench_group(two_methods):
    runs, _ = two_methods
    assert set(runs) == {"fewshot-bench-abc", "spae-train-spaekey0000000001", "lqae-train-lqaekey0000000002"}
    assert {run.group for run in runs.values()} == {"sweep-a"}
    assert runs["fewshot-bench-abc"].job_type == "eval"
    spae, lqae_run = runs["spae-train-spaekey0000000001"], runs["lqae-train-lqaekey0000000002"]
    assert spae.job_type == lqae_run.job_type == "train"
    assert spae.config["tracking"] == {"stage": "train", "stage_key": "spaekey0000000001", "method": "spae"}
    # each run holds only its own model's curves: the bench run has no train/* key at all
    for run, method in ((spae, "spae"), (lqae_run, "lqae")):
        losses = [row["train/loss"] for row in run.history if "train/loss" in row]
        assert len(losses) == 3 and run.config["method"]["name"] == method
    assert not any(k.startswith("train/") for row in runs["fewshot-bench-abc"].history for k in row)
    assert any(row.get("fewshot/spae-l2/2way/accuracy") == 0.5 for row in runs["fewshot-bench-abc"].history)


def test_step_axes_are_defined(two_methods):
    runs, _ = two_methods
    spae = runs["spae-train-spaekey0000000001"]
    assert spae.metrics["trainer/global_step"] == ""
    assert spae.metrics["train/*"] == spae.metrics["images/*"] == "trainer/global_step"
    assert all("trainer/global_step" in row for row in spae.history if "train/loss" in row)
    bench = runs["fewshot-bench-abc"]
    assert bench.metrics["*"] == "eval/step"
    assert [row["eval/step"] for row in bench.history if "eval/step" in row] == [1]


def test_final_weights_are_a_model_artifact_with_the_stage_key(two_methods):
    runs, tmp_path = two_methods
    (artifact,) = runs["spae-train-spaekey0000000001"].artifacts
    assert artifact["name"] == "spae-train-spaekey0000000001" and artifact["type"] == "model"
    assert artifact["files"] == ["tokenizer.json", "tokenizer.safetensors"]
    folder = tmp_path / "stages" / "train" / "spaekey0000000001"
    assert artifact["local_paths"] == [str(folder / "tokenizer.json"), str(folder / "tokenizer.safetensors")]
    assert artifact["metadata"]["stage_key"] == "spaekey0000000001" and artifact["metadata"]["stage"] == "train"
    assert artifact["metadata"]["group"] == "sweep-a" and artifact["metadata"]["summary"]["steps"] == 3
    assert runs["fewshot-bench-abc"].artifacts == []


def test_pyramid_images_are_logged_at_the_interval_and_at_the_end(two_methods):
    runs, _ = two_methods
    for name, layers in (("spae-train-spaekey0000000001", 3), ("lqae-train-lqaekey0000000002", 1)):
        rows = [row for row in runs[name].history if "images/layer1/_type" in row]
        # 3 batches, every 2: after batch 2 and the final batch 3 (global step = 2 optimisers x batches)
        assert [row["trainer/global_step"] for row in rows] == [4, 6], name
        for row in rows:
            assert {f"images/layer{l}/count" for l in range(1, layers + 1)} <= row.keys()
            assert row["images/layer1/count"] == 3 and f"images/layer{layers + 1}/count" not in row
            assert row["images/layer1/captions"][0].startswith("layers 1-1: word")
        assert "images/original/count" in rows[0] and "images/original/count" not in rows[1]


def test_drawing_images_leaves_the_training_unchanged(stage_inputs):  # noqa: F811
    """The default logger draws images during training: the trained weights must be those of a run without."""
    from safetensors.torch import load_file

    cfg, inputs, tmp_path = stage_inputs
    drawn = logger_cfg(cfg, image_every_n_steps=1)
    with RunLogger.from_config(drawn, tmp_path / "run", "bench") as bench:
        train(drawn, inputs, tmp_path / "with_images", bench)
    train({**cfg, "logger": {"kind": "none"}}, inputs, tmp_path / "without", None)
    a = load_file(str(tmp_path / "with_images" / "tokenizer.safetensors"))
    b = load_file(str(tmp_path / "without" / "tokenizer.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (run,) = [r for r in offline_runs(tmp_path / "run") if r.job_type == "train"]
    assert [row["trainer/global_step"] for row in run.history if "images/layer1/_type" in row] == [2, 4, 6]


def test_images_off_and_no_wandb(stage_inputs):  # noqa: F811
    cfg, inputs, tmp_path = stage_inputs
    off = logger_cfg(cfg, image_every_n_steps=0)
    with RunLogger.from_config(off, tmp_path / "run", "bench") as bench:
        train(off, inputs, tmp_path / "train", bench)
    (run,) = [r for r in offline_runs(tmp_path / "run") if r.job_type == "train"]
    assert not any("images/layer1/_type" in row for row in run.history) and len(run.artifacts) == 1
    csv = {**cfg, "logger": {"kind": "csv"}}
    with RunLogger.from_config(csv, tmp_path / "csv_run", "bench") as bench:
        train(csv, inputs, tmp_path / "csv_train", bench)
    assert not (tmp_path / "csv_run" / "wandb").exists() and (tmp_path / "csv_train" / "logs").is_dir()


def test_words_are_drawn_in_their_cells():
    from spae.tracking.pyramid_images import draw_words, layer_panels, to_pil

    image = to_pil(torch.zeros(3, 8, 8), 128)
    drawn = draw_words(image, ["cat", "dog", "sky", "sea"])
    import numpy as np

    pixels = np.asarray(drawn)
    for row in (0, 1):
        for col in (0, 1):  # every cell holds text (yellow) on the black image
            cell = pixels[row * 64 + 2: row * 64 + 20, col * 64 + 2: col * 64 + 40]
            assert (cell[..., 0] > 200).any(), (row, col)
    assert (pixels[64, 50:60] == 255).all() and (pixels[10:20, 64] == 255).all()  # the lines between the cells
    with pytest.raises(ValueError, match="square grid; got 3 words"):
        draw_words(image, ["a", "b", "c"])
    panels = layer_panels([torch.rand(2, 3, 8, 8)] * 2, [[["a"], ["b"]], [list("abcd"), list("efgh")]], 64)
    assert [len(p) for p in panels] == [2, 2] and panels[1][0].size == (64, 64)

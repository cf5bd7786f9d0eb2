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


# ------------------------------------------------------------------------------------------------ dashboard
def bench_results(run_id: str, group: str | None, layers: list[int], accuracy: float) -> dict:
    """results.json as experiments.run writes it (the parts the dashboard reads) for an ablation-like bench."""
    recon = {f"{m}_l{l}": accuracy + l for l in range(1, len(layers) + 1) for m in ("psnr", "ssim", "relevance")}
    cell = {"accuracy": accuracy, "ci95_low": 0.1, "episodes": 4, "constrained_choice": {"accuracy": accuracy + 0.1}}
    return {"run_id": run_id, "config": {"logger": {"kind": "wandb", "project": "spae-test", "group": group},
                                         "model": {"layers": layers}},
            "metrics": {"recon_eval": {"classification/pets": recon},
                        "fewshot_eval": {"spae-l2": {"2way-ti-1shot-0rep": cell, "average": cell},
                                         "lqae": {"2way-ti-1shot-0rep": {"accuracy": 0.25}, "average": cell}}}}


def write_results(runs_dir, results: dict) -> None:
    import json

    folder = runs_dir / "ablation" / results["run_id"]
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))


def panel_metrics(spec: dict) -> dict[str, list]:
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    return {s["name"]: [p["config"].get("metrics") or p["config"].get("mediaKeys") for p in s["panels"]]
            for s in sections}


def test_dashboard_spec_builds_offline_with_the_expected_sections(tmp_path, _no_network):
    from experiments.dashboard import build_workspace, group_results, spec_of

    write_results(tmp_path, bench_results("ablation-a", "sweep-a", [1, 2, 4], 0.5))
    write_results(tmp_path, bench_results("ablation-b", "sweep-a", [1, 2], 0.6))
    write_results(tmp_path, bench_results("other", "sweep-b", [1], 0.7))
    results = group_results(tmp_path, "sweep-a")
    assert sorted(r["run_id"] for r in results) == ["ablation-a", "ablation-b"]
    spec = spec_of(build_workspace("sweep-a", results, "me", "spae-test"))
    sections = panel_metrics(spec)
    assert list(sections) == ["Training curves (one run per trained model)", "Reconstruction: PSNR and SSIM per layer",
                              "Few-shot accuracy per cell and method",
                              "Images: pyramid layers with their words, evaluation grids"]
    assert ["train/loss"] in sections["Training curves (one run per trained model)"]
    assert sections["Reconstruction: PSNR and SSIM per layer"] == [
        [f"results/recon_eval/classification/pets/psnr_l{l}" for l in (1, 2, 3)],
        [f"results/recon_eval/classification/pets/ssim_l{l}" for l in (1, 2, 3)]]
    fewshot = sections["Few-shot accuracy per cell and method"]
    assert fewshot[0] == [f"results/fewshot_eval/{m}/2way-ti-1shot-0rep/accuracy" for m in ("lqae", "spae-l2")]
    assert fewshot[1] == ["results/fewshot_eval/spae-l2/2way-ti-1shot-0rep/constrained_choice/accuracy"]
    assert len(fewshot) == 4  # the cell, then the average, each with both metrics
    assert sections["Images: pyramid layers with their words, evaluation grids"] == [
        ["images/original"], ["images/layer1"], ["images/layer2"], ["images/layer3"], ["recon/classification"]]
    runset = spec["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"] == [{"key": {"section": "run", "name": "group"}, "op": "=", "value": "sweep-a",
                                             "disabled": False}]
    recon_only = bench_results("r", "sweep-c", [1, 2], 0.5)
    del recon_only["metrics"]["fewshot_eval"]
    names = [s.name for s in build_workspace("sweep-c", [recon_only], "me", "p").sections]
    assert names == ["Training curves (one run per trained model)", "Reconstruction: PSNR and SSIM per layer",
                     "Images: pyramid layers with their words, evaluation grids"]
    assert _no_network == []


def test_dashboard_panels_name_keys_the_runs_log(two_methods, tmp_path):
    """Every metric a panel plots is one a bench run logs (log_results) or a training run logs (a real training)."""
    from experiments.dashboard import TRAINING_CURVES, build_workspace, spec_of

    runs, _ = two_methods
    results = bench_results("bench-x", "sweep-a", [1, 2, 4], 0.5)
    with RunLogger.from_config(logger_cfg({"offline": True}), tmp_path / "bench_run", "bench-x") as bench:
        bench.log_results(results)
    (bench_run,) = offline_runs(tmp_path / "bench_run")
    logged = {key for row in bench_run.history for key in row}
    spec = spec_of(build_workspace("sweep-a", [results], "me", "spae-test"))
    eval_metrics = [k for name, panels in panel_metrics(spec).items() if name.startswith(("Recon", "Few"))
                    for keys in panels for k in keys]
    assert eval_metrics and set(eval_metrics) <= logged
    trained = {key for row in runs["spae-train-spaekey0000000001"].history for key in row}
    tokenizer_curves = {k for k in TRAINING_CURVES if k.startswith("train/") and k != "train/caption_loss"}
    assert tokenizer_curves <= trained


def test_dashboard_cli_builds_offline_and_save_needs_online(tmp_path, monkeypatch, capsys):
    from experiments.dashboard import main

    write_results(tmp_path, bench_results("ablation-a", "sweep-a", [1, 2], 0.5))
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "spec.json"
    assert main(["sweep-a", "--runs-dir", str(tmp_path), "--out", str(out)]) == 0
    assert "Few-shot accuracy per cell and method: 4 panels" in capsys.readouterr().out and out.is_file()
    assert main(["sweep-a", "--runs-dir", str(tmp_path), "--save"]) == 2
    assert "needs W&B online" in capsys.readouterr().err
    assert main(["no-such-group", "--runs-dir", str(tmp_path)]) == 2
    assert "no results.json of group 'no-such-group'" in capsys.readouterr().err


def test_frozen_training_logs_its_own_run_and_weights_and_a_reused_stage_none(tmp_path):
    """Through experiments.run.execute: the bench run and Frozen's training run share the group (the run id when
    logger.group is null); a rerun that reuses the trained encoder starts no training run."""
    from _data_fixtures import tiny_fashion_mnist
    from _tiny_lm import tiny_tokenizer
    from conftest import compose
    from test_frozen_baseline import peaky_llama
    from test_frozen_stage import overrides

    from experiments.run import execute

    fm, tok, llm_dir = tiny_fashion_mnist(tmp_path / "fm", n_train=24, n_test=10), tiny_tokenizer(), tmp_path / "llm"
    peaky_llama(len(tok)).save_pretrained(llm_dir)
    tok.save_pretrained(llm_dir)
    args = [o for o in overrides(tmp_path, fm, llm_dir) if o != "logger=none"]
    args += ["logger=wandb_offline", "trainer.log_every_n_steps=1"]
    run_dir = execute(compose(args)).parent
    runs = {run.job_type: run for run in offline_runs(run_dir)}
    assert set(runs) == {"eval", "train"} and runs["eval"].name == run_dir.name
    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "frozen_train").iterdir() if p.is_dir()]
    assert runs["train"].name == f"frozen-frozen_train-{stage_dir.name}"
    assert runs["train"].group == runs["eval"].group == run_dir.name
    losses = [row["train/caption_loss"] for row in runs["train"].history if "train/caption_loss" in row]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    (artifact,) = runs["train"].artifacts
    assert artifact["files"] == ["frozen_encoder.json", "frozen_encoder.safetensors"]
    assert artifact["metadata"]["stage_key"] == stage_dir.name and artifact["metadata"]["method"] == "frozen"
    execute(compose(args))  # reuses the trained encoder
    assert sorted(run.job_type for run in offline_runs(run_dir)) == ["eval", "eval", "train"]

"""The `pretrain_data` and `eval_data` stages end to end through experiments.run.execute, on tiny local files."""
from __future__ import annotations

import json

import pytest
from _data_fixtures import tiny_fashion_mnist, tiny_imagefolder
from conftest import compose

from experiments.run import execute
from spae.data import COLUMNS, OfflineDatasetError, class_names, load_prepared


def _overrides(tmp_path, fm, folder):
    return ["+bench=smoke", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}",
            "logger=none", "data=imagefolder",
            f"data.pretrain.fashion_mnist.path={fm}", "data.max_pretrain_images=20",
            f"data.classification.path={folder}",
            "~data.pretrain.easy_vqa", "~data.pretrain.openclipart", "~data.pretrain.tuxpaint", "~data.vqa", "~data.generation"]


def test_data_stage_prepares_saves_and_reuses(tmp_path):
    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=40, n_test=10)
    folder = tiny_imagefolder(tmp_path / "imgs")
    results_path = execute(compose(_overrides(tmp_path, fm, folder)))
    results = json.loads(results_path.read_text())
    pretrain_metrics = results["metrics"]["pretrain_data"]["pretrain/fashion_mnist"]
    assert pretrain_metrics == {"rows": 20, "classes": 5, "questions": 0, "captioned": 20,  # seen classes only
                                "images_per_class": {name: 4 for name in pretrain_metrics["images_per_class"]}}
    assert len(pretrain_metrics["images_per_class"]) == 5
    metrics = results["metrics"]["eval_data"]
    assert metrics["classification/imagefolder"]["rows"] == 6
    assert metrics["classification/imagefolder"]["classes"] == 2
    assert metrics["classification/imagefolder"]["images_per_class"] == {"golden retriever": 3, "tabby cat": 3}
    assert results["stages_reused"] == []

    (pretrain_dir,) = [p for p in (tmp_path / "cache" / "stages" / "pretrain_data").iterdir() if p.is_dir()]
    (eval_dir,) = [p for p in (tmp_path / "cache" / "stages" / "eval_data").iterdir() if p.is_dir()]
    summary = json.loads((pretrain_dir / "_SUCCESS.json").read_text())["summary"]
    assert summary["datasets"] == {"pretrain/fashion_mnist": "pretrain/fashion_mnist"}
    assert "| pretrain/fashion_mnist | 20 | 5 |" in summary["markdown"]
    eval_summary = json.loads((eval_dir / "_SUCCESS.json").read_text())["summary"]
    assert eval_summary["datasets"] == {"classification/imagefolder": "classification/imagefolder"}
    assert "split folders ['test', 'train']; reading 'test'" in eval_summary["notes"]["classification/imagefolder"]
    pretrain = load_prepared(pretrain_dir, "pretrain", "fashion_mnist")
    assert pretrain.column_names == list(COLUMNS) and len(pretrain) == 20
    assert class_names(load_prepared(eval_dir, "classification")) == ["golden retriever", "tabby cat"]
    with pytest.raises(FileNotFoundError, match="roles present"):
        load_prepared(eval_dir, "vqa")

    again = json.loads(execute(compose(_overrides(tmp_path, fm, folder))).read_text())
    assert again["stages_reused"] == ["eval_data", "pretrain_data"] and again["metrics"] == results["metrics"]


def test_paper_data_offline_fails_with_the_clear_error(tmp_path):
    cfg = compose(["+bench=smoke", f"paths.cache_dir={tmp_path}", f"paths.runs_dir={tmp_path}",
                   "logger=none", "data=paper"])
    with pytest.raises(OfflineDatasetError, match="offline=true"):
        execute(cfg)

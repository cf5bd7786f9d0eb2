"""The `data` stage end to end through experiments.run.execute, on tiny local files."""
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
    metrics = results["metrics"]["data"]
    assert metrics["pretrain/fashion_mnist"] == {"rows": 20, "classes": 5, "questions": 0, "captioned": 20}  # seen classes only
    assert metrics["classification/imagefolder"]["rows"] == 6
    assert metrics["classification/imagefolder"]["classes"] == 2
    assert results["stages_reused"] == []

    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "data").iterdir() if p.is_dir()]
    summary = json.loads((stage_dir / "_SUCCESS.json").read_text())["summary"]
    assert summary["datasets"] == {"pretrain/fashion_mnist": "pretrain/fashion_mnist",
                                   "classification/imagefolder": "classification/imagefolder"}
    assert "| pretrain/fashion_mnist | 20 | 5 |" in summary["markdown"]
    pretrain = load_prepared(stage_dir, "pretrain", "fashion_mnist")
    assert pretrain.column_names == list(COLUMNS) and len(pretrain) == 20
    assert class_names(load_prepared(stage_dir, "classification")) == ["golden retriever", "tabby cat"]
    with pytest.raises(FileNotFoundError, match="roles present"):
        load_prepared(stage_dir, "vqa")

    again = json.loads(execute(compose(_overrides(tmp_path, fm, folder))).read_text())
    assert again["stages_reused"] == ["data"] and again["metrics"] == results["metrics"]


def test_paper_data_offline_fails_with_the_clear_error(tmp_path):
    cfg = compose(["+bench=smoke", f"paths.cache_dir={tmp_path}", f"paths.runs_dir={tmp_path}",
                   "logger=none", "data=paper"])
    with pytest.raises(OfflineDatasetError, match="offline=true"):
        execute(cfg)

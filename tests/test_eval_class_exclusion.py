"""data.exclude_eval_classes (issue 15, item 9): the evaluation classes' WordNet ids are dropped from
pretraining, by id, on local files shaped like the hub datasets: ImageNet-1k as parquet (integer labels whose
ClassLabel names are "tench, Tinca tinca", ...), mini-ImageNet as parquet (ClassLabel names are WordNet ids)
and an ImageNet-style imagefolder (n0xxxxxxxx folders)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from conftest import compose
from PIL import Image

from experiments.run import execute
from spae.data import load_prepared

HOUSE_FINCH, ROBIN, TRICERATOPS = "n01532829", "n01558993", "n01704323"  # mini-ImageNet classes
TENCH, GOLDFISH = "n01440764", "n01443537"  # ImageNet-1k classes that mini-ImageNet lacks


def timm_synsets(file_name: str) -> list[str]:
    """A WordNet id list that ships in the timm wheel (read here, so the fixtures stand on their own)."""
    import importlib.util

    root = Path(importlib.util.find_spec("timm").submodule_search_locations[0])
    return (root / "data" / "_info" / file_name).read_text().split()


def _images(n: int, shade: int = 0) -> list:
    return [Image.new("RGB", (8, 8), (shade, 20 * i % 256, 90)) for i in range(n)]


def imagenet_parquet(folder: Path) -> Path:
    """ILSVRC/imagenet-1k's shape: int labels in the standard order, human ClassLabel names."""
    from spae.data.labels import synset_lemmas

    wnids = list(timm_synsets("imagenet_synsets.txt"))
    names = [synset_lemmas()[w] + f", synonym {i}" for i, w in enumerate(wnids)]  # unique, like the hub's
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rows = {"train": [TENCH, TENCH, HOUSE_FINCH, HOUSE_FINCH, ROBIN, TRICERATOPS], "validation": [TENCH]}
    return write_parquet_splits(folder, rows, wnids, features, shade=10)


def write_parquet_splits(folder: Path, rows: dict, wnids: list, features, shade: int) -> Path:
    """One hub-style parquet file per split; `rows` maps a split to the WordNet id of each of its images."""
    folder.mkdir(parents=True)
    for split, classes in rows.items():
        ds = datasets.Dataset.from_dict({"image": _images(len(classes), shade),
                                         "label": [wnids.index(w) for w in classes]}, features=features)
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder


def mini_imagenet_parquet(folder: Path) -> Path:
    """timm/mini-imagenet's shape: ClassLabel names are the 100 WordNet ids; the test split holds two of them."""
    wnids = list(timm_synsets("mini_imagenet_synsets.txt"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=wnids)})
    rows = {"train": [HOUSE_FINCH, TRICERATOPS], "test": [HOUSE_FINCH, ROBIN, ROBIN, HOUSE_FINCH]}
    return write_parquet_splits(folder, rows, wnids, features, shade=200)


def imagenet_folder(folder: Path) -> Path:
    """An ImageNet copy as class folders named by WordNet id."""
    for name, count in ((HOUSE_FINCH, 2), (GOLDFISH, 3)):
        (folder / "train" / name).mkdir(parents=True)
        for i, image in enumerate(_images(count, 120)):
            image.save(folder / "train" / name / f"{i}.png")
    (folder / "test" / GOLDFISH).mkdir(parents=True)
    _images(1)[0].save(folder / "test" / GOLDFISH / "0.png")
    return folder


def run_data_stage(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    imagenet, mini = imagenet_parquet(tmp_path / "imagenet"), mini_imagenet_parquet(tmp_path / "mini")
    folder = imagenet_folder(tmp_path / "folder")
    results = json.loads(execute(compose([
        "+bench=smoke", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}",
        "logger=none", "data=paper", f"data.pretrain.imagenet.path={imagenet}", f"data.classification.path={mini}",
        f"+data.pretrain.folder={{name: folder, adapter: imagefolder, path: '{folder}', train_split: train, "
        "eval_split: test, embedded: false}", "~data.captioning", "~data.vqa", "~data.generation",
        *extra])).read_text())
    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "pretrain_data").iterdir() if p.is_dir()]
    return stage_dir, results


def eval_stage_dir(tmp_path: Path) -> Path:
    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "eval_data").iterdir() if p.is_dir()]
    return stage_dir


def names_of(ds) -> list[str]:
    return sorted(ds["label_name"])


def test_the_evaluation_classes_are_dropped_from_pretraining_by_wordnet_id(tmp_path):
    stage_dir, results = run_data_stage(tmp_path)
    imagenet = load_prepared(stage_dir, "pretrain", "imagenet")
    folder = load_prepared(stage_dir, "pretrain", "folder")
    # house finch and robin are in the evaluation split: gone; triceratops is a mini-ImageNet class that the
    # evaluation split does not hold, and tench / goldfish are not mini-ImageNet classes: kept
    assert names_of(imagenet) == ["tench", "tench", "triceratops"]
    assert names_of(folder) == ["goldfish"] * 3
    summary = json.loads((stage_dir / "_SUCCESS.json").read_text())["summary"]["eval_class_exclusion"]
    assert summary["exclude_eval_classes"] is True and summary["excluded_class_ids"] == 2
    assert summary["evaluation_class_ids"] == {"classification/mini_imagenet": 2}
    assert summary["pretraining"]["imagenet"] == {"class_ids": True, "rows_dropped": 3,
                                                  "classes_dropped": [HOUSE_FINCH, ROBIN]}
    assert summary["pretraining"]["folder"] == {"class_ids": True, "rows_dropped": 2, "classes_dropped": [HOUSE_FINCH]}
    assert results["metrics"]["pretrain_data"]["pretrain/imagenet"]["eval_class_rows_dropped"] == 3
    # the evaluation set itself is untouched
    assert len(load_prepared(eval_stage_dir(tmp_path), "classification")) == 4


def test_the_limit_counts_the_rows_left_after_the_exclusion(tmp_path):
    stage_dir, _ = run_data_stage(tmp_path, "data.max_pretrain_images=2")
    assert names_of(load_prepared(stage_dir, "pretrain", "imagenet")) == ["tench", "triceratops"]


def test_switched_off_nothing_is_dropped_and_the_fairness_report_says_so(tmp_path):
    from experiments.stages.fewshot_eval import fairness_report

    stage_dir, _ = run_data_stage(tmp_path, "data.exclude_eval_classes=false")
    assert len(load_prepared(stage_dir, "pretrain", "imagenet")) == 6
    cfg = {"data": {"pretrain": {"imagenet": {}, "folder": {}}}}
    report = fairness_report(stage_dir, cfg, [], ["house finch", "robin"], None)
    assert report["eval_class_exclusion"]["imagenet"]["exclude_eval_classes"] is False
    assert "imagenet: off (data.exclude_eval_classes=false), nothing dropped" in report["note"]


def test_the_fairness_report_states_what_was_dropped(tmp_path):
    from experiments.stages.fewshot_eval import fairness_report

    stage_dir, _ = run_data_stage(tmp_path)
    cfg = {"data": {"pretrain": {"imagenet": {}, "folder": {}}}}
    report = fairness_report(stage_dir, cfg, [], ["house finch", "robin"], None)
    assert "imagenet: on, 3 rows of 2 of the 2 evaluation classes dropped (by WordNet id)" in report["note"]
    assert report["eval_class_exclusion"]["imagenet"]["rows_dropped"] == 3


def test_an_unknown_wordnet_order_is_a_clear_error():
    from spae.data.class_ids import declared_order
    from spae.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="imagenet_1k"):
        declared_order({"name": "x", "wordnet_ids": "imagenet_22k"})
    with pytest.raises(InvalidConfigError, match="WordNet ids"):
        declared_order({"name": "x", "wordnet_ids": ["tench"]})

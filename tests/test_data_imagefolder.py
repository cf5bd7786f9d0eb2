"""Image folders as users have them (issue 19): class names that look like split names, split words in file
names, symlinked classes, symlink loops, a thousand classes, explicit split folders, flat folders."""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from spae.data import class_names, load_split
from spae.errors import InvalidConfigError

TRICKY = ("train", "test tube", "dev kit", "Validation", "café au lait")


def write_images(folder: Path, names: list[str], colour=(200, 30, 30)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), colour).save(folder / name)


def read(folder: Path, split: str, tmp_path: Path, **extra):
    spec = {"name": "mine", "adapter": "imagefolder", "path": str(folder), "train_split": "train",
            "eval_split": "test", "cache_dir": str(tmp_path / "hf"), **extra}
    return load_split(spec, split)


def per_class(ds) -> dict[str, int]:
    return dict(Counter(ds["label_name"]))


def test_folder_and_file_names_that_look_like_splits_are_classes_and_images(tmp_path):
    root = tmp_path / "photos"
    for i, name in enumerate(TRICKY):
        write_images(root / name, ["x_train.png", "img_test_01.jpg", f"{i}_validation.png"], (40 * i, 0, 0))
    for split in ("train", "eval"):  # no split folders: the whole folder serves both
        ds = read(root, split, tmp_path)
        assert class_names(ds) == sorted(TRICKY)
        assert per_class(ds) == {name: 3 for name in TRICKY} and len(ds) == 15
    assert "first-level folders are classes" in ds.info.description


def test_symlinked_class_folder_and_files_are_followed_and_a_loop_is_read_once(tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    write_images(elsewhere / "linked cats", ["a.png", "b.png"])
    write_images(elsewhere / "loose", ["single.png"])
    root = tmp_path / "photos"
    write_images(root / "dog", ["1.png", "2.png"])
    (root / "linked cats").symlink_to(elsewhere / "linked cats", target_is_directory=True)
    (root / "dog" / "3.png").symlink_to(elsewhere / "loose" / "single.png")  # a symlinked file
    (root / "dog" / "again").symlink_to(root / "dog", target_is_directory=True)  # a loop
    (root / "dog" / "gone.png").symlink_to(tmp_path / "missing.png")  # broken
    (root / "dog" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="spae.data.imagefolder"):
        ds = read(root, "eval", tmp_path)
    assert per_class(ds) == {"dog": 3, "linked cats": 2}
    note = ds.info.description
    for reason, path in [("symlink loop or folder already read", "dog/again"), ("broken symlink", "dog/gone.png"),
                         ("not an image file", "dog/notes.txt")]:
        assert f"1 {reason} ({path})" in note
    assert "skipped:" in caplog.text and "dog/again" in caplog.text


def test_a_thousand_classes_of_two_images(tmp_path):
    root = tmp_path / "many"
    names = [f"class {i:04d}" for i in range(1001)]
    for i, name in enumerate(names):
        write_images(root / name, ["a.png", "b.png"], (i % 256, i // 256, 7))
    start = time.perf_counter()
    ds = read(root, "eval", tmp_path)
    seconds = time.perf_counter() - start
    assert len(ds) == 2002 and class_names(ds) == names
    assert set(per_class(ds).values()) == {2}
    assert seconds < 60, f"reading 2,002 tiny images took {seconds:.0f}s"


def test_explicit_split_folders_are_recognised_only_when_every_first_level_folder_is_one(tmp_path):
    root = tmp_path / "split"
    write_images(root / "train" / "ant", ["1.png", "2.png"])
    write_images(root / "train" / "bee", ["1.png"])
    write_images(root / "test" / "ant", ["1.png"])
    write_images(root / "test" / "bee", ["1.png", "2.png", "3.png"])
    train, test = read(root, "train", tmp_path), read(root, "eval", tmp_path)
    assert per_class(train) == {"ant": 2, "bee": 1} and per_class(test) == {"ant": 1, "bee": 3}
    assert "split folders ['test', 'train']; reading 'test'" in test.info.description

    write_images(root / "wasp", ["1.png"])  # one first-level folder that is no split name: all are classes
    mixed = read(root, "eval", tmp_path)
    assert per_class(mixed) == {"train": 3, "test": 4, "wasp": 1}

    # the split names are configurable: with only train/test as split names, val/ is a class
    other = tmp_path / "other"
    for folder in ("train", "test", "val"):
        write_images(other / folder / "owl", ["1.png"])
    assert per_class(read(other, "eval", tmp_path, split_folders=["train", "test"])) == {
        "train": 1, "test": 1, "val": 1}
    assert per_class(read(other, "eval", tmp_path)) == {"owl": 1}  # default names include val


def test_split_folders_without_the_requested_split_say_which_exist(tmp_path):
    root = tmp_path / "split"
    write_images(root / "train" / "ant", ["1.png"])
    write_images(root / "validation" / "ant", ["1.png"])
    with pytest.raises(InvalidConfigError, match=r"split folders \['train', 'validation'\] but no 'test'"):
        read(root, "eval", tmp_path)


def test_flat_folder_of_photos_is_one_unlabelled_set(tmp_path):
    root = tmp_path / "holiday"
    write_images(root, ["IMG_train_0001.jpg", "IMG_test_0002.jpg", "beach.png"])
    ds = read(root, "eval", tmp_path)
    assert len(ds) == 3 and class_names(ds) == [] and set(ds["label"]) == {-1}
    assert all(isinstance(im, Image.Image) for im in ds["image"])
    assert "no class folders: unlabelled images" in ds.info.description


def test_images_beside_class_folders_and_empty_class_folders_are_counted(tmp_path):
    root = tmp_path / "photos"
    write_images(root / "cat", ["1.png"])
    write_images(root, ["stray.png"])
    (root / "empty class").mkdir()
    ds = read(root, "eval", tmp_path)
    assert per_class(ds) == {"cat": 1}
    assert "1 image beside the class folders (in no class) (stray.png)" in ds.info.description
    assert "1 class folder without images (empty class)" in ds.info.description


def test_hf_adapter_reads_a_local_image_folder_by_the_same_rules(tmp_path):
    root = tmp_path / "photos"
    for name in ("train", "test tube"):
        write_images(root / name, ["1.png", "2.png"])
    spec = {"name": "mine", "adapter": "hf", "path": str(root), "label_column": "label", "train_split": "train",
            "eval_split": "test", "cache_dir": str(tmp_path / "hf")}
    assert per_class(load_split(spec, "eval")) == {"train": 2, "test tube": 2}


def test_few_shot_on_a_folder_that_reads_as_one_class_names_the_folder_and_the_classes(tmp_path):
    from spae.fewshot.table import Cell as FewShotCell
    from experiments.stages.fewshot_eval import classification_source, plan_episodes

    cfg = {"data": {"classification": {"name": "imagefolder", "path": "/data/drawings"}}}
    source = classification_source(cfg)

    with pytest.raises(InvalidConfigError) as excinfo:
        plan_episodes(["train", "train"], [FewShotCell(2, 1, 0, True)], 3, 0, source)
    message = str(excinfo.value)
    assert "n_way=2 but data.classification (imagefolder read from /data/drawings) has only 1 class" in message
    assert "train: 2 images" in message

    labels = ["a"] * 3 + ["b"] * 1 + ["c"] * 1
    with pytest.raises(InvalidConfigError) as excinfo:
        plan_episodes(labels, [FewShotCell(2, 2, 1, True)], 3, 0, source)
    message = str(excinfo.value)
    assert "has 3 classes of which only 1 have that many; 2 have fewer: b: 1 image, c: 1 image" in message
    assert "/data/drawings" in message


def test_class_count_line_summarises_many_classes():
    from spae.data.imagefolder import class_counts_line

    assert class_counts_line({"ant": 2, "bee": 3}) == "ant: 2, bee: 3"
    many = {f"c{i:04d}": 2 for i in range(1000)} | {"rare": 1}
    line = class_counts_line(many)
    assert line.startswith("1001 classes, 1-2 images each (1 classes with 1, 1000 classes with 2)")
    assert "smallest: rare: 1" in line and len(line) < 300


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_top_level_symlink_loop_does_not_hang(tmp_path):
    root = tmp_path / "photos"
    write_images(root / "cat", ["1.png"])
    (root / "me").symlink_to(root, target_is_directory=True)
    ds = read(root, "eval", tmp_path)
    assert per_class(ds) == {"cat": 1}
    assert "symlink loop or folder already read (me)" in ds.info.description

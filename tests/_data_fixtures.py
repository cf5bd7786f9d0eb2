"""Tiny datasets in the real on-disk formats, shared by the tests/test_data_*.py files."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx_pair(folder: Path, prefix: str, labels: list[int], seed: int = 0) -> np.ndarray:
    """Fashion-MNIST idx.gz files (images: magic 2051 + n, 28, 28; labels: magic 2049 + n)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    header = lambda *ints: b"".join(int(i).to_bytes(4, "big") for i in ints)  # noqa: E731
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(header(2051, len(labels), 28, 28) + pixels.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header(2049, len(labels)) + np.asarray(labels, dtype=np.uint8).tobytes())
    return pixels


def tiny_fashion_mnist(folder: Path, n_train: int = 30, n_test: int = 20) -> Path:
    write_idx_pair(folder, "train", [i % 10 for i in range(n_train)], seed=1)
    write_idx_pair(folder, "t10k", [i % 10 for i in range(n_test)], seed=2)
    return folder


def tiny_imagefolder(folder: Path, classes=("golden_retriever", "tabby-cat"), per_class: int = 3,
                     splits=("train", "test")) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8 + i, 8), (40 * c, 10 * i, 200)).save(folder / split / name / f"{i}.png")
    return folder


def spec(**kwargs) -> dict:
    base = {"name": "tiny", "train_split": "train", "eval_split": "test"}
    return {**base, **kwargs}


VQAV2_QUESTIONS = (  # (image_id, question, multiple_choice_answer, the ten human answers)
    (1, "how many dogs are there?", "2", ["2", "2", "2", "two", "two", "Two.", "Two.", "3", "3", "3"]),
    (1, "what color is the ball?", "blue", ["red", "red"] + ["blue"] * 8),
    (2, "is it sunny?", "yes", ["yes"] * 10),
)


def tiny_vqav2_parquet(folder: Path, questions=VQAV2_QUESTIONS) -> Path:
    """lmms-lab/VQAv2's layout: data/validation-00000-of-00001.parquet, one row per question, `answers` a
    list of {answer, answer_confidence, answer_id} (ten per question), the consensus `multiple_choice_answer`."""
    import datasets

    answer = {"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
              "answer_id": datasets.Value("int64")}
    features = datasets.Features({
        "question_type": datasets.Value("string"), "multiple_choice_answer": datasets.Value("string"),
        "answers": datasets.List(answer), "image_id": datasets.Value("int64"),
        "answer_type": datasets.Value("string"), "question_id": datasets.Value("int64"),
        "question": datasets.Value("string"), "image": datasets.Image()})
    rows = {name: [] for name in features}
    for qid, (image_id, question, consensus, humans) in enumerate(questions):
        rows["question_type"].append(" ".join(question.split()[:2]))
        rows["multiple_choice_answer"].append(consensus)
        rows["answers"].append([{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                for k, a in enumerate(humans)])
        rows["image_id"].append(image_id)
        rows["answer_type"].append("other")
        rows["question_id"].append(image_id * 1000 + qid)
        rows["question"].append(question)
        rows["image"].append(Image.new("RGB", (8, 8), (40 * image_id, 0, 0)))
    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(folder / "data" / "validation-00000-of-00001.parquet"))
    return folder


SVG_TEMPLATE = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata>
    <rdf:RDF>
      <cc:Work rdf:about="">
        <dc:title>{title}</dc:title>
        <dc:description>{description}</dc:description>
        <dc:subject>
          <rdf:Bag>
            <rdf:li></rdf:li>
{tags}
          </rdf:Bag>
        </dc:subject>
        <dc:publisher>
          <cc:Agent rdf:about="http://www.openclipart.org">
            <dc:title>Open Clip Art Library</dc:title>
          </cc:Agent>
        </dc:publisher>
        <dc:creator>
          <cc:Agent>
            <dc:title>{author}</dc:title>
          </cc:Agent>
        </dc:creator>
        <dc:rights>
          <cc:Agent>
            <dc:title>{author}</dc:title>
          </cc:Agent>
        </dc:rights>
      </cc:Work>
    </rdf:RDF>
  </metadata>
</svg>
"""


def clipart_drawing(root: Path, relative: str, title: str, author: str, tags=(), description: str = "",
                    colour=(200, 30, 30)) -> None:
    """One Open Clip Art drawing as the Debian packages ship it: png/<rel>.png (RGBA, transparent corners)
    and svg/<rel>.svg with the RDF metadata block."""
    png = root / "png" / f"{relative}.png"
    svg = root / "svg" / f"{relative}.svg"
    png.parent.mkdir(parents=True, exist_ok=True)
    svg.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (10, 10), (*colour, 255)), (15, 5))
    image.save(png)
    tag_lines = "\n".join(f"            <rdf:li>{t}</rdf:li>" for t in tags)
    svg.write_text(SVG_TEMPLATE.format(title=title, description=description, tags=tag_lines, author=author))


def tiny_openclipart(root: Path) -> Path:
    clipart_drawing(root, "food/fruit/red_apple_dan_gerhard_01", "Red Apple", "Dan Gerhards",
                    tags=["food", "apple", "fruit", "unsorted", "hash", "Dan Gerhards"],
                    description="A shiny red apple. Drawn in Inkscape.")
    clipart_drawing(root, "computer/icons/lemon-theme/apps/kettle", "Lemon SVG theme", "Jose Hevia",
                    tags=["icons", "theme", "magick", "computer", "kettle"])
    clipart_drawing(root, "animals/mammals/horses/cavallo_architetto_franc_01", "cavallo", "Architetto Francesco Rollandin")
    clipart_drawing(root, "unsorted/zzz_01", "", "Someone Else")  # nothing English left: skipped
    for i in range(16):
        clipart_drawing(root, f"shapes/stars/star_{i:02d}", "star", "gramastar", tags=["stars", "geometry", "magick"],
                        colour=(i * 10, 200, 50))
    return root


def tiny_tuxpaint(root: Path) -> Path:
    def stamp(relative: str, text: str | None, png: bool = True):
        base = root / relative
        base.parent.mkdir(parents=True, exist_ok=True)
        if png:
            image = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
            image.paste(Image.new("RGBA", (10, 20), (20, 40, 220, 255)), (10, 5))
            image.save(base.with_suffix(".png"))
        else:
            base.with_suffix(".svg").write_text("<svg/>")
        if text is not None:
            base.with_suffix(".txt").write_text(text, encoding="utf-8")

    stamp("clothes/red_handbag", "A red handbag.\nde.utf8=Eine rote Handtasche.\nfr.utf8=Un sac à main rouge.\n")
    stamp("animals/frog", "fr.utf8=Une grenouille.\nen_GB.utf8=A frog.\n")  # no plain first line: en_GB used
    stamp("animals/ghost", "de.utf8=Ein Geist.\n")  # no English at all: skipped
    stamp("vehicles/bus", "A school bus.\n", png=False)  # SVG only: skipped
    stamp("town/house", "")  # empty: skipped
    for i in range(12):
        stamp(f"food/fruit_{i}", f"A piece of fruit number {i}.\n")
    return root

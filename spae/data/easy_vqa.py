"""easy-VQA from PyPI `easy_vqa`: 64x64 images of one coloured shape, several questions each.

The package gives questions, not image attributes; the caption ("a red circle") is read back from the
answers: open questions name the shape or colour, and yes/no questions confirm or rule one out. About
one image in ten is left undetermined by its questions; those get the attribute whose pixel prototype
(mean shape colour; fraction of the bounding box the shape fills) is nearest, the prototypes being
averaged over the images of the same split whose attribute the questions do give.
"""
from __future__ import annotations

import importlib.metadata
import io
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from spae.data.cache import cached_dataset
from spae.data.registry import ADAPTERS
from spae.data.schema import CAPTION_TEMPLATED, from_columns, with_article

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
_NEGATION = re.compile(r"\b(not|no)\b")
VERSION = 2  # 2: reference_answers column


def _mentioned(question: str, vocabulary: tuple[str, ...]) -> str | None:
    words = set(re.findall(r"[a-z]+", question.lower()))
    found = [w for w in vocabulary if w in words]
    return found[0] if len(found) == 1 else None


def attributes(questions: list[str], answers: list[str]) -> tuple[str | None, str | None]:
    """(shape, colour) of an image from its question/answer pairs; None where they do not tell."""
    shape = colour = None
    ruled_out: set[str] = set()
    for question, answer in zip(questions, answers):
        answer = answer.strip().lower()
        if answer in SHAPES:
            shape = answer
            colour = colour or _mentioned(question, COLORS)  # "what is the red shape?"
        elif answer in COLORS:
            colour = answer
            shape = shape or _mentioned(question, SHAPES)  # "what color is the circle?"
        elif answer in ("yes", "no"):
            present = (answer == "yes") != bool(_NEGATION.search(question.lower()))
            named = [w for w in (_mentioned(question, SHAPES), _mentioned(question, COLORS)) if w]
            if present:  # "is there not a red shape?" -> no  => the shape is red
                shape = shape or _mentioned(question, SHAPES)
                colour = colour or _mentioned(question, COLORS)
            else:
                ruled_out.update(named)
    # Elimination: "no circle, no triangle" means a rectangle.
    shape = shape or _only_left(SHAPES, ruled_out)
    colour = colour or _only_left(COLORS, ruled_out)
    return shape, colour


def _only_left(vocabulary: tuple[str, ...], ruled_out: set[str]) -> str | None:
    left = [w for w in vocabulary if w not in ruled_out]
    return left[0] if len(left) == 1 else None


def pixel_features(png: bytes) -> tuple[float, np.ndarray]:
    """(fill ratio of the shape's bounding box, mean RGB of the shape) of an image on a plain background."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    mask = np.abs(rgb - rgb[0, 0]).sum(-1) > 30  # the corner pixel is background
    if not mask.any():
        return 0.0, rgb[0, 0]
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return float(fill), rgb[mask].mean(0)


def fill_from_pixels(known: list[str | None], features: list[np.ndarray]) -> list[str | None]:
    """Give each None the value whose mean feature (over the rows where it is known) is nearest."""
    values = sorted({k for k in known if k})
    if not values:
        return known
    prototypes = np.stack([np.mean([f for k, f in zip(known, features) if k == v], axis=0) for v in values])
    return [k if k else values[int(np.argmin(np.linalg.norm(prototypes - f, axis=-1)))]
            for k, f in zip(known, features)]


def caption_for(shape: str | None, colour: str | None) -> str:
    if shape and colour:
        return f"{with_article(colour)} {shape}"
    if shape:
        return with_article(shape)
    if colour:
        return f"{with_article(colour)} shape"
    return ""


def _split_functions(split: str):
    import easy_vqa

    if split == "train":
        return easy_vqa.get_train_questions, easy_vqa.get_train_image_paths
    if split == "test":
        return easy_vqa.get_test_questions, easy_vqa.get_test_image_paths
    raise ValueError(f"easy-VQA has splits ['test', 'train'], not {split!r}")


@ADAPTERS.register("easy_vqa")
def load_easy_vqa(spec: dict, split: str, offline: bool = True):
    try:
        import easy_vqa  # noqa: F401
    except ImportError as err:
        raise ImportError("easy-VQA needs the PyPI package: `pip install easy-vqa==1.0`") from err
    get_questions, get_paths = _split_functions(split)

    def build():
        questions, answers, image_ids = get_questions()
        per_image: dict[int, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
        for question, answer, image_id in zip(questions, answers, image_ids):
            per_image[int(image_id)][0].append(question)
            per_image[int(image_id)][1].append(answer)
        paths = get_paths()
        ids = sorted(paths)
        images = [{"bytes": Path(paths[i]).read_bytes(), "path": None} for i in ids]
        qs = [per_image[i][0] for i in ids]
        ans = [per_image[i][1] for i in ids]
        shapes, colours = zip(*(attributes(q, a) for q, a in zip(qs, ans)))
        features = [pixel_features(image["bytes"]) for image in images]
        shapes = fill_from_pixels(list(shapes), [np.array([fill]) for fill, _ in features])
        colours = fill_from_pixels(list(colours), [rgb for _, rgb in features])
        captions = [caption_for(s, c) for s, c in zip(shapes, colours)]
        return from_columns(images, captions=captions, caption_source=CAPTION_TEMPLATED,
                            questions=qs, answers=ans)

    fingerprint = {"adapter": "easy_vqa", "version": VERSION,
                   "package": importlib.metadata.version("easy-vqa")}
    return cached_dataset(spec.get("cache_dir"), "easy_vqa", split, fingerprint, build)

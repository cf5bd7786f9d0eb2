"""The uniform row every adapter returns: one image with its label, caption and question/answer pairs.

Downstream code (CLIP training, tokenizers, few-shot prompts) reads only these columns, so any dataset
that can be mapped onto them works everywhere.
"""
from __future__ import annotations

from typing import Iterable

import datasets
from datasets import Features, Image, List, Value

NO_LABEL = -1
CAPTION_REAL = "real"
CAPTION_TEMPLATED = "templated"

FEATURES = Features({
    "image": Image(),
    "label": Value("int64"),  # index into class_names(ds); -1 when the dataset has no labels
    "label_name": Value("string"),  # a real word or phrase ("ankle boot"); "" when none
    "caption": Value("string"),  # the first (or only) caption; "" when none
    "captions": List(Value("string")),  # every reference caption (COCO has five); [] when none
    "caption_source": Value("string"),  # "real", "templated" or ""
    "questions": List(Value("string")),
    "answers": List(Value("string")),  # aligned with questions: the one target answer (VQAv2: the consensus)
    # aligned with questions: every reference answer (VQAv2: the ten human answers, each as written);
    # [answer] for a dataset with one answer per question
    "reference_answers": List(List(Value("string"))),
})
COLUMNS = tuple(FEATURES)


def article(word: str) -> str:
    """'a' or 'an' for the following word, by its first letter (good enough for class names)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def with_article(name: str) -> str:
    return f"{article(name)} {name}"


def from_columns(images: list, labels: Iterable[int] | None = None, label_names: list[str] | None = None,
                 captions: list[str] | None = None, caption_source: str = "",
                 questions: list[list[str]] | None = None,
                 answers: list[list[str]] | None = None,
                 reference_answers: list[list[list[str]]] | None = None) -> datasets.Dataset:
    """Build a uniform Dataset from parallel columns. `images` holds anything datasets.Image encodes
    (PIL images, paths, {"bytes": png, "path": None}); label ids index `label_names`. Without
    `reference_answers`, each question's answer is its only reference."""
    n = len(images)
    labels = [NO_LABEL] * n if labels is None else [int(x) for x in labels]
    names = [label_names[i] if i >= 0 else "" for i in labels] if label_names else [""] * n
    caps = captions if captions is not None else [""] * n
    questions = questions if questions is not None else [[] for _ in range(n)]
    answers = answers if answers is not None else [[] for _ in range(n)]
    if reference_answers is None:
        reference_answers = [[[a] if a.strip() else [] for a in row] for row in answers]
    for column, values in (("labels", labels), ("captions", caps), ("questions", questions),
                           ("answers", answers), ("reference_answers", reference_answers)):
        if len(values) != n:
            raise ValueError(f"{column} has {len(values)} entries for {n} images")
    for row, (qs, ans, refs) in enumerate(zip(questions, answers, reference_answers)):
        if not len(qs) == len(ans) == len(refs):
            raise ValueError(f"row {row}: {len(qs)} questions, {len(ans)} answers and {len(refs)} reference "
                             "answer lists; they must be aligned")
    return datasets.Dataset.from_dict({
        "image": images, "label": labels, "label_name": names, "caption": caps,
        "captions": [[c] if c else [] for c in caps],
        "caption_source": [caption_source if c else "" for c in caps],
        "questions": questions, "answers": answers, "reference_answers": reference_answers,
    }, features=FEATURES)


def check_uniform(ds: datasets.Dataset) -> datasets.Dataset:
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset lacks the uniform columns {missing}; it has {ds.column_names}")
    return ds

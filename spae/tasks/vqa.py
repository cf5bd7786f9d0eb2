"""VQA accuracy as the VQAv2 evaluation defines it, with its answer normalisation.

Hand-written: no maintained package on PyPI provides the VQAv2 metric (the official script is a file in
GT-Vision-Lab/VQA, not a package), so its documented rules are implemented here and checked in tests
against hand-computed values.

- Normalisation (both the prediction and every human answer): newlines/tabs to spaces; punctuation removed
  (deleted when next to a space or inside a number like 1,000, else replaced by a space; periods kept only
  between digits); lower case; number words zero..ten to digits; articles a/an/the dropped; common
  contractions written without their apostrophe restored ("dont" -> "don't").
  The official script normalises only when the annotators disagree; here it always does, so that "Two"
  matches a unanimous "2" as well.
- Accuracy of a prediction against n human answers: the mean, over the n leave-one-out subsets of n-1
  answers, of min(#answers in the subset equal to the prediction / 3, 1). With VQAv2's ten answers that is
  the official average over the 10-choose-9 subsets. A question with a single reference answer (easy-VQA, or
  a dataset that kept only the consensus answer) counts it as the unanimous answer of ten annotators, i.e.
  accuracy is normalised exact match.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
_CONTRACTED = ("aren't", "can't", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't", "hasn't",
               "haven't", "he'd", "he'll", "he's", "how'd", "how'll", "how's", "i'd", "i'll", "i'm", "i've",
               "isn't", "it'd", "it'll", "let's", "ma'am", "mightn't", "might've", "mustn't", "must've",
               "needn't", "o'clock", "shan't", "she'd", "she'll", "she's", "should've", "shouldn't", "that's",
               "there's", "they'd", "they'll", "they're", "they've", "wasn't", "we'd", "we're", "we've",
               "weren't", "what's", "where's", "who'd", "who'll", "who's", "who've", "why's", "won't",
               "would've", "wouldn't", "y'all", "you'd", "you'll", "you're", "you've")
# The apostrophe-less spelling -> the contraction; words that are also plain English words stay as they are.
CONTRACTIONS = {c.replace("'", ""): c for c in _CONTRACTED
                if c.replace("'", "") not in {"hell", "shell", "well", "were", "wed", "shed", "ill", "id", "lets", "whos"}}
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")  # the official list; other symbols stay
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"(?<!\d)\.(?!\d)")
_SPACE = re.compile(r"\s+")
YES_NO = {"yes", "no"}


def strip_punctuation(text: str) -> str:
    keep_together = bool(_COMMA_IN_NUMBER.search(text))
    out = text
    for p in PUNCTUATION:
        if p not in out:
            continue
        attached = (p + " ") in text or (" " + p) in text or keep_together
        out = out.replace(p, "" if attached else " ")
    return _PERIOD_NOT_DECIMAL.sub("", out)


def normalize_answer(answer: str) -> str:
    """An answer in the VQAv2 evaluation's canonical form (see the module docstring)."""
    text = strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return _SPACE.sub(" ", " ".join(words)).strip()


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction (module docstring); 0..1."""
    if not human_answers:
        raise ValueError("a VQA question needs at least one reference answer")
    answers = [normalize_answer(a) for a in human_answers]
    if len(answers) == 1:
        answers = answers * 10  # one reference = the unanimous answer of ten annotators
    predicted = normalize_answer(prediction)
    matches = sum(1 for a in answers if a == predicted)
    # leaving out a matching answer leaves matches-1, leaving out another leaves all matches
    per_subset = [min((matches - (a == predicted)) / 3.0, 1.0) for a in answers]
    return sum(per_subset) / len(per_subset)


def answer_type(human_answers: Sequence[str]) -> str:
    """VQAv2's answer types, from the most common reference answer: yes/no, number, other."""
    top = Counter(normalize_answer(a) for a in human_answers).most_common(1)[0][0]
    if top in YES_NO:
        return "yes/no"
    return "number" if top.replace(".", "", 1).isdigit() else "other"


def accuracy_by_type(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Overall VQA accuracy and per answer type: {"accuracy", "items", "by_type": {type: {accuracy, items}}}."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    scores = [vqa_accuracy(p, r) for p, r in zip(predictions, references)]
    by_type: dict[str, list[float]] = {}
    for score, refs in zip(scores, references):
        by_type.setdefault(answer_type(refs), []).append(score)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"accuracy": mean(scores), "items": len(scores),
            "by_type": {t: {"accuracy": mean(v), "items": len(v)} for t, v in sorted(by_type.items())}}


# ------------------------------------------------------------------------------------------ items
def qa_entries(questions: Sequence[Sequence[str]], answers: Sequence[Sequence[str]], key_prefix: str
               ) -> list[tuple[str, str, str]]:
    """(image key, question, answer) for every question of every row (uniform columns: aligned lists)."""
    out = []
    for row, (qs, ans) in enumerate(zip(questions, answers)):
        if len(qs) != len(ans):
            raise ValueError(f"row {row}: {len(qs)} questions but {len(ans)} answers; they must be aligned")
        out.extend((f"{key_prefix}{row}", q, a) for q, a in zip(qs, ans) if q.strip() and a.strip())
    return out


def plan_vqa_items(eval_questions, eval_answers, train_questions, train_answers, n_items: int, shots: int,
                   seed: int, same_split: bool = False):
    """Items over the eval questions (image keys "q<row>") with (image, question, answer) examples from the
    training rows ("x<row>", or "q<row>" when both are the same split: a query never sees its own image)."""
    from spae.tasks.incontext import plan_items

    queries = [(key, q, [a]) for key, q, a in qa_entries(eval_questions, eval_answers, "q")]
    pool = qa_entries(train_questions, train_answers, "q" if same_split else "x")
    return plan_items(queries, pool, n_items, shots, seed, "vqa", same_split)


def score_answers(records: Sequence[dict]) -> dict:
    """VQA accuracy (overall and per answer type) of a method's answered items."""
    scores = accuracy_by_type([r["answer"] for r in records], [r["references"] for r in records])
    return {**scores, "empty_answers": sum(1 for r in records if not normalize_answer(r["answer"]))}


def prior_answer(train_answers: Sequence[Sequence[str]]) -> str:
    """The most frequent (normalised) training answer: the 'answer prior' baseline every method must beat."""
    counts = Counter(normalize_answer(a) for ans in train_answers for a in ans if a.strip())
    if not counts:
        raise ValueError("the training split has no answers")
    return counts.most_common(1)[0][0]


__all__ = ["CONTRACTIONS", "accuracy_by_type", "answer_type", "normalize_answer", "plan_vqa_items", "prior_answer",
           "qa_entries", "score_answers", "strip_punctuation", "vqa_accuracy"]

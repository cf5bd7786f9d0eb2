"""VQA scoring: the VQAv2 accuracy with its answer normalisation, or exact match for one reference answer.

Hand-written: no maintained package on PyPI provides the VQAv2 metric (the official script is a file in
GT-Vision-Lab/VQA, not a package), so its documented rules are implemented here and checked in tests
against hand-computed values.

- Normalisation (both the prediction and every human answer), as the official evaluation: newlines/tabs to
  spaces; punctuation removed (deleted when next to a space or when the answer holds a number like 1,000,
  else replaced by a space); a period removed unless a digit follows; lower case; number words zero..ten to
  digits; articles a/an/the dropped; contractions written without their apostrophe restored ("dont" ->
  "don't"). The official script normalises only when the annotators disagree; here it always does, so that
  "Two" matches a unanimous "2" as well.
- VQAv2 accuracy of a prediction against a question's n >= 2 human answers (VQAv2 has ten): the mean, over
  the n leave-one-out subsets of n-1 answers, of min(#answers in the subset equal to the prediction / 3, 1).
  Every answer is normalised on its own before counting: ten answers are never collapsed to one.
- A question with a single reference answer (easy-VQA) has no annotator agreement to measure: it is scored
  by normalised exact match and reported under the key `exact_match`, never as VQA accuracy.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# The official evaluation's contraction table: a lower-case word written without (some of) its apostrophes ->
# the contraction. Plain English words (ill, well, were, shed, its, ...) are not in it.
_CONTRACTED = ("ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't",
               "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's",
               "i'd've", "i'm", "i've", "isn't", "it'd", "it'd've", "it'll", "let's", "ma'am", "mightn't",
               "mightn't've", "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't",
               "shan't", "she'd've", "she's", "should've", "shouldn't", "shouldn't've", "somebody'd",
               "somebody'd've", "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll",
               "someone's", "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've",
               "there're", "there's", "they'd", "they'd've", "they'll", "they're", "they've", "'twas", "wasn't",
               "we'd've", "we've", "weren't", "what'll", "what're", "what's", "what've", "when's", "where'd",
               "where's", "where've", "who'd", "who'd've", "who'll", "who's", "who've", "why'll", "why're",
               "why's", "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll", "y'all'd've",
               "you'd", "you'd've", "you'll", "you're", "you've")


def _spellings(contraction: str) -> set[str]:
    """The contraction written without its apostrophes, and for a double contraction without only one of them
    ("couldntve", "couldnt've", "couldn'tve")."""
    positions = [i for i, ch in enumerate(contraction) if ch == "'"]
    out = {contraction.replace("'", "")}
    if len(positions) > 1:
        out |= {contraction[:i] + contraction[i + 1:] for i in positions}
    return out - {contraction}


# "im", "ive", "lets": the official table keys these capitalised ("Im") or with the apostrophe, so they never apply
CONTRACTIONS = {spelling: c for c in _CONTRACTED for spelling in _spellings(c) if spelling not in {"im", "ive", "lets"}}
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")  # the official list; other symbols (', :, #, %, &, ...) stay
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")  # the official pattern's look-behind never applies: "3." -> "3"
_SPACE = re.compile(r"\s+")
YES_NO = {"yes", "no"}
VQA_ACCURACY = "vqa_accuracy"
EXACT_MATCH = "exact_match"


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


def consensus_answer(answers: Sequence[str]) -> str:
    """The answer most annotators gave, counted after normalisation ("2", "two" and "Two." agree); returned as
    first written. "" when there is none. A target for in-context examples, never a reference to score."""
    answers = [a for a in answers if a.strip()]
    if not answers:
        return ""
    top = Counter(normalize_answer(a) for a in answers).most_common(1)[0][0]
    return next(a for a in answers if normalize_answer(a) == top)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against n >= 2 human answers (module docstring); 0..1."""
    if len(human_answers) < 2:
        raise ValueError(f"VQA accuracy needs several human answers per question, got {len(human_answers)}; "
                         "a question with one reference answer is scored by exact_match")
    answers = [normalize_answer(a) for a in human_answers]
    predicted = normalize_answer(prediction)
    matches = sum(1 for a in answers if a == predicted)
    # leaving out a matching answer leaves matches-1, leaving out another leaves all matches
    per_subset = [min((matches - (a == predicted)) / 3.0, 1.0) for a in answers]
    return sum(per_subset) / len(per_subset)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def metric_name(references: Sequence[Sequence[str]]) -> str:
    """`vqa_accuracy` when every question has several human answers, `exact_match` when every question has
    one; a mix is refused (its mean would be neither)."""
    counts = [len(refs) for refs in references]
    if not counts or 0 in counts:
        raise ValueError("every VQA question needs at least one reference answer")
    if all(c == 1 for c in counts):
        return EXACT_MATCH
    if all(c >= 2 for c in counts):
        return VQA_ACCURACY
    single = sum(1 for c in counts if c == 1)
    raise ValueError(f"{single} of {len(counts)} questions have one reference answer and the rest several: "
                     "score them apart (exact match vs VQA accuracy), or keep every human answer for all")


def question_score(prediction: str, references: Sequence[str], metric: str) -> float:
    if metric == EXACT_MATCH:
        return exact_match(prediction, references[0])
    return vqa_accuracy(prediction, references)


def answer_type(human_answers: Sequence[str]) -> str:
    """VQAv2's answer types, from the most common reference answer: yes/no, number, other."""
    top = Counter(normalize_answer(a) for a in human_answers).most_common(1)[0][0]
    if top in YES_NO:
        return "yes/no"
    return "number" if top.replace(".", "", 1).isdigit() else "other"


def accuracy_by_type(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """The score overall and per answer type, under the metric's own name (metric_name):
    {"metric": name, name: mean, "items": n, "by_type": {type: {name: mean, "items": n}}}."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    metric = metric_name(references)
    scores = [question_score(p, r, metric) for p, r in zip(predictions, references)]
    by_type: dict[str, list[float]] = {}
    for score, refs in zip(scores, references):
        by_type.setdefault(answer_type(refs), []).append(score)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"metric": metric, metric: mean(scores), "items": len(scores),
            "by_type": {t: {metric: mean(v), "items": len(v)} for t, v in sorted(by_type.items())}}


# ------------------------------------------------------------------------------------------ items
def qa_entries(questions: Sequence[Sequence[str]], answers: Sequence[Sequence], key_prefix: str) -> list[tuple]:
    """(image key, question, answer) for every question of every row (uniform columns: aligned lists). An
    answer may be a string or a list of reference answers; questions without any answer are left out."""
    out = []
    for row, (qs, ans) in enumerate(zip(questions, answers)):
        if len(qs) != len(ans):
            raise ValueError(f"row {row}: {len(qs)} questions but {len(ans)} answers; they must be aligned")
        for q, a in zip(qs, ans):
            has_answer = a.strip() if isinstance(a, str) else any(x.strip() for x in a)
            if q.strip() and has_answer:
                out.append((f"{key_prefix}{row}", q, a if isinstance(a, str) else [x for x in a if x.strip()]))
    return out


def plan_vqa_items(eval_questions, eval_references, train_questions, train_answers, n_items: int, shots: int,
                   seed: int, same_split: bool = False):
    """Items over the eval questions (image keys "q<row>"), each keeping all its reference answers
    (`reference_answers` column), with (image, question, answer) examples from the training rows ("x<row>",
    or "q<row>" when both are the same split: a query never sees its own image)."""
    from spae.tasks.incontext import plan_items

    queries = qa_entries(eval_questions, eval_references, "q")
    pool = qa_entries(train_questions, train_answers, "q" if same_split else "x")
    return plan_items(queries, pool, n_items, shots, seed, "vqa", same_split)


def score_answers(records: Sequence[dict]) -> dict:
    """The score (overall and per answer type, under its metric's name) of a method's answered items."""
    scores = accuracy_by_type([r["answer"] for r in records], [r["references"] for r in records])
    return {**scores, "empty_answers": sum(1 for r in records if not normalize_answer(r["answer"]))}


def prior_answer(train_answers: Sequence[Sequence[str]]) -> str:
    """The most frequent (normalised) training answer: the 'answer prior' baseline every method must beat."""
    counts = Counter(normalize_answer(a) for ans in train_answers for a in ans if a.strip())
    if not counts:
        raise ValueError("the training split has no answers")
    return counts.most_common(1)[0][0]


__all__ = ["CONTRACTIONS", "EXACT_MATCH", "VQA_ACCURACY", "accuracy_by_type", "answer_type", "consensus_answer",
           "exact_match", "metric_name", "normalize_answer", "plan_vqa_items", "prior_answer", "qa_entries",
           "question_score", "score_answers", "strip_punctuation", "vqa_accuracy"]

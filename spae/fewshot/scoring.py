"""Answer extraction, matching rules and accuracy intervals for open-ended few-shot classification.

- "exact" (the paper's protocol): the answer (generation up to the first period or newline) equals the
  class name, ignoring case and surrounding/multiple whitespace.
- "prefix" (lenient, NOT the paper's protocol): the answer's words start with the class name's words.
- "rank_loglik" (NOT the paper's protocol; constrained decoding): the class whose answer text has the highest
  log-likelihood after the prompt is the prediction; it needs a backend with loglikelihood.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

from spae.errors import InvalidInputError

SCORINGS = {
    "exact": "exact match of the generated answer with the class name (paper's protocol)",
    "prefix": "generated answer starts with the class name (lenient; not the paper's protocol)",
    "rank_loglik": "class names ranked by log-likelihood (constrained; not the paper's protocol)",
}

# The constrained-choice metric recorded beside every run's headline (spae.fewshot.engine, choice=True).
CHOICE_NORMALISATION = "total_logprob"  # sum of the answer text's token log-probs (the standard; no length norm)
CHOICE_LABEL = ("constrained choice, NOT the paper's protocol: the LLM's ranking of the episode's class names by "
                "the total log-probability (summed over tokens, not length-normalised) of the answer text "
                "(the template's answer: ' <class name>' and its terminator, e.g. '.') after the prompt")

_SPACE = re.compile(r"\s+")


def check_scoring(scoring: str) -> str:
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
    return scoring


def extract_answer(generation: str | None, stop: Sequence[str] = (".", "\n")) -> str:
    """The generation up to the first stop string, stripped; '' for empty or missing generations."""
    if not generation:
        return ""
    cut = len(generation)
    for s in stop:
        at = generation.find(s) if s else -1
        if at != -1:
            cut = min(cut, at)
    return generation[:cut].strip()


def normalize(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def is_correct(answer: str, target: str, scoring: str = "exact") -> bool:
    answer, target = normalize(answer), normalize(target)
    if not target:
        raise InvalidInputError("empty class name: every class needs a non-empty name (check the dataset's "
                                "label names / label_names:)")
    if scoring in ("exact", "rank_loglik"):
        return answer == target
    if scoring == "prefix":
        words, want = answer.split(" "), target.split(" ")
        return words[: len(want)] == want
    raise ValueError(f"unknown scoring {scoring!r}; valid: {', '.join(SCORINGS)}")


def answered_a_class(answer: str, classes: Sequence[str]) -> bool:
    """Whether the answer is one of the episode's class names (right or wrong): separates "named the
    wrong class" from "left the label set" (e.g. repeated an image word), which exact match conflates."""
    return normalize(answer) in {normalize(c) for c in classes}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z=1.96); (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(correct: Sequence[bool]) -> dict:
    """Mean accuracy and its 95% Wilson interval."""
    n, k = len(correct), int(sum(bool(c) for c in correct))
    low, high = wilson_interval(k, n)
    return {"accuracy": (k / n) if n else float("nan"), "ci_low": low, "ci_high": high, "n": n,
            "interval": "wilson95"}

"""A deterministic rule-based "language model" for tests (no weights, instant, exact answers known).

Rule: the last line of the prompt is the query. The dummy picks the earlier line sharing the most
words with the query (ties: the latest such line), finds in it the query's last word, and continues with
the rest of that line followed by a newline. Example:

    "red round This is a ball.\\nblue square This is a box.\\nred round This is a"  ->  " ball.\\n"

So on a few-shot prompt it answers with the label of the most similar support example, like a 1-nearest-
neighbour classifier over word overlap. Without an earlier line or a matching word it answers "\\n".
Words are whitespace-separated; max_new_tokens counts words. `delay_s` (llm.delay_s) makes every call
sleep that long, like a slow server or model: the interruption tests need a run that is still going
when they kill it.
"""
from __future__ import annotations

import re
import time

from spae.llm.backends import LLMBackend, cut_at_stop

_WORD = re.compile(r"\S+")


def dummy_continuation(prompt: str) -> str:
    """The full continuation the dummy model would write (before max-token and stop cuts)."""
    lines = prompt.split("\n")
    query, earlier = lines[-1], lines[:-1]
    query_words = query.split()
    if not query_words or not earlier:
        return "\n"
    query_set = set(query_words)
    best, best_overlap = None, 0
    for line in earlier:
        overlap = len(query_set & set(line.split()))
        if overlap >= best_overlap and overlap > 0:
            best, best_overlap = line, overlap
    if best is None:
        return "\n"
    # continue after the last occurrence of the query's last word in the chosen line
    last = query_words[-1]
    tokens = list(_WORD.finditer(best))
    positions = [m.end() for m in tokens if m.group() == last]
    if not positions:
        return "\n"
    return best[positions[-1]:] + "\n"


def _first_words(text: str, n: int) -> str:
    """The prefix of `text` holding its first n words (with their leading whitespace)."""
    matches = list(_WORD.finditer(text))
    if len(matches) <= n:
        return text
    return text[: matches[n - 1].end()]


class DummyBackend(LLMBackend):
    name = "dummy"
    delay_s = 0.0  # class default: subclasses that skip __init__ stay instant

    def __init__(self, delay_s: float = 0.0):
        if not delay_s >= 0:
            from spae.errors import InvalidConfigError

            raise InvalidConfigError(f"llm.delay_s must be a number of seconds >= 0, got {delay_s!r}")
        self.delay_s = float(delay_s)

    def _wait(self) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)

    def generate(self, prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[str]:
        self._wait()
        return [cut_at_stop(_first_words(dummy_continuation(p), max_new_tokens), stop) for p in prompts]

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """0.0 when the dummy's output starts with the continuation (ending at a word boundary, whitespace
        ignored at both ends), else -(1 + number of words of the continuation)."""
        self._wait()
        scores = []
        for context, continuation in pairs:
            predicted, wanted = dummy_continuation(context).strip(), continuation.strip()
            boundary = len(predicted) == len(wanted) or not predicted[len(wanted):][:1].isalnum()
            hit = bool(wanted) and predicted.startswith(wanted) and boundary
            scores.append(0.0 if hit else -(1.0 + len(continuation.split())))
        return scores

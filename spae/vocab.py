"""The lexical vocabulary: single LLM tokens that are whole English words (the SPAE codebook's words).

A whole-word token starts with the tokenizer's word-boundary marker ("▁" in sentencepiece vocabularies
such as Gemma's, "Ġ" in byte-level BPE vocabularies such as SmolLM2's) followed by ASCII letters only.
English frequencies come from wordfreq (its data ships in the wheel, so this works offline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

# Leading-space markers of the two tokenizer families in use.
WORD_MARKERS = ("\u2581", "\u0120")  # "▁" (sentencepiece), "Ġ" (byte-level BPE)


@dataclass(frozen=True)
class VocabEntry:
    token_id: int
    word: str


def whole_word(token: str, *, lowercase_only: bool = True, min_chars: int = 3) -> str | None:
    """The word a token spells if it is a marker plus ASCII letters (and passes the filters), else None."""
    if not token or token[0] not in WORD_MARKERS:
        return None
    word = token[1:]
    # ASCII letters only: non-ASCII "letters" are mostly other languages or typography (für, thoſe).
    if len(word) < min_chars or not (word.isascii() and word.isalpha()):
        return None
    if lowercase_only and not word.islower():
        return None
    return word


def english_zipf(word: str) -> float:
    """Zipf frequency of an English word (log10 of occurrences per billion words; 0 when unknown)."""
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


def lexical_entries(
    tokens: Iterable[tuple[str, int]],
    *,
    lowercase_only: bool = True,
    min_chars: int = 3,
    min_zipf: float | None = 3.0,
    max_size: int | None = None,
    skip_ids: Iterable[int] = (),
) -> list[VocabEntry]:
    """Filter (token string, id) pairs into whole-word entries; see `lexical_vocabulary`."""
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be a positive number of words or None, got {max_size}")
    skip = set(skip_ids)
    by_word: dict[str, int] = {}
    for token, token_id in tokens:
        word = whole_word(token, lowercase_only=lowercase_only, min_chars=min_chars)
        if word is None or token_id in skip:
            continue
        # Deduplicate by word (e.g. a word that exists under both markers): keep the lowest id.
        if word not in by_word or token_id < by_word[word]:
            by_word[word] = token_id
    zipf = {word: english_zipf(word) for word in by_word}
    if min_zipf is not None:
        by_word = {w: i for w, i in by_word.items() if zipf[w] >= min_zipf}
    words = sorted(by_word, key=lambda w: (-zipf[w], w))  # most frequent first, ties by spelling
    if max_size is not None:
        words = words[:max_size]
    return [VocabEntry(by_word[w], w) for w in words]


def lexical_vocabulary(
    tokenizer: Any,
    *,
    lowercase_only: bool = True,
    min_chars: int = 3,
    min_zipf: float | None = 3.0,
    max_size: int | None = None,
) -> list[VocabEntry]:
    """Single tokens of `tokenizer` that are whole words, most frequent English words first.

    lowercase_only drops capitalised tokens; min_chars is the minimum word length; min_zipf keeps words
    whose English Zipf frequency is at least this (None keeps all, ordered by frequency anyway); max_size
    keeps the most frequent words. Special tokens are never words.
    """
    special = getattr(tokenizer, "all_special_ids", None) or ()
    return lexical_entries(
        tokenizer.get_vocab().items(),
        lowercase_only=lowercase_only,
        min_chars=min_chars,
        min_zipf=min_zipf,
        max_size=max_size,
        skip_ids=special,
    )

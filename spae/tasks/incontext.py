"""In-context tasks where a frozen LLM answers about a query image after a few solved examples.

Captioning and VQA share this core: an item is a query image (optionally with a question) plus `shots`
examples (image, optional question, answer) drawn from the training split; the prompt writes each example
with a declarative template, then the query; the LLM's answer is its greedy generation up to the first stop
string (period or newline). Images arrive as renderings keyed by a string (words, word layers, or Frozen's
prefix embeddings, exactly as spae.fewshot.prompts renders them), so every compared method answers the very
same items. Every answer is appended to a JSONL file as soon as its chunk finishes; a rerun resumes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from spae.fewshot.engine import generate_answers, read_jsonl_records, append_jsonl_record
from spae.fewshot.prompts import (Prompt, PromptTemplate, check_word_separators, merge_segments, prompt_as_text,
                                  render_image_words, spaced_image, text_before)
from spae.fewshot.scoring import extract_answer
from spae.hashing import stable_hash


@dataclass(frozen=True)
class Example:
    image: str  # rendering key
    answer: str
    question: str = ""


@dataclass(frozen=True)
class Item:
    item_id: str
    image: str  # rendering key of the query image
    references: tuple[str, ...]  # reference captions, or the human answers of the question
    examples: tuple[Example, ...]
    question: str = ""


@dataclass(frozen=True)
class InContextTemplate:
    """How examples and the query are written. Placeholders: {image}, {answer} (examples only), {question}."""
    name: str
    example_item: str  # e.g. "{image} Caption: {answer}."
    query_item: str  # e.g. "{image} Caption:"
    header: str = ""  # an optional first line (a task instruction)
    separator: str = "\n"
    word_separator: str = " "  # between the words of a layer (read by spae.fewshot.prompts.render_image_words)
    layer_separator: str = " "  # between pyramid layers
    stop: list[str] = field(default_factory=lambda: [".", "\n"])
    max_new_tokens: int = 16

    def __post_init__(self):
        check_word_separators(self.name, self.word_separator, self.layer_separator)
        for key in ("example_item", "query_item"):
            if getattr(self, key).count("{image}") != 1:
                raise ValueError(f"in-context template {self.name!r}: {key} must contain '{{image}}' exactly once")
        if "{answer}" not in self.example_item:
            raise ValueError(f"in-context template {self.name!r}: example_item must contain '{{answer}}'")
        if "{answer}" in self.query_item:
            raise ValueError(f"in-context template {self.name!r}: query_item must not contain the answer")
        if ("{question}" in self.example_item) != ("{question}" in self.query_item):
            raise ValueError(f"in-context template {self.name!r}: '{{question}}' must be in both example_item "
                             "and query_item, or in neither")
        if self.max_new_tokens < 1:
            raise ValueError(f"in-context template {self.name!r}: max_new_tokens must be >= 1")

    # the few-shot templates' constructor from a config dict (unknown keys refused), bound to this class
    from_dict = PromptTemplate.__dict__["from_dict"]


def _fill(text: str, question: str, answer: str | None) -> str:
    text = text.replace("{question}", question)
    return text if answer is None else text.replace("{answer}", answer)


def build_prompt(item: Item, template: InContextTemplate, render: Callable[[str], Any]) -> Prompt:
    """The item's prompt: a str, or a list of str / FloatTensor[n, D] segments for prefix-embedding methods."""
    segments: list[Any] = [template.header] if template.header else []

    def add(pattern: str, image_key: str, question: str, answer: str | None) -> None:
        if segments:
            segments.append(template.separator)
        before, after = (_fill(part, question, answer) for part in pattern.split("{image}", 1))
        image = render_image_words(render(image_key), template)
        segments.extend([before, spaced_image(text_before(segments, before), image), after])

    for example in item.examples:
        add(template.example_item, example.image, example.question, example.answer)
    add(template.query_item, item.image, item.question, None)
    return merge_segments(segments)


def item_key(item: Item, template: InContextTemplate) -> str:
    """Identity of one evaluation: the item's content and the template (a changed template re-asks)."""
    return f"{item.item_id}-{stable_hash({'item': asdict(item), 'template': asdict(template)}, 12)}"


def answer_items(backend: Any, items: Sequence[Item], render: Callable[[str], Any], template: InContextTemplate,
                 jsonl_path: str | Path | None = None, chunk_size: int = 32,
                 progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Ask the LLM every item; records (key, item_id, image, example_images, question, prompt, generation,
    answer, references) in item order. Finished items already in `jsonl_path` are kept, the rest asked and appended chunk by chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    keys = [item_key(item, template) for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate in-context items (same id and content): give each item a distinct item_id")
    done = {r["key"]: r for r in read_jsonl_records(Path(jsonl_path))} if jsonl_path is not None else {}
    todo = [i for i, key in enumerate(keys) if key not in done]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        prompts = [build_prompt(items[i], template, render) for i in chunk]
        generations = generate_answers(backend, prompts, template.max_new_tokens, template.stop)
        for i, prompt, generation in zip(chunk, prompts, generations):
            record = {"key": keys[i], "item_id": items[i].item_id, "image": items[i].image,
                      "example_images": [e.image for e in items[i].examples], "question": items[i].question, "prompt": prompt_as_text(prompt),
                      "generation": generation or "", "answer": extract_answer(generation, template.stop),
                      "references": list(items[i].references)}
            done[keys[i]] = record
            if jsonl_path is not None:
                append_jsonl_record(Path(jsonl_path), record)
        if progress is not None:
            progress(len(items) - len(todo) + start + len(chunk), len(items))
    return [done[k] for k in keys]


def plan_items(queries: Sequence[tuple[str, str, Sequence[str]]], pool: Sequence[tuple[str, str, str]],
               n_items: int, shots: int, seed: int, name: str, same_split: bool = False) -> list[Item]:
    """Seeded items: `n_items` of the queries (image key, question, references), each with `shots` examples
    (image key, question, answer) of the training pool. Prefix-stable: more items extend fewer with the same
    seed. same_split=True (examples and queries from one split): an item never shows its own image as an
    example, which needs pool keys equal to query keys for the same image."""
    import numpy as np

    if n_items < 1 or shots < 0:
        raise ValueError(f"bench.items must be >= 1 and bench.shots >= 0, got {n_items} and {shots}")
    if not queries:
        raise ValueError(f"no evaluation entries to build {name} items from (no rows with references)")
    order = np.random.default_rng(seed).permutation(len(queries))[:n_items]
    items = []
    for position, index in enumerate(order):
        image, question, references = queries[int(index)]
        rng = np.random.default_rng([seed, position])
        examples = sample_examples(rng, pool, shots, exclude_image=image if same_split else None)
        items.append(Item(item_id=f"{name}-s{seed}-{position}", image=image, references=tuple(references),
                          examples=examples, question=question))
    return items


def sample_examples(rng, pool: Sequence[tuple[str, str, str]], shots: int, exclude_image: str | None = None
                    ) -> tuple[Example, ...]:
    """`shots` distinct (image key, question, answer) entries of the pool, none showing `exclude_image`
    (the query's own image when examples and queries come from the same split)."""
    allowed = [p for p in pool if p[0] != exclude_image] if exclude_image is not None else list(pool)
    if len(allowed) < shots:
        raise ValueError(f"{shots} in-context examples were asked for but the training pool has only "
                         f"{len(allowed)} usable entries; lower bench.shots or raise bench.example_pool")
    picks = rng.choice(len(allowed), size=shots, replace=False) if shots else []
    return tuple(Example(image=allowed[j][0], question=allowed[j][1], answer=allowed[j][2]) for j in picks)


__all__ = ["Example", "InContextTemplate", "Item", "answer_items", "build_prompt", "item_key", "plan_items", "sample_examples"]

"""How each compared method shows an image to the frozen LLM in a few-shot prompt.

A compared entry (bench.compare in the config) names a method and how much of it the prompt gets:
- spae / lqae (tokenizers): the words of pyramid layers 1..layers (layers=None: all of them); `distinct: true`
  encodes with no word repeated within a layer of an image (PyramidQuantizer's distinct search, inference only);
  `model: <key>` reads another bench.methods entry of the same kind (a trained variant, e.g. spae_dt) instead
  of the method's own;
- frozen (prefix): the n continuous prefix embeddings its vision encoder emits;
- clip_topk: the k codebook words a CLIP scores most relevant to the image (no autoencoder at all).

Renderers turn a batch of images into one rendering per image, in the forms spae.fewshot.prompts takes:
a list of word lists (one per layer), a list of words, or a FloatTensor[n, D] of input embeddings.
Every image an episode needs is rendered once per method, in batches, before any prompt is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from spae.console import progress_enabled

# Compared method -> (kind, the bench.methods entry whose model it needs; None = no trained model).
METHOD_KINDS = {"spae": ("tokenizer", "spae"), "lqae": ("tokenizer", "lqae"), "frozen": ("prefix", "frozen"),
                "clip_topk": ("clip", None)}


@dataclass(frozen=True)
class ComparedMethod:
    method: str  # spae | lqae | frozen | clip_topk
    layers: int | None = None  # tokenizers: layers 1..layers (None = all)
    k: int | None = None  # clip_topk: words per image
    label: str | None = None  # display name (default derived once the model's sizes are known)
    model_key: str | None = None  # tokenizers: the bench.methods entry to use (None = the method's own)
    distinct: bool = False  # tokenizers: no word repeated within a layer of an image

    @classmethod
    def from_dict(cls, entry: dict, available_models: Sequence[str] | Mapping = ()) -> "ComparedMethod":
        """Validate one bench.compare entry; `available_models` are the keys of bench.methods, or bench.methods
        itself (then a `model` must name a model of the entry's kind)."""
        if not isinstance(entry, dict) or "method" not in entry:
            raise ValueError(f"each bench.compare entry needs a `method` ({', '.join(METHOD_KINDS)}), got {entry!r}")
        unknown = set(entry) - {"method", "layers", "k", "label", "model", "distinct"}
        if unknown:
            raise ValueError(f"bench.compare entry {entry!r}: unknown keys {sorted(unknown)}; valid: method, "
                             "layers, model, distinct (spae/lqae), k (clip_topk), label")
        method = str(entry["method"])
        if method not in METHOD_KINDS:
            raise ValueError(f"bench.compare: unknown method {method!r}; valid: {', '.join(METHOD_KINDS)}")
        kind, model = METHOD_KINDS[method]
        model = _model_key(entry, kind, model, available_models)
        layers, k = entry.get("layers"), entry.get("k")
        if layers is not None and (kind != "tokenizer" or int(layers) < 1):
            raise ValueError(f"bench.compare entry {entry!r}: `layers` (>= 1) applies to spae and lqae only")
        if kind == "clip" and (k is None or int(k) < 1):
            raise ValueError(f"bench.compare entry {entry!r}: clip_topk needs k >= 1 (words per image)")
        if kind != "clip" and k is not None:
            raise ValueError(f"bench.compare entry {entry!r}: `k` applies to clip_topk only")
        if "distinct" in entry and (kind != "tokenizer" or not isinstance(entry["distinct"], bool)):
            raise ValueError(f"bench.compare entry {entry!r}: `distinct` (true/false) applies to spae and lqae only")
        if model is not None and available_models and model not in available_models:
            raise ValueError(f"bench.compare entry {entry!r} needs bench.methods.{model}, which the bench does not "
                             f"compose (it has: {', '.join(available_models)}); add `/method@methods.{model}: "
                             f"{method}` to the bench's defaults, or `'+method@bench.methods.{model}={method}'` on "
                             "the command line")
        return cls(method, None if layers is None else int(layers), None if k is None else int(k),
                   entry.get("label"), model if model != METHOD_KINDS[method][1] else None,
                   bool(entry.get("distinct", False)))

    @property
    def kind(self) -> str:
        return METHOD_KINDS[self.method][0]

    @property
    def model(self) -> str | None:
        """Key of bench.methods whose trained model this entry needs (None for clip_topk)."""
        return self.model_key or METHOD_KINDS[self.method][1]

    @property
    def slug(self) -> str:
        """The method's stable id (spae-l2, lqae, frozen, clip_topk-k5): the key of results.json's per-method
        metrics, of W&B's metrics and of the JSONL file names; the display label stands beside it."""
        if self.kind == "tokenizer":
            name = self.model_key or self.method  # a variant model is named by its bench.methods key
            return (f"{name}-l{self.layers}" if self.layers else name) + ("-distinct" if self.distinct else "")
        if self.kind == "clip":
            return f"clip_topk-k{self.k}"
        return self.method

    def display_label(self, tokens_per_image: int | None = None) -> str:
        if self.label:
            return self.label
        name = {"spae": "SPAE", "lqae": "LQAE", "frozen": "Frozen", "clip_topk": "CLIP top-k"}[self.method]
        if self.kind == "clip":
            return f"CLIP top-{self.k} words"
        if self.kind == "prefix":
            return f"{name} ({tokens_per_image} embeddings)" if tokens_per_image else name
        name += f" [{self.model_key}]" if self.model_key else ""
        span = f"layers 1-{self.layers}" if self.layers else "all layers"
        span += ", distinct words" if self.distinct else ""
        return f"{name} ({tokens_per_image} tokens, {span})" if tokens_per_image else f"{name} ({span})"


def _model_key(entry: dict, kind: str, default: str | None, available_models) -> str | None:
    """The bench.methods key a compare entry reads: its `model` (tokenizers only), else the method's own. Where
    `available_models` maps keys to their specs, the named one must be a model of the entry's kind."""
    if "model" not in entry:
        return default
    model = entry["model"]
    if kind != "tokenizer" or not isinstance(model, str) or not model:
        raise ValueError(f"bench.compare entry {entry!r}: `model` (a bench.methods key) applies to spae and lqae "
                         "only")
    spec = available_models.get(model) if isinstance(available_models, Mapping) else None
    if isinstance(spec, Mapping) and spec.get("kind") != kind:
        raise ValueError(f"bench.compare entry {entry!r}: bench.methods.{model} is a {spec.get('kind')!r} model, "
                         f"not a {kind}")
    return model


def parse_compare(entries: Sequence[dict], available_models: Sequence[str] | Mapping = ()) -> list[ComparedMethod]:
    methods = [ComparedMethod.from_dict(dict(e), available_models) for e in entries or []]
    if not methods:
        raise ValueError("bench.compare is empty: list the methods to compare, e.g. [{method: spae, layers: 2}]")
    slugs = [m.slug for m in methods]
    duplicated = sorted({s for s in slugs if slugs.count(s) > 1})
    if duplicated:
        raise ValueError(f"bench.compare lists the same method twice: {duplicated}")
    return methods


# ------------------------------------------------------------------------------------------ renderers
Renderer = Callable[[torch.Tensor], list]  # images [B, 3, S, S] in [0, 1] -> one rendering per image


def tokenizer_renderer(tokenizer: Any, layers: int | None, distinct: bool = False) -> Renderer:
    """Words of layers 1..layers of a trained SPAE/LQAE tokenizer (spae.tokenizer.SPAETokenizer); `distinct`: no
    word repeated within a layer of an image."""

    def render(images: torch.Tensor) -> list[list[list[str]]]:
        pyramid = tokenizer.encode(images, layers=layers, distinct=distinct)
        return [pyramid.for_image(i) for i in range(images.shape[0])]

    return render


def clip_topk_renderer(scorer: Any, k: int) -> Renderer:
    """The k codebook words most relevant to the image (spae.clip.scorer.RelevanceScorer), best first."""

    def render(images: torch.Tensor) -> list[list[str]]:
        return scorer.top_words(images, k)

    return render


def prefix_renderer(encoder: Any) -> Renderer:
    """Frozen's continuous prefix: FloatTensor[n, D] per image, in the LLM's input-embedding space."""
    from spae.frozen_baseline import prefix_embeddings

    def render(images: torch.Tensor) -> list[torch.Tensor]:
        return list(prefix_embeddings(encoder, images).unbind(0))

    return render


def render_images(renderer: Renderer, images: Sequence, image_size: int, batch_size: int = 64,
                  desc: str = "render") -> list:
    """Render PIL images in batches (resized to the method's input size); one rendering per image, in order."""
    from spae.data.images import to_tensor

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False,
                          disable=not progress_enabled()):
            batch = to_tensor(list(images[start:start + batch_size]), image_size)
            rendered = renderer(batch)
            if len(rendered) != batch.shape[0]:
                raise RuntimeError(f"{desc}: the renderer returned {len(rendered)} renderings for {batch.shape[0]} images")
            out.extend(rendered)
    return out


def tokens_per_image(rendering: Any) -> int:
    """How many tokens (words or embeddings) one rendering puts in the prompt."""
    if isinstance(rendering, torch.Tensor):
        return int(rendering.shape[0])
    if isinstance(rendering, str):
        return len(rendering.split())
    if rendering and isinstance(rendering[0], (list, tuple)):
        return sum(len(layer) for layer in rendering)
    return len(rendering)


def as_record(rendering: Any) -> Any:
    """JSON-able form of a rendering, for the per-method record of what each image became."""
    if isinstance(rendering, torch.Tensor):
        return {"embeddings": list(rendering.shape), "norms": [round(float(n), 3) for n in rendering.norm(dim=-1)]}
    return rendering


__all__ = ["ComparedMethod", "METHOD_KINDS", "as_record", "clip_topk_renderer", "parse_compare", "prefix_renderer",
           "render_images", "tokenizer_renderer", "tokens_per_image"]

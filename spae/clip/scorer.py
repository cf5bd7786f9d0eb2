"""Relevance of vocabulary words to images: the CLIP scores SPAE's semantic loss and the CLIP top-k
baseline use.

    scorer = RelevanceScorer.from_stage(clip_stage_dir, words, templates, cache_dir)
    scorer.normalized_scores(images)   # [B, K] in [0, 1], min-max per image

The vocabulary's text embeddings are computed once (batched, progress bar) and cached on disk as
safetensors, keyed by (CLIP identity, words, templates). With several templates the per-template
embeddings are averaged and renormalised (CLIP's prompt ensembling).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from spae.clip.handle import ClipHandle
from spae.clip.loading import load_clip_from_stage
from spae.hashing import stable_hash
from spae.io import atomic_path

log = logging.getLogger(__name__)


def check_templates(templates: Sequence[str]) -> list[str]:
    templates = list(templates or [])
    if not templates:
        raise ValueError("clip.templates is empty; give at least one prompt such as 'a photo of {word}.'")
    for t in templates:
        if t.count("{word}") != 1:
            raise ValueError(f"prompt template {t!r} must contain '{{word}}' exactly once")
    return templates


class RelevanceScorer:
    def __init__(self, clip: ClipHandle, words: Sequence[str], templates: Sequence[str],
                 cache_dir: str | Path | None = None, batch_size: int = 512, progress: bool = True):
        if len(words) == 0:
            raise ValueError("the vocabulary is empty; the relevance scorer needs at least one word")
        self.clip = clip
        self.words = list(words)
        self.templates = check_templates(templates)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.progress = progress
        self._text: torch.Tensor | None = None
        self.text_seconds: float = 0.0  # time spent computing (0 when read from the cache)
        self.text_cache_hit: bool | None = None

    @classmethod
    def from_stage(cls, clip_stage_dir: str | Path, vocabulary_words: Sequence[str], templates: Sequence[str],
                   cache_dir: str | Path | None = None, **kwargs) -> "RelevanceScorer":
        """The CLIP the `clip` stage produced (embedded weights or an open_clip reference)."""
        return cls(load_clip_from_stage(clip_stage_dir, cache_dir=cache_dir), vocabulary_words, templates,
                   cache_dir=cache_dir, **kwargs)

    # text side -------------------------------------------------------------------------------------------
    @property
    def cache_key(self) -> str:
        return stable_hash({"clip": self.clip.identity, "words": self.words, "templates": self.templates},
                           length=24)

    @property
    def cache_path(self) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "clip_text" / f"{self.cache_key}.safetensors"

    @property
    def text_embeddings(self) -> torch.Tensor:
        """[K, E] unit-norm embedding per word (template-averaged); cached in memory and on disk."""
        if self._text is None:
            self._text = self._load_or_compute()
        return self._text

    def _load_or_compute(self) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        path = self.cache_path
        if path is not None and path.is_file():
            self.text_cache_hit = True
            log.info("clip: vocabulary text embeddings reused from %s", path)
            return load_file(str(path))["embeddings"]
        self.text_cache_hit = False
        start = time.perf_counter()
        emb = self.compute_text_embeddings()
        self.text_seconds = time.perf_counter() - start
        log.info("clip: %d words x %d templates embedded in %.1fs", len(self.words), len(self.templates),
                 self.text_seconds)
        if path is not None:
            with atomic_path(path) as tmp:
                save_file({"embeddings": emb.contiguous()}, str(tmp),
                          metadata={"clip": self.clip.identity, "n_words": str(len(self.words)),
                                    "templates": "|".join(self.templates)})
        return emb

    def compute_text_embeddings(self) -> torch.Tensor:
        total = None
        for i, template in enumerate(self.templates):
            prompts = [template.replace("{word}", w) for w in self.words]
            emb = self.clip.encode_texts(prompts, batch_size=self.batch_size, progress=self.progress,
                                         desc=f"clip: vocabulary, template {i + 1}/{len(self.templates)}")
            total = emb if total is None else total + emb
        return torch.nn.functional.normalize(total, dim=-1)

    # image side ------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> [B,E] unit-norm (resize + normalisation matching the weights)."""
        return self.clip.encode_images(images)

    def scores_from_embeddings(self, image_emb: torch.Tensor) -> torch.Tensor:
        return image_emb @ self.text_embeddings.T

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every image with every word, [B, K]."""
        return self.scores_from_embeddings(self.encode_images(images))

    def normalized_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Scores min-max normalised per image to [0, 1] (SPAE's relevance)."""
        return minmax(self.scores(images))

    def top_words(self, images: torch.Tensor, k: int) -> list[list[str]]:
        """The k most relevant words per image, best first."""
        k = min(k, len(self.words))
        idx = self.scores(images).topk(k, dim=-1).indices
        return [[self.words[j] for j in row] for row in idx.tolist()]


def minmax(scores: torch.Tensor) -> torch.Tensor:
    low = scores.min(dim=-1, keepdim=True).values
    high = scores.max(dim=-1, keepdim=True).values
    return (scores - low) / (high - low).clamp_min(1e-12)

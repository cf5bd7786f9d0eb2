"""The CLIP relevance scorer over the codebook words, built from the `clip` stage's folder and the config: the
train stage's semantic loss, recon_eval's semantic relevance and the CLIP top-k renderer all read the same
templates and share the text-embedding cache under paths.cache_dir."""
from __future__ import annotations

from pathlib import Path

from experiments.pipeline import StageContext


def relevance_scorer(ctx: StageContext, words):
    """spae.clip.scorer.RelevanceScorer of the clip stage (an input of ctx) over `words`."""
    from spae.clip.scorer import RelevanceScorer

    cfg = ctx.cfg
    return RelevanceScorer.from_stage(ctx.input_dir("clip"), words,
                                      templates=list(cfg["clip"].get("templates") or ["{word}"]),
                                      cache_dir=Path(cfg["paths"]["cache_dir"]))


def relevance_function(ctx: StageContext, codebook):
    """images [B,3,H,W] in [0,1] -> normalised CLIP relevance [B, K] over the codebook words."""
    scorer = relevance_scorer(ctx, codebook.words)
    scorer.text_embeddings  # computed (or read from the cache) now, outside the training time budget
    return scorer.normalized_scores

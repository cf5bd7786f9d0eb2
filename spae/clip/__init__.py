"""Semantic relevance: CLIP scores of vocabulary words for images (real open_clip weights, or a small
CLIP trained here from bundled pretrained towers).

    from spae.clip import RelevanceScorer, load_clip
"""
from spae.clip.handle import ClipHandle
from spae.clip.loading import CLIP_KINDS, load_clip, load_clip_from_stage
from spae.clip.scorer import RelevanceScorer

__all__ = ["CLIP_KINDS", "ClipHandle", "RelevanceScorer", "load_clip", "load_clip_from_stage"]

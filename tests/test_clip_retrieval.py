"""Image-to-caption retrieval recall (clip_quality on held-out clip art)."""
from __future__ import annotations

import torch

from spae.clip.quality import retrieval_recall


def test_recall_counts_identical_captions_as_one_target():
    emb = torch.nn.functional.normalize(torch.eye(4), dim=-1)
    captions = ["a cat", "a dog", "a cat", "a bus"]  # images 0 and 2 share a caption: one target, "a cat"
    text = emb.clone()
    text[2] = emb[0]  # the shared caption has one embedding
    r = retrieval_recall(emb[[0, 1, 0, 3]], text, captions)
    assert r["recall_at_1"] == 1.0 and r["distinct_captions"] == 3 and r["images"] == 4


def test_recall_drops_when_images_point_at_other_captions():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    captions = [f"caption {i}" for i in range(20)]
    assert retrieval_recall(text, text, captions)["recall_at_1"] == 1.0
    shifted = retrieval_recall(text.roll(1, 0), text, captions)
    assert shifted["recall_at_1"] == 0.0 and shifted["recall_at_5"] <= 0.25 + 1e-6
    assert shifted["median_rank"] > 1

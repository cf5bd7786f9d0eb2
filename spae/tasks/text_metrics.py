"""Caption metrics: BLEU-4 and ROUGE-L (torchmetrics), CIDEr-D (pycocoevalcap), and a CLIP image-text cosine.

Every metric is corpus-level over the evaluated items, each prediction against all its reference captions.
COCO's official evaluation tokenises with the Stanford PTB tokenizer (Java, not available here); captions
are instead lower-cased, stripped of punctuation and split on whitespace (`normalize_caption`), the same for
predictions and references, so numbers are comparable within this repo but may differ slightly from
coco-caption's.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

_NON_WORD = re.compile(r"[^a-z0-9' ]+")
_SPACE = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
    """Lower case, punctuation (but apostrophes) to spaces, single spaces."""
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text.lower())).strip()


def _prepare(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every prediction needs at least one reference caption")
    return ([normalize_caption(p) for p in predictions],
            [[normalize_caption(r) for r in refs] for refs in references])


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (uniform weights, brevity penalty, no smoothing), torchmetrics' BLEUScore."""
    from torchmetrics.text import BLEUScore

    preds, refs = _prepare(predictions, references)
    return float(BLEUScore(n_gram=4)(preds, refs))


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F-measure, each prediction against its best reference (torchmetrics' ROUGEScore)."""
    from torchmetrics.text import ROUGEScore

    preds, refs = _prepare(predictions, references)
    scores = ROUGEScore(rouge_keys="rougeL", accumulate="best")(preds, refs)
    return float(scores["rougeL_fmeasure"])


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """CIDEr-D (n-grams 1-4, sigma 6, clipping, x10) by pycocoevalcap: (corpus score, per-item scores).
    Its IDF comes from the evaluated items' references, as in the COCO evaluation."""
    from pycocoevalcap.cider.cider import Cider

    preds, refs = _prepare(predictions, references)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [p] for i, p in enumerate(preds)}
    score, per_item = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in per_item]


def clip_cosines(clip, images: torch.Tensor, texts: Sequence[str], batch_size: int = 64) -> list[float]:
    """Cosine of each image's and its text's embeddings under a CLIP (spae.clip.handle.ClipHandle);
    an empty text scores as the CLIP's embedding of the empty string."""
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images for {len(texts)} texts")
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        image_emb = clip.encode_images(images[start:start + batch_size])
        text_emb = clip.encode_texts(list(texts[start:start + batch_size]))
        out.extend(float(c) for c in (image_emb * text_emb).sum(-1))
    return out


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """BLEU-4, ROUGE-L and CIDEr-D of a corpus, plus how many predictions were empty."""
    cider, _ = cider_d(predictions, references)
    return {"bleu4": bleu4(predictions, references), "rouge_l": rouge_l(predictions, references),
            "cider_d": cider, "items": len(predictions),
            "empty_answers": sum(1 for p in predictions if not normalize_caption(p))}


__all__ = ["bleu4", "caption_scores", "cider_d", "clip_cosines", "normalize_caption", "rouge_l"]

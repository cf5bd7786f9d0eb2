"""How good a CLIP is as SPAE's relevance scorer: zero-shot accuracy, and whether the vocabulary words it
ranks highest for a class are about the class's meaning rather than its spelling.

The semantic score: for each class, the vocabulary is ranked by the class's mean min-max relevance over
held-out images; then the ranks of the class's HELD_OUT related words (spae.clip.captions; never in any
training caption) are read off. A CLIP that follows spelling puts "pull, pulls, pulling" first for
"pullover" and leaves "sweater, jumper, cardigan" far down; one that follows meaning ranks them high.
Reported: mean/median rank, mean percentile (0 = top, 0.5 = chance) and recall@100.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from spae.clip.captions import HELD_OUT, words_in
from spae.clip.handle import ClipHandle
from spae.clip.scorer import RelevanceScorer, check_templates, minmax


def class_text_embeddings(clip: ClipHandle, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Prompt-ensembled text embedding per class name [C, E]."""
    total = None
    for template in check_templates(templates):
        emb = clip.encode_texts([template.replace("{word}", n) for n in class_names])
        total = emb if total is None else total + emb
    return torch.nn.functional.normalize(total, dim=-1)


def zero_shot_predictions(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    return (image_emb @ class_emb.T).argmax(dim=-1)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    from torchmetrics.functional.classification import multiclass_accuracy

    return float(multiclass_accuracy(pred, target, num_classes=int(max(pred.max(), target.max())) + 1,
                                     average="micro"))


def class_relevance(scorer: RelevanceScorer, image_emb: torch.Tensor, labels: torch.Tensor,
                    n_classes: int) -> torch.Tensor:
    """[C, K]: each class's mean min-max relevance of every word over its images."""
    rel = minmax(scorer.scores_from_embeddings(image_emb))
    out = torch.zeros(n_classes, rel.shape[1])
    for c in range(n_classes):
        members = labels == c
        if members.any():
            out[c] = rel[members].mean(0)
    return out


def top_words(relevance: torch.Tensor, words: Sequence[str], k: int = 15) -> list[list[str]]:
    idx = relevance.topk(min(k, len(words)), dim=-1).indices
    return [[words[j] for j in row] for row in idx.tolist()]


def held_out_ranks(relevance_row: torch.Tensor, words: Sequence[str], related: Sequence[str]) -> dict:
    """Rank (1 = most relevant) of each related word found in the vocabulary."""
    order = torch.argsort(relevance_row, descending=True)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(1, len(order) + 1)
    position = {w: i for i, w in enumerate(words)}
    found = {w: int(rank_of[position[w]]) for w in related if w in position}
    return {"ranks": found, "missing_from_vocabulary": [w for w in related if w not in position]}


def semantic_score(relevance: torch.Tensor, words: Sequence[str], class_names: Sequence[str],
                   held_out: dict[str, list[str]] = HELD_OUT, recall_at: int = 100) -> dict:
    """Held-out related-word ranks per class and their summary over classes (see module doc)."""
    per_class, all_ranks = {}, []
    for c, name in enumerate(class_names):
        related = held_out.get(name.lower())
        if not related:
            continue
        res = held_out_ranks(relevance[c], words, related)
        ranks = list(res["ranks"].values())
        all_ranks += ranks
        per_class[name] = {**res, "mean_rank": float(np.mean(ranks)) if ranks else None}
    vocab = len(words)
    ranks = np.array(all_ranks, dtype=float)
    summary = {"vocabulary_size": vocab, "held_out_words_scored": int(len(ranks)),
               "mean_rank": float(ranks.mean()) if len(ranks) else None,
               "median_rank": float(np.median(ranks)) if len(ranks) else None,
               "mean_percentile": float(((ranks - 1) / max(vocab - 1, 1)).mean()) if len(ranks) else None,
               f"recall_at_{recall_at}": float((ranks <= recall_at).mean()) if len(ranks) else None}
    return {"summary": summary, "per_class": per_class}


def unseen_fraction(top: list[list[str]], caption_words: set[str]) -> float:
    """Share of the top words that never occur in any training caption (generalisation beyond captions)."""
    flat = [w for row in top for w in row]
    return float(np.mean([w.lower() not in caption_words for w in flat])) if flat else 0.0


def spelling_overlap(top: list[list[str]], class_names: Sequence[str], prefix: int = 4) -> float:
    """Share of top words sharing their first `prefix` letters with a word of the class name (a spelling
    signal: 'pull' for 'pullover'); the class name itself and its plural are not counted."""
    hits, total = 0, 0
    for row, name in zip(top, class_names):
        stems = {w[:prefix] for w in words_in([name]) if len(w) >= prefix}
        names = words_in([name])
        for w in row:
            total += 1
            if w[:prefix] in stems and w not in names and w.rstrip("s") not in names:
                hits += 1
    return hits / total if total else 0.0


def retrieval_recall(image_emb: torch.Tensor, caption_emb: torch.Tensor, captions: Sequence[str],
                     ks: Sequence[int] = (1, 5)) -> dict:
    """Image-to-caption retrieval among the *distinct* captions (identical captions are one target):
    R@k = share of images whose own caption is among the k captions nearest to the image."""
    distinct = list(dict.fromkeys(captions))
    position = {c: i for i, c in enumerate(distinct)}
    first = [captions.index(c) for c in distinct]
    targets = torch.tensor([position[c] for c in captions])
    sims = image_emb @ caption_emb[first].T
    own = sims.gather(1, targets[:, None])
    rank = (sims > own).sum(1) + 1  # 1 = the own caption is nearest
    out = {f"recall_at_{k}": float((rank <= k).float().mean()) for k in ks}
    return {**out, "images": int(len(captions)), "distinct_captions": len(distinct),
            "chance_at_1": 1.0 / max(len(distinct), 1), "median_rank": float(rank.float().median())}

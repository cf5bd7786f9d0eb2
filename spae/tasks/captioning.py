"""In-context captioning: items from caption columns, and the scores of a method's generated captions."""
from __future__ import annotations

from typing import Sequence

from spae.tasks.incontext import Item, plan_items
from spae.tasks.text_metrics import caption_scores


def caption_queries(captions: Sequence[Sequence[str]], key_prefix: str) -> list[tuple[str, str, list[str]]]:
    """(image key, "", reference captions) for every row that has at least one caption."""
    return [(f"{key_prefix}{row}", "", [c for c in caps if c.strip()])
            for row, caps in enumerate(captions) if any(c.strip() for c in caps)]


def caption_pool(captions: Sequence[str], key_prefix: str) -> list[tuple[str, str, str]]:
    """(image key, "", caption) for every training row with a caption (its first one)."""
    return [(f"{key_prefix}{row}", "", cap.strip()) for row, cap in enumerate(captions) if cap and cap.strip()]


def plan_caption_items(eval_captions: Sequence[Sequence[str]], train_captions: Sequence[str], n_items: int,
                       shots: int, seed: int, same_split: bool = False) -> list[Item]:
    """Items over eval rows "q<row>" with examples from training rows "x<row>" ("q<row>" when both are the
    same split, so that a query never sees itself as an example)."""
    pool = caption_pool(train_captions, "q" if same_split else "x")
    return plan_items(caption_queries(eval_captions, "q"), pool, n_items, shots, seed, "caption", same_split)


def score_captions(records: Sequence[dict]) -> dict:
    """BLEU-4, ROUGE-L, CIDEr-D of a method's answered items (records of spae.tasks.incontext.answer_items)."""
    return caption_scores([r["answer"] for r in records], [r["references"] for r in records])


__all__ = ["caption_pool", "caption_queries", "plan_caption_items", "score_captions"]

"""Semantic guidance of pyramid tokens towards words a CLIP model finds relevant to the image.

``relevance [B, K]``: for each image, the min-max normalised CLIP score of every codebook word (1 = the
most relevant word of that image, 0 = the least), computed elsewhere and passed in.

For pyramid layer ``l`` (1-based) the *candidate set* of image ``b`` is ``C_bl = {k : relevance[b, k] >=
rho_l}``, always including the image's most relevant word (so it is never empty, even for ``rho_l = 1``
or a constant relevance row). Each query ``q`` of that layer (``layer_queries[l-1]``, the vector the
quantizer searched with) gets logits ``l_k = -||q - e_k||^2 / tau`` over the codebook, computed as
``(2 q.e_k - ||e_k||^2) / tau`` (the dropped ``||q||^2`` is the same for every k, so softmax and its
gradient are unchanged), in fp32. For a target word ``t`` of image ``b`` the loss is the cross-entropy of
``t`` against the image's *negatives*, the columns that are not candidates of ``b``:

    -log( exp(l_t) / (exp(l_t) + sum_{k in S, k not in C_bl} exp(l_k)) )

so a word relevant to the image never acts as a negative for it: its other candidates are neither
pulled towards nor pushed away by target ``t`` (they get their own pull when they are the target). The
target is

* ``target="sample"``: one candidate per query, drawn with probability proportional to its relevance
  (``distinct_targets``: the ``n_l`` queries of one image's layer draw without replacement where the image
  has at least ``n_l`` candidates of non-zero weight, so they are not pulled to one word; else with
  replacement);
* ``target="all"``: every candidate, weighted by its relevance (the exact expectation of "sample").

Cost: with ``num_negatives=None`` the columns ``S`` are the whole codebook. With ``num_negatives=m`` they
are a set shared by the batch plus ``m`` words drawn uniformly (duplicates removed): for "sample" the
batch's drawn targets (at most ``B * n_l + m`` columns, whatever ``rho_l``), for "all" the union of the
batch's candidates. This is a sampled softmax (no log-Q correction): its negatives for image ``b`` are the
other images' targets or candidates and the sampled words, each only where it is not a candidate of ``b``
(a word of ``b``'s candidate set drawn by another image, or sampled, is excluded from ``b``'s denominator).

Note: the paper's formula puts the whole vocabulary, other candidates included, in the denominator; here
candidates do not compete with each other, so a query is pulled towards its image's candidate words as a
group (weighted by how often each is the target) and away from the rest, and the sampled softmax
estimates the same objective whether or not another image happened to draw one of ``b``'s candidates.

Also here: ``semantic_relevance`` (the metric: mean relevance of the chosen words per layer) and
``schedule_weight`` (the "dynamic" weight of the loss as a function of the step).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spae.errors import InvalidConfigError
from spae.nn_search import exact_fp32, squared_norms

TARGET_MODES = ("sample", "all")
SCHEDULES = ("constant", "linear_warmup", "cosine_decay")


@dataclass
class SemanticLossOutput:
    loss: torch.Tensor  # scalar: mean over the guided layers (0 with grad if none ran)
    per_layer: dict[int, torch.Tensor]  # 1-based layer number -> that layer's loss (detached)
    num_candidates: dict[int, float]  # 1-based layer number -> mean candidate-set size per image


class SemanticLoss(nn.Module):
    """Cross-entropy of pyramid queries towards CLIP-relevant codebook words (see module docstring).

    Args:
        codebook: ``[K, D]`` frozen codebook (the same rows the quantizer searches).
        thresholds: ``rho_l`` for every pyramid layer (length ``L``), each in [0, 1]; stricter (higher)
            for upper layers.
        temperature: ``tau > 0``.
        layers: 1-based numbers of the layers that get the loss (e.g. ``[1, 2]``), each in ``1..L``.
        num_negatives: uniformly sampled extra words per step, or ``None`` for the full codebook.
        target: ``"sample"`` or ``"all"``.
        distinct_targets: with ``"sample"``, an image's queries of one layer get distinct targets when it has
            enough candidates (see the module docstring).
    """

    def __init__(
        self,
        codebook: torch.Tensor,
        thresholds: Sequence[float],
        temperature: float,
        layers: Sequence[int],
        num_negatives: int | None = None,
        target: str = "sample",
        distinct_targets: bool = False,
    ):
        super().__init__()
        self.thresholds = _validated_thresholds(thresholds)
        self.layers = _validated_layers(layers, len(self.thresholds))
        if not temperature > 0:
            raise InvalidConfigError(f"temperature must be > 0, got {temperature}.")
        if num_negatives is not None and num_negatives < 0:
            raise InvalidConfigError(f"num_negatives must be >= 0 or None (full codebook), got {num_negatives}.")
        if target not in TARGET_MODES:
            raise InvalidConfigError(f"Unknown target {target!r}; choose one of {TARGET_MODES}.")
        if codebook.dim() != 2 or codebook.shape[0] < 1:
            raise ValueError(f"codebook must be a non-empty [K, D] tensor, got {list(codebook.shape)}.")
        self.temperature = float(temperature)
        self.num_negatives = num_negatives
        self.target = target
        if not isinstance(distinct_targets, bool):
            raise InvalidConfigError(f"distinct_targets must be true or false, got {distinct_targets!r}.")
        self.distinct_targets = distinct_targets
        cb = codebook.detach().float().contiguous()
        self.register_buffer("codebook", cb, persistent=False)  # frozen; rebuilt from the codebook stage
        self.register_buffer("codebook_sq_norms", squared_norms(cb), persistent=False)

    def forward(
        self,
        layer_queries: Sequence[torch.Tensor],
        relevance: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> SemanticLossOutput:
        """``layer_queries``: the quantizer's ``[B, n_l, D]`` per layer (a prefix is fine: guided layers
        beyond it are skipped). ``relevance``: ``[B, K]`` in [0, 1]."""
        self._check_relevance(relevance, layer_queries)
        per_layer, sizes, losses = {}, {}, []
        with exact_fp32(relevance.device.type):
            rel = relevance.float()
            for layer in self.layers:
                if layer > len(layer_queries):
                    continue
                queries = layer_queries[layer - 1].float()
                cand = self._candidates(rel, self.thresholds[layer - 1])  # [B, K] bool
                loss = self._layer_loss(queries, rel, cand, generator)
                losses.append(loss)
                per_layer[layer] = loss.detach()
                sizes[layer] = float(cand.sum(1).float().mean())
            if losses:
                total = torch.stack(losses).mean()
            else:  # keeps the graph well formed when no guided layer was run
                total = sum(q.sum() for q in layer_queries) * 0.0
        return SemanticLossOutput(loss=total, per_layer=per_layer, num_candidates=sizes)

    # ------------------------------------------------------------------------------ internals
    @staticmethod
    def _candidates(rel: torch.Tensor, rho: float) -> torch.Tensor:
        cand = rel >= rho
        cand[torch.arange(rel.shape[0], device=rel.device), rel.argmax(dim=1)] = True
        return cand

    @staticmethod
    def _target_weights(rel: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` target distribution: candidates weighted by relevance, rows summing to 1."""
        weights = rel * cand
        # the argmax word is a candidate even when its relevance is 0 (constant rows): give it weight
        weights = torch.where(cand & (weights.sum(1, keepdim=True) == 0), 1.0, weights)
        return weights / weights.sum(1, keepdim=True)

    def _draw_targets(self, weights: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """``[B, n]`` target words, drawn by ``weights`` with replacement; with ``distinct_targets``, without
        replacement for the images that have at least ``n`` words of non-zero weight."""
        if not self.distinct_targets:
            return torch.multinomial(weights, n, replacement=True, generator=generator)
        enough = (weights > 0).sum(1) >= n
        picks = torch.empty(weights.shape[0], n, dtype=torch.long)
        for rows, replacement in ((enough, False), (~enough, True)):
            if rows.any():
                picks[rows] = torch.multinomial(weights[rows], n, replacement=replacement, generator=generator)
        return picks

    def _columns(self, required: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Sorted codebook rows the softmax runs over: all, or ``required`` plus sampled negatives."""
        K = self.codebook.shape[0]
        if self.num_negatives is None:
            return torch.arange(K, device=required.device)
        negatives = torch.randint(K, (self.num_negatives,), generator=generator).to(required.device)
        return torch.unique(torch.cat([required, negatives]))

    def _layer_loss(self, queries, rel, cand, generator) -> torch.Tensor:
        B, n, D = queries.shape
        weights = self._target_weights(rel, cand)  # [B, K]
        if self.target == "sample":
            # draw the targets first, so only they (not every candidate) need a softmax column
            picks = self._draw_targets(weights.cpu(), n, generator).to(rel.device)
            cols = self._columns(picks.reshape(-1), generator)
        else:
            cols = self._columns(cand.any(dim=0).nonzero().squeeze(1), generator)
        e, e_sq = self.codebook[cols], self.codebook_sq_norms[cols]
        logits = ((2.0 * queries.reshape(B * n, D) @ e.T - e_sq) / self.temperature).view(B, n, -1)  # [B, n, S]
        # the negatives of image b: columns that are not its candidates (-inf when every column is one)
        own = cand[:, cols][:, None, :]  # [B, 1, S]
        negatives = torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=2, keepdim=True)  # [B, n, 1]
        if self.target == "sample":
            target = logits.gather(2, torch.searchsorted(cols, picks)[:, :, None])  # [B, n, 1]
            return (torch.logaddexp(target, negatives) - target).mean()
        per_target = torch.logaddexp(logits, negatives) - logits  # [B, n, S]: -log p(k | k and negatives)
        return (weights[:, cols][:, None, :] * per_target).sum(2).mean()

    def _check_relevance(self, relevance: torch.Tensor, layer_queries: Sequence[torch.Tensor]) -> None:
        K = self.codebook.shape[0]
        if relevance.dim() != 2 or relevance.shape[1] != K:
            raise ValueError(f"relevance must be [B, {K}] (one score per codebook word), got {list(relevance.shape)}.")
        if not layer_queries:
            raise ValueError("layer_queries is empty: pass QuantizerOutput.layer_queries.")
        for i, q in enumerate(layer_queries):
            if q.dim() != 3 or q.shape[0] != relevance.shape[0] or q.shape[2] != self.codebook.shape[1]:
                raise ValueError(f"layer_queries[{i}] must be [B={relevance.shape[0]}, n, D={self.codebook.shape[1]}], "
                                 f"got {list(q.shape)}.")
        if not torch.isfinite(relevance).all():
            raise ValueError("relevance has NaN or Inf entries (a constant score row min-max normalised by 0?).")
        if relevance.numel() and (relevance.min() < 0 or relevance.max() > 1):
            raise ValueError("relevance must be min-max normalised to [0, 1] per image.")

    def extra_repr(self) -> str:
        return (f"layers={self.layers}, thresholds={self.thresholds}, temperature={self.temperature}, "
                f"num_negatives={self.num_negatives}, target={self.target!r}, "
                f"distinct_targets={self.distinct_targets}")


@torch.no_grad()
def semantic_relevance(codes: Sequence[torch.Tensor], relevance: torch.Tensor) -> list[float]:
    """Per layer, the mean normalised relevance (``relevance[b, code]``) of the words chosen for image b."""
    out = []
    for i, idx in enumerate(codes):
        if idx.dim() != 2 or idx.shape[0] != relevance.shape[0]:
            raise ValueError(f"codes[{i}] must be [B={relevance.shape[0]}, n_l], got {list(idx.shape)}.")
        out.append(float(relevance.float().gather(1, idx.to(relevance.device)).mean()))
    return out


def schedule_weight(
    step: int,
    *,
    weight: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    total_steps: int | None = None,
    final_weight: float = 0.0,
) -> float:
    """The semantic-loss weight at ``step`` (the paper's "dynamic weight").

    ``constant``: ``weight``. ``linear_warmup``: 0 -> ``weight`` over ``warmup_steps``, then constant.
    ``cosine_decay``: linear warmup, then cosine from ``weight`` to ``final_weight`` at ``total_steps``.
    """
    if schedule not in SCHEDULES:
        raise InvalidConfigError(f"Unknown schedule {schedule!r}; choose one of {SCHEDULES}.")
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got {step}, {warmup_steps}.")
    if schedule == "constant":
        return float(weight)
    if step < warmup_steps:
        return float(weight) * step / warmup_steps
    if schedule == "linear_warmup":
        return float(weight)
    if total_steps is None:
        raise InvalidConfigError("cosine_decay needs total_steps (the train stage sets method.semantic.total_steps "
                                 "to trainer.max_steps); pass it, or use schedule=linear_warmup.")
    # a run no longer than its warmup ends the decay at once (as the cosine LR schedule does)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return float(final_weight + (weight - final_weight) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _validated_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [float(t) for t in thresholds]
    if not values:
        raise InvalidConfigError("thresholds is empty: give one rho_l in [0, 1] per pyramid layer.")
    bad = [t for t in values if not 0.0 <= t <= 1.0]
    if bad:
        raise InvalidConfigError(f"Every threshold rho_l must lie in [0, 1] (relevance is min-max normalised), "
                                 f"got {bad}; set each semantic threshold between 0 and 1.")
    return values


def _validated_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    values = [int(x) for x in layers]
    if not values:
        raise InvalidConfigError("layers is empty: name at least one 1-based pyramid layer to guide, e.g. [1, 2].")
    bad = [x for x in values if not 1 <= x <= num_layers]
    if bad:
        raise InvalidConfigError(f"Semantic layers {bad} out of range: layers are 1-based numbers in 1..{num_layers} "
                         f"(one threshold is given per pyramid layer).")
    if len(set(values)) != len(values):
        raise InvalidConfigError(f"Semantic layers must not repeat, got {values}.")
    return sorted(values)

"""Reconstruction and token metrics accumulated over a whole evaluation pass.

- PSNR / SSIM per number of pyramid layers used (torchmetrics, data range 1).
- Code usage and perplexity per layer and over all layers: from code histograms over the whole pass
  (a per-batch average would understate usage).
- Semantic relevance per layer: mean min-max-normalised CLIP score of the chosen words
  (spae.semantic_loss.semantic_relevance), averaged over images.
"""
from __future__ import annotations

import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from spae.semantic_loss import semantic_relevance


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a code histogram: the effective number of codes used."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0].double() / total
    return float(torch.exp(-(p * p.log()).sum()))


class ReconstructionMetrics:
    def __init__(self, num_layers: int, codebook_size: int):
        self.num_layers, self.codebook_size = num_layers, codebook_size
        self.psnr = [PeakSignalNoiseRatio(data_range=1.0) for _ in range(num_layers)]
        self.ssim = [StructuralSimilarityIndexMeasure(data_range=1.0) for _ in range(num_layers)]
        self.counts = [torch.zeros(codebook_size, dtype=torch.long) for _ in range(num_layers)]
        self.relevance_sum = [0.0] * num_layers
        self.images = 0
        self.has_relevance = False

    def update(self, images: torch.Tensor, recons: list[torch.Tensor], codes: list[torch.Tensor],
               relevance: torch.Tensor | None = None) -> None:
        """recons[l]: reconstruction from layers 1..l+1; codes[l]: LongTensor [B, n_l]."""
        if len(recons) != self.num_layers or len(codes) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} reconstructions and code layers, got "
                             f"{len(recons)} and {len(codes)}")
        images = images.float().cpu()
        for li in range(self.num_layers):
            r = recons[li].float().cpu().clamp(0, 1)
            self.psnr[li].update(r, images)
            self.ssim[li].update(r, images)
            self.counts[li] += torch.bincount(codes[li].reshape(-1).cpu(), minlength=self.codebook_size)
        if relevance is not None:
            self.has_relevance = True
            for li, value in enumerate(semantic_relevance(codes, relevance.cpu())):
                self.relevance_sum[li] += value * images.shape[0]
        self.images += images.shape[0]

    def compute(self) -> dict:
        if self.images == 0:
            raise ValueError("no images were evaluated")
        out: dict = {"images": self.images}
        total = torch.zeros(self.codebook_size, dtype=torch.long)
        for li in range(self.num_layers):
            n = li + 1
            out[f"psnr_l{n}"] = round(float(self.psnr[li].compute()), 4)
            out[f"ssim_l{n}"] = round(float(self.ssim[li].compute()), 4)
            used = int((self.counts[li] > 0).sum())
            out[f"codes_used_l{n}"] = used
            out[f"perplexity_l{n}"] = round(perplexity(self.counts[li]), 3)
            if self.has_relevance:
                out[f"relevance_l{n}"] = round(self.relevance_sum[li] / self.images, 4)
            total += self.counts[li]
        out["codes_used"] = int((total > 0).sum())
        out["code_usage"] = round(out["codes_used"] / self.codebook_size, 5)
        out["perplexity"] = round(perplexity(total), 3)
        return out

"""Tiny tokenizer configs and random codebooks for the tokenizer tests (no files, no network)."""
from __future__ import annotations

import copy

import torch

TINY_MODEL = {"name": "tiny", "image_size": 16, "latent_size": 4, "channels": [8, 16, 16], "res_blocks": 1,
              "attention": False, "groups": 4, "layers": [1, 2, 4]}

TINY_METHOD = {
    "name": "spae", "kind": "tokenizer", "quantizer": "saq", "single_layer": False, "beta": 0.25,
    "pooling": "mean", "semantic_loss": True, "search": {"precision": "fp32"},  # exact search, SSIM off: what
    # these tiny tests were written for (missing keys take conf/method/spae.yaml's values, spae.config)
    "semantic": {"thresholds": [0.9, 0.8, 0.7], "temperature": 1.0, "layers": [1, 2], "num_negatives": 8,
                 "target": "sample", "weight": 1.0, "schedule": "constant"},
    "loss": {"recon": "l2", "prefix_recon": "random", "prefix_weight": 1.0, "ssim_weight": 0.0, "perceptual": "none",
             "perceptual_weight": 0.0,
             "gan": {"kind": "hinge", "weight": 0.1, "start_step": 2, "adaptive": True, "lecam_weight": 0.01,
                     "lecam_decay": 0.9, "channels": 8, "layers": 1}},
    "optim": {"lr": 1e-3, "disc_lr": 1e-3, "betas": [0.5, 0.9], "warmup_steps": 2, "schedule": "cosine",
              "total_steps": 10, "min_lr_factor": 0.1, "grad_clip": 1.0},
}


def tiny_config(**method_overrides) -> dict:
    method = copy.deepcopy(TINY_METHOD)
    for key, value in method_overrides.items():
        method[key] = value
    return {"model": copy.deepcopy(TINY_MODEL), "method": method, "seed": 0, "offline": True}


def lqae_config() -> dict:
    return tiny_config(name="lqae", quantizer="vq", single_layer=True, semantic_loss=False)


def random_codebook(k: int = 64, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=gen), [f"word{i}" for i in range(k)]


def fake_relevance(k: int):
    """Deterministic per image: a function of the image's mean, min-max normalised to [0, 1]."""
    basis = torch.linspace(0, 1, k)

    def fn(images: torch.Tensor) -> torch.Tensor:
        m = images.mean(dim=(1, 2, 3), keepdim=False)[:, None]
        scores = torch.cos(basis[None, :] * 7.0 + m * 13.0)
        lo, hi = scores.min(1, keepdim=True).values, scores.max(1, keepdim=True).values
        return (scores - lo) / (hi - lo)

    return fn

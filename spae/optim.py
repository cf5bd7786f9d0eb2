"""The tokenizer's two optimisers (generator, discriminator) and their learning-rate schedule (method.optim)."""
from __future__ import annotations

import math
from functools import partial
from typing import Iterable

import torch

from spae.config import OptimConfig

# method.optim.schedule (checked when the tokenizer is built; tests/test_training_options.py trains each)
LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, warmup: int, total: int | None, schedule: str, min_factor: float) -> float:
    """Learning-rate multiplier per scheduler step (one per batch): linear warmup, then constant or cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        if not total:
            raise ValueError("method.optim.schedule=cosine needs method.optim.total_steps (the train stage sets it)")
        progress = min(1.0, (step - warmup) / max(1, int(total) - warmup))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown method.optim.schedule {schedule!r}; valid: {', '.join(LR_SCHEDULES)}")


def generator_and_discriminator_optimizers(generator_params: Iterable[torch.nn.Parameter],
                                           discriminator_params: Iterable[torch.nn.Parameter], opt: OptimConfig):
    """Adam for each (the discriminator at `disc_lr`, no weight decay), both on one warmup-then-schedule
    multiplier; in Lightning's ([optimisers], [schedulers]) form."""
    betas = tuple(opt.betas)
    opt_g = torch.optim.Adam(generator_params, lr=float(opt.lr), betas=betas, weight_decay=float(opt.weight_decay))
    opt_d = torch.optim.Adam(discriminator_params, lr=float(opt.disc_lr), betas=betas)
    lam = partial(lr_factor, warmup=int(opt.warmup_steps), total=opt.total_steps,
                  schedule=opt.schedule, min_factor=float(opt.min_lr_factor))
    return [opt_g, opt_d], [torch.optim.lr_scheduler.LambdaLR(opt_g, lam), torch.optim.lr_scheduler.LambdaLR(opt_d, lam)]

"""Appearance losses: reconstruction, GAN (hinge / non-saturating), LeCam regularisation, VQGAN's
adaptive GAN weight. Small functions; the perceptual loss lives in spae/perceptual.py.

Hand-written: these are a few lines each and no required library provides them for arbitrary nets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


RECONSTRUCTION_LOSSES = {"l2": F.mse_loss, "l1": F.l1_loss}
GAN_LOSSES = ("hinge", "non_saturating")


def _reconstruction_fn(kind: str):
    if kind not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"unknown reconstruction loss {kind!r}; valid: {', '.join(RECONSTRUCTION_LOSSES)}")
    return RECONSTRUCTION_LOSSES[kind]


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    return _reconstruction_fn(kind)(recon, target)


def ssim_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM (torchmetrics; Gaussian window 11, sigma 1.5, images in [0, 1]: the settings of the reported
    SSIM). Why a term of its own: L2 barely charges the faint texture a decoder paints on flat backgrounds,
    while SSIM, whose windows on a flat target have ~zero variance, charges it heavily, so without it a
    blurrier (fewer-token) reconstruction can score a higher SSIM than a sharper one. The batch mean."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return 1.0 - structural_similarity_index_measure(recon, target, data_range=1.0)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge"
                       ) -> torch.Tensor:
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    raise ValueError(f"unknown GAN loss {kind!r}; valid: {', '.join(GAN_LOSSES)}")


def generator_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; valid: {', '.join(GAN_LOSSES)}")


class LeCam(nn.Module):
    """LeCam regularisation (Tseng et al. 2021): keeps the discriminator's predictions on real images
    near the running mean of its predictions on fakes and vice versa. The EMAs are buffers, so they are
    checkpointed and a resumed run continues with the same anchors."""

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        real, fake = real_logits.mean(), fake_logits.mean()
        if not bool(self.initialised):
            self.ema_real.copy_(real)
            self.ema_fake.copy_(fake)
            self.initialised.fill_(True)
        else:
            self.ema_real.lerp_(real, 1.0 - self.decay)
            self.ema_fake.lerp_(fake, 1.0 - self.decay)

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return (F.relu(real_logits - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - fake_logits).pow(2).mean())


def adaptive_gan_weight(nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's balance: ||d nll / d w|| / ||d gan / d w|| at the decoder's last layer weight w."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()

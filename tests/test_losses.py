"""Appearance losses: GAN losses, LeCam, adaptive weight, reconstruction, perceptual backbone."""
from __future__ import annotations

import pytest
import torch

from spae.losses import (LeCam, adaptive_gan_weight, discriminator_loss, generator_loss,
                         reconstruction_loss, ssim_loss)
from spae.perceptual import build_perceptual, describe_perceptual


def test_hinge_and_non_saturating_losses():
    real, fake = torch.full((4,), 2.0), torch.full((4,), -2.0)  # a confident, correct discriminator
    assert discriminator_loss(real, fake, "hinge") == 0
    assert discriminator_loss(fake, real, "hinge") == pytest.approx(3.0)
    assert discriminator_loss(real, fake, "non_saturating") < discriminator_loss(fake, real, "non_saturating")
    assert generator_loss(fake, "hinge") == pytest.approx(2.0)
    assert generator_loss(real, "non_saturating") < generator_loss(fake, "non_saturating")
    with pytest.raises(ValueError, match="valid: hinge, non_saturating"):
        generator_loss(fake, "wgan")


def test_reconstruction_kinds():
    a, b = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    assert reconstruction_loss(a, b, "l2") == 4 and reconstruction_loss(a, b, "l1") == 2
    with pytest.raises(ValueError):
        reconstruction_loss(a, b, "l3")


def test_lecam_anchors_follow_the_logits():
    reg = LeCam(decay=0.5)
    reg.update(torch.full((3,), 1.0), torch.full((3,), -1.0))
    assert reg.ema_real == 1 and reg.ema_fake == -1  # first update initialises
    reg.update(torch.full((3,), 3.0), torch.full((3,), -3.0))
    assert reg.ema_real == 2 and reg.ema_fake == -2
    # real logits above the fake anchor and fake logits below the real anchor are penalised
    assert reg(torch.tensor([0.0]), torch.tensor([0.0])) == pytest.approx(4.0 + 4.0)
    assert reg(torch.tensor([-3.0]), torch.tensor([3.0])) == 0


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.nn.Parameter(torch.ones(3))
    nll = (3.0 * w).sum()  # grad 3 per entry
    gan = (0.5 * w).sum()  # grad 0.5 per entry
    assert float(adaptive_gan_weight(nll, gan, w)) == pytest.approx(6.0, rel=1e-3)


def test_efficientnet_perceptual_is_frozen_and_discriminative():
    perc = build_perceptual("efficientnet_lite0")
    assert "not LPIPS" in describe_perceptual("efficientnet_lite0")
    assert not any(p.requires_grad for p in perc.parameters())
    perc.train()
    assert not perc.training  # BatchNorm keeps its ImageNet statistics
    x = torch.rand(2, 3, 32, 32)
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert perc(x, x) == 0
    loss = perc(y, x)
    assert loss > 0
    loss.backward()
    assert y.grad.abs().sum() > 0
    # a slight blur is closer than unrelated noise
    blur = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert perc(blur, x) < perc(torch.rand_like(x), x)


def test_lpips_refuses_offline():
    with pytest.raises(ValueError, match="offline"):
        build_perceptual("lpips_vgg", offline=True)
    assert build_perceptual("none") is None


def test_perceptual_with_shared_targets_equals_comparing_each_pair():
    """Several reconstructions of the same targets (pyramid prefixes) give the same loss whether the targets
    are repeated by hand, gathered by index, or left for the module to repeat."""
    perc = build_perceptual("efficientnet_lite0", min_size=32)
    targets = torch.rand(3, 3, 16, 16)
    recons = torch.rand(6, 3, 16, 16)
    by_hand = perc(recons, targets.repeat(2, 1, 1, 1))
    assert perc(recons, targets) == pytest.approx(float(by_hand), rel=1e-5)
    index = torch.tensor([2, 0, 1, 1, 0, 2])
    assert perc(recons, targets, index) == pytest.approx(float(perc(recons, targets[index])), rel=1e-5)
    with pytest.raises(ValueError, match="reconstructions"):
        perc(torch.rand(4, 3, 16, 16), targets)


def test_ssim_loss_is_zero_for_a_copy_and_charges_texture_on_flat_backgrounds_more_than_l2_does():
    white = torch.ones(2, 3, 32, 32)
    assert float(ssim_loss(white, white)) == pytest.approx(0.0, abs=1e-6)
    faint_texture = (white - 0.03 * torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    flat_grey = torch.full_like(white, 0.9)  # a larger L2 error, no structure
    assert reconstruction_loss(faint_texture, white) < reconstruction_loss(flat_grey, white)
    assert ssim_loss(faint_texture, white) > ssim_loss(flat_grey, white)
    recon = faint_texture.clone().requires_grad_(True)
    ssim_loss(recon, white).backward()
    assert recon.grad.abs().sum() > 0

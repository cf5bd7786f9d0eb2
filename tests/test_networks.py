"""Encoder/decoder/discriminator shapes and the checks on derived sizes."""
from __future__ import annotations

import pytest
import torch

from spae.discriminator import PatchDiscriminator
from spae.networks import ArchSpec, Decoder, Encoder


@pytest.mark.parametrize("model,latent", [
    ({"image_size": 32, "latent_size": 8, "channels": [32, 64, 128], "layers": [1]}, 8),
    ({"image_size": 16, "latent_size": 16, "channels": [8], "groups": 4, "layers": [1]}, 16),
    ({"image_size": 64, "latent_size": 8, "channels": [8, 8, 16, 16], "groups": 4, "attention": True,
      "res_blocks": 2, "layers": [1]}, 8),
])
def test_encoder_decoder_shapes(model, latent):
    spec = ArchSpec.from_config(model, latent_dim=12)
    x = torch.rand(2, 3, model["image_size"], model["image_size"])
    z = Encoder(spec)(x)
    assert z.shape == (2, 12, latent, latent)
    assert Decoder(spec)(z).shape == x.shape


@pytest.mark.parametrize("model,message", [
    ({"image_size": 32, "latent_size": 8, "channels": [32, 64]}, "needs 2 downsamples"),
    ({"image_size": 32, "latent_size": 12, "channels": [32, 64]}, "power of two"),
    ({"image_size": 32, "latent_size": 8, "channels": [30, 64, 128]}, "must divide every channel"),
])
def test_bad_architecture_fails_clearly(model, message):
    with pytest.raises(ValueError, match=message):
        ArchSpec.from_config(model, latent_dim=8)


def test_patch_discriminator_gives_a_logit_map():
    d = PatchDiscriminator(3, channels=8, num_layers=2)
    out = d(torch.rand(2, 3, 32, 32))
    assert out.dim() == 4 and out.shape[:2] == (2, 1) and out.shape[-1] > 1
    with pytest.raises(ValueError):
        PatchDiscriminator(num_layers=0)

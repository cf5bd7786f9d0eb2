"""Convolutional encoder and decoder of the tokenizer (VQGAN / MAGVIT-like residual conv nets).

Hand-written because none of the required libraries ships a configurable VQGAN-style autoencoder body.
Sizes come from an `ArchSpec` derived (and checked) from the plain model config: the number of
down-sampling steps follows from image_size / latent_size, and must match the channel list.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from spae.config import ModelConfig


@dataclass(frozen=True)
class ArchSpec:
    image_size: int
    latent_size: int
    channels: tuple[int, ...]  # one entry per resolution level, from image resolution down to latent
    latent_dim: int  # = codebook dimension
    in_channels: int = 3
    res_blocks: int = 1
    attention: bool = False  # a self-attention block in the middle (the paper-scale nets use it)
    groups: int = 8  # GroupNorm groups (must divide every channel count)

    @property
    def downsamples(self) -> int:
        return len(self.channels) - 1

    @classmethod
    def from_config(cls, model: "dict | ModelConfig", latent_dim: int) -> "ArchSpec":
        model = ModelConfig.from_dict(model)  # missing keys: spae.config's defaults
        spec = cls(
            image_size=int(model.image_size),
            latent_size=int(model.latent_size),
            channels=tuple(int(c) for c in model.channels),
            latent_dim=int(latent_dim),
            in_channels=int(model.in_channels),
            res_blocks=int(model.res_blocks),
            attention=bool(model.attention),
            groups=int(model.groups),
        )
        spec.check()
        return spec

    def check(self) -> None:
        ratio = self.image_size / self.latent_size
        steps = math.log2(ratio) if ratio >= 1 else -1
        if steps != int(steps) or steps < 0:
            raise ValueError(f"model.image_size / model.latent_size must be a power of two, got "
                             f"{self.image_size}/{self.latent_size}")
        if int(steps) != self.downsamples:
            raise ValueError(
                f"model.channels has {len(self.channels)} levels, so the nets downsample "
                f"{self.downsamples} times, but image_size {self.image_size} -> latent_size "
                f"{self.latent_size} needs {int(steps)} downsamples: give model.channels "
                f"{int(steps) + 1} entries")
        bad = [c for c in self.channels if c % self.groups]
        if bad:
            raise ValueError(f"model.groups={self.groups} must divide every channel count; {bad} do not")


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout, groups), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over positions (torch's MultiheadAttention does the work)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.attn = nn.MultiheadAttention(channels, num_heads=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _middle(channels: int, spec: ArchSpec) -> list[nn.Module]:
    mods: list[nn.Module] = [ResBlock(channels, channels, spec.groups)]
    if spec.attention:
        mods += [AttnBlock(channels, spec.groups), ResBlock(channels, channels, spec.groups)]
    return mods


class Encoder(nn.Module):
    """[B, in_channels, S, S] in [0, 1] -> latent [B, latent_dim, s, s]."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        ch = spec.channels
        layers: list[nn.Module] = [nn.Conv2d(spec.in_channels, ch[0], 3, padding=1)]
        for level, cout in enumerate(ch):
            cin = ch[max(level - 1, 0)]
            if level > 0:  # strided conv halves the resolution when entering a new level
                layers.append(nn.Conv2d(cin, cin, 4, stride=2, padding=1))
            for i in range(spec.res_blocks):
                layers.append(ResBlock(cin if i == 0 else cout, cout, spec.groups))
        layers += _middle(ch[-1], spec)
        layers += [_norm(ch[-1], spec.groups), nn.SiLU(), nn.Conv2d(ch[-1], spec.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0)


class Decoder(nn.Module):
    """Quantized latent [B, latent_dim, s, s] -> image [B, in_channels, S, S] (unbounded; ~[0, 1])."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        ch = tuple(reversed(spec.channels))
        layers: list[nn.Module] = [nn.Conv2d(spec.latent_dim, ch[0], 1)]
        layers += _middle(ch[0], spec)
        for level, cout in enumerate(ch):
            cin = ch[max(level - 1, 0)]
            if level > 0:  # nearest upsample + conv, as in VQGAN (no checkerboard artefacts)
                layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)]
            for i in range(spec.res_blocks):
                layers.append(ResBlock(cin if i == 0 else cout, cout, spec.groups))
        layers += [_norm(ch[-1], spec.groups), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        # kept apart: VQGAN's adaptive GAN weight is computed from gradients at this layer's weight
        self.conv_out = nn.Conv2d(ch[-1], spec.in_channels, 3, padding=1)

    @property
    def last_layer_weight(self) -> torch.Tensor:
        return self.conv_out.weight

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return (self.conv_out(self.net(latent)) + 1.0) / 2.0


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""PatchGAN discriminator (pix2pix / VQGAN style): a logit per image patch.

Hand-written: none of the required libraries ships one. GroupNorm instead of BatchNorm so the logits of
real and fake batches do not depend on each other (and there are no running statistics to resume).
"""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, groups: int = 8):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"discriminator num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2)]
        cin = channels
        for i in range(1, num_layers + 1):
            cout = channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(cin, cout, 4, stride=stride, padding=1), nn.GroupNorm(groups, cout),
                       nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0)

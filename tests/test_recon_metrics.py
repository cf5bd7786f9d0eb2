"""Reconstruction bench additions: the FID-style set distance (bundled EfficientNet-lite0 features through
torchmetrics' FID) and the perceptual distance per layer, their offline rules, the natural photos shipped
in scikit-image, and recon_eval's per-dataset evaluation with them (tiny random tokenizer)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from spae.metrics import (FID_LABELS, ReconstructionMetrics, SetDistance, build_perceptual_distance,
                          resolve_backbone)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(24, 3, 1, 1, generator=g) * torch.linspace(0, 1, 32).view(1, 1, 1, 32)
    return (base + 0.2 * torch.rand(24, 3, 32, 32, generator=g)).clamp(0, 1)


def noisy(images, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=g)).clamp(0, 1)


def test_fid_style_distance_is_zero_to_itself_and_grows_with_noise(images):
    d = SetDistance(["same", "small", "large"], "efficientnet_lite0", offline=True, image_size=64)
    d.update_real(images)
    for name, imgs in (("same", images), ("small", noisy(images, 0.05)), ("large", noisy(images, 0.4))):
        d.update(name, imgs)
    out = d.compute()
    assert abs(out["same"]) < 1e-3
    assert 0 < out["small"] < out["large"]
    assert d.compute() == out  # computing again does not count the reference twice
    assert d.label == FID_LABELS["efficientnet_lite0"] and "not Inception" in d.label


def test_set_distance_errors():
    with pytest.raises(ValueError, match="at least one set"):
        SetDistance([], "efficientnet_lite0")
    d = SetDistance(["a"], "efficientnet_lite0", image_size=32)
    with pytest.raises(KeyError, match="unknown set"):
        d.update("b", torch.rand(2, 3, 32, 32))


def test_offline_rules_for_backbones():
    assert resolve_backbone("auto", True, "inception", "efficientnet_lite0", FID_LABELS) == "efficientnet_lite0"
    assert resolve_backbone("auto", False, "inception", "efficientnet_lite0", FID_LABELS) == "inception"
    with pytest.raises(ValueError, match="offline mode forbids"):
        resolve_backbone("inception", True, "inception", "efficientnet_lite0", FID_LABELS)
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_backbone("vgg", True, "inception", "efficientnet_lite0", FID_LABELS)
    with pytest.raises(ValueError, match="offline mode forbids"):
        build_perceptual_distance("lpips_alex", offline=True)


def test_perceptual_distance_zero_for_identical_and_grows_with_noise(images):
    net, label = build_perceptual_distance("auto", offline=True)
    assert "not LPIPS" in label
    with torch.no_grad():
        same, small, large = (float(net(x, images)) for x in (images, noisy(images, 0.05), noisy(images, 0.4)))
    assert same == pytest.approx(0.0, abs=1e-6) and 0 < small < large


def test_reconstruction_metrics_per_layer_distances(images):
    codes = [torch.zeros(len(images), 1, dtype=torch.long), torch.ones(len(images), 4, dtype=torch.long)]
    recons = [noisy(images, 0.4), noisy(images, 0.05)]  # more layers, closer to the originals
    plain = ReconstructionMetrics(2, 8)
    plain.update(images, recons, codes)
    out = plain.compute()
    assert not any(k.startswith(("perceptual_", "fid_")) for k in out)  # existing behaviour unchanged
    net, _ = build_perceptual_distance("efficientnet_lite0", offline=True)
    full = ReconstructionMetrics(2, 8, net, SetDistance(["l1", "l2"], "efficientnet_lite0", image_size=64))
    for half in (slice(0, 12), slice(12, 24)):  # two batches accumulate
        full.update(images[half], [r[half] for r in recons], [c[half] for c in codes])
    m = full.compute()
    assert {k: m[k] for k in out} == out  # PSNR/SSIM/codes as before
    assert m["perceptual_l1"] > m["perceptual_l2"] > 0
    assert m["fid_l1"] > m["fid_l2"] > 0
    with pytest.raises(ValueError, match="l1..l3"):
        ReconstructionMetrics(3, 8, set_distance=SetDistance(["l1"], "efficientnet_lite0", image_size=32))


def test_package_photos_are_square_rgb_and_named():
    from spae.data.package_photos import SKIMAGE_PHOTOS, package_photos

    photos = package_photos(["astronaut", "chelsea", "motorcycle", "camera"])
    assert [n for n, _ in photos] == ["astronaut", "chelsea", "motorcycle", "camera"]
    for _, img in photos:
        assert img.mode == "RGB" and img.size[0] == img.size[1] >= 256
    assert len(SKIMAGE_PHOTOS) >= 10
    with pytest.raises(ValueError, match="unknown package photo"):
        package_photos(["lena"])


def test_recon_eval_dataset_on_photos_with_distances():
    from experiments.stages.recon_eval import distance_metrics, evaluate_dataset, markdown, photo_dataset
    from spae.tokenizer import SPAETokenizer
    from tests.tokenizer_helpers import TINY_METHOD, TINY_MODEL, random_codebook

    emb, words = random_codebook(32, 16)
    tok = SPAETokenizer({"model": copy.deepcopy(TINY_MODEL), "method": copy.deepcopy(TINY_METHOD), "seed": 0,
                         "offline": True}, emb, words, with_perceptual=False).eval()
    ds = photo_dataset(["astronaut", "coffee", "chelsea", "rocket"])
    assert ds["label_name"] == ["astronaut", "coffee", "chelsea", "rocket"]
    perceptual, distance, labels = distance_metrics({"fid_image_size": 32}, True, 3)
    metrics, (imgs, recons, pyramid, rows), n = evaluate_dataset(tok, ds, None, 3, None, perceptual, distance)
    assert n == 4 and imgs.shape == (3, 3, 16, 16) and len(recons) == 3
    assert all(f"fid_l{l}" in metrics and f"perceptual_l{l}" in metrics for l in (1, 2, 3))
    describe = tok.describe()
    text = markdown("spae", describe, {"photos/scikit-image": metrics}, {}, "none", labels)
    assert "FID-style (EfficientNet-lite0 features, not Inception)" in text and "| perceptual | FID-style |" in text
    none = distance_metrics({"perceptual": "none", "fid": "none"}, True, 3)
    assert none == (None, None, {})


def test_ssim_steps_are_paired_per_image_with_an_interval(images):
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    codes = [torch.zeros(len(images), 1, dtype=torch.long)] * 3
    recons = [noisy(images, 0.3), noisy(images, 0.1), noisy(images, 0.1)]
    metrics = ReconstructionMetrics(3, 8)
    for half in (slice(0, 10), slice(10, 24)):  # batches accumulate per image
        metrics.update(images[half], [r[half] for r in recons], [c[half] for c in codes])
    m = metrics.compute()
    per_image = [ssim(r, images, data_range=1.0, reduction="none") for r in recons]
    assert m["ssim_l2"] == pytest.approx(float(per_image[1].mean()), abs=1e-4)  # the reported SSIM is unchanged
    d = per_image[1] - per_image[0]
    assert m["ssim_step_l2"] == pytest.approx(float(d.mean()), abs=1e-5) and m["ssim_step_l2"] > 0
    assert m["ssim_step_better_l2"] == 1.0 and 0 < m["ssim_step_ci95_l2"] < m["ssim_step_l2"]
    # the same reconstruction again: no step, no image better
    assert m["ssim_step_l3"] == 0 and m["ssim_step_ci95_l3"] == 0 and m["ssim_step_better_l3"] == 0
    assert "ssim_step_l1" not in m and "ssim_cell_mean_l1" not in m


def test_cell_mean_reference_ssim():
    from spae.metrics import cell_mean_images

    flat = torch.rand(4, 3, 1, 1).expand(4, 3, 16, 16)
    tiles = cell_mean_images(torch.rand(4, 3, 16, 16), 2)
    assert torch.allclose(cell_mean_images(flat, 4), flat)  # a flat image is its own cell mean at any grid
    assert torch.equal(tiles[:, :, :8, :8], tiles[:, :, :1, :1].expand(4, 3, 8, 8))  # constant over each cell
    images = torch.rand(6, 3, 16, 16)
    metrics = ReconstructionMetrics(2, 8, layer_sides=[1, 16])
    metrics.update(images, [images, images], [torch.zeros(6, 1, dtype=torch.long)] * 2)
    m = metrics.compute()
    assert m["ssim_cell_mean_l2"] == pytest.approx(1.0) and m["ssim_cell_mean_l1"] < 0.5
    with pytest.raises(ValueError, match="one side per layer"):
        ReconstructionMetrics(2, 8, layer_sides=[1])


def test_psnr_is_the_mean_of_per_image_psnr_and_the_pooled_value_is_labelled():
    # image 0 off by 0.1 everywhere (MSE 1e-2: 20 dB), image 1 by 0.01 (MSE 1e-4: 40 dB), in two batches
    images = torch.full((2, 3, 16, 16), 0.5)
    recons = images + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    metrics = ReconstructionMetrics(num_layers=1, codebook_size=4)
    for i in range(2):
        metrics.update(images[i:i + 1], [recons[i:i + 1]], [torch.zeros(1, 1, dtype=torch.long)])
    out = metrics.compute()
    assert out["psnr_l1"] == pytest.approx(30.0, abs=1e-3)  # (20 + 40) / 2
    # one MSE over the set: 10 log10(1 / ((1e-2 + 1e-4) / 2)) = 22.97 dB
    assert out["psnr_pooled_l1"] == pytest.approx(10 * math.log10(2 / (1e-2 + 1e-4)), abs=1e-3)

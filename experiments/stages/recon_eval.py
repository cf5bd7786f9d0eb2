"""Stage `recon_eval`: how well the trained tokenizer reconstructs held-out images, layer by layer.

Per evaluation dataset (bench.recon.roles, plus the natural photos that ship in scikit-image when
bench.recon.photos lists them): PSNR (mean over images; psnr_pooled_l* from one MSE over the set) and SSIM
for each prefix of layers, a perceptual distance and an
FID-style distance per prefix (bench.recon.perceptual / .fid: `auto` = LPIPS / Inception FID online, the
bundled EfficientNet-lite0 offline, labelled as such in every output), code usage and perplexity over the
whole pass, semantic relevance of each layer's words (mean normalised CLIP score), the words of layers 1-2
for a few test images with their labels, and a PNG grid (original, then the reconstruction from 1..L
layers), saved in the stage folder and the run folder and logged.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from experiments import clip_relevance
from experiments.pipeline import StageContext, stage

log = logging.getLogger(__name__)


def distance_metrics(opts: dict, offline: bool, num_layers: int) -> tuple:
    """(perceptual module or None, SetDistance or None, labels) from bench.recon.perceptual / .fid
    (auto | a backbone name | none)."""
    from spae.metrics import SetDistance, build_perceptual_distance

    labels = {}
    perceptual = set_distance = None
    if str(opts.get("perceptual", "auto")) != "none":
        perceptual, labels["perceptual"] = build_perceptual_distance(str(opts.get("perceptual", "auto")), offline)
    if str(opts.get("fid", "auto")) != "none":
        set_distance = SetDistance([f"l{n}" for n in range(1, num_layers + 1)], str(opts.get("fid", "auto")),
                                   offline, int(opts.get("fid_image_size", 128)))
        labels["fid"] = set_distance.label
    return perceptual, set_distance, labels


def photo_dataset(names):
    """The natural photos bundled in scikit-image as a uniform dataset (label_name = the photo's name)."""
    from spae.data.package_photos import package_photos
    from spae.data.schema import from_columns

    photos = package_photos(None if names in ("all", None) else list(names))
    return from_columns([img for _, img in photos], labels=range(len(photos)),
                        label_names=[name for name, _ in photos])


def evaluate_dataset(tokenizer, ds, relevance_fn, batch_size: int, max_images: int | None,
                     perceptual=None, set_distance=None):
    """Metrics over the first max_images rows of ds; returns (metrics, first batch images, recons, pyramid)."""
    import torch

    from spae.data.images import to_tensor
    from spae.metrics import ReconstructionMetrics

    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    if n == 0:
        raise ValueError("the evaluation dataset is empty")
    L = tokenizer.pyramid.num_layers
    metrics = ReconstructionMetrics(L, tokenizer.quantizer.codebook_size, perceptual, set_distance,
                                    layer_sides=tokenizer.pyramid.layer_sides)
    first = None
    for start in range(0, n, batch_size):
        rows = ds[start:min(n, start + batch_size)]
        images = to_tensor(rows["image"], tokenizer.spec.image_size)
        pyramid = tokenizer.encode(images)
        recons = [tokenizer.decode(pyramid, layers=k) for k in range(1, L + 1)]
        relevance = relevance_fn(images) if relevance_fn is not None else None
        metrics.update(images, recons, pyramid.ids, relevance)
        if first is None:
            first = (images, recons, pyramid, rows)
    return metrics.compute(), first, n


def save_grid(images, recons, path: Path, count: int) -> Path:
    """Rows: the originals, then the reconstruction from layers 1..L."""
    import torch
    from torchvision.utils import save_image

    from spae.io import atomic_path

    rows = [images[:count]] + [r[:count] for r in recons]
    with atomic_path(path) as tmp:
        save_image(torch.cat(rows), str(tmp), format="PNG", nrow=min(count, len(images)), padding=1,
                   pad_value=1.0)
    return path


def word_examples(pyramid, rows, count: int) -> list[dict]:
    out = []
    n = len(pyramid.ids[0])
    names, captions = rows.get("label_name") or [""] * n, rows.get("caption") or [""] * n
    for i in range(min(count, n)):
        words = pyramid.for_image(i, layers=min(2, pyramid.num_layers))
        label = names[i] or (f"({captions[i]})" if captions[i] else "")  # unlabelled sets: their caption
        out.append({"label": label, **{f"layer{l + 1}": _shorten(w) for l, w in enumerate(words)}})
    return out


def _shorten(words: list[str], keep: int = 16) -> str:
    """A layer's words as text; long layers (LQAE's 64-token grid) are cut to stay readable."""
    text = " ".join(words[:keep])
    return text if len(words) <= keep else f"{text} ... (+{len(words) - keep} more)"


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _step(m: dict, layer: int) -> str:
    if f"ssim_step_l{layer}" not in m:
        return "n/a"
    return f"{m[f'ssim_step_l{layer}']:+.4f} +- {m[f'ssim_step_ci95_l{layer}']:.4f}"


def markdown(method: str, describe: dict, results: dict, examples: dict, perceptual: str,
             distance_labels: dict | None = None) -> str:
    labels = distance_labels or {}
    lines = [f"### Reconstruction: {method} ({describe['quantizer']}, layers {describe['layer_sides']}, "
             f"codebook {describe['codebook_size']} words)", "",
             f"Perceptual loss used in training: {perceptual}.", ""]
    if labels:
        lines += ["Distances: " + "; ".join(f"{k}: {v}" for k, v in labels.items())
                  + " (lower is better; FID-style values on few images are biased upwards, compare rows, "
                    "not with published FIDs).", ""]
    for name, m in results.items():
        L = len(describe["layer_sides"])
        lines += [f"**{name}** ({m['images']} held-out images; codes used {m['codes_used']} "
                  f"= {m['code_usage']:.4f} of the codebook, perplexity {m['perplexity']})", "",
                  "| layers | tokens | PSNR (mean per image) | SSIM | SSIM step (+- 95%) | images better | "
                  "cell-mean SSIM | perceptual | FID-style | codes used | perplexity | relevance |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for l in range(1, L + 1):
            lines.append(f"| {l} | {describe['cumulative_tokens'][l - 1]} | {m[f'psnr_l{l}']:.2f} | "
                         f"{m[f'ssim_l{l}']:.4f} | {_step(m, l)} | {_fmt(m.get(f'ssim_step_better_l{l}'), '.0%')} | "
                         f"{_fmt(m.get(f'ssim_cell_mean_l{l}'), '.4f')} | {_fmt(m.get(f'perceptual_l{l}'), '.4f')} | "
                         f"{_fmt(m.get(f'fid_l{l}'), '.2f')} | {m[f'codes_used_l{l}']} | "
                         f"{m[f'perplexity_l{l}']:.1f} | {_fmt(m.get(f'relevance_l{l}'), '.3f')} |")
        lines += ["", "SSIM step: per-image SSIM with l layers minus with l - 1, on the same images (mean and 95% "
                  "interval); cell-mean SSIM: each image painted with the mean colour of each cell of layer l's "
                  "grid, a model-free reference for what that resolution alone gives.", ""]
        if examples.get(name):
            keys = [k for k in examples[name][0] if k.startswith("layer")]
            lines += ["| label | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            for ex in examples[name]:
                lines.append(f"| {ex['label']} | " + " | ".join(ex[k] for k in keys) + " |")
            lines.append("")
    return "\n".join(lines)


@stage("recon_eval", deps=("train", "eval_data", "clip", "codebook"), config_keys=("bench.recon", "seed", "offline"),
       version=4)  # 4: PSNR = mean of per-image PSNR (pooled kept as psnr_pooled); 3: SSIM steps, cell-mean SSIM
def recon_eval_stage(ctx: StageContext) -> dict:
    import torch

    from spae.codebook import Codebook
    from spae.data import load_prepared
    from spae.tokenizer import load_tokenizer

    cfg = ctx.cfg
    opts = (cfg.get("bench") or {}).get("recon") or {}
    codebook = Codebook.load(ctx.input_dir("codebook"))
    tokenizer = load_tokenizer(ctx.input_dir("train"), codebook)
    relevance_fn = clip_relevance.relevance_function(ctx, codebook)
    describe = tokenizer.describe()
    results, examples, grids, labels = {}, {}, {}, {}
    torch.manual_seed(int(cfg.get("seed", 0)))
    offline = bool(cfg.get("offline", True))
    sets = [(role, f"{role}/{(cfg['data'].get(role) or {}).get('name', role)}",
             lambda role=role: load_prepared(ctx.input_dir("eval_data"), role))
            for role in opts.get("roles") or ["classification"]]
    if opts.get("photos"):  # natural photos from installed packages: outside the training domain
        sets.append(("photos", "photos/scikit-image", lambda: photo_dataset(opts["photos"])))
    for role, name, load in sets:
        ds = load()
        perceptual, set_distance, labels = distance_metrics(opts, offline, tokenizer.pyramid.num_layers)
        metrics, (images, recons, pyramid, rows), n = evaluate_dataset(
            tokenizer, ds, relevance_fn, int(opts.get("batch_size", 100)), opts.get("max_images"),
            perceptual, set_distance)
        results[name] = metrics
        examples[name] = word_examples(pyramid, rows, int(opts.get("word_examples", 10)))
        grid = save_grid(images, recons, ctx.out_dir / f"recon_grid_{role}.png", int(opts.get("grid_images", 8)))
        grids[name] = grid.name
        run_copy = ctx.run_dir / "recon_eval" / grid.name
        run_copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(grid, run_copy)
        if ctx.logger is not None:
            ctx.logger.log_metrics({"recon": {name: metrics}})
            ctx.logger.log_image(f"recon/{role}", grid, caption="rows: original, then layers 1..L")
            cols = ["label"] + [k for k in examples[name][0] if k != "label"] if examples[name] else []
            ctx.logger.log_table(f"recon/words_{role}", cols, [[ex[c] for c in cols] for ex in examples[name]])
        log.info("recon_eval %s: %s", name, metrics)
    perceptual = describe.get("perceptual") or "none"
    method = cfg["method"]["name"]
    return {"metrics": results, "examples": examples, "describe": describe, "grids": grids,
            "distances": labels, "markdown": markdown(method, describe, results, examples, perceptual, labels)}

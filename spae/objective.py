"""The tokenizer's training objective: the generator's loss per step and the discriminator's step.

    objective = TokenizerObjective(method, codebook_embeddings, pyramid, in_channels, offline)
    plan = objective.prefix_plan(batch_size, gen)          # which prefixes also get reconstruction losses
    losses = objective.generator_losses(forward, images, it, gen, last_layer)   # losses["total"] to backward
    d = objective.discriminator_losses(images, fakes)      # when objective.gan_active(it)

The generator's loss (method.loss, method.semantic):
    nll   = recon(full) [+ prefix_weight x recon(prefixes)] [+ ssim_weight x (1 - SSIM)] [+ perceptual_weight x perceptual]
    total = nll + commitment [+ semantic weight(it) x semantic] [+ GAN weight x GAN]
The GAN weight is VQGAN's adaptive balance at the decoder's last layer when `gan.adaptive`; the
discriminator's loss adds LeCam regularisation. The objective owns the loss networks (discriminator, LeCam
anchors, semantic loss, frozen perceptual net); the tokenizer registers them under its own names
(`loss_modules`), so checkpoints keep their keys.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from spae.config import MethodConfig, SemanticConfig
from spae.discriminator import PatchDiscriminator
from spae.losses import LeCam, adaptive_gan_weight, discriminator_loss, generator_loss, reconstruction_loss, ssim_loss
from spae.perceptual import build_perceptual
from spae.pyramid import Pyramid
from spae.quantizers import QuantizerOutput
from spae.semantic_loss import SemanticLoss, schedule_weight

# method.loss.prefix_recon (checked when the tokenizer is built; tests/test_training_options.py trains each)
PREFIX_RECON_MODES = ("stratified", "all", "random", "none")

RelevanceFn = Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, H, W] in [0, 1] -> [B, K] in [0, 1]


class StepTimer:
    """Wall time per part of the training step, summed over steps (`seconds[part]`)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, part: str):
        start = time.perf_counter()
        yield
        self.seconds[part] += time.perf_counter() - start


@dataclass
class TrainForward:
    """One training forward of the tokenizer: the quantizer's output and one decoder pass whose rows are the
    full pyramid of every image (rows 0..B-1), then each planned prefix's images in plan order."""

    quantized: QuantizerOutput
    recons: torch.Tensor  # [B + prefix rows, C, S, S]
    target_index: torch.Tensor  # the batch image each row reconstructs


class TokenizerObjective:
    def __init__(self, method: MethodConfig, codebook_embeddings: torch.Tensor, pyramid: Pyramid, in_channels: int,
                 offline: bool, with_perceptual: bool = True, relevance_fn: RelevanceFn | None = None,
                 timer: StepTimer | None = None):
        self.loss_cfg, self.semantic_cfg, self.pyramid = method.loss, method.semantic, pyramid
        self.relevance_fn = relevance_fn
        self.timer = timer or StepTimer()
        self.semantic_loss = build_semantic_loss(method, codebook_embeddings, pyramid.num_layers)
        gan = self.loss_cfg.gan
        self.discriminator = PatchDiscriminator(in_channels, int(gan.channels), int(gan.layers))
        self.lecam = LeCam(float(gan.lecam_decay))
        # frozen, rebuilt from its package: the tokenizer leaves it out of checkpoints
        self.perceptual = (build_perceptual(self.loss_cfg.perceptual, bool(offline),
                                            min_size=int(self.loss_cfg.perceptual_min_size))
                           if with_perceptual else None)

    def loss_modules(self) -> dict[str, nn.Module | None]:
        """The networks of the objective, by the names the tokenizer registers them under."""
        return {"semantic_loss": self.semantic_loss, "discriminator": self.discriminator, "lecam": self.lecam,
                "perceptual": self.perceptual}

    # ------------------------------------------------------------------ schedules
    def gan_active(self, it: int) -> bool:
        gan = self.loss_cfg.gan
        return float(gan.weight) > 0 and it >= int(gan.start_step)

    def semantic_weight(self, it: int) -> float:
        sem = self.semantic_cfg
        return schedule_weight(it, weight=float(sem.weight), schedule=sem.schedule,
                               warmup_steps=int(sem.warmup_steps), total_steps=sem.total_steps,
                               final_weight=float(sem.final_weight))

    def prefix_plan(self, batch: int, gen: torch.Generator) -> list[tuple[int, torch.Tensor]]:
        """(prefix length, images of the batch) pairs that also get the reconstruction losses this step,
        besides the full pyramid on every image. all: every prefix on every image (most signal, the decoder
        sees L x the images); random: one prefix, drawn per step, on every image; stratified: every prefix
        each step, each on its own share of a random permutation of the batch (the cost of random, every
        prefix in every gradient); none."""
        L = self.pyramid.num_layers
        mode = self.loss_cfg.prefix_recon
        every_image = torch.arange(batch)
        if L == 1 or mode == "none":
            return []
        if mode == "all":
            return [(p, every_image) for p in range(1, L)]
        if mode == "random":
            return [(int(torch.randint(1, L, (1,), generator=gen)), every_image)]
        if mode == "stratified":
            shares = torch.randperm(batch, generator=gen).tensor_split(L - 1)
            return [(p, idx.sort().values) for p, idx in zip(range(1, L), shares) if idx.numel()]
        raise ValueError(f"method.loss.prefix_recon={mode!r}; valid: {', '.join(PREFIX_RECON_MODES)}")

    # ------------------------------------------------------------------ losses
    def generator_losses(self, forward: TrainForward, images: torch.Tensor, it: int, gen: torch.Generator,
                         last_layer: torch.Tensor) -> dict:
        """The generator's loss terms (detached, for logging), "total" (to backward) and "recon_full" (the
        full-pyramid reconstructions, the discriminator's fakes)."""
        q, B = forward.quantized, images.shape[0]
        out = {"recon_full": forward.recons[:B]}
        nll = self._appearance(forward, images, out)
        total = nll + q.commit_loss
        if self.semantic_loss is not None:
            total = total + self._semantic(q, images, it, gen, out)
        if self.gan_active(it):
            total = total + self._gan_generator(forward.recons[:B], nll, last_layer, out)
        out["nll"] = nll.detach()
        out["total"] = total
        out.update({f"unique_codes_l{i + 1}": float(n) for i, n in enumerate(q.unique_codes)})
        return out

    def _appearance(self, forward: TrainForward, images: torch.Tensor, out: dict) -> torch.Tensor:
        """nll: reconstruction (full pyramid, then the planned prefixes), SSIM and perceptual terms."""
        cfg, B = self.loss_cfg, images.shape[0]
        recons, targets = forward.recons, images[forward.target_index]
        rec_full = reconstruction_loss(recons[:B], images, cfg.recon)
        nll = rec_full
        out.update(rec=rec_full.detach(), commit=forward.quantized.commit_loss.detach())
        if recons.shape[0] > B:
            rec_prefix = reconstruction_loss(recons[B:], targets[B:], cfg.recon)
            nll = nll + float(cfg.prefix_weight) * rec_prefix
            out["rec_prefix"] = rec_prefix.detach()
        if float(cfg.ssim_weight) > 0:
            with self.timer("ssim"):
                dissim = ssim_loss(recons, targets)
            nll = nll + float(cfg.ssim_weight) * dissim
            out["ssim_loss"] = dissim.detach()
        if self.perceptual is not None and float(cfg.perceptual_weight) > 0:
            with self.timer("perceptual"):
                perc = self.perceptual(recons, images, forward.target_index)  # target features computed once
            nll = nll + float(cfg.perceptual_weight) * perc
            out["perceptual"] = perc.detach()
        return nll

    def _semantic(self, q: QuantizerOutput, images: torch.Tensor, it: int, gen: torch.Generator,
                  out: dict) -> torch.Tensor:
        """The weighted semantic term: the pyramid's queries against the codebook words CLIP finds relevant."""
        sem_w = self.semantic_weight(it)
        if self.relevance_fn is None:
            raise RuntimeError("the semantic loss needs CLIP relevance: call set_relevance_fn(scorer) "
                               "or set method.semantic_loss=false")
        with torch.no_grad(), self.timer("clip_relevance"):
            relevance = self.relevance_fn(images).to(q.z_q.device, torch.float32)
        with self.timer("semantic_loss"):
            sem = self.semantic_loss(q.layer_queries, relevance, generator=gen)
        out.update({"semantic": sem.loss.detach(), "semantic_weight": sem_w})
        out.update({f"semantic_l{l}": v for l, v in sem.per_layer.items()})
        return sem_w * sem.loss

    def _gan_generator(self, fakes: torch.Tensor, nll: torch.Tensor, last_layer: torch.Tensor,
                       out: dict) -> torch.Tensor:
        """The weighted generator GAN term (adaptive: scaled to the nll's gradient at the last layer)."""
        gan = self.loss_cfg.gan
        with self.timer("gan_generator"):
            g = generator_loss(self.discriminator(fakes), gan.kind)
            weight = float(gan.weight)
            if gan.adaptive:
                weight = weight * adaptive_gan_weight(nll, g, last_layer)
        out.update({"gan_g": g.detach(), "gan_weight": weight})
        return weight * g

    def discriminator_losses(self, images: torch.Tensor, fakes: torch.Tensor) -> dict:
        """The discriminator's loss ("total", with LeCam; its anchors move after each call) and "loss"."""
        gan = self.loss_cfg.gan
        real_logits = self.discriminator(images)
        fake_logits = self.discriminator(fakes)
        d = discriminator_loss(real_logits, fake_logits, gan.kind)
        total = d
        lecam_w = float(gan.lecam_weight)
        if lecam_w > 0:
            reg = self.lecam(real_logits, fake_logits)
            total = total + lecam_w * reg
            self.lecam.update(real_logits, fake_logits)
        return {"total": total, "loss": d.detach()}


def build_semantic_loss(method: MethodConfig, codebook: torch.Tensor, num_layers: int) -> SemanticLoss | None:
    if not method.semantic_loss:
        return None
    sem = method.semantic
    return SemanticLoss(codebook, list(sem.thresholds)[:num_layers], semantic_temperature(sem, codebook),
                        sem.layers, sem.num_negatives, sem.target, sem.distinct_targets)


def semantic_temperature(sem: SemanticConfig, codebook: torch.Tensor) -> float:
    """tau of the semantic logits. With `temperature_relative` (default) the configured value is a
    fraction of the codebook's mean squared row norm, so one value suits codebooks of any scale (Gemma's
    rows, scaled by sqrt(640), have squared norms ~680; SmolLM2's ~9)."""
    tau = float(sem.temperature)
    if sem.temperature_relative:
        tau *= float(codebook.float().pow(2).sum(1).mean())
    return tau

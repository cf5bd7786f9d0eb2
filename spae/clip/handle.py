"""A loaded CLIP of any kind, behind one small interface: images in [0,1] -> embeddings, texts -> embeddings.

Every kind (embedded, open_clip) returns a ClipHandle, so the relevance scorer and the quality stage never
need to know where the weights came from. The handle owns the preprocessing that matches its weights
(resize, crop, mean/std), which is where open_clip users most often get silently wrong numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spae.console import progress_enabled


@dataclass
class ClipHandle:
    model: torch.nn.Module  # open_clip CLIP / CustomTextCLIP (encode_image, encode_text)
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: str  # stable description of the weights: part of every text-embedding cache key
    interpolation: str = "bicubic"
    description: str = ""

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> the model's input: shortest side resized to image_size, centre crop,
        normalised (open_clip's eval transform, done on tensors so batches need no PIL round trip)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [B,3,H,W] (or [B,1,H,W]) in [0,1], got {tuple(images.shape)}")
        images = images.float()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        h, w = images.shape[-2:]
        scale = self.image_size / min(h, w)
        new_h, new_w = max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))
        if (new_h, new_w) != (h, w):
            images = F.interpolate(images, size=(new_h, new_w), mode=self.interpolation,
                                   antialias=True, align_corners=False).clamp_(0, 1)
        top, left = (new_h - self.image_size) // 2, (new_w - self.image_size) // 2
        images = images[..., top:top + self.image_size, left:left + self.image_size]
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Unit-norm image embeddings [B,E]."""
        self.model.eval()
        out = [self.model.encode_image(self.preprocess(images[i:i + batch_size]), normalize=True)
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 512, progress: bool = False,
                     desc: str = "text embeddings") -> torch.Tensor:
        """Unit-norm text embeddings [N,E], batched (with a progress bar on request)."""
        self.model.eval()
        chunks = range(0, len(texts), batch_size)
        out = [self.model.encode_text(self._trim(self.tokenizer(list(texts[i:i + batch_size]))), normalize=True)
               for i in tqdm(chunks, desc=desc, disable=not (progress and progress_enabled()), unit="batch")]
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def _trim(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop trailing all-padding columns for towers that mask padding (HF text towers): identical
        embeddings, several times faster for short prompts padded to the context length."""
        pad_id = getattr(getattr(getattr(self.model, "text", None), "config", None), "pad_token_id", None)
        if pad_id is None:
            return tokens
        used = (tokens != pad_id).any(dim=0).nonzero()
        return tokens[:, :int(used.max()) + 1] if len(used) else tokens

    @property
    def embed_dim(self) -> int:
        with torch.no_grad():
            return int(self.model.encode_text(self.tokenizer(["a"])).shape[-1])

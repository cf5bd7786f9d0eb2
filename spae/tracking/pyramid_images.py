"""Reconstructions per pyramid layer with that layer's words drawn over the image, as PIL images.

Layer l of an image is the reconstruction from layers 1..l, enlarged, cut into the layer's s_l x s_l token
cells (row-major, spae.pyramid), each cell labelled with its token's word: what the tokenizer "says" about
that part of the image at that depth.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

GRID_COLOUR = (255, 255, 255)
TEXT_COLOUR = (255, 255, 0)
OUTLINE_COLOUR = (0, 0, 0)


def to_pil(image: torch.Tensor, size: int) -> Image.Image:
    """[3, S, S] in [0, 1] -> an RGB image of size x size (bilinear: the small embedded images stay smooth)."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB").resize((size, size), Image.Resampling.BILINEAR)


def _font(cell_px: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, min(16, cell_px // 3)))


def _fit(draw: ImageDraw.ImageDraw, word: str, font, width: int) -> str:
    """The word, cut (with a trailing '.') until it fits the cell's width."""
    if draw.textlength(word, font=font) <= width:
        return word
    while len(word) > 1 and draw.textlength(word + ".", font=font) > width:
        word = word[:-1]
    return word + "."


def draw_words(image: Image.Image, words: Sequence[str]) -> Image.Image:
    """A copy of the image with a side x side grid (len(words) = side**2, row-major) and a word per cell."""
    side = math.isqrt(len(words))
    if side * side != len(words) or side == 0:
        raise ValueError(f"a layer's words fill a square grid; got {len(words)} words")
    out = image.copy()
    draw = ImageDraw.Draw(out)
    cell = out.width / side
    font = _font(int(cell))
    for k in range(1, side):  # cell borders
        draw.line([(k * cell, 0), (k * cell, out.height)], fill=GRID_COLOUR, width=1)
        draw.line([(0, k * cell), (out.width, k * cell)], fill=GRID_COLOUR, width=1)
    for t, word in enumerate(words):
        row, col = divmod(t, side)
        text = _fit(draw, str(word), font, int(cell) - 4)
        draw.text((col * cell + 2, row * cell + 1), text, fill=TEXT_COLOUR, font=font, stroke_width=1,
                  stroke_fill=OUTLINE_COLOUR)
    return out


def layer_panels(recons: Sequence[torch.Tensor], words: Sequence[Sequence[Sequence[str]]],
                 size: int = 256) -> list[list[Image.Image]]:
    """recons[l]: [B, 3, S, S] from layers 1..l+1; words[l][i]: image i's layer-(l+1) words.
    Returns panels[l][i]: the enlarged reconstruction with its layer's words drawn in their cells."""
    if len(recons) != len(words):
        raise ValueError(f"{len(recons)} reconstructions for {len(words)} layers of words")
    return [[draw_words(to_pil(batch[i], size), layer_words[i]) for i in range(len(batch))]
            for batch, layer_words in zip(recons, words)]


def caption(words: Sequence[str], keep: int = 12) -> str:
    """A layer's words as a caption line (long layers cut: LQAE's 64-token grid)."""
    text = " ".join(words[:keep])
    return text if len(words) <= keep else f"{text} ... (+{len(words) - keep})"

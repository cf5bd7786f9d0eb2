"""Shared pieces of the packaged drawing collections (Open Clip Art, Tux Paint stamps): pixels onto a white
square, a held-out split by file name, and the English-only check of their free-text captions."""
from __future__ import annotations

import functools
import hashlib
import io
import re

from PIL import Image

_WORD = re.compile(r"[a-z]+")
MAX_PIXELS = 40_000_000  # a few packaged PNGs are 10k x 16k or larger: seconds and gigabytes each; skipped
ENGLISH_ZIPF = 3.0  # wordfreq Zipf frequency a word needs to count as common English (ASSETS.md: filters tepat, femmes)


def on_white_square(path, size: int) -> dict:
    """A PNG file (often RGBA with transparency) composited onto white, padded to a centred square and
    resized to size x size; returned as encoded PNG bytes for datasets.Image."""
    with Image.open(path) as raw:
        if raw.width * raw.height > MAX_PIXELS:
            raise Image.DecompressionBombError(f"{path}: {raw.width}x{raw.height} pixels, over {MAX_PIXELS}")
        image = raw.convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, image).convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    square = square.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    square.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def add_drawing(rows: dict, skipped: dict, png, size: int, captions: list[str]) -> None:
    """Append one drawing (on_white_square) and its captions, the first as `caption`, to the columns `rows`; a
    damaged or oversized file is counted in skipped["unreadable"], not fatal."""
    try:
        image = on_white_square(png, size)
    except (OSError, Image.DecompressionBombError):
        skipped["unreadable"] = skipped.get("unreadable", 0) + 1
        return
    rows["image"].append(image)
    rows["caption"].append(captions[0])
    rows["captions"].append(captions)


def in_eval_split(relative_name: str, eval_fraction: float) -> bool:
    """Deterministic held-out membership by a hash of the file's relative name (stable across machines and
    file orders; a new file never moves an old one between splits)."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    digest = hashlib.sha1(relative_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < eval_fraction


def wanted(relative_name: str, split: str, eval_fraction: float) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"packaged drawings have splits ['test', 'train'], not {split!r}")
    return in_eval_split(relative_name, eval_fraction) == (split == "test")


@functools.lru_cache(maxsize=65536)
def is_english_word(word: str) -> bool:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en") >= ENGLISH_ZIPF


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_english(text: str, share: float = 0.75) -> bool:
    """Whether most of the text's words are common English (Italian titles such as 'barattolo di pillole' fail)."""
    found = words(text)
    return bool(found) and sum(map(is_english_word, found)) >= share * len(found)

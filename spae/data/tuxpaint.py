"""Tux Paint stamps from the Debian package tuxpaint-stamps-default: each stamp's PNG onto white, with the
first line of its .txt as the caption ("A red handbag.").

A .txt holds an English description on its first line, then translations as `xx.utf8=...` lines. A stamp
whose first line is itself a translation (no English line) uses its `en*.utf8=` line if there is one, and
is skipped otherwise; so are stamps without a .txt, with an empty one, or with only an SVG (no PNG).
A hash of each stamp's relative name puts about eval_fraction of them in the `test` split.
"""
from __future__ import annotations

import re
from pathlib import Path

from spae.data.cache import cached_dataset
from spae.data.drawings import add_drawing, in_eval_split, wanted
from spae.data.openclipart import uniform_rows
from spae.data.registry import ADAPTERS

STAMPS_ROOT = "/usr/share/tuxpaint/stamps"
VERSION = 2  # 2: reference_answers column
_TRANSLATION = re.compile(r"^([a-z]{2,3}(_[A-Z]{2})?(@\w+)?)\.utf8=(.*)$")


def english_description(text: str) -> str:
    """The stamp's English description: the first line unless it is a translation, else an en*.utf8= line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    if not _TRANSLATION.match(lines[0]):
        return lines[0]
    for line in lines:
        match = _TRANSLATION.match(line)
        if match and match.group(1).split("_")[0] == "en":
            return match.group(4).strip()
    return ""


def build_rows(root: Path, split: str, eval_fraction: float, size: int) -> tuple[dict, dict]:
    rows = {"image": [], "caption": [], "captions": []}
    skipped = {"no_png": 0, "no_description": 0}
    for txt in sorted(root.rglob("*.txt")):
        relative = txt.relative_to(root).with_suffix("").as_posix()
        if not wanted(relative, split, eval_fraction):
            continue
        png = txt.with_suffix(".png")
        if not png.is_file():
            skipped["no_png"] += 1
            continue
        caption = english_description(txt.read_text(encoding="utf-8", errors="replace"))
        if not caption:
            skipped["no_description"] += 1
            continue
        add_drawing(rows, skipped, png, size, [caption])
    return rows, skipped


@ADAPTERS.register("tuxpaint")
def load_tuxpaint(spec: dict, split: str, offline: bool = True):
    root = Path(spec.get("path") or STAMPS_ROOT)
    if not root.is_dir():
        raise FileNotFoundError(f"Tux Paint stamps not found at {root}; install the Debian package: "
                                "`apt-get install -y --no-install-recommends tuxpaint-stamps-default` (or set the "
                                "dataset's path)")
    eval_fraction, size = float(spec.get("eval_fraction", 0.1)), int(spec.get("image_size", 96))
    in_eval_split("check", eval_fraction)

    def build():
        rows, skipped = build_rows(root, split, eval_fraction, size)
        ds = uniform_rows(rows)
        ds.info.description = f"tuxpaint {split}: {len(ds)} stamps; skipped {skipped}"
        return ds

    fingerprint = {"adapter": "tuxpaint", "version": VERSION, "root": str(root), "stamp": root.stat().st_mtime_ns,
                   "eval_fraction": eval_fraction, "image_size": size}
    return cached_dataset(spec.get("cache_dir"), "tuxpaint", split, fingerprint, build)

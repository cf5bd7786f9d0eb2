"""Open Clip Art Library 0.18 from the Debian packages openclipart-png (pixels) and openclipart-svg (metadata).

Each PNG is composited onto white and padded to a square. Its caption is built from the matching SVG's
metadata and from where the file sits, keeping only what names the drawing:
- the title (dc:title of the work) and the first sentence of the description, when English (wordfreq) and
  not boilerplate ("Lemon SVG theme", "Part of the Flat Icon Collection (...)", e-mail addresses, URLs);
- the file name without its author suffix and number ("double_chocolate_muffin_dan_01" -> "double
  chocolate muffin") and the category path ("food/fruit" -> "fruit, food"), which name the concept more
  reliably than the titles (ASSETS.md measured it);
- keyword tags, minus placeholders and collection noise ("unsorted", "hash", "magick", "icons", ...).
Author names (every cc:Agent title) never reach a caption. `captions` holds the parts as alternatives
(title, file-name phrase) after the full caption, so a CLIP can train on several phrasings.
A hash of each PNG's content puts about eval_fraction of the drawings in the `test` split (the package
ships some drawings twice, under two names: both copies land in the same split).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import datasets

from spae.data.cache import cached_dataset
from spae.data.drawings import add_drawing, in_eval_split, is_english, is_english_word, wanted, words
from spae.data.registry import ADAPTERS
from spae.data.schema import CAPTION_REAL, FEATURES

PNG_ROOT, SVG_ROOT = "/usr/share/openclipart/png", "/usr/share/openclipart/svg"
VERSION = 3  # 2: split by file content; 3: reference_answers column
# Tags and path parts that say nothing about what is drawn (measured frequent noise, see ASSETS.md).
NOISE_WORDS = frozenset({
    "unsorted", "hash", "magick", "theme", "themes", "icons", "icon", "clip", "art", "clipart", "public",
    "domain", "svg", "lemon", "flat", "etiquette", "mimetypes", "mime", "types", "filesystem", "filesystems",
    "apps", "application", "applications", "action", "actions", "special", "computer", "geometry", "menu",
    "webpage", "mapsym", "png", "image", "openclipart", "library", "collection", "various", "cliparts",
    "untitled", "drawing", "vector", "inkscape", "member", "united_nations_member", "signs_and_symbols"})
BOILERPLATE = re.compile(
    r"svg theme|icon collection|part of (the )?\w+ (icon|icons)|open clip ?art|public domain|clip ?art library|"
    r"https?://|www\.|@|converted from|various cliparts|creative commons|licen[cs]e|copyright|all rights",
    re.IGNORECASE)
SHORT_WORDS = frozenset({"a", "an", "of", "on", "in", "to", "at", "up", "ox"})
_TAG_TEXT = re.compile(r"[a-z][a-z '\-]*")
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.DOTALL)
_DESCRIPTION = re.compile(r"<dc:description>(.*?)</dc:description>", re.DOTALL)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.DOTALL)
_TAG = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.DOTALL)
_AGENT = re.compile(r"<cc:Agent>\s*<dc:title>(.*?)</dc:title>", re.DOTALL)


def svg_metadata(text: str) -> dict:
    """title, description, tags and agent (author/publisher) names of an openclipart SVG's RDF block."""
    agents = [a.strip() for a in _AGENT.findall(text) if a.strip()]
    work = text.split("<dc:creator>")[0].split("<cc:Agent>")[0]  # the work's own title comes first
    title = next(iter(_TITLE.findall(work)), "").strip()
    description = next(iter(_DESCRIPTION.findall(text)), "").strip()
    subject = next(iter(_SUBJECT.findall(text)), "")
    tags = [t.strip() for t in _TAG.findall(subject) if t.strip()]
    return {"title": title, "description": description, "tags": tags, "agents": agents}


def _author_tokens(agents: list[str]) -> set[str]:
    return {w for a in agents for w in words(a) if len(w) >= 2}


def _is_author_piece(token: str, authors: set[str]) -> bool:
    """File names end in a truncated author name ('archite' for Architetto): a prefix either way counts."""
    return any(len(token) >= 2 and (a.startswith(token) or token.startswith(a)) for a in authors)


def clean_phrase(text: str, authors: set[str]) -> str:
    """English, non-boilerplate text without author names; '' when nothing is left."""
    text = " ".join(text.replace("_", " ").split())
    if not text or BOILERPLATE.search(text) or not is_english(text):
        return ""
    kept = [w for w in text.split(" ") if not (set(words(w)) & authors)]
    if not set(words(" ".join(kept))) - NOISE_WORDS:  # "Etiquette Icons": names a collection, not a drawing
        return ""
    return " ".join(kept).strip(" .,;:-")


def file_name_phrase(stem: str, authors: set[str]) -> str:
    """'double_chocolate_muffin_dan_ge_01' -> 'double chocolate muffin' (no author suffix, no numbers)."""
    parts = [t for t in re.split(r"[_\-\s]+", stem.lower()) if t]
    while parts and (_is_author_piece(parts[-1], authors) or not re.search(r"[a-z]{3,}", parts[-1])):
        parts.pop()  # authors (and a number) trail the name; strip from the end only
    tokens = [t for part in parts for t in re.findall(r"[a-z]+", part)]  # "home1" -> "home"
    tokens = [t for t in tokens if (len(t) >= 3 or t in SHORT_WORDS) and t not in NOISE_WORDS
              and is_english_word(t)]
    return " ".join(tokens)


def category_phrase(relative_dir: Path) -> str:
    """'food/fruit' -> 'fruit, food' (most specific first), noise folders dropped."""
    parts = [p.replace("_", " ").replace("-", " ") for p in reversed(relative_dir.parts)]
    kept = [p for p in parts if not set(words(p)) & NOISE_WORDS and all(map(is_english_word, words(p)))]
    return ", ".join(dict.fromkeys(kept))


def clean_tags(tags: list[str], authors: set[str]) -> list[str]:
    out = []
    for tag in tags:
        tag = " ".join(tag.replace("_", " ").split()).lower()
        tag_words = words(tag)
        if (not _TAG_TEXT.fullmatch(tag) or set(tag_words) & NOISE_WORDS or set(tag_words) & authors
                or not all(map(is_english_word, tag_words))):
            continue
        out.append(tag)
    return list(dict.fromkeys(out))


def first_sentence(text: str, max_words: int = 20) -> str:
    sentence = re.split(r"(?<=[.!?])\s", text.strip())[0]
    return " ".join(sentence.split()[:max_words])


def captions_for(meta: dict, stem: str, relative_dir: Path) -> list[str]:
    """[full caption, title, file-name phrase] (unique, non-empty): the full one first."""
    authors = _author_tokens(meta["agents"])
    title = clean_phrase(meta["title"], authors)
    description = clean_phrase(first_sentence(meta["description"]), authors)
    name = file_name_phrase(stem, authors)
    category = category_phrase(relative_dir)
    head = title or name or category.split(", ")[0]  # "cavallo_architetto" in animals/horses: "horses"
    if not head:
        return []
    extra = list(dict.fromkeys(p for p in (name, description) if p and p.lower() != head.lower()))
    known = set(words(head)) | set(words(category))
    tags = [t for t in clean_tags(meta["tags"], authors) if not set(words(t)) <= known][:6]
    full = ". ".join([head, *extra]) + (f"; {category}" if category else "") + (f"; {', '.join(tags)}" if tags else "")
    return list(dict.fromkeys(c for c in (full, title, name) if c))


def drawing_files(png_root: Path, svg_root: Path) -> list[tuple[Path, Path | None]]:
    pngs = sorted(png_root.rglob("*.png"))
    return [(p, (svg_root / p.relative_to(png_root)).with_suffix(".svg")) for p in pngs]


def check_roots(png_root: Path, svg_root: Path) -> None:
    missing = [str(p) for p in (png_root, svg_root) if not p.is_dir()]
    if missing:
        raise FileNotFoundError(f"Open Clip Art folders not found: {missing}; install the Debian packages: "
                                "`apt-get install -y openclipart-png openclipart-svg` (or set the dataset's "
                                "png_path / svg_path)")


def build_rows(png_root: Path, svg_root: Path, split: str, eval_fraction: float, size: int) -> tuple[dict, dict]:
    rows = {"image": [], "caption": [], "captions": []}
    skipped = {"no_svg": 0, "no_english_caption": 0}
    for png, svg in drawing_files(png_root, svg_root):
        relative = png.relative_to(png_root)
        # split by content: the package ships some drawings twice, in two folders; both land on one side
        if not wanted(hashlib.sha1(png.read_bytes()).hexdigest(), split, eval_fraction):
            continue
        if not svg.is_file():
            skipped["no_svg"] += 1
            continue
        meta = svg_metadata(svg.read_text(encoding="utf-8", errors="replace")[:200_000])
        captions = captions_for(meta, png.stem, relative.parent)
        if not captions:
            skipped["no_english_caption"] += 1
            continue
        add_drawing(rows, skipped, png, size, captions)
    return rows, skipped


def uniform_rows(rows: dict) -> datasets.Dataset:
    n = len(rows["image"])
    return datasets.Dataset.from_dict({
        "image": rows["image"], "label": [-1] * n, "label_name": [""] * n, "caption": rows["caption"],
        "captions": rows["captions"], "caption_source": [CAPTION_REAL] * n,
        "questions": [[] for _ in range(n)], "answers": [[] for _ in range(n)],
        "reference_answers": [[] for _ in range(n)]}, features=FEATURES)


@ADAPTERS.register("openclipart")
def load_openclipart(spec: dict, split: str, offline: bool = True):
    png_root, svg_root = Path(spec.get("png_path") or PNG_ROOT), Path(spec.get("svg_path") or SVG_ROOT)
    check_roots(png_root, svg_root)
    eval_fraction, size = float(spec.get("eval_fraction", 0.1)), int(spec.get("image_size", 96))
    in_eval_split("check", eval_fraction)  # validates the fraction before any work

    def build():
        rows, skipped = build_rows(png_root, svg_root, split, eval_fraction, size)
        ds = uniform_rows(rows)
        ds.info.description = f"openclipart {split}: {len(ds)} drawings; skipped {skipped}"
        return ds

    stamp = sorted(p.stat().st_mtime_ns for p in (png_root, svg_root))
    fingerprint = {"adapter": "openclipart", "version": VERSION, "roots": [str(png_root), str(svg_root)],
                   "stamp": stamp, "eval_fraction": eval_fraction, "image_size": size}
    return cached_dataset(spec.get("cache_dir"), "openclipart", split, fingerprint, build)

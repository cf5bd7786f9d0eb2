"""Caption pools for training the embedded CLIP, and word lists held out of them for evaluation.

A CLIP trained only on "a photo of {class name}" learns to separate the class names, and its text side
then ranks vocabulary words by how they are spelled (a quick probe ranked pull, pulls, pulling for
"pullover"). Each image therefore gets a pool of captions in several phrasings, with synonyms and short
descriptions of what the object is and does, so that the image lands near the *meaning* its captions share.

The HELD_OUT lists name related words that never appear in any caption: the quality stage measures how
high they rank, which only a CLIP whose relevance follows meaning can do (see spae.clip.quality).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

# Several phrasings; each name/synonym is put into each of them.
PHRASINGS = ("a photo of {}.", "a picture of {}.", "{}", "an image of {}.", "a product photo of {}.",
             "a black and white photo of {}.", "a small picture of {}.", "this is {}.")

# What the captions say of each class (data in caption_knowledge.json, with HELD_OUT below): names usable
# with an article and short descriptions of the object. Fashion-MNIST's classes (names as
# spae.data.fashion_mnist gives them), and easy-VQA's shapes (shapes and colours are read from its caption,
# "a red circle"). None of these may contain a HELD_OUT word (checked in tests).
_KNOWLEDGE = json.loads((Path(__file__).with_name("caption_knowledge.json")).read_text(encoding="utf-8"))
CLASS_KNOWLEDGE: dict[str, dict[str, list[str]]] = _KNOWLEDGE["classes"]
SHAPE_KNOWLEDGE: dict[str, dict[str, list[str]]] = _KNOWLEDGE["shapes"]
COLOURS = ("red", "green", "blue", "black", "gray", "yellow", "brown", "teal")

# Related words used ONLY for evaluation; never in any caption. Chosen for meaning, not spelling.
HELD_OUT: dict[str, list[str]] = _KNOWLEDGE["held_out"]

_WORD = re.compile(r"[a-z]+")


def words_in(texts: Iterable[str]) -> set[str]:
    """Lower-case alphabetic words of the texts (what 'a word appears in a caption' means here)."""
    found: set[str] = set()
    for text in texts:
        found.update(_WORD.findall(text.lower()))
    return found


def held_out_words() -> set[str]:
    return {w for words in HELD_OUT.values() for w in words}


def check_no_held_out(captions: Iterable[str]) -> None:
    """The evaluation's held-out words must never be trained on; fail loudly if a caption has one."""
    leaked = words_in(captions) & held_out_words()
    if leaked:
        raise ValueError(f"training captions contain held-out evaluation words {sorted(leaked)}; remove "
                         "them from the captions (or from spae.clip.captions.HELD_OUT)")


def phrase_all(names: Iterable[str], phrasings: Iterable[str] = PHRASINGS) -> list[str]:
    return [p.format(n) for n in names for p in phrasings]


def class_pool(label_name: str) -> list[str]:
    """Captions for an image of a known class (empty for an unknown one)."""
    knowledge = CLASS_KNOWLEDGE.get(label_name.lower())
    if knowledge is None:
        return []
    return phrase_all(knowledge["names"]) + knowledge["descriptions"]


def shape_colour(caption: str) -> tuple[str | None, str | None]:
    """The (shape, colour) an easy-VQA-style caption names, None where it names none."""
    words = words_in([caption])
    shape = next((s for s in SHAPE_KNOWLEDGE if s in words), None)
    colour = next((c for c in COLOURS if c in words), None)
    return shape, colour


def shape_pool(shape: str | None, colour: str | None) -> list[str]:
    if shape is None:
        return []
    knowledge = SHAPE_KNOWLEDGE[shape]
    out: list[str] = []
    for name in knowledge["names"]:
        coloured = f"{colour} {name}" if colour else name
        out += phrase_all([f"a {coloured}"])
        if colour:
            out.append(f"a {name} coloured {colour}")
    for text in knowledge["descriptions"]:
        out.append(f"{text}, in {colour}" if colour else text)
    if colour:
        out += [f"the colour {colour}", f"something {colour}"]
    return out


def caption_pool(label_name: str, caption: str, enrich: bool = True) -> list[str]:
    """Every caption an image may be trained with: its own caption, plus (enrich=True) phrasings,
    synonyms and descriptions of its class or of the shape and colour it shows."""
    pool = [caption] if caption else []
    if enrich:
        pool += class_pool(label_name) if label_name else []
        if not label_name:
            pool += shape_pool(*shape_colour(caption))
    if not pool and label_name:
        pool = [f"a photo of {label_name}."]
    return list(dict.fromkeys(pool))  # unique, order kept

"""Caption pools for training the embedded CLIP, and word lists held out of them for evaluation.

A CLIP trained only on "a photo of {class name}" learns to separate the class names, and its text side
then ranks vocabulary words by how they are spelled (a quick probe ranked pull, pulls, pulling for
"pullover"). Each image therefore gets a pool of captions in several phrasings, with synonyms and short
descriptions of what the object is and does, so that the image lands near the *meaning* its captions share.

The HELD_OUT lists name related words that never appear in any caption: the quality stage measures how
high they rank, which only a CLIP whose relevance follows meaning can do (see spae.clip.quality).
"""
from __future__ import annotations

import re
from typing import Iterable

# Several phrasings; each name/synonym is put into each of them.
PHRASINGS = ("a photo of {}.", "a picture of {}.", "{}", "an image of {}.", "a product photo of {}.",
             "a black and white photo of {}.", "a small picture of {}.", "this is {}.")

# Fashion-MNIST's classes (names as spae.data.fashion_mnist gives them): names usable with an article,
# and short descriptions of the object. None of these may contain a HELD_OUT word (checked in tests).
CLASS_KNOWLEDGE: dict[str, dict[str, list[str]]] = {
    "t-shirt": {
        "names": ["a t-shirt", "a top", "a short-sleeved top", "a casual top", "a cotton t-shirt"],
        "descriptions": ["a light short-sleeved garment pulled over the head and worn on the upper body",
                         "casual clothing for the torso with short sleeves",
                         "a plain top to wear on a warm day"],
    },
    "trouser": {
        "names": ["trousers", "a pair of trousers", "long trousers", "a trouser", "legwear"],
        "descriptions": ["a garment covering each leg separately from the waist to the ankles",
                         "clothing for the legs with a waistband and two long legs",
                         "a pair of long trousers for men or women"],
    },
    "pullover": {
        "names": ["a pullover", "a warm pullover", "a long-sleeved pullover", "a thick pullover"],
        "descriptions": ["a warm garment with long sleeves pulled on over the head in cold weather",
                         "thick warm clothing for the upper body worn over a shirt in winter",
                         "a cosy long-sleeved top made of yarn"],
    },
    "dress": {
        "names": ["a dress", "a woman's dress", "a long dress", "a short dress", "an elegant dress"],
        "descriptions": ["a one-piece garment for women covering the body and hanging down over the legs",
                         "clothing for a woman or girl made in one piece from the shoulders down",
                         "an elegant garment a woman wears to a party"],
    },
    "coat": {
        "names": ["a coat", "a winter coat", "a long coat", "a warm coat", "a heavy coat"],
        "descriptions": ["a warm outer garment with long sleeves worn outdoors over other clothes",
                         "heavy outer clothing that keeps you warm in cold or wet weather",
                         "a long garment with sleeves and a front opening worn outside in winter"],
    },
    "sandal": {
        "names": ["a sandal", "an open sandal", "a flat sandal", "a sandal with straps", "light footwear"],
        "descriptions": ["open footwear made of a sole held to the foot by straps, showing the toes",
                         "light open footwear for hot weather with thin straps",
                         "a sole with straps over the toes and around the ankle"],
    },
    "shirt": {
        "names": ["a shirt", "a long-sleeved shirt", "a casual shirt", "a men's shirt", "a cotton shirt"],
        "descriptions": ["a garment for the upper body with sleeves and an opening down the front",
                         "clothing for the torso with long sleeves, worn tucked into trousers",
                         "a shirt for work or the office"],
    },
    "sneaker": {
        "names": ["a sneaker", "a sports sneaker", "a sneaker with laces", "a low sneaker", "sports footwear"],
        "descriptions": ["sports footwear with a rubber sole and laces",
                         "comfortable footwear for sport and exercise with a flexible rubber sole",
                         "a low sneaker with laces worn for sport"],
    },
    "bag": {
        "names": ["a bag", "a bag with a handle", "a lady's bag", "a shoulder bag", "a carrying bag"],
        "descriptions": ["a container with handles or a strap used to carry things",
                         "an accessory for carrying personal items, held by a handle or over the shoulder",
                         "a fabric container that you carry your belongings in"],
    },
    "ankle boot": {
        "names": ["an ankle boot", "a boot", "a short boot", "a boot that covers the ankle",
                  "a women's ankle boot"],
        "descriptions": ["sturdy footwear that covers the foot and the ankle",
                         "a boot reaching just above the ankle, worn in autumn and winter",
                         "closed footwear with a thick sole and a raised back"],
    },
}

# easy-VQA: shapes and colours are read from its caption ("a red circle").
SHAPE_KNOWLEDGE: dict[str, dict[str, list[str]]] = {
    "circle": {"names": ["circle", "circle shape"],
               "descriptions": ["a curved shape whose edge is everywhere the same distance from its centre",
                                "a shape with no corners and no straight sides"]},
    "rectangle": {"names": ["rectangle", "rectangle shape"],
                  "descriptions": ["a shape with four straight sides and four right angles",
                                   "a four-sided shape with opposite sides of equal length"]},
    "triangle": {"names": ["triangle", "triangle shape"],
                 "descriptions": ["a shape with three straight sides and three corners",
                                  "a three-sided shape with a pointed top"]},
}
COLOURS = ("red", "green", "blue", "black", "gray", "yellow", "brown", "teal")

# Related words used ONLY for evaluation; never in any caption. Chosen for meaning, not spelling.
HELD_OUT: dict[str, list[str]] = {
    "t-shirt": ["tee", "tank", "jersey", "sleeveless", "polo", "camisole", "singlet", "blouse"],
    "trouser": ["pants", "jeans", "slacks", "denim", "leggings", "khakis", "chinos", "corduroy"],
    "pullover": ["sweater", "jumper", "cardigan", "hoodie", "sweatshirt", "knitwear", "wool", "fleece"],
    "dress": ["gown", "frock", "skirt", "bridal", "prom", "cocktail", "wedding", "lace"],
    "coat": ["jacket", "parka", "blazer", "anorak", "trench", "windbreaker", "outerwear", "hood"],
    "sandal": ["slipper", "slippers", "flip", "flops", "barefoot", "strappy", "clogs", "beach"],
    "shirt": ["collar", "collared", "tunic", "flannel", "plaid", "buttons", "button", "sleeve"],
    "sneaker": ["shoe", "shoes", "trainers", "running", "athletic", "jogging", "tennis", "gym"],
    "bag": ["purse", "backpack", "tote", "luggage", "satchel", "wallet", "suitcase", "clutch"],
    "ankle boot": ["heel", "heels", "leather", "chelsea", "cowboy", "hiking", "suede", "zipper"],
    "circle": ["round", "ring", "disc", "oval", "sphere", "circular", "dot", "wheel"],
    "rectangle": ["square", "box", "block", "brick", "tile", "rectangular", "frame", "panel"],
    "triangle": ["pyramid", "wedge", "cone", "arrow", "apex", "delta", "triangular", "prism"],
    "red": ["crimson", "scarlet", "ruby", "cherry"],
    "green": ["emerald", "lime", "olive", "grass"],
    "blue": ["navy", "azure", "cobalt", "sky"],
    "black": ["dark", "ebony", "coal", "charcoal"],
    "gray": ["grey", "silver", "ash", "slate"],
    "yellow": ["golden", "lemon", "mustard", "amber"],
    "brown": ["tan", "chocolate", "coffee", "beige"],
    "teal": ["turquoise", "cyan", "aqua", "aquamarine"],
}

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

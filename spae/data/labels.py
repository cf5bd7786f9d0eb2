"""Class names as real words: ClassLabel names, string labels, WordNet synset ids, folder names."""
from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

_SYNSET = re.compile(r"^n\d{8}$")


@functools.lru_cache(maxsize=1)
def synset_lemmas() -> dict[str, str]:
    """WordNet id -> first lemma ("n01532829" -> "house finch"), from the file timm ships."""
    found = importlib.util.find_spec("timm")  # located, not imported: importing timm takes seconds
    if found is None or not found.submodule_search_locations:
        raise ImportError("class names given as WordNet ids (n01532829) are turned into words with the "
                          "synset list that ships in timm: `pip install timm`")
    table = Path(found.submodule_search_locations[0]) / "data" / "_info" / "imagenet_synset_to_lemma.txt"
    lemmas = {}
    for line in table.read_text().splitlines():
        synset, _, words = line.partition("\t")
        lemmas[synset] = words.split(",")[0].strip()
    return lemmas


def readable_name(name: str, separators: str = "_", first_synonym: bool = False) -> str:
    """One class name as words: WordNet ids looked up, `separators` -> spaces, optional first synonym
    of a comma list ("tench, Tinca tinca" -> "tench"), whitespace collapsed."""
    name = str(name).strip()
    if _SYNSET.match(name):
        lemma = synset_lemmas().get(name)
        if lemma is None:
            raise ValueError(f"class {name!r} looks like a WordNet id but is not in timm's synset list; "
                             "give the dataset spec `label_names:` explicitly")
        name = lemma
    if first_synonym:
        name = name.split(",")[0]
    for separator in separators:
        name = name.replace(separator, " ")
    return " ".join(name.split())

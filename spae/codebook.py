"""The frozen SPAE codebook: an LLM's input embeddings restricted to its whole-word tokens.

Rows are the embeddings exactly as the LLM feeds them in (any scale its embedding module applies is
included), so a quantised latent is literally the LLM's token embedding. Stored as safetensors (tensors)
plus JSON (words, source): loading runs no code.
"""
from __future__ import annotations

from spae.errors import InvalidConfigError, MissingFileError, UserError

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from spae.io import atomic_path, write_json_atomic

TENSORS_FILE = "codebook.safetensors"
META_FILE = "codebook.json"


class UnknownWordsError(UserError, KeyError):
    """Words that are not in the codebook; the message names them and suggests close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; show plain text
        return str(self.args[0])


@dataclass(eq=False)  # tensors: identity, not element-wise ==
class Codebook:
    embeddings: torch.Tensor  # [K, D] float32, frozen
    words: list[str]  # K words, row order
    token_ids: torch.Tensor  # [K] long: the source LLM's token id of each word
    source: str  # name of the LLM whose embeddings these are
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.embeddings = self.embeddings.detach().float().contiguous().requires_grad_(False)
        self.token_ids = torch.as_tensor(self.token_ids, dtype=torch.long)
        k = self.embeddings.shape[0]
        if self.embeddings.dim() != 2 or len(self.words) != k or self.token_ids.shape != (k,):
            raise ValueError(
                f"inconsistent codebook: embeddings {tuple(self.embeddings.shape)}, {len(self.words)} "
                f"words, token_ids {tuple(self.token_ids.shape)}; expected [K, D], K words, [K] ids"
            )
        self._index = {w: i for i, w in enumerate(self.words)}
        if len(self._index) != k:
            raise ValueError("codebook words must be unique")

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def words_of(self, ids: torch.Tensor) -> Any:
        """Codebook indices (any shape) -> words, as nested lists of the same shape (a str for a scalar)."""
        ids = torch.as_tensor(ids)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.size):
            raise IndexError(f"codebook indices must be in [0, {self.size}); got {ids.min()}..{ids.max()}")
        return _map_nested(ids.tolist(), self.words.__getitem__)

    def ids_of(self, words: list[str]) -> torch.Tensor:
        """Words -> codebook indices [len(words)]; raises UnknownWordsError naming any unknown word."""
        missing = [w for w in words if w not in self._index]
        if missing:
            hints = []
            for word in dict.fromkeys(missing):
                close = difflib.get_close_matches(word, self.words, n=3)
                hints.append(f"{word!r}" + (f" (close: {', '.join(close)})" if close else ""))
            raise UnknownWordsError(
                f"{len(missing)} word(s) not in the {self.source} codebook of {self.size} words: "
                + "; ".join(hints)
            )
        return torch.tensor([self._index[w] for w in words], dtype=torch.long)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def save(self, directory: str | Path) -> Path:
        """Write codebook.safetensors + codebook.json into `directory` (each atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / TENSORS_FILE) as tmp:
            save_file({"embeddings": self.embeddings, "token_ids": self.token_ids}, str(tmp))
        write_json_atomic(directory / META_FILE, {
            "source": self.source, "size": self.size, "dim": self.dim, "words": self.words,
        })
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Codebook":
        directory = Path(directory)
        if not (directory / TENSORS_FILE).is_file() or not (directory / META_FILE).is_file():
            raise MissingFileError(
                f"no codebook in {directory} (needs {TENSORS_FILE} and {META_FILE}); build it with the "
                "`codebook` stage or spae.codebook.build_codebook"
            )
        tensors = load_file(str(directory / TENSORS_FILE))
        meta = json.loads((directory / META_FILE).read_text())
        return cls(tensors["embeddings"], meta["words"], tensors["token_ids"], meta["source"])

    @classmethod
    def exists(cls, directory: str | Path) -> bool:
        return (Path(directory) / TENSORS_FILE).is_file() and (Path(directory) / META_FILE).is_file()


def _map_nested(value: Any, fn) -> Any:
    if isinstance(value, list):
        return [_map_nested(v, fn) for v in value]
    return fn(value)


VOCABULARY_KEYS = ("lowercase_only", "min_chars", "min_zipf", "max_size")


def vocabulary_options(codebook_cfg: dict) -> dict:
    """The lexical_vocabulary keyword arguments found in a conf/codebook/*.yaml dict. Every key is required
    (no library defaults: the YAML is the one source of the values; null min_zipf/max_size disable them)."""
    missing = [k for k in VOCABULARY_KEYS if k not in codebook_cfg]
    if missing:
        raise InvalidConfigError(f"codebook config {codebook_cfg.get('name')!r} lacks {missing}; set every one of "
                                 f"{', '.join(VOCABULARY_KEYS)} (see conf/codebook/gemma3_words.yaml)")
    return {
        "lowercase_only": bool(codebook_cfg["lowercase_only"]),
        "min_chars": int(codebook_cfg["min_chars"]),
        "min_zipf": codebook_cfg["min_zipf"],
        "max_size": codebook_cfg["max_size"],
    }


def codebook_from_table(table: torch.Tensor, entries: list, source: str) -> Codebook:
    """Rows of an input-embedding table [V, D] for the given VocabEntry list."""
    if not entries:
        raise ValueError(f"no words for the {source} codebook; relax min_zipf / min_chars / lowercase_only")
    ids = torch.tensor([e.token_id for e in entries], dtype=torch.long)
    if int(ids.max()) >= table.shape[0]:
        raise ValueError(f"token id {int(ids.max())} is outside the {table.shape[0]}-row embedding table")
    return Codebook(table[ids].clone(), [e.word for e in entries], ids, source)


def build_codebook(codebook_cfg: dict, cache_dir: str | Path) -> Codebook:
    """Load the codebook's source LLM (`codebook_cfg["source"]`, an llm spec) and take its word rows."""
    from spae.llm.loading import input_embedding_table, load_llm
    from spae.vocab import lexical_vocabulary

    spec = codebook_cfg.get("source")
    if not isinstance(spec, dict):
        raise ValueError("codebook config needs `source`: an llm spec "
                         "(e.g. defaults: [/llm@source: gemma3_270m])")
    loaded = load_llm(spec, cache_dir)
    entries = lexical_vocabulary(loaded.tokenizer, **vocabulary_options(codebook_cfg))
    return codebook_from_table(input_embedding_table(loaded), entries, loaded.name)

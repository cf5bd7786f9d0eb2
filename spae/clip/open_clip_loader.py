"""Real CLIP weights through open_clip: an architecture name plus a pretrained tag or a local file.

Two checks open_clip leaves to its users, done here because getting them wrong gives silently wrong scores:
- QuickGELU: OpenAI's weights (and some others) were trained with QuickGELU. Loading them into the plain
  GELU architecture of the same name runs but scores worse. open_clip only warns; this raises, for tags
  (the tag's config says which activation it was trained with) and for local files whose activation is
  known (safetensors metadata `quick_gelu`, a sidecar open_clip_config.json, or clip.quick_gelu).
- Preprocessing: mean/std, interpolation and resizing come from the tag's (or the sidecar's) config, not
  from a default, and travel with the loaded handle.
Offline, a tag resolves only to a file already in the local cache; otherwise a clear error says how to
pass a local checkpoint or use the embedded CLIP.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from spae.clip.handle import ClipHandle
from spae.errors import MissingFileError, UserError

log = logging.getLogger(__name__)


class ClipConfigError(UserError, ValueError):
    """The CLIP config cannot give correct scores; the message says what to change."""


class ClipWeightsUnavailable(UserError, RuntimeError):
    """The requested weights cannot be had (offline, not cached)."""


def model_config(arch: str) -> dict:
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ClipConfigError(f"unknown open_clip architecture {arch!r}; valid names: "
                              f"{', '.join(open_clip.list_models())}")
    return cfg


def looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin")) or Path(pretrained).exists()


def file_metadata(path: Path) -> dict:
    """What a checkpoint file says about itself: safetensors metadata, then open_clip_config.json beside it."""
    meta: dict = {}
    sidecar = path.parent / "open_clip_config.json"
    if sidecar.is_file():
        config = json.loads(sidecar.read_text())
        if "quick_gelu" in config.get("model_cfg", {}):
            meta["quick_gelu"] = bool(config["model_cfg"]["quick_gelu"])
        meta["preprocess_cfg"] = config.get("preprocess_cfg", {})
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            stored = handle.metadata() or {}
        if "quick_gelu" in stored:
            meta["quick_gelu"] = stored["quick_gelu"].lower() == "true"
        if "preprocess_cfg" in stored:
            meta["preprocess_cfg"] = json.loads(stored["preprocess_cfg"])
    return meta


def check_quick_gelu(arch: str, weights_quick_gelu: bool | None, source: str) -> None:
    if weights_quick_gelu is None:
        log.warning("open_clip: cannot tell whether %s was trained with QuickGELU; assuming the activation of "
                    "%s. Set clip.quick_gelu=true/false to have it checked.", source, arch)
        return
    arch_quick = bool(model_config(arch).get("quick_gelu", False))
    if arch_quick != weights_quick_gelu:
        want = "QuickGELU" if weights_quick_gelu else "GELU"
        fix = (f"use the architecture {arch}-quickgelu" if weights_quick_gelu and not arch.endswith("-quickgelu")
               else f"use the architecture {arch.removesuffix('-quickgelu')}")
        raise ClipConfigError(f"QuickGELU mismatch: {source} was trained with {want} but architecture {arch!r} "
                              f"uses {'QuickGELU' if arch_quick else 'GELU'}; scores would be silently wrong. "
                              f"Fix: {fix} (clip.arch=...).")


def cached_tag_file(pretrained_cfg: dict, cache_dir: str | None) -> str | None:
    """The tag's checkpoint if it is already on disk (HF hub cache or open_clip's URL cache)."""
    hub = pretrained_cfg.get("hf_hub")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        parts = hub.strip("/").split("/")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    url = pretrained_cfg.get("url")
    if url:
        folder = cache_dir or os.path.expanduser("~/.cache/clip")
        candidate = Path(folder) / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def load_open_clip(arch: str, pretrained: str | None, cache_dir: str | None = None, offline: bool = True,
                   quick_gelu: bool | None = None, preprocess: dict | None = None) -> ClipHandle:
    """open_clip model `arch` with weights from a tag or a local file, as a ClipHandle."""
    import open_clip

    if not pretrained:
        raise ClipConfigError("clip.pretrained is empty: a CLIP with random weights scores nothing. Give a tag "
                              f"(one of {open_clip.list_pretrained_tags_by_model(arch) or 'none for this arch'}) "
                              "or a local file: clip.pretrained=/path/to/file")
    model_config(arch)
    force_preprocess = dict(preprocess or {})
    if looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise MissingFileError(f"clip.pretrained={pretrained} is not a file; give the path of an open_clip "
                                   "checkpoint, or a pretrained tag")
        meta = file_metadata(path)
        check_quick_gelu(arch, meta.get("quick_gelu", quick_gelu), f"the checkpoint {path}")
        force_preprocess = {**meta.get("preprocess_cfg", {}), **force_preprocess}
        checkpoint = str(path)
        from spae.clip.embedded import file_sha256

        identity = f"open_clip:{arch}:file-{file_sha256(path)[:16]}"
    else:
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        if not tag_cfg:
            raise ClipConfigError(f"{pretrained!r} is neither a file nor a pretrained tag of {arch}; tags: "
                                  f"{open_clip.list_pretrained_tags_by_model(arch)}")
        check_quick_gelu(arch, bool(tag_cfg.get("quick_gelu", False)), f"the pretrained tag {pretrained!r}")
        identity = f"open_clip:{arch}:{pretrained}"
        checkpoint = pretrained
        if offline:
            local = cached_tag_file(tag_cfg, cache_dir)
            if local is None:
                raise ClipWeightsUnavailable(
                    f"offline mode and the weights of open_clip {arch}/{pretrained} are not in the local cache. "
                    f"Pass a local checkpoint file with clip.pretrained=/path/to/file (any open_clip {arch} "
                    "state dict), run once online (offline=false) to download it, or use the CLIP trained "
                    "here with clip=embedded.")
            checkpoint = local
            # The tag's own preprocessing, as open_clip would have applied for the tag.
            force_preprocess = {**{k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                   if k in tag_cfg}, **force_preprocess}
    model = open_clip.create_model(arch, pretrained=checkpoint, cache_dir=cache_dir, load_weights=True,
                                   force_preprocess_cfg=force_preprocess or None, weights_only=True)
    model.eval()
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp["size"]
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipHandle(model=model, tokenizer=open_clip.get_tokenizer(arch, cache_dir=cache_dir), image_size=size,
                      mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                      interpolation="bilinear" if pp.get("interpolation") == "bilinear" else "bicubic",
                      identity=identity, description=f"open_clip {arch} ({pretrained})")


def save_open_clip_checkpoint(model, path: Path, quick_gelu: bool, preprocess_cfg: dict | None = None) -> None:
    """An open_clip state dict as safetensors with the facts loading must check (activation, preprocessing)."""
    from safetensors.torch import save_file

    from spae.io import atomic_path

    metadata = {"quick_gelu": str(bool(quick_gelu)).lower()}
    if preprocess_cfg:
        metadata["preprocess_cfg"] = json.dumps(preprocess_cfg)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)

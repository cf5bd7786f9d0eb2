"""The CLIP registry: clip.kind -> loader. Every loader returns a ClipHandle.

    handle = load_clip(spec, stage_dir, cache_dir)          # spec: a conf/clip/*.yaml dict
    handle = load_clip_from_stage(clip_stage_dir, cache_dir)  # whatever the `clip` stage recorded
"""
from __future__ import annotations

import os
from pathlib import Path

from spae.clip.handle import ClipHandle
from spae.errors import MissingFileError
from spae.io import read_json
from spae.registry import Registry

CLIP_KINDS: Registry = Registry("CLIP kind")
STAGE_RECORD = "clip_stage.json"  # what the `clip` stage wrote: the spec it loaded


def is_offline() -> bool:
    return any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@CLIP_KINDS.register("embedded")
def _load_embedded(spec: dict, stage_dir: Path | None, cache_dir: Path | None, offline: bool) -> ClipHandle:
    from spae.clip.embedded import load_embedded

    if stage_dir is None:
        raise ValueError("clip.kind=embedded is trained by the `clip` stage; pass its output folder")
    return load_embedded(stage_dir)


@CLIP_KINDS.register("open_clip")
def _load_open_clip(spec: dict, stage_dir: Path | None, cache_dir: Path | None, offline: bool) -> ClipHandle:
    from spae.clip.open_clip_loader import load_open_clip

    for key in ("arch", "pretrained"):
        if key not in spec:
            raise ValueError(f"clip.kind=open_clip needs clip.{key} (see conf/clip/vit_b32.yaml)")
    hub_cache = os.path.join(cache_dir, "open_clip") if cache_dir and not os.environ.get("HF_HOME") else None
    return load_open_clip(spec["arch"], spec["pretrained"], cache_dir=spec.get("cache_dir") or hub_cache,
                          offline=offline, quick_gelu=spec.get("quick_gelu"), preprocess=spec.get("preprocess"))


def load_clip(spec: dict, stage_dir: str | Path | None = None, cache_dir: str | Path | None = None,
              offline: bool | None = None) -> ClipHandle:
    kind = spec.get("kind")
    if not kind:
        raise ValueError(f"a CLIP spec needs `kind` (one of {CLIP_KINDS.names()}); got {spec!r}")
    return CLIP_KINDS.get(kind)(spec, Path(stage_dir) if stage_dir else None,
                                str(cache_dir) if cache_dir else None, is_offline() if offline is None else offline)


def load_clip_from_stage(stage_dir: str | Path, cache_dir: str | Path | None = None) -> ClipHandle:
    record = Path(stage_dir) / STAGE_RECORD
    if not record.is_file():
        raise MissingFileError(f"{stage_dir} is not a finished `clip` stage folder (no {STAGE_RECORD}); "
                               "rerun the `clip` stage")
    return load_clip(read_json(record)["spec"], stage_dir, cache_dir)

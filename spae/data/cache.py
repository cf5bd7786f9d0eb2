"""Build an embedded dataset once, then memory-map it (datasets' save_to_disk / load_from_disk).

The cache folder is named by the adapter, split and a fingerprint of the source (file sizes and times,
package version, adapter version), so a changed source never reuses a stale copy.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import datasets

from spae.hashing import stable_hash

log = logging.getLogger(__name__)


def file_fingerprint(paths: list[Path]) -> list[Any]:
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in paths]


def cached_dataset(cache_dir: str | os.PathLike | None, name: str, split: str, fingerprint: Any,
                   build: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """`build()` on the first call; later calls load the saved copy. No cache_dir: always build."""
    if not cache_dir:
        return build()
    target = Path(cache_dir) / name / f"{split}-{stable_hash(fingerprint)}"
    if (target / "state.json").exists():
        return datasets.load_from_disk(str(target))
    ds = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, target)  # atomic: a reader sees all of it or nothing
        except OSError:
            log.info("another process cached %s first; using its copy", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s/%s at %s", name, split, target)
    return datasets.load_from_disk(str(target))

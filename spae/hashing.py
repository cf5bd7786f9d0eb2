"""Stable hashes of config subtrees: the identity of runs and cached stage artefacts."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, length: int = 12) -> str:
    """sha256 of a canonical JSON dump (sorted keys), truncated. Identical configs, identical hashes."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]

"""Datasets the `data` stage saved: <stage_dir>/<role>/<name>, read back with datasets.load_from_disk."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import datasets


def prepared_path(stage_dir: str | os.PathLike, role: str, name: str) -> Path:
    from spae.io import safe_name  # names come from configs: they must stay inside the stage folder

    return Path(stage_dir) / safe_name(role, "data role") / safe_name(name, f"data.{role} name")


def excluded_record(stage_dir: str | os.PathLike, role: str, name: str) -> Path:
    """Where a pretraining set's record of the evaluation classes dropped from it lives (the data stage writes
    it, the fairness report reads it)."""
    return prepared_path(stage_dir, role, name).parent / f"{name}.excluded.json"


def save_prepared(ds: datasets.Dataset, stage_dir: str | os.PathLike, role: str, name: str) -> Path:
    """save_to_disk into a temporary folder renamed into place: a half-written copy is never read."""
    target = prepared_path(stage_dir, role, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        ds.save_to_disk(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_prepared(stage_dir: str | os.PathLike, role: str, name: str | None = None) -> datasets.Dataset:
    """The dataset the data stage saved for `role` (pretrain, classification, vqa, captioning,
    generation). `name` may be omitted when the role holds exactly one dataset."""
    role_dir = Path(stage_dir) / role
    if not role_dir.is_dir():
        present = sorted(p.name for p in Path(stage_dir).iterdir() if p.is_dir()) if Path(stage_dir).is_dir() else []
        raise FileNotFoundError(f"the data stage at {stage_dir} prepared no {role!r} dataset; roles present: "
                                f"{present}")
    names = sorted(p.name for p in role_dir.iterdir() if (p / "state.json").exists())
    if name is None:
        if len(names) != 1:
            raise ValueError(f"role {role!r} holds {names}; pass name= to choose one")
        name = names[0]
    if name not in names:
        raise FileNotFoundError(f"no prepared dataset {role}/{name} in {stage_dir}; it has {names}")
    return datasets.load_from_disk(str(role_dir / name))

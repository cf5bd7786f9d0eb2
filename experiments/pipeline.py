"""A run is a small DAG of stages; each stage's artefacts are cached under a config-derived key.

Why hand-written: neither Hydra nor Lightning caches the outputs of pipeline steps by the config values
that affect them (audiocraft's "config-derived identity" idea, applied per stage).

A stage declares the config paths it reads and the stages it needs. Its key hashes those config values
and the keys of its dependencies, so changing a knob recomputes that stage and everything downstream,
and nothing upstream. Values are hashed as experiments/config_identity.py reduces them: inside a typed schema
(spae.config: model, trainer, tokenizer methods) only what differs from the schema's defaults, elsewhere
everything but null keys. So a new config key added at its default (or at null) leaves every key unchanged,
and a preset that states a default keys equal to one that omits it. A training stage may also read a stage only for a sanity report in its summary
(`report_deps`, e.g. Frozen's caption check on the evaluation sets): that stage runs first, but its key stays
out of the training stage's key, so a new evaluation set reuses the trained model (the report names the
sets it was measured on). A stage writes into a stable folder (so an interrupted stage can resume from its
own checkpoints) and is complete only when its `_SUCCESS.json` marker exists (written atomically last).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from experiments.config_identity import key_values, reduced_untyped
from spae.hashing import stable_hash
from spae.io import file_lock, read_json, write_json_atomic
from spae.registry import Registry

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS.json"


@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: Callable[["StageContext"], dict]
    deps: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    version: int = 1  # bump when the stage's code changes what it produces
    distributed: bool = False  # trains with the Lightning Trainer: every DDP rank must take part (see worker_rank)
    report_deps: tuple[str, ...] = ()  # read for a summary report only: run first, not part of the key
    # cfg -> values computed from the config that decide the output but are no single config path (e.g. the
    # effective batch, devices x nodes x batch size); they join the key beside config_keys
    derived: Callable[[dict], dict] | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.deps + tuple(d for d in self.report_deps if d not in self.deps)


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    summary: dict
    cached: bool
    seconds: float


@dataclass
class StageContext:
    cfg: dict  # the full resolved config, plain containers
    out_dir: Path  # this stage's cache folder (stable across reruns: resume from here)
    run_dir: Path  # the run's folder (results, logs)
    inputs: dict[str, StageResult] = field(default_factory=dict)
    logger: Any = None  # experiment logger facade (spae.logging_utils.RunLogger) or None

    def input_dir(self, name: str) -> Path:
        return self.inputs[name].dir


STAGES: Registry[StageSpec] = Registry("stage")


def stage(name: str, deps: tuple[str, ...] = (), config_keys: tuple[str, ...] = (), version: int = 1,
          distributed: bool = False, report_deps: tuple[str, ...] = (), derived: Callable[[dict], dict] | None = None):
    """Decorator that registers a stage function."""

    def decorator(fn: Callable[[StageContext], dict]) -> Callable[[StageContext], dict]:
        STAGES.register(name)(StageSpec(name, fn, tuple(deps), tuple(config_keys), version, distributed,
                                        tuple(report_deps), derived))
        return fn

    return decorator


def select(cfg: dict, dotted: str) -> Any:
    """Value at a dotted path of a nested dict, None where any part is missing."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def resolve_order(targets: list[str]) -> list[str]:
    """Topological order of the targets and all their transitive dependencies."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"stage dependency cycle through {name!r}")
        visiting.add(name)
        for dep in STAGES.get(name).inputs:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for target in targets:
        visit(target)
    return order


def stage_identity(spec: StageSpec, cfg: dict) -> dict:
    """The config values a stage's output depends on: its declared paths, plus its derived values if any, as
    keys see them (experiments.config_identity: defaults and nulls left out)."""
    identity: dict[str, Any] = {"config": key_values(cfg, spec.config_keys)}
    if spec.derived is not None:  # only then: the keys of stages without derived values stay as they were
        identity["derived"] = reduced_untyped(spec.derived(cfg))
    return identity


def stage_key(spec: StageSpec, cfg: dict, dep_keys: dict[str, str]) -> str:
    identity = {
        "stage": spec.name,
        "version": spec.version,
        **stage_identity(spec, cfg),
        "deps": {d: dep_keys[d] for d in spec.deps},
    }
    return stable_hash(identity, length=16)


def stage_dir(cache_dir: Path, name: str, key: str) -> Path:
    return Path(cache_dir) / "stages" / name / key


def run_stages(
    targets: list[str],
    cfg: dict,
    cache_dir: Path,
    run_dir: Path,
    logger: Any = None,
    force: tuple[str, ...] = (),
) -> dict[str, StageResult]:
    """Run (or reuse) the targets and their dependencies in order. Returns results by stage name."""
    results: dict[str, StageResult] = {}
    keys: dict[str, str] = {}
    for name in resolve_order(targets):
        spec = STAGES.get(name)
        key = stage_key(spec, cfg, keys)
        keys[name] = key
        out_dir = stage_dir(cache_dir, name, key)
        results[name] = _run_one(spec, key, out_dir, cfg, run_dir, results, logger, name in force)
    return results


def worker_rank() -> int:
    """This process's global rank when it is a DDP worker (> 0), else 0. Lightning's launcher re-runs the
    command for local ranks > 0 with LOCAL_RANK set; torchrun sets RANK; SLURM (one task per GPU) SLURM_PROCID."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _started_by_lightning() -> bool:
    """Lightning's launcher starts ranks > 0 when rank 0 reaches Trainer.fit (they re-run the same command)."""
    return "RANK" not in os.environ and "SLURM_PROCID" not in os.environ


def _run_as_worker(spec, key, out_dir, cfg, run_dir, results, logger) -> StageResult | None:
    """A DDP worker (rank > 0) exists to take part in rank 0's training; rank 0 owns the cache and the outputs.

    It never waits on a lock rank 0 may hold while waiting for this very process to join its training (a
    deadlock otherwise): finished stages are reused; a distributed stage is run alongside rank 0 (which alone
    writes outputs and marker), then the worker exits; a Lightning-launched worker also enters the unfinished
    stage that rank 0 is in (it nests the training, e.g. fewshot_eval). Returns None to take the normal path
    (ranks started together by torchrun/SLURM share the upstream stages through the lock like any process)."""
    marker = out_dir / SUCCESS
    if marker.exists():
        return StageResult(spec.name, key, out_dir, read_json(marker)["summary"], True, 0.0)
    if not spec.distributed and not _started_by_lightning():
        return None
    ctx = StageContext(cfg=cfg, out_dir=out_dir, run_dir=run_dir, inputs={d: results[d] for d in spec.inputs},
                       logger=None)
    start = time.perf_counter()
    summary = spec.fn(ctx) or {}
    if spec.distributed:
        log.info("rank %d took part in stage %s; rank 0 writes its outputs and runs the rest", worker_rank(), spec.name)
        raise SystemExit(0)
    return StageResult(spec.name, key, out_dir, summary, False, time.perf_counter() - start)


def _leave_process_group() -> None:
    """After a DDP training the workers have exited and later stages run in this one process; torchmetrics and
    others would otherwise try to synchronise with the exited ranks. The next training opens a new group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run_one(spec, key, out_dir, cfg, run_dir, results, logger, force) -> StageResult:
    marker = out_dir / SUCCESS
    if worker_rank() > 0:
        done = _run_as_worker(spec, key, out_dir, cfg, run_dir, results, logger)
        if done is not None:
            return done
    with file_lock(out_dir.parent / f"{key}.lock"):  # concurrent runs share, never clash
        if marker.exists() and not force:
            done = read_json(marker)
            log.info("stage %-12s reused  %s", spec.name, out_dir)
            return StageResult(spec.name, key, out_dir, done["summary"], True, 0.0)
        if force and marker.exists():
            marker.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("stage %-12s running -> %s", spec.name, out_dir)
        ctx = StageContext(cfg=cfg, out_dir=out_dir, run_dir=run_dir,
                           inputs={d: results[d] for d in spec.inputs}, logger=logger)
        start = time.perf_counter()
        summary = spec.fn(ctx) or {}
        seconds = time.perf_counter() - start
        if spec.distributed:
            _leave_process_group()
        identity = stage_identity(spec, cfg)
        write_json_atomic(marker, {"stage": spec.name, "key": key, "seconds": seconds, **identity,
                                   "summary": summary})
        log.info("stage %-12s done in %.1fs", spec.name, seconds)
        return StageResult(spec.name, key, out_dir, summary, False, seconds)

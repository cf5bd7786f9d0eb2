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

A stage may also need other stages once per item of the config (`instances`, e.g. an evaluation stage needs
`train` once per compared method): each StageNeed names a registered stage, a label and the config variant
it runs under (top-level keys replaced, e.g. `method` by `bench.methods.<label>`). The planner (plan_stages)
expands them into nodes `train[spae]`, `frozen_train[frozen]` that run before the stage that needs them, with
the key and cache folder (`stages/train/<key>`) a run of `train` under the variant config has. An instance's
own dependencies are planned under the variant too: one whose key equals the plain node's IS that node (one
`clip`, one `codebook`), one whose key differs becomes its own node (`clip[spae]`). Results, forcing
(`force=[train]` forces every `train[...]`, `force=[train[lqae]]` that one) and reuse are per node.
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
class StageNeed:
    """One instance of a registered stage that another stage needs: the node `stage[label]`, run under the
    config with the top-level keys of `variant` replaced (e.g. {"method": bench.methods.<label>})."""
    stage: str
    label: str
    variant: dict = field(default_factory=dict)

    @property
    def node(self) -> str:
        return instance_name(self.stage, self.label)


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
    # cfg -> the stage instances it reads (e.g. each compared method's trained model); their keys join its key
    instances: Callable[[dict], list[StageNeed]] | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.deps + tuple(d for d in self.report_deps if d not in self.deps)


@dataclass
class StageResult:
    name: str  # the registered stage (its cache folder: stages/<name>/<key>)
    key: str
    dir: Path
    summary: dict
    cached: bool
    seconds: float


@dataclass
class StageContext:
    cfg: dict  # the full resolved config (an instance's: its variant), plain containers
    out_dir: Path  # this stage's cache folder (stable across reruns: resume from here)
    run_dir: Path  # the run's folder (results, logs)
    inputs: dict[str, StageResult] = field(default_factory=dict)  # by dependency name and instance node name
    logger: Any = None  # experiment logger facade (spae.logging_utils.RunLogger) or None

    def input_dir(self, name: str) -> Path:
        return self.inputs[name].dir

    def instance(self, stage: str, label: str) -> StageResult:
        """The result of an instance this stage declared (e.g. ctx.instance("train", "spae"))."""
        name = instance_name(stage, label)
        if name not in self.inputs:
            raise KeyError(f"{name} is not among this stage's inputs ({', '.join(self.inputs) or 'none'}); "
                           "declare it with the stage's `instances`")
        return self.inputs[name]


STAGES: Registry[StageSpec] = Registry("stage")


def stage(name: str, deps: tuple[str, ...] = (), config_keys: tuple[str, ...] = (), version: int = 1,
          distributed: bool = False, report_deps: tuple[str, ...] = (), derived: Callable[[dict], dict] | None = None,
          instances: Callable[[dict], list[StageNeed]] | None = None):
    """Decorator that registers a stage function."""

    def decorator(fn: Callable[[StageContext], dict]) -> Callable[[StageContext], dict]:
        STAGES.register(name)(StageSpec(name, fn, tuple(deps), tuple(config_keys), version, distributed,
                                        tuple(report_deps), derived, instances))
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


def instance_name(stage_name: str, label: str) -> str:
    return f"{stage_name}[{label}]"


def stage_identity(spec: StageSpec, cfg: dict) -> dict:
    """The config values a stage's output depends on: its declared paths, plus its derived values if any, as
    keys see them (experiments.config_identity: defaults and nulls left out)."""
    identity: dict[str, Any] = {"config": key_values(cfg, spec.config_keys)}
    if spec.derived is not None:  # only then: the keys of stages without derived values stay as they were
        identity["derived"] = reduced_untyped(spec.derived(cfg))
    return identity


def stage_key(spec: StageSpec, cfg: dict, dep_keys: dict[str, str], instance_keys: dict[str, str] | None = None,
              substitute: str | None = None) -> str:
    """Hash of the stage's identity and its dependencies' keys (`dep_keys` by stage name), plus the keys of the
    instances it reads (by node name) and the name of a test substitute: each only when there is one, so the
    keys of other stages stay as they were."""
    identity = {
        "stage": spec.name,
        "version": spec.version,
        **stage_identity(spec, cfg),
        "deps": {d: dep_keys[d] for d in spec.deps},
    }
    identity["deps"].update(instance_keys or {})
    if substitute is not None:  # a test's stand-in never shares a folder with the real stage
        identity["substitute"] = substitute
    return stable_hash(identity, length=16)


def stage_dir(cache_dir: Path, name: str, key: str) -> Path:
    return Path(cache_dir) / "stages" / name / key


@dataclass
class Node:
    """One stage to run (or reuse) under one config: a plain stage (`train`) or an instance (`train[spae]`)."""
    name: str
    spec: StageSpec
    cfg: dict
    key: str
    inputs: dict[str, str]  # what ctx.inputs calls it (dependency or instance) -> node name
    fn: Callable[[StageContext], dict]


class _Planner:
    """Builds the nodes of a run: plain stages under the run's config, instances under their variants."""

    def __init__(self, cfg: dict, substitutes: dict[str, Callable] | None):
        self.cfg = cfg
        self.substitutes = dict(substitutes or {})
        self.nodes: dict[str, Node] = {}
        self.visiting: list[str] = []

    def plain(self, name: str) -> Node:
        if name not in self.nodes:
            self.nodes[name] = self.build(name, self.cfg, None)
        return self.nodes[name]

    def instance(self, need: StageNeed, cfg: dict) -> str:
        node = self.build(need.stage, {**cfg, **need.variant}, need.label)
        known = self.nodes.setdefault(node.name, node)
        if known.key != node.key:
            raise ValueError(f"two stages need {node.name} under different configs; give them different labels")
        return node.name

    def dependency(self, name: str, cfg: dict, label: str | None) -> str:
        """Within an instance, a dependency planned under the variant is the plain node where the keys agree."""
        if label is None:
            return self.plain(name).name
        node = self.build(name, cfg, label)
        if node.key == self.plain(name).key:
            return name
        return self.nodes.setdefault(node.name, node).name

    def build(self, stage_name: str, cfg: dict, label: str | None) -> Node:
        name = stage_name if label is None else instance_name(stage_name, label)
        if name in self.visiting:
            raise ValueError(f"stage dependency cycle: {' -> '.join([*self.visiting, name])}")
        self.visiting.append(name)
        spec = STAGES.get(stage_name)
        inputs = {d: self.dependency(d, cfg, label) for d in spec.inputs}
        needs = spec.instances(cfg) if spec.instances is not None else []
        inputs.update({need.node: self.instance(need, cfg) for need in needs})
        self.visiting.pop()
        fn = self.substitutes.get(name) or self.substitutes.get(stage_name)
        key = stage_key(spec, cfg, {d: self.nodes[inputs[d]].key for d in spec.deps},
                        {n: self.nodes[n].key for n in (need.node for need in needs)},
                        substitute=None if fn is None else f"{fn.__module__}.{fn.__qualname__}")
        return Node(name, spec, cfg, key, inputs, fn or spec.fn)


def plan_stages(targets: list[str], cfg: dict, substitutes: dict[str, Callable] | None = None) -> list[Node]:
    """Every node the targets need, dependencies (and instances) first. `substitutes` (tests): node or stage
    name -> a function run instead of the registered one (its key differs, so no real folder is ever reused)."""
    planner = _Planner(cfg, substitutes)
    order: dict[str, Node] = {}  # the planner refused cycles: a plain depth-first walk

    def visit(name: str) -> None:
        if name not in order:
            for dep in planner.nodes[name].inputs.values():
                visit(dep)
            order[name] = planner.nodes[name]

    for target in targets:
        visit(planner.plain(target).name)
    return list(order.values())


def run_stages(
    targets: list[str],
    cfg: dict,
    cache_dir: Path,
    run_dir: Path,
    logger: Any = None,
    force: tuple[str, ...] = (),
    substitutes: dict[str, Callable] | None = None,
) -> dict[str, StageResult]:
    """Run (or reuse) the targets and everything they need, in order. Returns results by node name (`train`,
    `train[spae]`). `force` names stages (every node of the stage) or nodes; `substitutes`: see plan_stages."""
    results: dict[str, StageResult] = {}
    nodes = plan_stages(targets, cfg, substitutes)
    for i, node in enumerate(nodes):
        out_dir = stage_dir(cache_dir, node.spec.name, node.key)
        same = next((r for r in results.values() if r.dir == out_dir), None)
        if same is not None:  # e.g. `train` and `train[spae]` of one config: one folder, run once
            results[node.name] = StageResult(same.name, same.key, same.dir, same.summary, True, 0.0)
            continue
        forced = node.name in force or node.spec.name in force
        trainings_follow = any(n.spec.distributed for n in nodes[i + 1:])
        results[node.name] = _run_one(node, out_dir, run_dir, results, logger, forced, trainings_follow)
    return results


def worker_rank() -> int:
    """This process's global rank when it is a DDP worker (> 0), else 0. Lightning's launcher re-runs the
    command for local ranks > 0 with LOCAL_RANK set; torchrun sets RANK; SLURM (one task per GPU) SLURM_PROCID."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _context(node: Node, out_dir: Path, run_dir: Path, results: dict[str, StageResult], logger) -> StageContext:
    return StageContext(cfg=node.cfg, out_dir=out_dir, run_dir=run_dir,
                        inputs={name: results[n] for name, n in node.inputs.items()}, logger=logger)


def _keeps_ranks(trainings_follow: bool) -> bool:
    """True when this run's ranks stay together for a next distributed stage: torchrun/SLURM ranks with a
    training still to come. They keep the process group too (Lightning reuses an initialised one): a fresh
    rendezvous on the same port after destroying the group hung or reset connections in tests here."""
    return trainings_follow and not _relaunched_at_each_fit()


def _relaunched_at_each_fit() -> bool:
    """Lightning's own launcher starts ranks > 0 anew at each Trainer.fit (they re-run the same command, with
    LOCAL_RANK only); torchrun (RANK) and SLURM (SLURM_PROCID) start every rank once, for the whole run."""
    return "RANK" not in os.environ and "SLURM_PROCID" not in os.environ


def _run_as_worker(node: Node, out_dir: Path, run_dir: Path, results: dict[str, StageResult],
                   trainings_follow: bool = False) -> StageResult | None:
    """A DDP worker (rank > 0) exists to take part in rank 0's trainings; rank 0 owns the cache and the outputs.

    No stage runs another, so rank 0 holds at most the lock of the distributed stage it trains in, which this
    worker must join, never wait for: finished stages are reused without the lock; a distributed stage is run
    alongside rank 0 (which alone writes outputs and marker). Lightning starts workers anew at each
    Trainer.fit (e.g. `train[spae]`, then `train[lqae]`): each re-runs the command, plans the same nodes, reuses
    those rank 0 finished, joins the one it trains and exits. A rank that torchrun or SLURM started once for the
    whole run instead stays for the next distributed stage while one follows (`trainings_follow`), and exits
    after the last: rank 0 would otherwise wait in its next training for a worker that had left. Returns None
    for an unfinished stage that is not distributed: the normal path (ranks started together share such stages
    through the lock like any process)."""
    marker = out_dir / SUCCESS
    if marker.exists():
        return StageResult(node.spec.name, node.key, out_dir, read_json(marker)["summary"], True, 0.0)
    if not node.spec.distributed:
        return None
    start = time.perf_counter()
    node.fn(_context(node, out_dir, run_dir, results, None))
    if _keeps_ranks(trainings_follow):  # the next training reuses this process group (see _keeps_ranks)
        log.info("rank %d took part in stage %s; it stays for the next training", worker_rank(), node.name)
        return StageResult(node.spec.name, node.key, out_dir, {}, False, time.perf_counter() - start)
    log.info("rank %d took part in stage %s; rank 0 writes its outputs and runs the rest", worker_rank(), node.name)
    raise SystemExit(0)


def _leave_process_group() -> None:
    """After a DDP training the workers have exited and later stages run in this one process; torchmetrics and
    others would otherwise try to synchronise with the exited ranks. The next training opens a new group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run_one(node: Node, out_dir: Path, run_dir: Path, results: dict[str, StageResult], logger,
             force: bool, trainings_follow: bool = False) -> StageResult:
    spec, key, marker = node.spec, node.key, out_dir / SUCCESS
    if worker_rank() > 0:
        done = _run_as_worker(node, out_dir, run_dir, results, trainings_follow)
        if done is not None:
            return done
    with file_lock(out_dir.parent / f"{key}.lock"):  # concurrent runs share, never clash
        if marker.exists() and not force:
            log.info("stage %-12s reused  %s", node.name, out_dir)
            return StageResult(spec.name, key, out_dir, read_json(marker)["summary"], True, 0.0)
        if force and marker.exists():
            marker.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("stage %-12s running -> %s", node.name, out_dir)
        start = time.perf_counter()
        summary = node.fn(_context(node, out_dir, run_dir, results, logger)) or {}
        seconds = time.perf_counter() - start
        if spec.distributed and not _keeps_ranks(trainings_follow):
            _leave_process_group()
        identity = stage_identity(spec, node.cfg)
        write_json_atomic(marker, {"stage": spec.name, "node": node.name, "key": key, "seconds": seconds,
                                   **identity, "summary": summary})
        log.info("stage %-12s done in %.1fs", node.name, seconds)
        return StageResult(spec.name, key, out_dir, summary, False, seconds)

"""The stage pipeline in a DDP worker process (rank > 0): it never waits on a stage lock that rank 0 may hold
while waiting for this very worker to join its training (the deadlock `trainer=ddp` hit), takes part in
distributed stages without writing their outputs, then exits; rank 0 owns the cache. No stage runs another:
the models an evaluation compares are DAG nodes (`model[a]`, `model[b]`), and Lightning starts the workers
anew for each training, each replanning the run, reusing what rank 0 finished and joining the next training."""
from __future__ import annotations

import fcntl
import threading

import pytest

from experiments.pipeline import SUCCESS, STAGES, StageNeed, run_stages, stage, worker_rank

CALLS: list[str] = []


def _register():
    if "ddp_probe_train" in STAGES:
        return

    @stage("ddp_probe_train", config_keys=("k",), distributed=True)
    def _train(ctx):
        CALLS.append("train")
        return {"trained": True}

    @stage("ddp_probe_eval", deps=("ddp_probe_train",), config_keys=("k",))
    def _eval(ctx):
        CALLS.append("eval")
        return {"metrics": {"ok": 1}}

    @stage("ddp_probe_upstream", config_keys=("k",))
    def _upstream(ctx):
        CALLS.append("upstream")
        return {}

    @stage("ddp_probe_model", deps=("ddp_probe_upstream",), config_keys=("k", "method"), distributed=True)
    def _model(ctx):
        CALLS.append(f"model:{ctx.cfg['method']}")
        return {}

    @stage("ddp_probe_compare", deps=("ddp_probe_upstream",), config_keys=("k", "compare"),
           instances=lambda cfg: [StageNeed("ddp_probe_model", m, {"method": m}) for m in cfg["compare"]])
    def _compare(ctx):
        CALLS.append("compare")
        return {}


@pytest.fixture
def probes(monkeypatch, tmp_path):
    _register()
    CALLS.clear()
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    return {"k": str(tmp_path)}, tmp_path / "cache"


def run_in_thread(fn, timeout: float = 20.0):
    """Run fn; fail (instead of hanging the suite) if it blocks."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001  (SystemExit included)
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the worker blocked (waited on a lock held by rank 0)"
    return outcome


def test_worker_rank_from_the_launchers(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    assert worker_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's launcher
    assert worker_rank() == 1
    monkeypatch.setenv("SLURM_PROCID", "5")  # SLURM task: the global rank wins over the local one
    assert worker_rank() == 5
    monkeypatch.setenv("RANK", "0")  # torchrun
    assert worker_rank() == 0


def test_lightning_worker_joins_the_training_rank0_holds_the_lock_of(probes, monkeypatch, tmp_path):
    cfg, cache = probes
    # rank 0 is inside the training stage, holding its lock, waiting for this worker to join
    from experiments.pipeline import plan_stages, stage_dir, stage_key

    key = stage_key(STAGES.get("ddp_probe_train"), cfg, {})
    lock_path = stage_dir(cache, "ddp_probe_train", key).parent / f"{key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        monkeypatch.setenv("LOCAL_RANK", "1")
        outcome = run_in_thread(lambda: run_stages(["ddp_probe_eval"], cfg, cache, tmp_path / "run"))
    assert isinstance(outcome.get("error"), SystemExit) and outcome["error"].code == 0
    assert CALLS == ["train"], "the worker trains along and exits before any evaluation"
    assert not (stage_dir(cache, "ddp_probe_train", key) / SUCCESS).exists(), "rank 0 alone marks the stage"
    assert [node.name for node in plan_stages(["ddp_probe_eval"], cfg)] == ["ddp_probe_train", "ddp_probe_eval"]


def test_worker_reuses_finished_stages_without_the_lock(probes, monkeypatch, tmp_path):
    cfg, cache = probes
    run_stages(["ddp_probe_upstream"], cfg, cache, tmp_path / "run")  # rank 0 finished it earlier
    CALLS.clear()
    from experiments.pipeline import stage_dir, stage_key

    key = stage_key(STAGES.get("ddp_probe_upstream"), cfg, {})
    with open(stage_dir(cache, "ddp_probe_upstream", key).parent / f"{key}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        monkeypatch.setenv("LOCAL_RANK", "1")
        outcome = run_in_thread(lambda: run_stages(["ddp_probe_upstream"], cfg, cache, tmp_path / "run"))
    assert outcome["value"]["ddp_probe_upstream"].cached and CALLS == []


def test_ranks_started_together_share_upstream_stages_through_the_lock(probes, monkeypatch, tmp_path):
    """torchrun / SLURM ranks start at once: a worker that gets the lock first computes and marks an upstream
    stage like any process, and rank 0 then reuses it."""
    cfg, cache = probes
    monkeypatch.setenv("RANK", "1")
    results = run_stages(["ddp_probe_upstream"], cfg, cache, tmp_path / "run")
    assert CALLS == ["upstream"] and (results["ddp_probe_upstream"].dir / SUCCESS).exists()
    monkeypatch.delenv("RANK")
    assert run_stages(["ddp_probe_upstream"], cfg, cache, tmp_path / "run")["ddp_probe_upstream"].cached


def test_rank0_is_unchanged(probes, tmp_path):
    cfg, cache = probes
    results = run_stages(["ddp_probe_eval"], cfg, cache, tmp_path / "run")
    assert CALLS == ["train", "eval"] and all((r.dir / SUCCESS).exists() for r in results.values())


def test_rank0_leaves_the_process_group_after_a_distributed_stage(probes, tmp_path):
    """Evaluation after a DDP training runs in rank 0 alone: no collective may wait for the exited workers."""
    import torch.distributed as dist

    cfg, cache = probes
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        run_stages(["ddp_probe_train"], cfg, cache, tmp_path / "run")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_relaunched_worker_reuses_the_finished_training_and_joins_the_next(probes, monkeypatch, tmp_path):
    """Lightning launches the workers again at rank 0's second Trainer.fit (`model[b]`, after `model[a]`): the
    worker replans the same nodes, reuses everything rank 0 finished, trains `model[b]` along and exits before
    the evaluation."""
    cfg, cache = probes
    run_stages(["ddp_probe_compare"], {**cfg, "compare": ["a"]}, cache, tmp_path / "run")  # rank 0: model[a] done
    CALLS.clear()
    monkeypatch.setenv("LOCAL_RANK", "1")
    outcome = run_in_thread(lambda: run_stages(["ddp_probe_compare"], {**cfg, "compare": ["a", "b"]}, cache,
                                               tmp_path / "run"))
    assert isinstance(outcome.get("error"), SystemExit) and outcome["error"].code == 0
    assert CALLS == ["model:b"], "finished stages reused, the next training joined, no evaluation"
    assert len(list(cache.glob(f"stages/ddp_probe_model/*/{SUCCESS}"))) == 1, "rank 0 alone marks model[b]"


@pytest.mark.parametrize("launcher, env, joined", [
    ("torchrun", {"RANK": "1", "LOCAL_RANK": "1"}, ["model:a", "model:b"]),
    ("slurm", {"SLURM_PROCID": "1"}, ["model:a", "model:b"]),
    ("lightning", {"LOCAL_RANK": "1"}, ["model:a"]),
])
def test_a_worker_started_once_stays_for_every_training(probes, monkeypatch, tmp_path, launcher, env, joined):
    """torchrun and SLURM start each rank once for the whole run: a worker joins `model[a]`, then stays for
    `model[b]` (rank 0's second training would otherwise wait for it forever) and exits before the evaluation.
    Lightning's launcher starts workers anew at each fit, so its worker leaves after the training it joined."""
    cfg, cache = probes
    run_stages(["ddp_probe_upstream"], cfg, cache, tmp_path / "run")  # rank 0 finished the upstream stage
    CALLS.clear()
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    outcome = run_in_thread(lambda: run_stages(["ddp_probe_compare"], {**cfg, "compare": ["a", "b"]}, cache,
                                               tmp_path / "run"))
    assert isinstance(outcome.get("error"), SystemExit) and outcome["error"].code == 0, launcher
    assert CALLS == joined, launcher
    assert not list(cache.glob(f"stages/ddp_probe_model/*/{SUCCESS}")), "rank 0 alone marks the trainings"

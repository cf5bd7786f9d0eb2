"""The stage DAG: ordering, config-derived keys, reuse, and downstream-only recomputation."""
from __future__ import annotations

import pytest

from experiments.pipeline import STAGES, plan_stages, run_stages, stage

CALLS: dict[str, int] = {}


def _counting(name):
    def fn(ctx):
        CALLS[name] = CALLS.get(name, 0) + 1
        (ctx.out_dir / "artefact.txt").write_text(f"{name}:{ctx.cfg}")
        upstream = {d: r.summary["value"] for d, r in ctx.inputs.items()}
        return {"value": sum(upstream.values()) + ctx.cfg.get(name, {}).get("knob", 0)}
    return fn


for _name, _deps in (("_t_up", ()), ("_t_mid", ("_t_up",)), ("_t_down", ("_t_mid",))):
    if _name not in STAGES:
        stage(_name, deps=_deps, config_keys=(_name,))(_counting(_name))


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()


def _run(tmp_path, cfg, force=()):
    return run_stages(["_t_down"], cfg, tmp_path / "cache", tmp_path / "run", force=force)


def test_order_includes_transitive_dependencies():
    assert [node.name for node in plan_stages(["_t_down"], {})] == ["_t_up", "_t_mid", "_t_down"]


def test_identical_rerun_reuses_every_stage(tmp_path):
    cfg = {"_t_up": {"knob": 1}, "_t_mid": {"knob": 2}, "_t_down": {"knob": 3}}
    first = _run(tmp_path, cfg)
    second = _run(tmp_path, cfg)
    assert CALLS == {"_t_up": 1, "_t_mid": 1, "_t_down": 1}
    assert all(r.cached for r in second.values())
    assert second["_t_down"].summary == first["_t_down"].summary == {"value": 6}


def test_downstream_knob_recomputes_only_downstream(tmp_path):
    _run(tmp_path, {"_t_up": {"knob": 1}, "_t_down": {"knob": 3}})
    results = _run(tmp_path, {"_t_up": {"knob": 1}, "_t_down": {"knob": 10}})
    assert CALLS == {"_t_up": 1, "_t_mid": 1, "_t_down": 2}
    assert results["_t_up"].cached and results["_t_mid"].cached and not results["_t_down"].cached
    assert results["_t_down"].summary["value"] == 11


def test_upstream_knob_recomputes_everything_downstream(tmp_path):
    _run(tmp_path, {"_t_up": {"knob": 1}})
    results = _run(tmp_path, {"_t_up": {"knob": 5}})
    assert CALLS == {"_t_up": 2, "_t_mid": 2, "_t_down": 2}
    assert results["_t_down"].summary["value"] == 5


def test_unrelated_config_does_not_change_keys(tmp_path):
    _run(tmp_path, {"_t_up": {"knob": 1}})
    _run(tmp_path, {"_t_up": {"knob": 1}, "logger": {"kind": "csv"}})
    assert CALLS == {"_t_up": 1, "_t_mid": 1, "_t_down": 1}


def test_interrupted_stage_is_not_read_as_complete(tmp_path):
    cfg = {"_t_up": {"knob": 1}}
    spec = STAGES.get("_t_mid")
    original = spec.fn

    def crash(ctx):
        (ctx.out_dir / "partial.bin").write_text("half")
        raise KeyboardInterrupt

    object.__setattr__(spec, "fn", crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, cfg)
    finally:
        object.__setattr__(spec, "fn", original)
    results = _run(tmp_path, cfg)
    assert results["_t_up"].cached and not results["_t_mid"].cached
    # the rerun resumed in the same stable folder, where the interrupted attempt left its files
    assert (results["_t_mid"].dir / "partial.bin").exists()


def test_force_recomputes_a_cached_stage(tmp_path):
    cfg = {"_t_up": {"knob": 1}}
    _run(tmp_path, cfg)
    _run(tmp_path, cfg, force=("_t_mid",))
    assert CALLS == {"_t_up": 1, "_t_mid": 2, "_t_down": 1}

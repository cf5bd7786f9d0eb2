"""Ablation sweep presets (conf/sweep): they compose, every cell of the full grid varies one knob from the
default, the axis presets and the full grid agree, recon and few-shot read the same tokenizer, and a rerun
of a partly finished sweep skips its finished cells."""
from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from experiments.report import KNOBS
from tests.conftest import CONF_DIR, REPO, compose

SWEEPS = CONF_DIR / "sweep"
AXES = {"quantizer": "method.quantizer", "pyramid": "model.layers", "semantic_loss": "method.semantic_loss",
        "semantic_weight": "method.semantic.weight", "semantic_thresholds": "method.semantic.thresholds",
        "codebook": "codebook", "tokens": "bench.llm_layers"}


def resolved(overrides: list[str]) -> dict:
    return copy.deepcopy(_resolved(tuple(overrides)))


@functools.lru_cache(maxsize=None)
def _resolved(overrides: tuple[str, ...]) -> dict:  # composing takes ~0.5 s: each config once per session
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)


def knob_values(cfg: dict) -> dict:
    from experiments.report import select

    return {path: select(cfg, path) for path in KNOBS}


def sweep_params(preset: str) -> dict[str, list]:
    """The preset's hydra.sweeper.params, each expanded by Hydra's own override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = yaml.safe_load((SWEEPS / f"{preset}.yaml").read_text())["hydra"]["sweeper"]["params"]
    parser = OverridesParser.create()
    out = {}
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        out[key] = list(override.sweep_string_iterator())
    return out


def full_cells() -> list[str]:
    return sweep_params("full")["sweep/cell"]


def test_every_preset_composes_with_the_ablation_bench():
    presets = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
    assert set(AXES) | {"full", "reduced"} <= set(presets)
    for preset in presets:
        cfg = resolved([f"+sweep={preset}"])
        assert cfg["bench"]["name"] == "ablation" and cfg["bench"]["stages"] == ["recon_eval", "fewshot_eval"]
        assert cfg["logger"]["group"] == f"ablation-{preset}"
        assert cfg["logger"]["knobs"], preset


def test_full_grid_cells_each_vary_one_knob_from_the_default():
    base = knob_values(resolved(["+sweep=full"]))
    assert base == knob_values(resolved(["+sweep=full", "sweep/cell=baseline"]))
    varied: dict[str, set] = {}
    for cell in full_cells():
        if cell == "baseline":
            continue
        values = knob_values(resolved(["+sweep=full", f"sweep/cell={cell}"]))
        diff = [k for k in KNOBS if values[k] != base[k]]
        assert len(diff) == 1, f"cell {cell} changes {diff} (one knob per cell)"
        varied.setdefault(diff[0], set()).add(json.dumps(values[diff[0]]))
    # each axis of the paper's ablations is covered by the full grid
    assert set(varied) == {"method.quantizer", "model.layers", "method.semantic_loss", "method.semantic.weight",
                           "method.semantic.thresholds", "codebook.name", "bench.llm_layers"}


@pytest.mark.parametrize("axis", sorted(AXES))
def test_axis_presets_and_full_grid_agree(axis):
    """Each value an axis preset sweeps is the default or a cell of the full grid (no drift between them)."""
    knob = AXES[axis] if AXES[axis] != "codebook" else "codebook.name"
    (key, values), = sweep_params(axis).items()
    assert key == AXES[axis]
    from_axis = {json.dumps(knob_values(resolved([f"+sweep={axis}", f"{key}={v}"]))[knob]) for v in values}
    from_full = {json.dumps(knob_values(resolved(["+sweep=full", f"sweep/cell={c}"]))[knob]) for c in full_cells()}
    assert len(from_axis) == len(values) >= 2
    assert from_axis <= from_full, f"{axis}: {from_axis - from_full} not in the full grid"


def test_recon_and_fewshot_read_the_same_tokenizer():
    """bench.methods.spae is the swept method itself, so both evaluations share one train stage key."""
    import experiments.stages  # noqa: F401  (registers the stages)
    from experiments.pipeline import STAGES, stage_key

    cfg = resolved(["+sweep=quantizer", "method.quantizer=rq", "model.layers=[1,2,4]"])
    assert cfg["bench"]["methods"]["spae"] == cfg["method"]
    assert cfg["bench"]["compare"] == [{"method": "spae", "layers": 2}]
    spec = STAGES.get("train")
    deps = {"pretrain_data": "d", "codebook": "c", "clip": "k"}
    nested = {**cfg, "method": cfg["bench"]["methods"]["spae"]}  # what fewshot_eval trains
    assert stage_key(spec, cfg, deps) == stage_key(spec, nested, deps)


def test_tokens_cells_reuse_one_tokenizer_and_its_reconstruction():
    import experiments.stages  # noqa: F401
    from experiments.pipeline import STAGES, stage_key

    deps = {"pretrain_data": "d", "codebook": "c", "clip": "k"}
    cfgs = [resolved(["+sweep=tokens", f"bench.llm_layers={v}"]) for v in ("2", "3", "null")]
    assert [c["bench"]["compare"][0]["layers"] for c in cfgs] == [2, 3, None]
    train = {stage_key(STAGES.get("train"), c, deps) for c in cfgs}
    recon = {stage_key(STAGES.get("recon_eval"), c, {**deps, "train": "t", "eval_data": "e"}) for c in cfgs}
    fewshot = {stage_key(STAGES.get("fewshot_eval"), c, {**deps, "eval_data": "e"}) for c in cfgs}
    assert len(train) == 1 and len(recon) == 1 and len(fewshot) == 3


# ------------------------------------------------------------------------------------------ rerun
CALLS: list[str] = []


def _register_probe():
    """A cheap stage keyed by the swept knob, standing in for the cell's train + evaluation stages."""
    from experiments.pipeline import STAGES, stage

    if "ablation_probe" in STAGES:
        return

    @stage("ablation_probe", config_keys=("method.quantizer", "seed"))
    def probe(ctx):
        quantizer = ctx.cfg["method"]["quantizer"]
        CALLS.append(quantizer)
        if os.environ.get("H7_FAIL_ON") == quantizer:  # an interrupted cell
            raise RuntimeError(f"interrupted while running {quantizer}")
        (ctx.out_dir / "artefact.txt").write_text(quantizer)
        return {"metrics": {"quantizer": quantizer}}


def test_rerun_of_a_partly_finished_sweep_skips_finished_cells(tmp_dirs, monkeypatch):
    """The sweep's cells run through experiments.run.execute (what each Hydra job calls); the stage cache
    makes a rerun reuse the cells that finished and compute the rest."""
    from experiments.run import execute

    _register_probe()
    cells = sweep_params("quantizer")["method.quantizer"]
    assert cells == ["vq", "rq", "saq"]

    def run_sweep() -> dict[str, dict]:
        out = {}
        for q in cells:
            cfg = compose(["+sweep=quantizer", f"method.quantizer={q}", "bench.stages=[ablation_probe]",
                           "logger=none", *tmp_dirs])
            try:
                out[q] = json.loads(execute(cfg).read_text())
            except RuntimeError:
                out[q] = None
        return out

    CALLS.clear()
    monkeypatch.setenv("H7_FAIL_ON", "rq")
    first = run_sweep()
    assert CALLS == ["vq", "rq", "saq"] and first["rq"] is None and first["vq"]["stages_reused"] == []
    monkeypatch.delenv("H7_FAIL_ON")
    CALLS.clear()
    second = run_sweep()
    assert CALLS == ["rq"], "finished cells must not be recomputed"
    assert second["vq"]["stages_reused"] == ["ablation_probe"] and second["saq"]["stages_reused"] == ["ablation_probe"]
    assert second["rq"]["stages_reused"] == [] and second["rq"]["metrics"]["ablation_probe"] == {"quantizer": "rq"}
    assert len({second[q]["run_id"] for q in cells}) == 3


def test_multirun_cli_expands_a_preset_into_one_run_per_cell(tmp_path):
    """The real Hydra sweeper: one run folder per value, with the knob set and the W&B group named."""
    env = {**os.environ, "SPAE_CACHE_DIR": str(tmp_path / "cache"), "SPAE_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "-m", "+sweep=quantizer", "bench.stages=[]",
                           "logger=none"], cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "ablation").glob("*/results.json")]
    assert sorted(r["config"]["method"]["quantizer"] for r in results) == ["rq", "saq", "vq"]
    assert {r["config"]["logger"]["group"] for r in results} == {"ablation-quantizer"}


def test_wandb_config_columns_name_the_swept_knobs():
    from spae.logging_utils import knob_columns

    cfg = resolved(["+sweep=pyramid", "model.layers=[1,2,4]"])
    assert knob_columns(cfg) == {"ablation/model.layers": "[1, 2, 4]"}
    cfg = resolved(["+sweep=full", "sweep/cell=tokens_all"])
    columns = knob_columns(cfg)
    assert columns["ablation/bench.llm_layers"] is None and columns["ablation/method.quantizer"] == "saq"
    assert knob_columns({"logger": {"kind": "none"}}) == {}

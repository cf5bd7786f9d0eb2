"""Stage instances declared in the DAG (issue 18, item 2): an evaluation stage declares the models it compares
(`train[spae]`, `train[lqae]`, `frozen_train[frozen]`), and the planner runs them before it, each under its
variant config, in the very cache folder the former nested pipeline run (`run_stages([train], {**cfg,
"method": bench.methods.<m>})` inside the stage) used, so existing caches are reused and numbers do not move."""
from __future__ import annotations

import pytest
from test_stage_keys_eval_data import resolved

import experiments.stages  # noqa: F401  (registers the stages)
from experiments.pipeline import STAGES, StageNeed, plan_stages, run_stages, stage, stage_dir, stage_key

MODELS = {"mini_imagenet": {"spae": "train", "lqae": "train", "frozen": "frozen_train"},
          "captioning": {"spae": "train", "lqae": "train", "frozen": "frozen_train"},
          "generation": {"spae": "train"}}


def nested_keys(target: str, cfg: dict, model: str) -> dict[str, str]:
    """The keys the former nested run computed: every stage `target` needs, keyed under the variant config
    (bench.methods.<model> as `method`), dependencies first, each stage once."""
    variant = {**cfg, "method": cfg["bench"]["methods"][model]}
    keys: dict[str, str] = {}

    def visit(name: str) -> None:
        if name in keys:
            return
        spec = STAGES.get(name)
        for dep in spec.inputs:
            visit(dep)
        keys[name] = stage_key(spec, variant, keys)

    visit(target)
    return keys


@pytest.mark.parametrize("bench", sorted(MODELS))
def test_planned_instances_have_the_keys_and_folders_of_the_former_nested_runs(bench, tmp_path):
    cfg = resolved([f"+bench={bench}", f"paths.cache_dir={tmp_path}", f"paths.runs_dir={tmp_path}"])
    nodes = {n.name: n for n in plan_stages(list(cfg["bench"]["stages"]), cfg)}
    (evaluation,) = cfg["bench"]["stages"]
    expected = {f"{target}[{model}]" for model, target in MODELS[bench].items()}
    assert {n for n in nodes if "[" in n} == expected  # one clip, one codebook, ...: no other instance node
    for model, target in MODELS[bench].items():
        node, old = nodes[f"{target}[{model}]"], nested_keys(target, cfg, model)
        assert node.key == old[target], model
        assert stage_dir(tmp_path, node.spec.name, node.key) == stage_dir(tmp_path, target, old[target])
        for dep, name in node.inputs.items():  # its dependencies are the run's plain nodes, with the same keys
            assert name == dep and nodes[name].key == old[dep]
        assert nodes[evaluation].inputs[node.name] == node.name  # the evaluation reads it ...
    order = list(nodes)
    assert all(order.index(n) < order.index(evaluation) for n in expected)  # ... after it ran
    if "lqae" in MODELS[bench]:  # the variant decides the key (the base config's `method` is SPAE)
        plain = {d: nodes[d].key for d in STAGES.get("train").deps}
        assert nodes["train[lqae]"].key != stage_key(STAGES.get("train"), cfg, plain)


def test_instance_keys_join_the_evaluation_key(tmp_path):
    cfg = resolved(["+bench=mini_imagenet", f"paths.cache_dir={tmp_path}"])
    other = resolved(["+bench=mini_imagenet", f"paths.cache_dir={tmp_path}", "bench.methods.lqae.beta=0.5"])
    before = {n.name: n.key for n in plan_stages(["fewshot_eval"], cfg)}
    after = {n.name: n.key for n in plan_stages(["fewshot_eval"], other)}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"train[lqae]", "fewshot_eval"}


def test_an_unknown_model_kind_fails_when_planning(tmp_path):
    cfg = resolved(["+bench=mini_imagenet", f"paths.cache_dir={tmp_path}", "bench.methods.lqae.kind=weird"])
    with pytest.raises(ValueError, match="bench.methods.lqae has kind 'weird'"):
        plan_stages(["fewshot_eval"], cfg)


# ------------------------------------------------------------------------------------------ probe stages
CALLS: list[str] = []
PROBE = {"up": 1, "method": {"name": "base", "clip": "c1"}, "compare": ["a", "b"],
         "methods": {"a": {"name": "a", "clip": "c1"}, "b": {"name": "b", "clip": "c2"}}}


def _model_needs(cfg: dict) -> list[StageNeed]:
    return [StageNeed("_inst_model", m, {"method": cfg["methods"][m]}) for m in cfg["compare"]]


def _register() -> None:
    if "_inst_eval" in STAGES:
        return

    @stage("_inst_up", config_keys=("up",))
    def _up(ctx):
        CALLS.append("up")
        return {}

    @stage("_inst_clip", config_keys=("method.clip",))  # reads part of the method: shared where it agrees
    def _clip(ctx):
        CALLS.append(f"clip:{ctx.cfg['method']['clip']}")
        return {"clip": ctx.cfg["method"]["clip"]}

    @stage("_inst_model", deps=("_inst_up", "_inst_clip"), config_keys=("method",))
    def _model(ctx):
        CALLS.append(f"model:{ctx.cfg['method']['name']}")
        return {"name": ctx.cfg["method"]["name"], "clip": ctx.inputs["_inst_clip"].summary["clip"]}

    @stage("_inst_eval", deps=("_inst_up",), config_keys=("compare",), instances=_model_needs)
    def _eval(ctx):
        CALLS.append("eval")
        return {m: ctx.instance("_inst_model", m).summary for m in ctx.cfg["compare"]}

    @stage("_inst_loop", instances=lambda cfg: [StageNeed("_inst_loop", "again")])
    def _loop(ctx):
        return {}


@pytest.fixture
def probes(tmp_path):
    _register()
    CALLS.clear()
    return lambda cfg=PROBE, **kw: run_stages(["_inst_eval"], cfg, tmp_path / "cache", tmp_path / "run", **kw)


def test_instances_run_first_under_their_variant_and_appear_in_the_results(probes, tmp_path):
    results = probes()
    assert list(results) == ["_inst_up", "_inst_clip", "_inst_model[a]", "_inst_clip[b]", "_inst_model[b]",
                             "_inst_eval"]
    assert CALLS == ["up", "clip:c1", "model:a", "clip:c2", "model:b", "eval"]
    assert results["_inst_eval"].summary == {"a": {"name": "a", "clip": "c1"}, "b": {"name": "b", "clip": "c2"}}
    # the folder is the stage's own under the variant: a plain run of the stage with that config reuses it
    CALLS.clear()
    variant = {**PROBE, "method": PROBE["methods"]["b"]}
    alone = run_stages(["_inst_model"], variant, tmp_path / "cache", tmp_path / "run")
    assert CALLS == [] and alone["_inst_model"].dir == results["_inst_model[b]"].dir and alone["_inst_model"].cached
    # a changed model retrains only itself and the evaluation
    changed = {**PROBE, "methods": {**PROBE["methods"], "b": {"name": "b", "clip": "c2", "lr": 2}}}
    again = probes(changed)
    assert CALLS == ["model:b", "eval"] and again["_inst_model[a]"].cached
    assert again["_inst_eval"].key != results["_inst_eval"].key


def test_force_by_stage_name_forces_every_instance_and_by_node_name_one(probes):
    probes()
    CALLS.clear()
    probes(force=("_inst_model",))
    assert CALLS == ["model:a", "model:b"]
    CALLS.clear()
    results = probes(force=("_inst_model[b]",))
    assert CALLS == ["model:b"] and results["_inst_model[a]"].cached and not results["_inst_model[b]"].cached


def test_a_plain_node_and_an_instance_of_one_key_run_once(probes, tmp_path):
    """E.g. the ablation bench: recon_eval reads `train`, fewshot_eval `train[spae]` of the same method."""
    cfg = {**PROBE, "method": PROBE["methods"]["a"], "compare": ["a"]}
    results = run_stages(["_inst_model", "_inst_eval"], cfg, tmp_path / "cache", tmp_path / "run",
                         force=("_inst_model",))
    assert CALLS == ["up", "clip:c1", "model:a", "eval"]
    assert results["_inst_model[a]"].dir == results["_inst_model"].dir and results["_inst_model[a]"].cached


def test_substitutes_run_instead_of_a_stage_for_one_call_in_their_own_folders(probes, tmp_path):
    def fake_model(ctx):
        CALLS.append(f"fake:{ctx.cfg['method']['name']}")
        return {"name": "fake"}

    real = probes()
    CALLS.clear()
    faked = probes(substitutes={"_inst_model[b]": fake_model})
    assert CALLS == ["fake:b", "eval"] and faked["_inst_eval"].summary["b"] == {"name": "fake"}
    assert faked["_inst_model[a]"].cached and faked["_inst_model[b]"].dir != real["_inst_model[b]"].dir
    CALLS.clear()
    assert probes()["_inst_eval"].cached and CALLS == []  # the registered stage is back; its outputs untouched


def test_an_instance_cycle_is_refused():
    _register()
    with pytest.raises(ValueError, match=r"cycle: _inst_loop -> _inst_loop\[again\] -> _inst_loop\[again\]"):
        plan_stages(["_inst_loop"], {})

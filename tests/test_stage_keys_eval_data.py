"""Changing only the evaluation data reuses every trained model (issue 16, item 6): the keys of the training
stages, and of every stage they depend on, cover only what those stages read."""
from __future__ import annotations

import pytest
from conftest import compose
from omegaconf import OmegaConf

TRAINING = ("codebook", "clip", "train", "frozen_train")


def resolved(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose(overrides), resolve=True, throw_on_missing=False)


def keys_of(targets: list[str], cfg: dict) -> dict[str, str]:
    """Every node key the pipeline plans for `targets` (run_stages' own planner), by node name."""
    import experiments.stages  # noqa: F401  (registers the stages)
    from experiments.pipeline import plan_stages

    return {node.name: node.key for node in plan_stages(targets, cfg)}


def model_keys(cfg: dict, target: str = "fewshot_eval") -> dict[str, dict[str, str]]:
    """{model: {stage: key} of its training instance (`train[spae]`, ...) and every node upstream of it}, as
    the evaluation stage plans them (each with bench.methods.<model> as `method`)."""
    import experiments.stages  # noqa: F401  (registers the stages)
    from experiments.pipeline import plan_stages

    nodes = {node.name: node for node in plan_stages([target], cfg)}

    def upstream(name: str) -> set[str]:
        return {name}.union(*(upstream(n) for n in nodes[name].inputs.values()))

    # Frozen's held-out report reads eval_data (a report dependency, run first, not in frozen_train's key)
    return {name[name.index("[") + 1:-1]: {nodes[n].spec.name: nodes[n].key for n in upstream(name) if n != "eval_data"}
            for name in nodes if "[" in name}


@pytest.mark.parametrize("change", [
    ["data=imagefolder", "data.classification.path=/data/my_1000_classes"],
    ["dataset@data.classification=mnist"],
    ["~data.vqa", "~data.generation"],
])
def test_changing_only_the_evaluation_data_keeps_every_training_key(change):
    base = resolved(["+bench=mini_imagenet"])
    other = resolved(["+bench=mini_imagenet", *change])
    assert other["data"]["pretrain"] == base["data"]["pretrain"]  # the premise: only evaluation data differs
    assert other["data"]["classification"] != base["data"]["classification"] or "~data.vqa" in change

    base_keys, other_keys = model_keys(base), model_keys(other)
    for model in ("spae", "lqae", "frozen"):
        assert other_keys[model] == base_keys[model], model  # the model and all its upstream stages
    trained = {name for keys in base_keys.values() for name in keys}
    assert set(TRAINING) <= trained
    assert base_keys["spae"]["train"] != base_keys["lqae"]["train"]  # two tokenizers, each reused

    # the evaluation itself does change, so nothing stale is reported
    eval_base, eval_other = keys_of(["fewshot_eval"], base), keys_of(["fewshot_eval"], other)
    assert eval_other["fewshot_eval"] != eval_base["fewshot_eval"]
    assert {n: k for n, k in eval_other.items() if n in trained} == {n: k for n, k in eval_base.items() if n in trained}


def test_changing_the_pretraining_data_retrains():
    base = model_keys(resolved(["+bench=mini_imagenet"]))
    fewer = model_keys(resolved(["+bench=mini_imagenet", "data.max_pretrain_images=100"]))
    for model, stage in (("spae", "train"), ("lqae", "train"), ("frozen", "frozen_train")):
        assert fewer[model][stage] != base[model][stage]
    assert fewer["spae"]["clip"] != base["spae"]["clip"] and fewer["spae"]["codebook"] == base["spae"]["codebook"]


def test_with_class_exclusion_the_evaluation_classes_decide_the_pretraining_rows(tmp_path):
    """data=paper pretrains on ImageNet with data.exclude_eval_classes: which rows are dropped depends on the
    evaluation sets, so there (and only there) they join pretrain_data's key."""
    dirs = [f"paths.cache_dir={tmp_path}", f"paths.runs_dir={tmp_path}"]
    base = ["+bench=smoke", "data=paper", *dirs]
    before = keys_of(["pretrain_data"], resolved(base))
    other = keys_of(["pretrain_data"], resolved([*base, "data.classification.path=/elsewhere"]))
    off = keys_of(["pretrain_data"], resolved([*base, "data.exclude_eval_classes=false"]))
    assert before["pretrain_data"] != other["pretrain_data"] and before["pretrain_data"] != off["pretrain_data"]

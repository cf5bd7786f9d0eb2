"""A config key added at its default leaves every stage key unchanged (issue 18, item 2): the next run reuses
every cached stage. Keys hash what differs from the typed schemas' defaults (spae.config) and, elsewhere,
every value but null (experiments/config_identity.py); a changed value still changes the keys that read it."""
from __future__ import annotations

import dataclasses

import pytest
from test_stage_keys_eval_data import keys_of, model_keys, resolved

import experiments.config_identity as config_identity
from spae.config import LossConfig, MethodConfig, ModelConfig, TrainerConfig

MAIN = ["+bench=mini_imagenet"]  # `make run`
TOKENIZERS = ("method", "bench.methods.spae", "bench.methods.lqae")  # where a method YAML key lands


def every_key(cfg: dict) -> dict:
    """Every stage key of the main bench (its nodes, the compared models' training instances among them; the
    models' keys again per model, with their upstream stages) and the run folder's hash."""
    from experiments.run import config_hash

    nested = model_keys(cfg)
    assert set(nested) == {"spae", "lqae", "frozen"}
    return {"bench": keys_of(list(cfg["bench"]["stages"]), cfg), "nested": nested, "run": config_hash(cfg)}


def _extended(section: type, name: str, default, **nested) -> type:
    """`section` with one more field (as a developer adds an option), nested sections replaced by `nested`."""
    fields = [(name, type(default), dataclasses.field(default=default))]
    fields += [(key, sub, dataclasses.field(default_factory=sub)) for key, sub in nested.items()]
    return dataclasses.make_dataclass(section.__name__, fields, bases=(section,))


def _add_option(where: str, monkeypatch) -> tuple[list[str], str]:
    """Adds an option `new_option` = 0.25 to a schema (and to the YAML it mirrors); returns the overrides that
    put it in the composed config at its default, and one config path that sets it."""
    if where == "model":
        monkeypatch.setattr(config_identity, "ModelConfig", _extended(ModelConfig, "new_option", 0.25))
        return ["+model.new_option=0.25"], "model.new_option"
    if where == "trainer":
        extended = _extended(TrainerConfig, "new_option", 0.25)
        import spae.training  # which trainer keys are its own (the others pass through to Lightning)

        monkeypatch.setattr(config_identity, "TrainerConfig", extended)
        monkeypatch.setattr(spae.training, "TrainerConfig", extended)
        return ["+trainer.new_option=0.25"], "trainer.new_option"
    loss = _extended(LossConfig, "new_option", 0.25)  # method.loss: a nested section of every tokenizer method
    monkeypatch.setattr(config_identity, "MethodConfig", _extended(MethodConfig, "unused_flag", False, loss=loss))
    return [f"+{path}.loss.new_option=0.25" for path in TOKENIZERS], "loss.new_option"


@pytest.mark.parametrize("where", ["model", "trainer", "method.loss"])
def test_a_schema_option_added_at_its_default_keeps_every_key(where, monkeypatch, tmp_dirs):
    before = every_key(resolved([*MAIN, *tmp_dirs]))
    overrides, path = _add_option(where, monkeypatch)
    cfg = resolved([*MAIN, *tmp_dirs, *overrides])
    assert every_key(cfg) == before

    changed = ([f"{p}.{path}=0.5" for p in TOKENIZERS] if where == "method.loss" else [f"{path}=0.5"])
    after = every_key(resolved([*MAIN, *tmp_dirs, *overrides, *changed]))
    for model in ("spae", "lqae"):  # the tokenizers read the model's and the method's options: they retrain
        retrained = after["nested"][model]["train"] != before["nested"][model]["train"]
        assert retrained == (where != "trainer")  # of trainer.*, train declares only the keys it reads
        assert after["nested"][model]["pretrain_data"] == before["nested"][model]["pretrain_data"]
    assert after["bench"]["fewshot_eval"] != before["bench"]["fewshot_eval"] and after["run"] != before["run"]


@pytest.mark.parametrize("overrides", [
    ["+llm.new_option=null"], ["+bench.new_option=null"], ["+data.pretrain.fashion_mnist.new_option=null"],
    ["+bench.methods.frozen.new_option=null", "+method.new_option=null"],
    ["+trainer.gradient_clip_val=null", "+trainer.accumulate_grad_batches=1"],  # at Lightning's own defaults
], ids=["llm", "bench", "data", "frozen", "lightning_args"])
def test_an_untyped_option_added_as_null_keeps_every_key(overrides, tmp_dirs):
    before = every_key(resolved([*MAIN, *tmp_dirs]))
    assert every_key(resolved([*MAIN, *tmp_dirs, *overrides])) == before


def test_a_changed_untyped_value_changes_the_keys_that_read_it(tmp_dirs):
    before = every_key(resolved([*MAIN, *tmp_dirs]))
    after = every_key(resolved([*MAIN, *tmp_dirs, "+bench.methods.frozen.new_option=1", "+llm.new_option=1"]))
    assert after["nested"]["frozen"]["frozen_train"] != before["nested"]["frozen"]["frozen_train"]
    assert after["nested"]["spae"] == before["nested"]["spae"]  # the tokenizers read neither
    assert after["bench"]["fewshot_eval"] != before["bench"]["fewshot_eval"]
    clipped = every_key(resolved([*MAIN, *tmp_dirs, "+trainer.gradient_clip_val=0.5"]))
    for model, stage in (("spae", "train"), ("lqae", "train"), ("frozen", "frozen_train")):
        assert clipped["nested"][model][stage] != before["nested"][model][stage]


def test_a_preset_that_states_a_default_keys_equal_to_one_that_omits_it(tmp_dirs):
    before = every_key(resolved([*MAIN, *tmp_dirs]))
    omitted = [f"~{p}.loss.ssim_weight" for p in TOKENIZERS] + [f"~{p}.search" for p in TOKENIZERS]
    assert every_key(resolved([*MAIN, *tmp_dirs, *omitted, "~trainer.log_every_n_steps"])) == before
    # the library builds the same tokenizer from both (the reason the keys may be equal)
    from spae.config import TokenizerConfig

    full, partial = resolved([*MAIN, *tmp_dirs]), resolved([*MAIN, *tmp_dirs, *omitted])
    assert TokenizerConfig.from_dict({"method": full["method"]}) == TokenizerConfig.from_dict({"method": partial["method"]})


def test_equal_means_the_same_json():
    cfg = {"trainer": {"max_steps": 300, "batch_size": 16.0}, "method": {"kind": "tokenizer", "beta": 0.005}}
    assert config_identity.key_values(cfg, ["trainer", "method"]) == {"trainer": {"batch_size": 16.0}, "method": {}}
    frozen = {"method": {"kind": "prefix", "name": "frozen", "lr": None}}  # no schema: only nulls are left out
    assert config_identity.key_values(frozen, ["method"]) == {"method": {"kind": "prefix", "name": "frozen"}}

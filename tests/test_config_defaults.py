"""One source of truth for the tokenizer's defaults: spae.config's dataclasses equal conf/ (issue 15, item 4).

The library used to carry its own `cfg.get(key, default)` values (beta 0.25, prefix_recon random, a 64-channel
3-layer discriminator, ...), so a tokenizer built from Python was not the one the CLI trains."""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose
from spae.config import LQAE_PRESET, MethodConfig, ModelConfig, TokenizerConfig, TrainerConfig
from spae.errors import InvalidConfigError

# keys the dataclasses have and the YAML does not: set by the train stage, or a fixed input format
NOT_IN_YAML = {"method": {"optim": ["total_steps"], "semantic": ["total_steps"]}, "model": ["in_channels"],
               "trainer": ["num_nodes", "progress_refresh"]}
# conf/model/paper.yaml is a preset: it overrides these of the embedded defaults, and nothing else
PAPER_OVERRIDES = {"name", "image_size", "latent_size", "channels", "res_blocks", "attention", "groups", "layers"}


def _composed(overrides: list[str], tmp_dirs: list[str]) -> dict:
    return OmegaConf.to_container(compose([*overrides, *tmp_dirs]), resolve=True, throw_on_missing=False)


def _defaults_without_derived(section: str) -> dict:
    values = {"method": MethodConfig, "model": ModelConfig, "trainer": TrainerConfig}[section]().to_dict()
    skip = NOT_IN_YAML[section]
    if isinstance(skip, dict):
        for sub, keys in skip.items():
            for key in keys:
                del values[sub][key]
    else:
        for key in skip:
            del values[key]
    return values


def test_method_defaults_are_conf_method_spae_yaml(tmp_dirs):
    assert _composed(["method=spae"], tmp_dirs)["method"] == _defaults_without_derived("method")


def test_lqae_yaml_is_the_defaults_with_the_lqae_preset(tmp_dirs):
    assert _composed(["method=lqae"], tmp_dirs)["method"] == {**_defaults_without_derived("method"), **LQAE_PRESET}


def test_model_defaults_are_conf_model_embedded_yaml_and_paper_only_overrides(tmp_dirs):
    defaults = _defaults_without_derived("model")
    assert _composed(["model=embedded"], tmp_dirs)["model"] == defaults
    paper = _composed(["model=paper"], tmp_dirs)["model"]
    assert set(paper) == set(defaults)
    assert {k for k in paper if paper[k] != defaults[k]} <= PAPER_OVERRIDES


def _cli_tokenizer_config(method: str, tmp_dirs: list[str]) -> dict:
    from experiments.stages.train import tokenizer_config

    return tokenizer_config(_composed([f"method={method}"], tmp_dirs))


def _build(config: dict, perceptual: bool = False):
    from spae.tokenizer import SPAETokenizer

    torch.manual_seed(0)
    codebook = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    return SPAETokenizer(config, codebook, [f"w{i}" for i in range(64)], with_perceptual=perceptual)


@pytest.mark.parametrize("with_model", [False, True], ids=["model_default", "model_given"])
@pytest.mark.parametrize("method,python_method", [("spae", {}), ("lqae", LQAE_PRESET)])
def test_tokenizer_from_python_defaults_is_the_one_the_cli_builds(method, python_method, with_model, tmp_dirs):
    cli_config = _cli_tokenizer_config(method, tmp_dirs)
    total_steps = cli_config["method"]["optim"]["total_steps"]  # the train stage's, from trainer.max_steps
    python_config = {"method": {**copy.deepcopy(python_method), "optim": {"total_steps": total_steps}}}
    if "semantic" in cli_config["method"]:  # the train stage also gives the semantic-weight schedule its length
        python_config["method"]["semantic"] = {**python_config["method"].get("semantic", {}), "total_steps": total_steps}
    if with_model:  # the method's defaults alone (the old code needed the model's keys)
        python_config["model"] = copy.deepcopy(cli_config["model"])
    from_cli, from_python = _build(cli_config), _build(python_config)
    assert from_python.config == from_cli.config  # every hyper-parameter, as saved with the weights
    cli_state, python_state = from_cli.state_dict(), from_python.state_dict()
    assert {k: v.shape for k, v in python_state.items()} == {k: v.shape for k, v in cli_state.items()}
    for key, value in cli_state.items():
        assert torch.equal(python_state[key], value), key
    for module in (from_cli, from_python):  # what the old defaults got wrong, read off the built modules
        assert module.quantizer.beta == cli_config["method"]["beta"]
        assert module.quantizer.search.precision == cli_config["method"]["search"]["precision"]
        assert module.describe()["params_discriminator"] == from_cli.describe()["params_discriminator"]
        assert module.configure_optimizers()[1][0].lr_lambdas[0](10_000) == pytest.approx(
            cli_config["method"]["optim"]["min_lr_factor"])  # cosine, at its floor after total_steps
        sem = cli_config["method"]["semantic"]  # linear_warmup: 0 at the start, the full weight after warmup
        assert module.objective.semantic_weight(0) == 0.0 < module.objective.semantic_weight(sem["warmup_steps"]) == sem["weight"]


def test_perceptual_min_size_default_is_the_yamls(tmp_dirs):
    module = _build({"method": LQAE_PRESET}, perceptual=True)
    assert module.perceptual.min_size == _cli_tokenizer_config("lqae", tmp_dirs)["method"]["loss"][
        "perceptual_min_size"]


def test_unknown_keys_fail_and_name_the_valid_ones():
    with pytest.raises(InvalidConfigError, match=r"unknown key\(s\) \['bta'\] in `method`.*beta"):
        TokenizerConfig.from_dict({"method": {"bta": 0.1}})
    with pytest.raises(InvalidConfigError, match=r"`method.loss.gan`.*channels"):
        TokenizerConfig.from_dict({"method": {"loss": {"gan": {"chanels": 8}}}})
    with pytest.raises(InvalidConfigError, match="must be a mapping"):
        TokenizerConfig.from_dict({"model": [1, 2]})


def test_missing_keys_take_defaults_and_given_values_stay_as_given():
    config = TokenizerConfig.from_dict({"method": {"loss": {"gan": {"weight": 0.0}}}, "model": {"layers": [1, 2.5]}})
    assert config.method.loss.gan.weight == 0.0 and config.method.loss.gan.channels == MethodConfig().loss.gan.channels
    assert config.model.layers == [1, 2.5]  # validated by the pyramid, not silently cast here
    assert TokenizerConfig.from_dict(config.to_dict()) == config


def test_trainer_defaults_are_conf_trainer_cpu_yaml_and_every_preset_converts(tmp_dirs):
    assert _composed(["trainer=cpu"], tmp_dirs)["trainer"] == _defaults_without_derived("trainer")
    for preset in sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml")):
        TrainerConfig.from_dict(_composed([f"trainer={preset}"], tmp_dirs)["trainer"])  # no unknown key


def test_build_trainer_fails_on_an_unknown_trainer_key(tmp_path):
    from spae.training import build_trainer

    with pytest.raises(InvalidConfigError, match=r"unknown trainer key.*trainer.acelerator.*Valid keys: accelerator"):
        build_trainer({"acelerator": "cpu"}, tmp_path, False, max_steps=1, max_time_s=None, checkpoint_every=1)


def test_codebook_vocabulary_options_have_no_library_defaults():
    from spae.codebook import vocabulary_options

    with pytest.raises(InvalidConfigError, match=r"lacks \['min_chars'\]"):
        vocabulary_options({"name": "words", "lowercase_only": True, "min_zipf": 3.0, "max_size": None})
    for option in sorted(p.stem for p in (CONF_DIR / "codebook").glob("*.yaml")):  # every preset sets them all
        vocabulary_options(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "codebook" / f"{option}.yaml")))

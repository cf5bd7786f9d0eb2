"""Every config in conf/ instantiates what it names, shrunk to tiny sizes (a broken config cannot land)."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
TOKENIZER_METHODS = ["spae", "lqae"]


def _cfg(overrides: list[str], tmp_dirs: list[str]) -> dict:
    cfg = compose(["+bench=smoke", *overrides, *tmp_dirs])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("method", TOKENIZER_METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_tokenizer_presets_build_encode_and_decode(model, method, tmp_dirs):
    from spae.tokenizer import SPAETokenizer

    cfg = _cfg([f"model={model}", f"method={method}"], tmp_dirs)
    # shrink widths only: image size, latent grid and pyramid stay those of the preset
    cfg["model"]["channels"] = [8] * len(cfg["model"]["channels"])
    cfg["model"]["groups"] = 4
    cfg["method"]["loss"]["perceptual"] = "none"
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(64, 16, generator=gen)
    tok = SPAETokenizer({"model": cfg["model"], "method": cfg["method"], "seed": 0, "offline": True},
                        codebook, words=[f"w{i}" for i in range(64)])
    tok.eval()
    size = cfg["model"]["image_size"]
    images = torch.rand(1, 3, size, size, generator=gen)
    with torch.no_grad():
        pyramid = tok.encode(images)
        decoded = tok.decode(pyramid, layers=pyramid.num_layers)
    assert decoded.shape == images.shape
    latent = cfg["model"]["latent_size"]
    expected = [latent * latent] if method == "lqae" else [s * s for s in cfg["model"]["layers"]]
    assert [ids.shape[1] for ids in pyramid.ids] == expected


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_data_setups_name_registered_adapters(option, tmp_dirs):
    from spae.data import ADAPTERS

    data = _cfg([f"data={option}"], tmp_dirs)["data"]
    specs = list(data["pretrain"].values()) + [data[r] for r in ("classification", "vqa", "captioning",
                                                                   "generation") if r in data]
    assert specs
    for spec in specs:
        ADAPTERS.get(spec["adapter"])


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "llm").glob("*.yaml")))
def test_llm_configs_name_registered_backends_and_sources(option, tmp_dirs):
    from spae.llm.backends import BACKENDS
    from spae.llm.loading import LLM_SOURCES

    llm = _cfg([f"llm={option}"], tmp_dirs)["llm"]
    BACKENDS.get(llm["backend"])
    if llm["backend"] == "hf_local":
        LLM_SOURCES.get(llm["source"])


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "clip").glob("*.yaml")))
def test_clip_configs_name_registered_kinds(option, tmp_dirs):
    from spae.clip import CLIP_KINDS

    CLIP_KINDS.get(_cfg([f"clip={option}"], tmp_dirs)["clip"]["kind"])


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "prompt").glob("*.yaml")))
def test_prompt_templates_parse(option):
    from spae.fewshot.prompts import PromptTemplate

    PromptTemplate.from_yaml(CONF_DIR / "prompt" / f"{option}.yaml")


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml")))
def test_trainer_presets_are_valid_lightning_settings(option, tmp_dirs):
    from pytorch_lightning.accelerators import AcceleratorRegistry

    trainer = _cfg([f"trainer={option}"], tmp_dirs)["trainer"]
    valid = set(AcceleratorRegistry.available_accelerators()) | {"gpu", "auto"}  # Trainer's aliases
    assert trainer["accelerator"] in valid
    assert int(trainer["max_steps"]) > 0 and trainer["precision"] in ("32-true", "bf16-mixed", "16-mixed")

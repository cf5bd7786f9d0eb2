"""Every accepted value of every option that changes how a tokenizer trains runs one real training step.

The config is the real composed one (conf/, as the CLI builds it) turned into the tokenizer's config by the
train stage's own `tokenizer_config`, shrunk to tiny widths, a random codebook and two tiny in-memory
pretraining sets, then trained for one batch with the stage's Trainer recipe. The values come from the
code's accepted sets (registries and constants), so a value added there is trained here without editing
this file; `test_every_enumerated_method_option_is_an_axis` makes a new enumerated config key fail until it
is listed below. (method.semantic.schedule=cosine_decay used to crash: the stage never passed its total.)
The Frozen baseline's backbones each train one step through the real frozen_train stage.
"""
from __future__ import annotations

import copy

import datasets
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import CONF_DIR, compose
from experiments.stages.train import tokenizer_config
from spae.datamodule import PRETRAIN_MIXES, PretrainDataModule
from spae.frozen_baseline import BACKBONES
from spae.losses import GAN_LOSSES, RECONSTRUCTION_LOSSES
from spae.nn_search import PRECISIONS
from spae.perceptual import PERCEPTUAL
from spae.pyramid import POOLING_MODES
from spae.quantizers import QUANTIZERS
from spae.semantic_loss import SCHEDULES, TARGET_MODES
from spae.objective import PREFIX_RECON_MODES
from spae.optim import LR_SCHEDULES
from spae.tokenizer import LATENT_NORMS, SPAETokenizer
from spae.training import build_trainer
from tests.tokenizer_helpers import fake_relevance, random_codebook

ONLINE_ONLY_PERCEPTUAL = ("lpips_vgg", "lpips_alex")  # download their weights: a clear error offline

# method.<key> -> the values to train (from the code where the code enumerates them; switches and "0 turns
# it off" weights as off/on)
AXES: dict[str, list] = {
    "quantizer": QUANTIZERS.names(),
    "single_layer": [False, True],
    "pooling": list(POOLING_MODES),
    "latent_norm": list(LATENT_NORMS),
    "pretrain_mix": list(PRETRAIN_MIXES),
    "search.precision": list(PRECISIONS),
    "semantic_loss": [False, True],
    "semantic.target": list(TARGET_MODES),
    "semantic.distinct_targets": [False, True],
    "semantic.schedule": list(SCHEDULES),
    "semantic.num_negatives": [None, 4],
    "semantic.temperature_relative": [False, True],
    "loss.recon": list(RECONSTRUCTION_LOSSES),
    "loss.prefix_recon": list(PREFIX_RECON_MODES),
    "loss.perceptual": ["none"] + [n for n in PERCEPTUAL.names() if n not in ONLINE_ONLY_PERCEPTUAL],
    "loss.ssim_weight": [0.0, 2.0],
    "loss.gan.weight": [0.0, 0.1],  # discriminator off / on (the shrunk config starts the GAN at step 0)
    "loss.gan.kind": list(GAN_LOSSES),
    "loss.gan.adaptive": [False, True],
    "loss.gan.lecam_weight": [0.0, 0.001],
    "optim.schedule": list(LR_SCHEDULES),
}
NOT_AXES = {"name", "kind"}  # identify the method; not options of it
# Shrinking: warmups off and the GAN on from the start, so one step exercises every schedule and loss term;
# the perceptual net only where its axis asks for it (the slowest term)
SHRUNK_METHOD = {"optim.warmup_steps": 0, "semantic.warmup_steps": 0, "loss.gan.start_step": 0,
                 "loss.gan.channels": 8, "loss.gan.layers": 1, "loss.perceptual": "none"}
# settings another value needs to be valid (one full-grid layer has no layer 2 to guide)
COMPANIONS = {("single_layer", True): {"semantic.layers": [1]}}


def _spae_default(key: str):
    if key in SHRUNK_METHOD:
        return SHRUNK_METHOD[key]
    return OmegaConf.select(OmegaConf.load(CONF_DIR / "method" / "spae.yaml"), key)


# the shrunk SPAE config once, then each value that differs from it
OPTIONS = [("base", None)] + [(k, v) for k, values in AXES.items() for v in values if v != _spae_default(k)]


def composed(overrides: list[str], tmp_path) -> dict:
    cfg = compose(["+bench=smoke", *overrides, f"paths.cache_dir={tmp_path / 'cache'}",
                   f"paths.runs_dir={tmp_path / 'runs'}"])
    return OmegaConf.to_container(cfg, resolve=True)


def shrunk(cfg: dict) -> dict:
    """Tiny widths and batch, one step, SHRUNK_METHOD. Sizes (image, latent grid, pyramid) stay the preset's."""
    cfg = copy.deepcopy(cfg)
    model = cfg["model"]
    model.update(channels=[8] * len(model["channels"]), groups=4, res_blocks=1, attention=False)
    cfg["trainer"].update(max_steps=1, batch_size=4, progress_bar=False, accelerator="cpu", devices=1,
                          precision="32-true", strategy="auto", num_nodes=1)
    for key, value in SHRUNK_METHOD.items():
        cfg = with_option(cfg, key, value)
    return cfg


def with_option(cfg: dict, key: str, value) -> dict:
    """cfg with method.<key> = value (and the settings that value needs)."""
    cfg = copy.deepcopy(cfg)
    for k, v in {key: value, **COMPANIONS.get((key, value), {})}.items():
        *parents, leaf = k.split(".")
        node = cfg["method"]
        for part in parents:
            node = node[part]
        node[leaf] = v
    return cfg


def tiny_sets() -> list[datasets.Dataset]:
    """Two pretraining sets of different sizes (so the pretraining mixes differ)."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image()})
    return [datasets.Dataset.from_dict({"image": [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
                                                  for _ in range(n)]}, features=features) for n in (6, 2)]


def train_one_step(cfg: dict, tmp_path) -> SPAETokenizer:
    """What the train stage does, on a random codebook, fake CLIP relevance and in-memory data."""
    config = tokenizer_config(cfg)
    codebook, words = random_codebook(k=64, d=16)
    relevance = fake_relevance(len(words)) if config["method"].get("semantic_loss") else None
    torch.manual_seed(0)
    module = SPAETokenizer(config, codebook, words, relevance)
    tr = cfg["trainer"]
    dm = PretrainDataModule(tiny_sets(), config["model"]["image_size"], int(tr["batch_size"]), 0,
                            total_batches=int(tr["max_steps"]), mix=str(config["method"]["pretrain_mix"]))
    per_batch = module.optimizer_steps_per_batch
    trainer = build_trainer(tr, tmp_path, False, max_steps=int(tr["max_steps"]) * per_batch, max_time_s=None,
                            checkpoint_every=1000)
    before = {k: v.clone() for k, v in module.encoder.state_dict().items()}
    trainer.fit(module, datamodule=dm)
    assert module.iteration == int(tr["max_steps"])
    assert all(torch.isfinite(v).all() for v in module.trainable_state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in module.encoder.state_dict().items()), "no step taken"
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    return module, trainer


@pytest.fixture(scope="module")
def base_configs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compose")
    return {m: shrunk(composed([f"method={m}"], tmp)) for m in ("spae", "lqae")}


@pytest.mark.parametrize("key,value", OPTIONS, ids=lambda x: str(x))
def test_every_option_value_trains_one_step(base_configs, key, value, tmp_path):
    cfg = base_configs["spae"] if key == "base" else with_option(base_configs["spae"], key, value)
    _, trainer = train_one_step(cfg, tmp_path)
    metrics = trainer.callback_metrics
    method = cfg["method"]
    assert ("train/semantic" in metrics) == bool(method["semantic_loss"])
    assert ("train/gan_g" in metrics) == (method["loss"]["gan"]["weight"] > 0)


def test_lqae_trains_one_step(base_configs, tmp_path):
    module, _ = train_one_step(base_configs["lqae"], tmp_path)
    assert module.pyramid.num_layers == 1 and module.semantic_loss is None


@pytest.mark.slow
def test_paper_model_trains_one_step(tmp_path):
    train_one_step(shrunk(composed(["model=paper", "method=spae"], tmp_path)), tmp_path)


@pytest.mark.parametrize("name", ONLINE_ONLY_PERCEPTUAL)
def test_online_only_perceptual_losses_fail_clearly_offline(base_configs, name, tmp_path):
    cfg = with_option(base_configs["spae"], "loss.perceptual", name)
    with pytest.raises(ValueError, match="offline"):
        train_one_step(cfg, tmp_path)


def test_cosine_decay_weight_follows_the_stage_total(base_configs, tmp_path):
    cfg = with_option(base_configs["spae"], "semantic.schedule", "cosine_decay")
    cfg["trainer"]["max_steps"] = 3
    module, trainer = train_one_step(cfg, tmp_path)
    sem = module.config["method"]["semantic"]
    assert sem["total_steps"] == 3
    # after the last of 3 steps (progress 2/3) the weight lies strictly between final_weight and weight
    assert sem["final_weight"] < trainer.callback_metrics["train/semantic_weight"] < sem["weight"]


def _enumerated_leaves(node: dict, prefix: str = "") -> list[str]:
    """Keys whose values are strings or booleans: the config's enumerated options."""
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += _enumerated_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, (str, bool)):
            out.append(f"{prefix}{key}")
    return out


def test_every_enumerated_method_option_is_an_axis(base_configs):
    for cfg in base_configs.values():
        missing = set(_enumerated_leaves(cfg["method"])) - set(AXES) - NOT_AXES
        assert not missing, f"add these method options to AXES (with their accepted values): {sorted(missing)}"


@pytest.mark.parametrize("key", ["loss.prefix_recon", "optim.schedule", "latent_norm", "loss.gan.kind"])
def test_a_value_outside_the_accepted_set_fails_when_the_module_is_built(base_configs, key):
    config = tokenizer_config(with_option(base_configs["spae"], key, "bogus"))
    with pytest.raises(ValueError, match=rf"method\.{key}='bogus'; valid: "):
        SPAETokenizer(config, *random_codebook())


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_every_frozen_backbone_trains_one_step_through_the_stage(backbone, tmp_path):
    """The Frozen baseline's option of the same kind (method.backbone), through the real frozen_train stage."""
    import json

    from _data_fixtures import tiny_fashion_mnist
    from _tiny_lm import tiny_tokenizer
    from test_frozen_baseline import peaky_llama
    from test_frozen_stage import overrides

    from experiments.run import execute

    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=20, n_test=10)  # every class: the seen-class filter
    tok = tiny_tokenizer()
    peaky_llama(len(tok)).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    cfg = compose([*overrides(tmp_path, fm, tmp_path / "llm"), f"method.backbone={backbone}",
                   f"method.pretrained_backbone={backbone != 'conv'}", "trainer.max_steps=1"])
    execute(cfg)
    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "frozen_train").iterdir() if p.is_dir()]
    summary = json.loads((stage_dir / "_SUCCESS.json").read_text())["summary"]
    assert summary["steps"] == 1 and summary["backbone"] == backbone

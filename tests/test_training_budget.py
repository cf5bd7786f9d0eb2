"""Fair training budgets and their cache keys (issue 15, items 3 and 8).

- The train and frozen_train stage keys follow the effective batch (devices x nodes x batch x accumulation):
  a model trained on one device is not reused for an 8-device config; irrelevant trainer knobs keep the key.
- Frozen's steps are derived from the tokenizers' pretraining images (method.images_seen_ratio), at the
  embedded and the paper preset.
- Under DDP every process reads its share of one stream: each step reads the next effective batch.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import compose
from omegaconf import OmegaConf

import experiments.stages  # noqa: F401  (registers the stages)
from experiments.pipeline import STAGES, stage_key
from spae.errors import InvalidConfigError

DEPS = {"pretrain_data": "d", "codebook": "c", "clip": "k"}


def composed(*overrides: str) -> dict:
    cfg = OmegaConf.to_container(compose(["+bench=mini_imagenet", *overrides]), resolve=True)
    assert isinstance(cfg, dict)
    return cfg


def key(stage: str, cfg: dict) -> str:
    if stage == "frozen_train":
        cfg = {**cfg, "method": cfg["bench"]["methods"]["frozen"]}  # as fewshot_eval's nested run does
    return stage_key(STAGES.get(stage), cfg, DEPS)


# ------------------------------------------------------------------------------------------ effective batch
def test_effective_batch_is_devices_x_nodes_x_batch():
    from spae.training import effective_batch, world_size

    assert effective_batch({"devices": 1, "batch_size": 16}) == 16
    assert effective_batch({"accelerator": "gpu", "devices": 8, "num_nodes": 4, "batch_size": 64}) == 2048
    assert world_size({"accelerator": "gpu", "devices": [0, 3]}) == 2
    assert world_size({"accelerator": "gpu", "devices": "0,1,2"}) == 3
    assert world_size({"accelerator": "cpu", "devices": "auto"}) == 1
    assert effective_batch({"devices": 2, "batch_size": 16}, per_device_batch=8) == 16


def test_bad_device_counts_and_accumulation_are_refused_clearly():
    from spae.training import effective_batch, world_size

    with pytest.raises(InvalidConfigError, match="trainer.devices"):
        world_size({"devices": 0})
    with pytest.raises(InvalidConfigError, match="accumulate_grad_batches"):
        effective_batch({"devices": 1, "batch_size": 8, "accumulate_grad_batches": 4})


# ------------------------------------------------------------------------------------------ stage keys
@pytest.mark.parametrize("stage", ["train", "frozen_train"])
def test_stage_key_differs_between_1_and_8_devices(stage):
    one = composed("trainer=gpu", "trainer.devices=1")
    eight = composed("trainer=gpu", "trainer.devices=8")
    nodes = composed("trainer=gpu", "trainer.devices=1", "+trainer.num_nodes=2")
    assert key(stage, one) != key(stage, eight)
    assert key(stage, one) != key(stage, nodes)


@pytest.mark.parametrize("stage", ["train", "frozen_train"])
def test_stage_key_is_kept_when_the_effective_batch_is_equal(stage):
    base = composed("trainer=gpu", "trainer.devices=1")
    same = [composed("trainer=gpu", "trainer.devices=[0]"),  # one device, written as a list of ids
            composed("trainer=gpu", "trainer.devices=1", "trainer.num_workers=2", "trainer.log_every_n_steps=7",
                     "trainer.progress_bar=false", "trainer.max_time_s=600", "trainer.strategy=ddp",
                     "trainer.checkpoint_every_n_steps=5")]
    for cfg in same:
        assert key(stage, cfg) == key(stage, base)


def test_frozen_key_follows_the_tokenizers_budget():
    """Frozen's steps derive from trainer.max_steps and trainer.batch_size, so they are part of its identity."""
    base = composed()
    assert key("frozen_train", composed("trainer.max_steps=301")) != key("frozen_train", base)
    assert key("frozen_train", composed("bench.methods.frozen.images_seen_ratio=0.25")) != key("frozen_train", base)


# ------------------------------------------------------------------------------------------ Frozen's budget
@pytest.mark.parametrize("preset", [[], ["experiment=paper"]], ids=["embedded", "paper"])
def test_composed_presets_give_frozen_the_stated_share_of_the_tokenizers_images(preset):
    from experiments.stages.frozen_train import frozen_budget
    from spae.training import world_size

    cfg = composed(*preset)
    frozen = cfg["bench"]["methods"]["frozen"]
    ratio = frozen["images_seen_ratio"]  # stated in the config, never implicit
    trainer = cfg["trainer"]
    tokenizer_images = trainer["max_steps"] * trainer["batch_size"] * world_size(trainer)
    budget = frozen_budget({**cfg, "method": frozen})
    assert budget["reference_images"] == tokenizer_images
    assert budget["images_seen"] == budget["steps"] * frozen["batch_size"] * world_size(trainer)
    assert 0 <= budget["images_seen"] - ratio * tokenizer_images < budget["effective_batch"]
    if preset:  # the paper preset compares the methods at equal pretraining
        assert ratio == 1.0 and budget["images_seen"] == tokenizer_images


def test_frozen_refuses_the_old_fixed_step_count_and_bad_ratios():
    from experiments.stages.frozen_train import frozen_budget

    cfg = composed()
    frozen = cfg["bench"]["methods"]["frozen"]
    with pytest.raises(InvalidConfigError, match="images_seen_ratio"):
        frozen_budget({**cfg, "method": {**frozen, "max_steps": 100}})
    with pytest.raises(InvalidConfigError, match="images_seen_ratio"):
        frozen_budget({**cfg, "method": {**frozen, "images_seen_ratio": 0}})


# ------------------------------------------------------------------------------------------ DDP stream
def per_rank_batches(dm, world: int, rank: int, step: int = 0) -> list[list[int]]:
    """The index batches process `rank` reads, as Lightning shards the loader's sampler under DDP."""
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    dm.trainer = SimpleNamespace(world_size=world, global_step=step, lightning_module=None)
    loader = dm.train_dataloader()
    indices = list(DistributedSamplerWrapper(loader.sampler, num_replicas=world, rank=rank, shuffle=False))
    return [indices[i: i + dm.batch_size] for i in range(0, len(indices), dm.batch_size)]


@pytest.mark.parametrize("resume_at", [0, 3])
def test_ddp_processes_read_one_stream_of_effective_batches(resume_at):
    from spae.datamodule import PretrainDataModule

    rows = [{"image": None}] * 97
    steps, batch, world = 8, 4, 2
    single = PretrainDataModule([rows], 8, batch * world, seed=0, total_batches=steps)
    expected = per_rank_batches(single, 1, 0, resume_at)  # one process, the effective batch per step
    sharded = PretrainDataModule([rows], 8, batch, seed=0, total_batches=steps)
    ranks = [per_rank_batches(sharded, world, r, resume_at) for r in range(world)]
    assert all(len(r) == steps - resume_at for r in ranks)  # every process runs every remaining step once
    for step, whole in enumerate(expected):
        assert sorted(i for r in ranks for i in r[step]) == sorted(whole)


def test_steps_cover_the_target_images_within_one_batch():
    from spae.training import steps_for_images

    assert steps_for_images(4800 * (1 / 3), 8) == 200  # float noise in ratio x images does not add a step
    assert steps_for_images(2400, 8) == 300 and steps_for_images(2401, 8) == 301 and steps_for_images(3, 8) == 1
    with pytest.raises(InvalidConfigError):
        steps_for_images(0, 8)

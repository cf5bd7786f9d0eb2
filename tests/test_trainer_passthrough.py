"""`trainer.*` config keys reach Lightning's Trainer; an unknown one fails with the valid names."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spae.errors import InvalidConfigError
from spae.training import PROJECT_TRAINER_KEYS, build_trainer, lightning_trainer_kwargs

PRESETS = sorted((Path(__file__).resolve().parent.parent / "conf" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_key_reaches_the_trainer(preset):
    cfg = yaml.safe_load(preset.read_text())
    kwargs = lightning_trainer_kwargs(cfg)
    for key, value in cfg.items():
        if key not in PROJECT_TRAINER_KEYS:
            assert kwargs[key] == value, key


def test_cpu_preset_and_extra_keys_configure_the_real_trainer(tmp_path):
    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "trainer" / "cpu.yaml").read_text())
    cfg.update(log_every_n_steps=3, gradient_clip_val=0.5, gradient_clip_algorithm="value",
               accumulate_grad_batches=2, progress_bar=False)
    trainer = build_trainer(cfg, tmp_path, False, max_steps=7, max_time_s=None, checkpoint_every=5)
    assert trainer.log_every_n_steps == 3 and trainer.max_steps == 7
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "value"
    assert trainer.accumulate_grad_batches == 2


def test_unknown_key_fails_with_the_valid_names():
    with pytest.raises(InvalidConfigError, match="unknown trainer key.*trainer.gradient_clip_vall") as info:
        lightning_trainer_kwargs({"accelerator": "cpu", "gradient_clip_vall": 1.0})
    assert "gradient_clip_val" in str(info.value) and "max_time_s" in str(info.value)


def test_keys_the_recipe_owns_are_refused():
    with pytest.raises(InvalidConfigError, match="trainer.max_epochs is set by the training recipe"):
        lightning_trainer_kwargs({"max_epochs": 3})

"""One Lightning Trainer recipe for every training stage (tokenizer, Frozen baseline)."""
from __future__ import annotations

import dataclasses
import datetime
import math
import warnings
from pathlib import Path
from typing import Any

from spae.config import TrainerConfig
from spae.console import progress_enabled
from spae.errors import InvalidConfigError, UserError


def _resume_mid_stream_callback():
    import pytorch_lightning as pl

    class ResumeMidStream(pl.Callback):
        """Our data modules restart the batch stream exactly where a checkpoint left off (spae.datamodule), so
        for Lightning a resumed run starts a new epoch. Lightning instead restores how many batches of the
        interrupted epoch were done and counts them against the resumed loader's length: it ends that
        "epoch" early and replays part of the stream (another batch order than an uninterrupted run; found by
        tests/test_reliability_resume.py). So the in-epoch batch counters are zeroed when a checkpoint loads.
        Hand-written: Lightning only supports this for loaders that save their own position (torchdata's
        StatefulDataLoader), which a sampler sharded by DDP is not."""

        def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
            progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
            if not progress:
                return
            # a checkpoint saved in on_train_batch_end has not yet counted that batch as completed; Lightning
            # adds it on restart, so start the count that much below zero to land on 0
            lag = int(progress["total"]["processed"]) - int(progress["total"]["completed"])
            progress["current"].update(ready=0, started=0, processed=0, completed=-lag)

    # Lightning's warning that such a resume "can cause unreliable results" is answered by this callback
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    return ResumeMidStream()


# TrainerConfig fields this project reads itself; the other fields and any extra key go to Lightning's Trainer.
PROJECT_TRAINER_KEYS = frozenset({
    "max_steps",  # training batches; the stage converts them to optimizer steps
    "max_time_s", "batch_size", "num_workers", "checkpoint_every_n_steps", "progress_bar", "progress_refresh",
    "images_seen_ratio",
})
# Trainer arguments the recipe sets itself: the run's length, checkpoints, logger and validation are the
# stage's business (a user value would silently fight with them), so setting one is an error.
RECIPE_TRAINER_ARGS = frozenset({
    "max_steps", "max_epochs", "max_time", "callbacks", "logger", "enable_progress_bar", "default_root_dir",
    "num_sanity_val_steps", "limit_val_batches", "enable_model_summary",
})


def split_trainer_config(trainer_cfg: "dict | TrainerConfig") -> tuple[TrainerConfig, dict]:
    """(the typed settings, the extra `pl.Trainer` arguments): every key that is not a TrainerConfig field and is
    an argument of Lightning's Trainer passes through unchanged (e.g. `+trainer.gradient_clip_val=1`,
    `+trainer.deterministic=true`); an unknown key fails loudly with the valid names instead of being dropped."""
    import inspect

    import pytorch_lightning as pl

    if isinstance(trainer_cfg, TrainerConfig):
        return trainer_cfg, {}
    fields = {f.name for f in dataclasses.fields(TrainerConfig)}
    extra = {k: v for k, v in (trainer_cfg or {}).items() if k not in fields}
    lightning = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    owned = sorted(set(extra) & RECIPE_TRAINER_ARGS)
    if owned:
        raise InvalidConfigError(f"trainer.{owned[0]} is set by the training recipe (spae.training.build_trainer), "
                                 "not by the config: use trainer.max_steps (training batches) and trainer.max_time_s.")
    unknown = sorted(set(extra) - lightning)
    if unknown:
        valid = sorted((lightning - RECIPE_TRAINER_ARGS) | fields)
        raise InvalidConfigError(f"unknown trainer key(s) {', '.join('trainer.' + k for k in unknown)}: neither a "
                                 f"pytorch_lightning.Trainer argument nor one of this project's. Valid keys: "
                                 f"{', '.join(valid)}.")
    typed = TrainerConfig.from_dict({k: v for k, v in trainer_cfg.items() if k in fields})
    return typed, extra


def lightning_extras(trainer_cfg: dict) -> dict:
    """The `trainer.*` keys passed through to Lightning beyond the typed ones (e.g. gradient_clip_val), for the
    training stages' keys: they change the model, and a config without any keeps its key. One at Lightning's own
    default (`gradient_clip_val: null`, `accumulate_grad_batches: 1`) changes nothing, so it is left out too."""
    _, extra = split_trainer_config(trainer_cfg)
    defaults = lightning_trainer_defaults()
    extra = {k: v for k, v in extra.items() if not _is_default(v, defaults[k])}
    return {"lightning_args": extra} if extra else {}


def lightning_trainer_defaults() -> dict[str, Any]:
    """{argument: default} of Lightning's Trainer (the schema of the keys `trainer.*` passes through)."""
    import inspect

    import pytorch_lightning as pl

    return {name: p.default for name, p in inspect.signature(pl.Trainer.__init__).parameters.items()
            if name != "self" and p.default is not inspect.Parameter.empty}


def _is_default(value: Any, default: Any) -> bool:
    """The same value and type (1 and 1.0, 1 and True differ: never conflate what Lightning could tell apart)."""
    return type(value) is type(default) and value == default


def lightning_trainer_kwargs(trainer_cfg: "dict | TrainerConfig") -> dict:
    """Every argument the config gives Lightning's Trainer (the typed fields that are Trainer arguments, plus
    the passed-through extras)."""
    typed, extra = split_trainer_config(trainer_cfg)
    settings = {k: v for k, v in typed.to_dict().items() if k not in PROJECT_TRAINER_KEYS}
    return {**settings, **extra}


def build_trainer(trainer_cfg: "dict | TrainerConfig", out_dir: Path, logger: Any, *, max_steps: int,
                  max_time_s: float | None, checkpoint_every: int):
    """A Trainer that checkpoints into `out_dir/checkpoints` (last.ckpt for resume), stops at `max_steps`
    optimizer steps or `max_time_s` seconds (a safety cap; steps make runs reproducible), and has no
    validation loop (evaluation is its own stage). Other `trainer.*` keys reach Lightning as they are."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    typed, _ = split_trainer_config(trainer_cfg)  # missing keys: conf/trainer/cpu.yaml's (spae.config)
    callbacks = [ModelCheckpoint(dirpath=str(Path(out_dir) / "checkpoints"), save_last=True, save_top_k=1,
                                 every_n_train_steps=int(checkpoint_every), filename="step{step}",
                                 auto_insert_metric_name=False), _resume_mid_stream_callback()]
    progress = bool(typed.progress_bar) and progress_enabled()  # never carriage-return bars in a log file
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=int(typed.progress_refresh)))
    return pl.Trainer(
        **lightning_trainer_kwargs(trainer_cfg), max_steps=int(max_steps), max_epochs=-1,
        max_time=datetime.timedelta(seconds=float(max_time_s)) if max_time_s else None,
        callbacks=callbacks, logger=logger, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out_dir),
    )


def check_resume_checkpoint(path: Path, module) -> dict:
    """The checkpoint a stage is about to resume from, checked against the module it would be loaded into:
    every saved tensor must exist in the module with the same shape. A checkpoint from another config (a
    file copied in, a folder reused after a code change) fails here with the file named and the fix,
    instead of deep inside Lightning's load_state_dict. Returns the checkpoint (weights_only=True)."""
    from spae.errors import CheckpointMismatchError
    from spae.io import torch_load_safe

    checkpoint = torch_load_safe(path)
    saved = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointMismatchError(f"{path} is not a Lightning training checkpoint (no state_dict); delete it "
                                      "to train from the start")
    expected = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in saved.items()
             if k in expected and hasattr(v, "shape") and tuple(v.shape) != tuple(expected[k].shape)]
    unknown = [k for k in saved if k not in expected]
    missing = [k for k in expected if k not in saved and not any(k.startswith(p) for p in _frozen(module))]
    if wrong or unknown or missing:
        parts = [f"{len(wrong)} tensors of another shape, e.g. {', '.join(wrong[:3])}" if wrong else "",
                 f"unknown tensors {unknown[:3]}" if unknown else "", f"missing tensors {missing[:3]}" if missing else ""]
        raise CheckpointMismatchError(
            f"the checkpoint {path} was written by another model configuration: "
            + "; ".join(p for p in parts if p) + f". Delete {Path(path).parent} to train this configuration "
            "from the start (or rerun with force=[<stage>]), or restore the config that wrote it.")
    return checkpoint


def _frozen(module) -> tuple[str, ...]:
    """State-dict prefixes a module leaves out of its checkpoints (rebuilt from packages, e.g. perceptual nets)."""
    prefixes = getattr(module, "_frozen_prefixes", None)
    return tuple(prefixes()) if callable(prefixes) else ()



# ----------------------------------------------------------------------------------------- batch and budget
def device_count(trainer_cfg: dict) -> int:
    """Processes per node the Trainer will start for `trainer.devices`: an int (-1 = every visible GPU), a
    list of device ids, "auto", or a string ("4", "0,1"). Explicit counts are taken as written (a key for an
    8-GPU config is computed on any machine); -1 and "auto" count the visible devices, as Lightning does."""
    devices = trainer_cfg.get("devices", 1)
    accelerator = str(trainer_cfg.get("accelerator", "cpu")).lower()
    if isinstance(devices, str):
        text = devices.strip().lower()
        if text == "auto":
            return _visible_devices(accelerator)
        if "," in text or text.startswith("["):
            return len([d for d in text.strip("[]").split(",") if d.strip()])
        try:
            devices = int(text)
        except ValueError:
            raise InvalidConfigError(f"trainer.devices={devices!r} is not a count, a list of ids or 'auto'") from None
    if isinstance(devices, (list, tuple)):
        if not devices:
            raise InvalidConfigError("trainer.devices is an empty list; give at least one device id")
        return len(devices)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices == 0 or devices < -1:
        raise InvalidConfigError(f"trainer.devices={devices!r}: use a count >= 1, -1 (every GPU), a list of ids "
                                   "or 'auto'")
    return _visible_devices(accelerator) if devices == -1 else devices


def _visible_devices(accelerator: str) -> int:
    """Lightning's count for devices=-1 or "auto": every visible GPU, else one CPU process."""
    import torch

    gpus = torch.cuda.device_count() if accelerator in ("gpu", "cuda", "auto") else 0
    if gpus:
        return gpus
    if accelerator in ("gpu", "cuda"):
        raise InvalidConfigError(f"trainer.devices asks for every visible GPU (accelerator={accelerator}) but "
                                   "none is visible; set trainer.devices to a count or use trainer=cpu")
    return 1  # CPU (and MPS): one process


def world_size(trainer_cfg: dict) -> int:
    """Training processes in all: devices per node x nodes."""
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if nodes < 1:
        raise InvalidConfigError(f"trainer.num_nodes={nodes}: must be >= 1")
    return device_count(trainer_cfg) * nodes


def effective_batch(trainer_cfg: dict, per_device_batch: int | None = None) -> int:
    """Images per optimiser step over all processes: devices x nodes x per-device batch x gradient accumulation.
    `per_device_batch` defaults to trainer.batch_size (Frozen passes its own method.batch_size)."""
    batch = int(trainer_cfg["batch_size"] if per_device_batch is None else per_device_batch)
    if batch < 1:
        raise InvalidConfigError(f"batch size {batch}: must be >= 1")
    accumulation = int(trainer_cfg.get("accumulate_grad_batches", 1) or 1)
    if accumulation != 1:
        # the data modules count one batch per optimiser step (stream position, resume): not wired for more
        raise InvalidConfigError(f"trainer.accumulate_grad_batches={accumulation} is not supported (the training "
                                   "stages consume one batch per optimiser step); raise trainer.batch_size instead")
    return world_size(trainer_cfg) * batch * accumulation


def images_seen(steps: int, batch: int) -> int:
    """Pretraining images a run reads (repeats counted): optimiser steps x effective batch."""
    return int(steps) * int(batch)


def steps_for_images(target_images: float, batch: int) -> int:
    """The fewest optimiser steps of `batch` images that read at least `target_images` (at least one step);
    they read fewer than one batch more than the target."""
    if not target_images > 0:
        raise InvalidConfigError(f"a training budget of {target_images} images: must be > 0")
    target = round(float(target_images), 6)  # 1/3 x 4800 is 1600, not 1600.0000000000002
    steps = max(1, math.ceil(target / int(batch)))
    assert 0 <= steps * batch - target < batch or steps == 1, (steps, batch, target_images)
    return steps


def check_world_size(trainer, trainer_cfg: dict) -> None:
    """The effective batch (and with it the run's identity) was computed from the config's device count; the
    Trainer must have started exactly that many processes."""
    expected = world_size(trainer_cfg)
    if trainer.world_size != expected:
        raise RuntimeError(f"the Trainer runs {trainer.world_size} process(es) but trainer.devices x num_nodes gives "
                           f"{expected}; the stage key (effective batch) would be wrong")


class TrainingPaused(UserError):
    """A wall-time cap stopped training before max_steps; the checkpoint is kept and a rerun continues."""


def stop_if_paused(steps: int, max_steps: int, cap_s, cap_key: str, out_dir: Path) -> None:
    """A model trained for fewer steps than configured must never be cached as the configured model (on a busy
    machine a time cap used to yield, silently, a 36-step tokenizer reused by every later run). So a binding
    cap pauses training: the caller marks nothing as done, the message is clear, and the same command resumes
    from the checkpoint."""
    if steps < max_steps:
        raise TrainingPaused(f"training stopped by {cap_key}={cap_s} after {steps} of {max_steps} steps; the "
                             f"checkpoint in {out_dir / 'checkpoints'} is kept: rerun the same command to continue "
                             f"(it resumes there), or raise {cap_key} (null = no cap)")

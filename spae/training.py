"""One Lightning Trainer recipe for every training stage (tokenizer, Frozen baseline)."""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any


def build_trainer(trainer_cfg: dict, out_dir: Path, logger: Any, *, max_steps: int,
                  max_time_s: float | None, checkpoint_every: int):
    """A Trainer that checkpoints into `out_dir/checkpoints` (last.ckpt for resume), stops at `max_steps`
    optimizer steps or `max_time_s` seconds (a safety cap; steps make runs reproducible), and has no
    validation loop (evaluation is its own stage)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    callbacks = [ModelCheckpoint(dirpath=str(Path(out_dir) / "checkpoints"), save_last=True, save_top_k=1,
                                 every_n_train_steps=int(checkpoint_every), filename="step{step}",
                                 auto_insert_metric_name=False)]
    progress = bool(trainer_cfg.get("progress_bar", True))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=int(trainer_cfg.get("progress_refresh", 5))))
    return pl.Trainer(
        accelerator=trainer_cfg.get("accelerator", "cpu"), devices=trainer_cfg.get("devices", 1),
        num_nodes=trainer_cfg.get("num_nodes", 1), strategy=trainer_cfg.get("strategy", "auto"),
        precision=trainer_cfg.get("precision", "32-true"), max_steps=int(max_steps), max_epochs=-1,
        max_time=datetime.timedelta(seconds=float(max_time_s)) if max_time_s else None,
        callbacks=callbacks, logger=logger, enable_progress_bar=progress,
        log_every_n_steps=int(trainer_cfg.get("log_every_n_steps", 10)), enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out_dir),
    )

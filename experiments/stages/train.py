"""Stage `train`: train the SPAE tokenizer (or its LQAE variant, method=lqae) with Lightning.

Checkpoints (ModelCheckpoint, save_last) go to <stage dir>/checkpoints; an interrupted stage resumes from
last.ckpt with the same data order and per-step randomness, so it ends with the same weights. The final
weights are saved as tokenizer.safetensors + tokenizer.json; spae.tokenizer.load_tokenizer reads them.

`trainer.max_steps` counts training batches (Lightning's global_step counts both optimisers' steps, so
the Trainer gets 2 x max_steps); `trainer.max_time_s` optionally caps the wall time as well.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from experiments.pipeline import StageContext, stage
from spae.errors import UserError
from spae.tracking.runs import training_run
from spae.training import (build_trainer, check_resume_checkpoint, effective_batch, images_seen, lightning_extras,
                           world_size)

log = logging.getLogger(__name__)

TOKENIZER_METHODS = ("spae", "lqae")


def tokenizer_config(cfg: dict) -> dict:
    """The JSON-able config the tokenizer module is built from (its saved hyper-parameters)."""
    method = dict(cfg["method"])
    if method.get("name") not in TOKENIZER_METHODS or method.get("kind") != "tokenizer":
        raise ValueError(f"the train stage trains tokenizers ({', '.join(TOKENIZER_METHODS)}); method="
                         f"{method.get('name')!r} is not one: use method=spae or method=lqae")
    total_steps = int(cfg["trainer"]["max_steps"])  # for the cosine LR and semantic-weight schedules
    method["optim"] = {"total_steps": total_steps, **(method.get("optim") or {})}
    if method.get("semantic") is not None:
        method["semantic"] = {"total_steps": total_steps, **method["semantic"]}
    return {"model": cfg["model"], "method": method, "seed": int(cfg.get("seed", 0)),
            "offline": bool(cfg.get("offline", True))}


def relevance_function(ctx: StageContext, codebook):
    """images [B,3,H,W] in [0,1] -> normalised CLIP relevance [B, K] over the codebook words."""
    from spae.clip.scorer import RelevanceScorer

    cfg = ctx.cfg
    scorer = RelevanceScorer.from_stage(ctx.input_dir("clip"), codebook.words,
                                        templates=list(cfg["clip"].get("templates") or ["{word}"]),
                                        cache_dir=Path(cfg["paths"]["cache_dir"]))
    scorer.text_embeddings  # computed (or read from the cache) now, outside the training time budget
    return scorer.normalized_scores


class TrainingPaused(UserError):
    """A wall-time cap stopped training before max_steps; the checkpoint is kept and a rerun continues."""


def stop_if_paused(steps: int, max_steps: int, cap_s, cap_key: str, out_dir: Path) -> None:
    """A model trained for fewer steps than configured must never be cached as the configured model (on a busy
    machine a time cap used to yield, silently, a 36-step tokenizer reused by every later run). So a binding
    cap pauses the stage: no _SUCCESS marker, a clear message, and the same command resumes from the checkpoint."""
    if steps < max_steps:
        raise TrainingPaused(f"training stopped by {cap_key}={cap_s} after {steps} of {max_steps} steps; the "
                             f"checkpoint in {out_dir / 'checkpoints'} is kept: rerun the same command to continue "
                             f"(it resumes there), or raise {cap_key} (null = no cap)")


def training_batch(cfg: dict) -> dict:
    """Derived identity of the train stage: images per optimiser step over every process. A tokenizer trained
    on one device is not the one an 8-device config asks for (8x the images per step and in all). Lightning
    arguments passed through `trainer.*` (e.g. gradient_clip_val) join it when set."""
    return {"effective_batch": effective_batch(cfg["trainer"]), **lightning_extras(cfg["trainer"])}


def check_world_size(trainer, trainer_cfg: dict) -> None:
    """The key was computed from the config's device count; the Trainer must have started exactly that many."""
    expected = world_size(trainer_cfg)
    if trainer.world_size != expected:
        raise RuntimeError(f"the Trainer runs {trainer.world_size} process(es) but trainer.devices x num_nodes gives "
                           f"{expected}; the stage key (effective batch) would be wrong")


@stage("train", deps=("pretrain_data", "codebook", "clip"), distributed=True, derived=training_batch,
       version=2,  # 2: semantic loss without the image's own candidates among its negatives
       # trainer.max_time_s is no key: a cap that binds pauses the stage (see stop_if_paused), never shortens it.
       # The per-device batch stays a key beside the effective batch: the semantic loss's negatives and the
       # LeCam statistics are per process, so 2 devices x 8 is not the same training as 1 x 16.
       config_keys=("model", "method", "trainer.max_steps", "trainer.batch_size",
                    "trainer.precision", "codebook", "clip", "data.pretrain", "data.max_pretrain_images", "seed"))
def train_stage(ctx: StageContext) -> dict:
    import pytorch_lightning as pl
    import torch

    from spae.codebook import Codebook
    from spae.data import load_prepared
    from spae.datamodule import PretrainDataModule
    from spae.io import read_json
    from spae.tokenizer import CONFIG_FILE, WEIGHTS_FILE, SPAETokenizer, save_tokenizer

    cfg, out = ctx.cfg, ctx.out_dir
    if (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file():  # finished but not marked
        return read_json(out / CONFIG_FILE)["summary"]
    config = tokenizer_config(cfg)
    pl.seed_everything(config["seed"], workers=True)
    codebook = Codebook.load(ctx.input_dir("codebook"))
    relevance = relevance_function(ctx, codebook) if config["method"].get("semantic_loss") else None
    module = SPAETokenizer(config, codebook.embeddings, codebook.words, relevance)
    names = sorted((cfg["data"].get("pretrain") or {}).keys())
    if not names:
        raise ValueError("data.pretrain names no dataset to train the tokenizer on")
    datasets = [load_prepared(ctx.input_dir("pretrain_data"), "pretrain", n) for n in names]
    tr = cfg["trainer"]
    dm = PretrainDataModule(datasets, config["model"]["image_size"], int(tr["batch_size"]), config["seed"],
                            total_batches=int(tr["max_steps"]), num_workers=int(tr.get("num_workers", 0)),
                            mix=str(config["method"].get("pretrain_mix", "proportional")))
    run = training_run(ctx.logger, "train", config["method"]["name"], out, cfg)  # its own W&B run
    per_batch = module.optimizer_steps_per_batch  # Lightning counts every optimizer's step
    tr = cfg["trainer"]
    trainer = build_trainer(tr, out, run.lightning_logger(out), max_steps=int(tr["max_steps"]) * per_batch,
                            max_time_s=tr.get("max_time_s"),
                            checkpoint_every=int(tr.get("checkpoint_every_n_steps", 50)) * per_batch)
    check_world_size(trainer, tr)
    trainer.callbacks.extend(filter(None, [run.image_callback(dm.dataset, cfg.get("logger"))]))
    last = out / "checkpoints" / "last.ckpt"
    resumed = last.is_file()
    log.info("train %s: %s, %d pretraining images, resume=%s", config["method"]["name"], module.describe(),
             len(dm.dataset), resumed)
    start, first_step = time.perf_counter(), 0
    if resumed:
        first_step = check_resume_checkpoint(last, module)["global_step"] // per_batch  # UserError if foreign
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resumed else None)
    seconds = time.perf_counter() - start
    steps_run = module.iteration - first_step
    metrics = {k.removeprefix("train/"): round(float(v), 5) for k, v in trainer.callback_metrics.items()
               if k.startswith("train/")}
    summary = {
        "method": config["method"]["name"],
        "describe": module.describe(),
        "steps": module.iteration,
        "max_steps": int(tr["max_steps"]),
        "stopped_by_time": module.iteration < int(tr["max_steps"]),
        "batch_size": int(tr["batch_size"]),  # per process
        "world_size": trainer.world_size,
        "effective_batch": effective_batch(tr),  # images per step over all processes
        "images_seen": images_seen(module.iteration, effective_batch(tr)),  # repeats counted
        "pretrain_images": len(dm.dataset),
        "pretrain_datasets": names,
        "resumed": resumed,
        "fit_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, steps_run), 4),  # this attempt (fit incl. set-up)
        "metrics": {"final_train": metrics},
        # mean wall seconds per batch spent in each part of the step (this attempt; see describe for sizes)
        "step_seconds": {k: round(v / max(1, steps_run), 4) for k, v in sorted(module.step_seconds.items())},
    }
    stop_if_paused(module.iteration, int(tr["max_steps"]), tr.get("max_time_s"), "trainer.max_time_s", out)
    if not trainer.is_global_zero:  # DDP: ranks hold identical weights; rank 0 alone writes them
        return summary
    save_tokenizer(module, out, extra={"summary": summary})
    run.log_checkpoint([out / WEIGHTS_FILE, out / CONFIG_FILE], summary)
    run.finish(summary)
    return summary

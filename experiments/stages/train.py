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

from experiments import clip_relevance
from experiments.pipeline import StageContext, stage
from spae.tracking.runs import training_run
from spae.training import (build_trainer, check_resume_checkpoint, check_world_size, effective_batch, images_seen,
                           lightning_extras, stop_if_paused)

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


def training_batch(cfg: dict) -> dict:
    """Derived identity of the train stage: images per optimiser step over every process. A tokenizer trained
    on one device is not the one an 8-device config asks for (8x the images per step and in all). Lightning
    arguments passed through `trainer.*` (e.g. gradient_clip_val) join it when set."""
    return {"effective_batch": effective_batch(cfg["trainer"]), **lightning_extras(cfg["trainer"])}


@stage("train", deps=("pretrain_data", "codebook", "clip"), distributed=True, derived=training_batch,
       version=2,  # 2: semantic loss without the image's own candidates among its negatives
       # trainer.max_time_s is no key: a cap that binds pauses the stage (see stop_if_paused), never shortens it.
       # The per-device batch stays a key beside the effective batch: the semantic loss's negatives and the
       # LeCam statistics are per process, so 2 devices x 8 is not the same training as 1 x 16.
       config_keys=("model", "method", "trainer.max_steps", "trainer.batch_size",
                    "trainer.precision", "codebook", "clip", "data.pretrain", "data.max_pretrain_images", "seed"))
def train_stage(ctx: StageContext) -> dict:
    from spae.io import read_json
    from spae.tokenizer import CONFIG_FILE, WEIGHTS_FILE, save_tokenizer

    cfg, out, tr = ctx.cfg, ctx.out_dir, ctx.cfg["trainer"]
    if (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file():  # finished but not marked
        return read_json(out / CONFIG_FILE)["summary"]
    config = tokenizer_config(cfg)
    module = seeded_tokenizer(ctx, config)
    dm, names = pretrain_datamodule(ctx, config)
    run = training_run(ctx.logger, "train", config["method"]["name"], out, cfg)  # its own W&B run
    per_batch = module.optimizer_steps_per_batch  # Lightning counts every optimizer's step
    trainer = build_trainer(tr, out, run.lightning_logger(out), max_steps=int(tr["max_steps"]) * per_batch,
                            max_time_s=tr.get("max_time_s"),
                            checkpoint_every=int(tr.get("checkpoint_every_n_steps", 50)) * per_batch)
    check_world_size(trainer, tr)
    trainer.callbacks.extend(filter(None, [run.image_callback(dm.dataset, cfg.get("logger"))]))
    fit = fit_tokenizer(trainer, module, dm, out / "checkpoints" / "last.ckpt", config["method"]["name"])
    summary = training_summary(config, tr, module, trainer, len(dm.dataset), names, fit)
    stop_if_paused(module.iteration, int(tr["max_steps"]), tr.get("max_time_s"), "trainer.max_time_s", out)
    if not trainer.is_global_zero:  # DDP: ranks hold identical weights; rank 0 alone writes them
        return summary
    save_tokenizer(module, out, extra={"summary": summary})
    run.log_checkpoint([out / WEIGHTS_FILE, out / CONFIG_FILE], summary)
    run.finish(summary)
    return summary


def seeded_tokenizer(ctx: StageContext, config: dict):
    """The SPAETokenizer to train, built after seeding (its initial weights follow the seed) over the codebook,
    with the CLIP relevance of the semantic loss when the method has one."""
    import pytorch_lightning as pl

    from spae.codebook import Codebook
    from spae.tokenizer import SPAETokenizer

    pl.seed_everything(config["seed"], workers=True)
    codebook = Codebook.load(ctx.input_dir("codebook"))
    relevance_fn = clip_relevance.relevance_function(ctx, codebook) if config["method"].get("semantic_loss") else None
    return SPAETokenizer(config, codebook.embeddings, codebook.words, relevance_fn)


def pretrain_datamodule(ctx: StageContext, config: dict) -> tuple:
    """(the data module streaming data.pretrain's sets, their names)."""
    from spae.data import load_prepared
    from spae.datamodule import PretrainDataModule

    cfg, tr = ctx.cfg, ctx.cfg["trainer"]
    names = sorted((cfg["data"].get("pretrain") or {}).keys())
    if not names:
        raise ValueError("data.pretrain names no dataset to train the tokenizer on")
    datasets = [load_prepared(ctx.input_dir("pretrain_data"), "pretrain", n) for n in names]
    dm = PretrainDataModule(datasets, config["model"]["image_size"], int(tr["batch_size"]), config["seed"],
                            total_batches=int(tr["max_steps"]), num_workers=int(tr.get("num_workers", 0)),
                            mix=str(config["method"].get("pretrain_mix", "proportional")))
    return dm, names


def fit_tokenizer(trainer, module, dm, last: Path, method: str) -> dict:
    """trainer.fit, resumed from the checkpoint `last` when there: whether it resumed, the fit's wall seconds and
    the steps this attempt ran."""
    resumed = last.is_file()
    log.info("train %s: %s, %d pretraining images, resume=%s", method, module.describe(), len(dm.dataset), resumed)
    start, first_step = time.perf_counter(), 0
    if resumed:  # UserError if the checkpoint belongs to another model
        first_step = check_resume_checkpoint(last, module)["global_step"] // module.optimizer_steps_per_batch
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resumed else None)
    return {"resumed": resumed, "seconds": time.perf_counter() - start, "steps_run": module.iteration - first_step}


def training_summary(config: dict, tr: dict, module, trainer, pretrain_images: int, names: list[str],
                     fit: dict) -> dict:
    """The train stage's summary: what was trained, for how long and on what, the final training metrics."""
    seconds, steps_run = fit["seconds"], fit["steps_run"]
    metrics = {k.removeprefix("train/"): round(float(v), 5) for k, v in trainer.callback_metrics.items()
               if k.startswith("train/")}
    return {
        "method": config["method"]["name"],
        "describe": module.describe(),
        "steps": module.iteration,
        "max_steps": int(tr["max_steps"]),
        "stopped_by_time": module.iteration < int(tr["max_steps"]),
        "batch_size": int(tr["batch_size"]),  # per process
        "world_size": trainer.world_size,
        "effective_batch": effective_batch(tr),  # images per step over all processes
        "images_seen": images_seen(module.iteration, effective_batch(tr)),  # repeats counted
        "pretrain_images": pretrain_images,
        "pretrain_datasets": names,
        "resumed": fit["resumed"],
        "fit_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / max(1, steps_run), 4),  # this attempt (fit incl. set-up)
        "metrics": {"final_train": metrics},
        # mean wall seconds per batch spent in each part of the step (this attempt; see describe for sizes)
        "step_seconds": {k: round(v / max(1, steps_run), 4) for k, v in sorted(module.step_seconds.items())},
    }

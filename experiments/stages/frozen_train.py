"""Stage `frozen_train`: train the Frozen baseline's vision encoder for the LLM that will read it (cfg llm).

The encoder learns to emit `method.n_prefix` input embeddings from which the frozen LLM predicts the
image's caption (pretraining pairs of the data stage). Lightning checkpoints go to <stage dir>/checkpoints
and an interrupted stage resumes from last.ckpt (loaded with weights_only=True; the LLM is never in it).
The encoder is saved as frozen_encoder.safetensors + frozen_encoder.json (spae.frozen_baseline
.load_frozen_encoder). The summary reports a sanity check: the held-out caption loss before and after
training, and the fraction of held-out evaluation images whose greedy caption names the right class.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from experiments.pipeline import StageContext, stage
from spae.errors import InvalidConfigError
from spae.tracking.runs import training_run
from spae.training import (build_trainer, check_world_size, effective_batch, images_seen, lightning_extras,
                           steps_for_images, stop_if_paused)

log = logging.getLogger(__name__)

CAPTIONED_EVAL_ROLES = ("classification", "vqa", "captioning")
BEFORE_FILE = "heldout_before.json"


def frozen_method(cfg: dict) -> dict:
    method = dict(cfg["method"])
    if method.get("name") != "frozen" or method.get("kind") != "prefix":
        raise ValueError(f"the frozen_train stage trains the Frozen baseline; method={method.get('name')!r} "
                         "is not it: use method=frozen")
    if cfg["llm"].get("backend") != "hf_local":
        raise ValueError(f"Frozen feeds input embeddings to the LLM, which needs a local model "
                         f"(llm backend hf_local); llm={cfg['llm'].get('name')!r} uses "
                         f"{cfg['llm'].get('backend')!r}. Choose e.g. llm=gemma3_270m or llm=hf.")
    return method


def frozen_budget(cfg: dict) -> dict:
    """Frozen's training length, derived so that the compared methods get the same pretraining: it reads
    method.images_seen_ratio x the images a tokenizer reads (trainer.max_steps x the trainer's effective
    batch), in steps of its own effective batch (method.batch_size per process, the trainer's processes)."""
    method, trainer = cfg["method"], cfg["trainer"]
    if method.get("max_steps") is not None:
        raise InvalidConfigError(f"method.max_steps={method['max_steps']} is not read: Frozen's steps follow from "
                                 "method.images_seen_ratio (pretraining images relative to the tokenizers', "
                                 "trainer.max_steps x trainer.batch_size x processes); set that instead")
    ratio = method.get("images_seen_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise InvalidConfigError(f"method.images_seen_ratio={ratio!r}: give a number > 0 (1.0 = as many pretraining "
                                 "images as the tokenizers read)")
    reference = images_seen(int(trainer["max_steps"]), effective_batch(trainer))
    batch = effective_batch(trainer, int(method["batch_size"]))
    steps = steps_for_images(ratio * reference, batch)
    seen = images_seen(steps, batch)
    assert -1e-6 <= seen - ratio * reference < batch or steps == 1, (seen, ratio, reference, batch)
    return {"images_seen_ratio": float(ratio), "reference_images": reference, "effective_batch": batch,
            "steps": steps, "images_seen": seen}


def frozen_identity(cfg: dict) -> dict:
    """Derived part of frozen_train's key: its effective batch and step count (trainer.* enters only here)."""
    return {**frozen_budget({**cfg, "method": frozen_method(cfg)}), **lightning_extras(cfg["trainer"])}


def heldout_rows(data_dir: Path, data_cfg: dict, total: int, seed: int) -> list[dict]:
    """Up to `total` captioned rows drawn (seeded) evenly from the evaluation sets: never trained on."""
    import numpy as np

    from spae.data import load_prepared

    sets = [(role, data_cfg[role]["name"]) for role in CAPTIONED_EVAL_ROLES if data_cfg.get(role)]
    per_set = max(1, total // max(1, len(sets)))
    rows: list[dict] = []
    for role, name in sets:
        ds = load_prepared(data_dir, role, name)
        captioned = [i for i, c in enumerate(ds["caption"]) if c and c.strip()]
        if not captioned:
            continue
        rng = np.random.default_rng(seed)
        picked = sorted(rng.choice(captioned, size=min(per_set, len(captioned)), replace=False).tolist())
        for row in ds.select(picked):
            rows.append({"set": f"{role}/{name}", "image": row["image"], "caption": row["caption"],
                         "label_name": row["label_name"]})
    if not rows:
        raise ValueError("no evaluation set with captions to check the Frozen encoder on "
                         f"(looked at data.{', data.'.join(CAPTIONED_EVAL_ROLES)})")
    return rows


def heldout_loss(module, rows: list[dict], image_size: int, batch_size: int = 16) -> dict:
    """Mean caption loss (nats/token) of the held-out rows, overall and per set."""
    import torch

    from spae.data.images import to_tensor

    losses: list[float] = []
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start: start + batch_size]
                images = to_tensor([r["image"] for r in chunk], image_size).to(module.device)
                losses += module.loss(images, [r["caption"] for r in chunk], reduction="none").tolist()
    finally:
        module.train(was_training)
    by_set: dict[str, list[float]] = {}
    for row, loss in zip(rows, losses):
        by_set.setdefault(row["set"], []).append(loss)
    return {"all": round(sum(losses) / len(losses), 4),
            **{s: round(sum(v) / len(v), 4) for s, v in by_set.items()}}


def zero_shot_captions(encoder, loaded, rows: list[dict], method: dict) -> tuple[dict, list[list]]:
    """Greedy captions from [prefix][caption_prompt] alone (no examples) and whether they name the class."""
    from spae.frozen_baseline import caption_target, names_target, prefix_embeddings
    from spae.llm.hf_local import HFLocalBackend

    backend = HFLocalBackend.from_loaded(loaded, batch_size=16)
    prefixes = prefix_embeddings(encoder, [r["image"] for r in rows])
    prompt = method.get("caption_prompt") or ""
    prompts = [[p] + ([prompt] if prompt else []) for p in prefixes]
    texts = backend.generate_from_embeds(prompts, int(method["heldout_max_new_tokens"]), stop=["\n"])
    table, hits = [], {}
    for row, text in zip(rows, texts):
        target = caption_target(row["label_name"], row["caption"])
        ok = names_target(text, target)
        hits.setdefault(row["set"], []).append(ok)
        table.append([row["set"], row["caption"], target, text.strip(), ok])
    everything = [ok for v in hits.values() for ok in v]
    fractions = {"all": round(sum(everything) / len(everything), 4),
                 **{s: round(sum(v) / len(v), 4) for s, v in hits.items()}}
    return fractions, table


def markdown(summary: dict, samples: list[list]) -> str:
    m = summary["metrics"]
    lines = [f"### Frozen baseline training ({summary['llm']}, {summary['n_prefix']} prefix embeddings)", "",
             f"{summary['steps']} steps of batch {summary['effective_batch']} = {summary['images_seen']} images seen "
             f"({summary['images_seen_ratio']:g} x the tokenizers' {summary['reference_images']}) in "
             f"{summary['fit_seconds']} s ({summary['pretrain_images']} pretraining pairs"
             + (", stopped by the time cap" if summary["stopped_by_time"] else "") + ").", "",
             "| held-out set | caption loss before | after | greedy caption names the class (zero-shot) |",
             "|---|---:|---:|---:|"]
    for key in m["heldout_loss_after"]:
        lines.append(f"| {key} | {m['heldout_loss_before'].get(key, '-')} | {m['heldout_loss_after'][key]} | "
                     f"{m['heldout_caption_names_class'].get(key, '-')} |")
    lines += ["", "| set | reference | generated | right |", "|---|---|---|---|"]
    cell = lambda text: repr(text).replace("|", "\\|")  # noqa: E731  (generated text may hold "|")
    lines += [f"| {s} | {ref} | {cell(gen)} | {'yes' if ok else 'no'} |" for s, ref, _, gen, ok in samples[:8]]
    return "\n".join(lines)


# 2: punctuation-insensitive class check; 3: steps derived from method.images_seen_ratio (frozen_budget).
# The held-out check reads the evaluation sets (a report only): a new evaluation set reuses the trained
# encoder, whose summary names the sets the check was measured on.
@stage("frozen_train", deps=("pretrain_data",), report_deps=("eval_data",), version=3, distributed=True,
       derived=frozen_identity,
       # of trainer.*, steps and batch enter through frozen_identity (effective batch, steps); max_time_s never
       config_keys=("method", "llm", "trainer.precision", "data.pretrain", "data.max_pretrain_images", "seed"))
def frozen_train(ctx: StageContext) -> dict:
    import pytorch_lightning as pl

    from spae.frozen_baseline import CONFIG_FILE, WEIGHTS_FILE, save_frozen_encoder
    from spae.io import read_json
    from spae.llm.loading import load_llm

    cfg, out = ctx.cfg, ctx.out_dir
    method = frozen_method(cfg)
    if (out / WEIGHTS_FILE).is_file() and (out / CONFIG_FILE).is_file():  # finished but not marked
        return read_json(out / CONFIG_FILE)["summary"]
    budget = frozen_budget(cfg)
    seed = int(cfg.get("seed", 0))
    pl.seed_everything(seed, workers=True)
    loaded = load_llm(cfg["llm"], cfg["paths"]["cache_dir"])
    encoder, module = build_captioner(method, loaded)
    dm, names = caption_datamodule(ctx, method, budget["steps"], seed)
    rows = heldout_rows(ctx.input_dir("eval_data"), cfg["data"], int(method["heldout_images"]), seed)

    last = out / "checkpoints" / "last.ckpt"
    resumed = last.is_file()
    before = heldout_before(out / BEFORE_FILE, module, rows, int(method["image_size"]))
    run = training_run(ctx.logger, "frozen_train", "frozen", out, cfg)  # its own W&B run
    trainer = build_trainer(cfg["trainer"], out, run.lightning_logger(out), max_steps=budget["steps"],
                            max_time_s=method.get("max_time_s"),
                            checkpoint_every=int(method["checkpoint_every_n_steps"]))
    check_world_size(trainer, cfg["trainer"])
    log.info("frozen_train: %s prefix x %d for %s, %d pretraining pairs, %d steps x %d = %d images seen (%g x the "
             "tokenizers'), resume=%s", method["n_prefix"], embed_dim(loaded), loaded.name, len(dm.dataset),
             budget["steps"], budget["effective_batch"], budget["images_seen"], budget["images_seen_ratio"], resumed)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resumed else None, weights_only=True)
    fit = {"steps": int(trainer.global_step), "seconds": time.perf_counter() - start, "resumed": resumed,
           "world_size": trainer.world_size, "pretrain_images": len(dm.dataset), "pretrain_datasets": names}
    stop_if_paused(fit["steps"], budget["steps"], method.get("max_time_s"), "method.max_time_s", out)

    module.to(loaded.model.device)  # the check runs where the LLM is (Lightning returns the module to the CPU)
    check = {"before": before, "after": heldout_loss(module, rows, int(method["image_size"]))}
    check_start = time.perf_counter()
    check["fractions"], samples = zero_shot_captions(encoder, loaded, rows, method)
    check["seconds"] = time.perf_counter() - check_start
    summary = frozen_summary(method, loaded, budget, fit, check, len(rows), samples)
    save_frozen_encoder(encoder, out, extra={"llm": loaded.name, "summary": summary})
    if ctx.logger is not None:
        ctx.logger.log_metrics({"frozen_train": summary["metrics"]})
        ctx.logger.log_table("frozen_train/heldout_captions", ["set", "reference", "target", "generated", "right"],
                             samples)
    run.log_checkpoint([out / WEIGHTS_FILE, out / CONFIG_FILE], summary)
    run.finish(summary)
    return summary


def embed_dim(loaded) -> int:
    """Width of the LLM's input embeddings: what each prefix embedding must have."""
    return loaded.model.get_input_embeddings().weight.shape[1]


def build_captioner(method: dict, loaded) -> tuple:
    """(the vision encoder, the Lightning module that trains it to caption through the frozen LLM)."""
    from spae.frozen_baseline import FrozenCaptioner, FrozenVisionEncoder, typical_embedding_norm

    encoder = FrozenVisionEncoder(int(method["n_prefix"]), embed_dim(loaded), method["backbone"],
                                  int(method["image_size"]), embed_norm=typical_embedding_norm(loaded.model),
                                  pretrained=bool(method.get("pretrained_backbone", True)),
                                  backbone_kwargs=({"freeze_batchnorm": bool(method["freeze_batchnorm"])}
                                                   if method["backbone"] == "efficientnet_lite0" else None))
    module = FrozenCaptioner(encoder, loaded.model, loaded.tokenizer, method.get("caption_prompt") or "",
                             lr=method["lr"], backbone_lr=method["backbone_lr"],
                             weight_decay=method["weight_decay"], max_caption_tokens=method["max_caption_tokens"],
                             append_eos=method["append_eos"])
    return encoder, module


def caption_datamodule(ctx: StageContext, method: dict, steps: int, seed: int) -> tuple:
    """(the data module streaming data.pretrain's image-caption pairs for `steps` batches, the sets' names)."""
    from spae.data import load_prepared
    from spae.frozen_baseline import CaptionDataModule

    names = sorted((ctx.cfg["data"].get("pretrain") or {}).keys())
    if not names:
        raise ValueError("data.pretrain names no dataset of image-caption pairs to train Frozen on")
    dm = CaptionDataModule([load_prepared(ctx.input_dir("pretrain_data"), "pretrain", n) for n in names],
                           int(method["image_size"]), int(method["batch_size"]), seed, total_batches=steps,
                           num_workers=int(ctx.cfg["trainer"].get("num_workers", 0)))
    return dm, names


def heldout_before(path: Path, module, rows: list[dict], image_size: int) -> dict:
    """The held-out caption loss before training: measured once and saved to `path`, so a resumed run reports
    the loss before the interrupted run's first step."""
    from spae.io import read_json, write_json_atomic

    if path.is_file():
        return read_json(path)
    before = heldout_loss(module, rows, image_size)
    write_json_atomic(path, before)
    return before


def frozen_summary(method: dict, loaded, budget: dict, fit: dict, check: dict, heldout_images: int,
                   samples: list[list]) -> dict:
    """The frozen_train stage's summary: the encoder, its training budget and run, the held-out check."""
    import torch

    summary = {
        "method": "frozen",
        "llm": loaded.name,
        "n_prefix": int(method["n_prefix"]),
        "embed_dim": embed_dim(loaded),
        "backbone": method["backbone"],
        "steps": fit["steps"],
        "max_steps": budget["steps"],
        "stopped_by_time": fit["steps"] < budget["steps"],
        "batch_size": int(method["batch_size"]),  # per process
        "world_size": fit["world_size"],
        **{k: budget[k] for k in ("effective_batch", "images_seen_ratio", "reference_images")},
        "images_seen": images_seen(fit["steps"], budget["effective_batch"]),  # repeats counted
        "pretrain_images": fit["pretrain_images"],
        "pretrain_datasets": fit["pretrain_datasets"],
        "heldout_images": heldout_images,
        "resumed": fit["resumed"],
        "fit_seconds": round(fit["seconds"], 2),
        "seconds_per_step": round(fit["seconds"] / max(1, fit["steps"]), 3),
        "check_seconds": round(check["seconds"], 2),
        "torch_threads": torch.get_num_threads(),
        "metrics": {
            "heldout_loss_before": check["before"],
            "heldout_loss_after": check["after"],
            # zero-shot: greedy caption from the prefix alone names the class (or shape+colour)
            "heldout_caption_names_class": check["fractions"],
        },
        "samples": [dict(zip(("set", "reference", "target", "generated", "right"), s)) for s in samples[:12]],
    }
    summary["markdown"] = markdown(summary, samples)
    return summary

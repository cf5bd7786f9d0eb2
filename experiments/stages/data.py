"""Stage `data`: load every dataset the config names and save it for the later stages.

Pretraining sets (data.pretrain.*) contribute their train split, limited by data.max_pretrain_images;
evaluation sets (data.classification / vqa / captioning / generation) their eval split, whole. A set
that cannot be had (e.g. a hub dataset offline) fails the stage with its clear error: nothing is skipped.
Images that cannot be decoded (empty, truncated, oversized files) are dropped and counted: the stage's
metrics give `skipped_images` for a dataset that had any, and its summary lists why (docs/reliability.md).
Later stages read them with spae.data.load_prepared(ctx.input_dir("data"), role, name).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from experiments.pipeline import StageContext, stage

log = logging.getLogger(__name__)

EVAL_ROLES = ("classification", "vqa", "captioning", "generation")


def planned(data_cfg: dict) -> list[tuple[str, str, dict, str, int | None]]:
    """(role, name, spec, split, limit) for every dataset of the data setup."""
    plan = []
    limit = data_cfg.get("max_pretrain_images")
    for name, spec in sorted((data_cfg.get("pretrain") or {}).items()):
        plan.append(("pretrain", name, {**spec, "config_path": f"data.pretrain.{name}"}, "train", limit))
    for role in EVAL_ROLES:
        spec = data_cfg.get(role)
        if spec:
            plan.append((role, spec.get("name", role), {**spec, "config_path": f"data.{role}"}, "eval", None))
    if not plan:
        raise ValueError("the data setup names no dataset (data.pretrain.* or data.classification, ...)")
    return plan


def describe(ds) -> dict:
    from spae.data import class_names

    names = class_names(ds)
    return {"rows": len(ds), "classes": len(names),
            "questions": sum(len(q) for q in ds["questions"]),
            "captioned": sum(1 for c in ds["caption"] if c)}


def markdown_table(rows: dict[str, dict], stand_in: bool, data_cfg: dict | None = None) -> str:
    lines = ["### Data", ""]
    if stand_in:
        lines += ["Embedded stand-in datasets (not the paper's): see conf/data/embedded.yaml.", ""]
    split = (data_cfg or {}).get("class_split")
    if split:
        lines += [f"Class split of {split.get('dataset')}: seen (pretraining) {', '.join(split['seen'])}; held out "
                  f"(evaluation only) {', '.join(split['held_out'])}. Setup: {data_cfg.get('world', '?')}.", ""]
    lines += ["| role/name | rows | classes | questions | captioned | caption source |",
              "|---|---:|---:|---:|---:|---|"]
    for key, r in rows.items():
        lines.append(f"| {key} | {r['rows']} | {r['classes']} | {r['questions']} | {r['captioned']} | "
                     f"{r['caption_source']} |")
    notes = [f"- {key}: {r['source_note']}" for key, r in rows.items() if r.get("source_note")]
    return "\n".join(lines + ([""] + notes if notes else []))


@stage("data", config_keys=("data", "seed"), version=2)  # 2: class filters, per-source notes, disjointness check
def prepare_data(ctx: StageContext) -> dict:
    from spae.data import drop_unreadable_images, load_split, save_prepared
    from spae.data.fairness import check_class_disjoint
    from spae.io import read_json, write_json_atomic
    from spae.data.prepared import prepared_path

    cfg = ctx.cfg
    check_class_disjoint(cfg["data"])  # before anything is built or trained
    cache_dir = str(Path(cfg["paths"]["cache_dir"]) / "datasets")
    offline = bool(cfg.get("offline", True))
    metrics: dict[str, dict] = {}
    saved: dict[str, str] = {}
    skipped: dict[str, list[str]] = {}
    for role, name, spec, split, limit in planned(cfg["data"]):
        key = f"{role}/{name}"
        target = prepared_path(ctx.out_dir, role, name)
        start = time.perf_counter()
        skipped_file = target.parent / f"{name}.skipped.json"
        if (target / "state.json").exists():  # resuming an interrupted stage
            from spae.data import load_prepared
            ds = load_prepared(ctx.out_dir, role, name)
            reasons = read_json(skipped_file) if skipped_file.exists() else []
        else:
            ds = load_split({**spec, "cache_dir": cache_dir}, split, offline=offline, limit=limit,
                            seed=int(cfg.get("seed", 0)))
            ds, reasons = drop_unreadable_images(ds)
            write_json_atomic(skipped_file, reasons)  # before the dataset: its presence marks completion
            save_prepared(ds, ctx.out_dir, role, name)
        sources = sorted({s for s in ds.unique("caption_source") if s})
        metrics[key] = {**describe(ds), "caption_source": ",".join(sources) or "none",
                        "source_note": ds.info.description or ""}
        if reasons:
            log.warning("data %s: skipped %d unreadable image(s), e.g. %s", key, len(reasons), reasons[0])
            metrics[key]["skipped_images"] = len(reasons)
            skipped[key] = reasons[:20]
        saved[key] = str(Path(role) / name)
        log.info("data %-28s %6d rows (%.1fs)", key, len(ds), time.perf_counter() - start)
    numbers = {k: {m: v for m, v in r.items() if m not in ("caption_source", "source_note")} for k, r in metrics.items()}
    if ctx.logger is not None:
        ctx.logger.log_metrics({"data": numbers})
    return {"metrics": numbers, "markdown": markdown_table(metrics, bool(cfg["data"].get("stand_in")), cfg["data"]),
            "sources": {k: r["source_note"] for k, r in metrics.items() if r["source_note"]},
            "datasets": saved, "stand_in": bool(cfg["data"].get("stand_in")), "skipped_images": skipped}

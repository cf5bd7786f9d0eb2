"""Stages `pretrain_data` and `eval_data`: load every dataset the config names and save it for later stages.

Two stages, so that each is keyed on what it reads: `pretrain_data` prepares the pretraining sets
(data.pretrain.*, their train split, limited by data.max_pretrain_images), which the training stages (CLIP,
tokenizers, Frozen) depend on; `eval_data` the evaluation sets (data.classification / vqa / captioning /
generation, their eval split, whole), which only the evaluation stages depend on. Changing the evaluation
data (e.g. data=imagefolder data.classification.path=...) thus reuses every trained model.
A set that cannot be had (e.g. a hub dataset offline) fails the stage with its clear error: nothing is skipped.
Images that cannot be decoded (empty, truncated, oversized files) are dropped and counted: the stage's
metrics give `skipped_images` for a dataset that had any, and its summary lists why (docs/reliability.md).
Each set's images per class are logged (a summary past 20 classes) and kept in the metrics.
Later stages read them with spae.data.load_prepared(ctx.input_dir("pretrain_data"), "pretrain", name) or
load_prepared(ctx.input_dir("eval_data"), role).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from experiments.pipeline import StageContext, stage

log = logging.getLogger(__name__)

EVAL_ROLES = ("classification", "vqa", "captioning", "generation")


def planned_pretrain(data_cfg: dict) -> list[tuple[str, str, dict, str, int | None]]:
    """(role, name, spec, split, limit) for every pretraining dataset of the data setup."""
    plan = []
    limit = data_cfg.get("max_pretrain_images")
    for name, spec in sorted((data_cfg.get("pretrain") or {}).items()):
        plan.append(("pretrain", name, {**spec, "config_path": f"data.pretrain.{name}"}, "train", limit))
    return plan


def planned_eval(data_cfg: dict) -> list[tuple[str, str, dict, str, int | None]]:
    """(role, name, spec, split, limit) for every evaluation dataset of the data setup."""
    plan = []
    for role in EVAL_ROLES:
        spec = data_cfg.get(role)
        if spec:
            plan.append((role, spec.get("name", role), {**spec, "config_path": f"data.{role}"}, "eval", None))
    return plan


def planned(data_cfg: dict) -> list[tuple[str, str, dict, str, int | None]]:
    """(role, name, spec, split, limit) for every dataset of the data setup."""
    plan = planned_pretrain(data_cfg) + planned_eval(data_cfg)
    if not plan:
        raise ValueError("the data setup names no dataset (data.pretrain.* or data.classification, ...)")
    return plan


def class_counts(ds) -> dict[str, int]:
    """Images per class name, in class-id order ({} for unlabelled data)."""
    from collections import Counter

    counts = Counter(zip(ds["label"], ds["label_name"]))
    return {name: n for (_, name), n in sorted(counts.items()) if name}


def describe(ds) -> dict:
    from spae.data import class_names

    names = class_names(ds)
    return {"rows": len(ds), "classes": len(names),
            "questions": sum(len(q) for q in ds["questions"]),
            "captioned": sum(1 for c in ds["caption"] if c)}


def markdown_table(rows: dict[str, dict], stand_in: bool, title: str = "Data", notes: dict | None = None,
                   data_cfg: dict | None = None) -> str:
    lines = [f"### {title}", ""]
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
    lines += [f"\n{key}: {note}" for key, note in (notes or {}).items()]
    return "\n".join(lines)


def exclusion_applies(data_cfg: dict) -> bool:
    """Only a pretraining set that can carry class ids (hub or local files) can hold evaluation classes by id."""
    return any(spec.get("adapter") in ("hf", "imagefolder") for spec in (data_cfg.get("pretrain") or {}).values())


def excluded_eval_classes(data_cfg: dict, offline: bool, cache_dir: str) -> tuple[list[str], dict]:
    """WordNet ids of the evaluation classes to keep out of pretraining (data.exclude_eval_classes), and a
    record of what was looked at. Only a pretraining set that can carry class ids (hub or local files) needs
    them; the embedded stand-ins have none."""
    from spae.data.class_ids import evaluation_wordnet_ids

    enabled = bool(data_cfg.get("exclude_eval_classes", True))
    by_set: dict[str, list[str]] = {}
    if enabled and exclusion_applies(data_cfg):
        specs = {role: ({**data_cfg[role], "cache_dir": cache_dir} if data_cfg.get(role) else None)
                 for role in EVAL_ROLES}
        by_set = evaluation_wordnet_ids(specs, offline)
    ids = sorted({w for ws in by_set.values() for w in ws})
    return ids, {"exclude_eval_classes": enabled, "evaluation_class_ids": {k: len(v) for k, v in by_set.items()}}


def exclusion_identity(cfg: dict) -> dict:
    """Derived part of pretrain_data's key: with data.exclude_eval_classes on and a pretraining set that can
    carry class ids, the evaluation sets decide which rows are dropped, so they join the key; otherwise
    nothing joins it (the embedded stand-ins carry no ids: changing only the evaluation data reuses them)."""
    data_cfg = cfg["data"]
    if not exclusion_applies(data_cfg):
        return {}
    return {"exclude_eval_classes": bool(data_cfg.get("exclude_eval_classes", True)),
            "evaluation_sets": {role: data_cfg.get(role) for role in EVAL_ROLES}}


# 2: the former `data` stage's pretraining half; per-class image counts; reference_answers column; evaluation
#    classes' WordNet ids dropped from pretraining (data.exclude_eval_classes); 3: class filters (open world)
@stage("pretrain_data", config_keys=("data.pretrain", "data.max_pretrain_images", "seed"), version=3,
       derived=exclusion_identity)
def prepare_pretrain_data(ctx: StageContext) -> dict:
    return prepare_data(ctx, planned_pretrain(ctx.cfg["data"]), "pretrain_data", "Pretraining data", stand_in=False)


# 2: the former `data` stage's evaluation half; imagefolder layout rules; per-class image counts;
#    reference_answers column (every human answer); 3: class filters (open world), the setup's world label
@stage("eval_data", config_keys=tuple(f"data.{role}" for role in EVAL_ROLES) + ("data.stand_in", "data.world"),
       version=3)
def prepare_eval_data(ctx: StageContext) -> dict:
    return prepare_data(ctx, planned_eval(ctx.cfg["data"]), "eval_data", "Evaluation data",
                        stand_in=bool(ctx.cfg["data"].get("stand_in")))


def prepare_data(ctx: StageContext, plan: list, stage_name: str, title: str, stand_in: bool) -> dict:
    cfg = ctx.cfg
    cache_dir = str(Path(cfg["paths"]["cache_dir"]) / "datasets")
    offline = bool(cfg.get("offline", True))
    found: dict[str, dict] = {"metrics": {}, "saved": {}, "skipped": {}, "per_class": {}, "notes": {}, "dropped": {}}
    if not plan:
        log.info("%s: the data setup names none", title.lower())
    pretraining = any(role == "pretrain" for role, *_ in plan)
    excluded, exclusion = excluded_eval_classes(cfg["data"], offline, cache_dir) if pretraining else ([], {})
    for role, name, spec, split, limit in plan:
        start = time.perf_counter()
        ds, reasons = load_or_resume(ctx, role, name, {**spec, "cache_dir": cache_dir}, split, limit,
                                     (excluded, exclusion))
        record_prepared(found, ctx.out_dir, role, name, ds, reasons, start)
    numbers = {k: {m: v for m, v in r.items() if m != "caption_source"} for k, r in found["metrics"].items()}
    if ctx.logger is not None:
        ctx.logger.log_metrics({stage_name: numbers})
    for key, counts in found["per_class"].items():  # in results.json, not among the logged scalars
        numbers[key]["images_per_class"] = counts
    summary = {"metrics": numbers,
               "markdown": markdown_table(found["metrics"], stand_in, title, found["notes"], cfg["data"]),
               "datasets": found["saved"], "stand_in": stand_in, "skipped_images": found["skipped"],
               "notes": found["notes"]}
    if pretraining:
        summary["eval_class_exclusion"] = {**exclusion, "excluded_class_ids": len(excluded),
                                           "pretraining": found["dropped"]}
    return summary


def load_or_resume(ctx: StageContext, role: str, name: str, spec: dict, split: str, limit: int | None,
                   exclusion: tuple[list[str], dict]) -> tuple:
    """(the dataset, why images were dropped): the set prepared by an interrupted run of the stage when it is
    there, else loaded (pretraining sets without the excluded evaluation classes), decoded images checked, saved."""
    from spae.data import drop_unreadable_images, load_prepared, load_split, save_prepared
    from spae.data.class_ids import pretraining_split
    from spae.data.prepared import excluded_record, prepared_path
    from spae.io import read_json, write_json_atomic

    target = prepared_path(ctx.out_dir, role, name)
    skipped_file = target.parent / f"{name}.skipped.json"
    if (target / "state.json").exists():  # resuming an interrupted stage
        ds = load_prepared(ctx.out_dir, role, name)
        return ds, read_json(skipped_file) if skipped_file.exists() else []
    offline, seed = bool(ctx.cfg.get("offline", True)), int(ctx.cfg.get("seed", 0))
    if role == "pretrain":
        excluded, record = exclusion
        ds, dropped = pretraining_split(spec, offline=offline, limit=limit, seed=seed, excluded=excluded)
        write_json_atomic(excluded_record(ctx.out_dir, role, name),
                          {**record, "excluded_class_ids": len(excluded), **dropped})
    else:
        ds = load_split(spec, split, offline=offline, limit=limit, seed=seed)
    ds, reasons = drop_unreadable_images(ds)
    write_json_atomic(skipped_file, reasons)  # before the dataset: its presence marks completion
    save_prepared(ds, ctx.out_dir, role, name)
    return ds, reasons


def record_prepared(found: dict[str, dict], out_dir: Path, role: str, name: str, ds, reasons: list,
                    start: float) -> None:
    """Add one prepared set to `found`: its description and metrics, skipped images, evaluation classes dropped
    (pretraining sets), folder, images per class, and how the adapter read it."""
    from spae.data.imagefolder import class_counts_line
    from spae.data.prepared import excluded_record
    from spae.io import read_json

    key = f"{role}/{name}"
    sources = sorted({s for s in ds.unique("caption_source") if s})
    metrics = found["metrics"][key] = {**describe(ds), "caption_source": ",".join(sources) or "none"}
    if reasons:
        log.warning("data %s: skipped %d unreadable image(s), e.g. %s", key, len(reasons), reasons[0])
        metrics["skipped_images"] = len(reasons)
        found["skipped"][key] = reasons[:20]
    excluded_file = excluded_record(out_dir, role, name)
    if role == "pretrain" and excluded_file.exists():
        report = read_json(excluded_file)
        found["dropped"][name] = {k: report[k] for k in ("class_ids", "rows_dropped", "classes_dropped")}
        if report["rows_dropped"]:
            metrics["eval_class_rows_dropped"] = report["rows_dropped"]
    found["saved"][key] = str(Path(role) / name)
    log.info("data %-28s %6d rows (%.1fs)", key, len(ds), time.perf_counter() - start)
    found["per_class"][key] = class_counts(ds)
    if found["per_class"][key]:
        log.info("data %s images per class: %s", key, class_counts_line(found["per_class"][key]))
    if ds.info.description:  # how the adapter read the source (e.g. an image folder's layout)
        found["notes"][key] = ds.info.description


"""Stages `clip` (train the embedded CLIP, or check that an open_clip one loads) and `clip_quality`
(zero-shot accuracy, top vocabulary words per class, held-out related-word ranks)."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from experiments.pipeline import StageContext, stage
from spae.io import read_json, write_json_atomic
from spae.tracking.runs import training_run

log = logging.getLogger(__name__)


@contextmanager
def torch_threads(n: int | None):
    """Run with n intra-op threads (a loaded shared CPU is faster with fewer); unchanged when None."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def held_out_classes(data_cfg: dict) -> list[str]:
    """Class names whose images no training stage may see (data.class_split.held_out); none in closed-world."""
    return list((data_cfg.get("class_split") or {}).get("held_out") or [])


def pretraining_sets(ctx: StageContext, enrich: bool, per_set_limit: int | None, seed: int):
    from spae.clip.train_embedded import training_set_from_dataset
    from spae.data import load_prepared

    names = sorted((ctx.cfg["data"].get("pretrain") or {}).keys())
    if not names:
        raise ValueError("the embedded CLIP trains on data.pretrain.*, which is empty; add a pretraining set "
                         "(e.g. data=embedded) or use a real CLIP (clip=vit_b32 clip.pretrained=/path/to/file)")
    held_out = held_out_classes(ctx.cfg["data"])
    return [training_set_from_dataset(name, load_prepared(ctx.input_dir("pretrain_data"), "pretrain", name),
                                      enrich=enrich, limit=per_set_limit, seed=seed, held_out_classes=held_out)
            for name in names]


@stage("clip", deps=("pretrain_data",), version=3,  # 3: open world (set mix, caption dedupe, held-out name filter)
       config_keys=("clip", "data.pretrain", "data.max_pretrain_images", "data.class_split", "seed"))
def clip_stage(ctx: StageContext) -> dict:
    from spae.clip.loading import STAGE_RECORD, load_clip

    spec = dict(ctx.cfg["clip"])
    start = time.perf_counter()
    if spec["kind"] == "embedded":
        summary = train_embedded_stage(ctx, spec)
    else:  # a real CLIP: nothing to train; check it loads (QuickGELU, weights present) and record it
        handle = load_clip(spec, None, ctx.cfg["paths"]["cache_dir"])
        summary = {"identity": handle.identity, "description": handle.description}
    summary["seconds"] = round(time.perf_counter() - start, 2)
    write_json_atomic(ctx.out_dir / STAGE_RECORD, {"spec": spec, **summary})
    return summary


def train_embedded_stage(ctx: StageContext, spec: dict) -> dict:
    from spae.clip.embedded import EmbeddedClipConfig, describe, is_embedded_dir, save_embedded
    from spae.clip.train_embedded import TrainConfig, train_embedded_clip

    done = ctx.out_dir / "training.json"
    if is_embedded_dir(ctx.out_dir) and done.is_file():  # finished before an interruption
        return read_json(done)
    train_spec = spec.get("train") or {}
    cfg = EmbeddedClipConfig.from_dict(spec)
    train = TrainConfig.from_dict({**train_spec, "seed": ctx.cfg.get("seed", 0)})
    with torch_threads(train_spec.get("threads")):
        sets = pretraining_sets(ctx, bool(train_spec.get("enrich_captions", True)),
                                train_spec.get("max_images_per_set"), train.seed)
        run = training_run(ctx.logger, "clip", "clip", ctx.out_dir, ctx.cfg)  # its own W&B run
        model, stats = train_embedded_clip(sets, cfg, train, ctx.out_dir,
                                           lightning_logger=run.lightning_logger(ctx.out_dir))
        run.finish(stats)
    digest = save_embedded(model, cfg, ctx.out_dir, info={"training": stats})
    from spae.clip.captions import words_in

    summary = {"identity": f"embedded:{digest[:16]}", **stats, **describe(model),
               "caption_words": sorted(words_in(c for s in sets for pool in s.pools for c in pool)),
               "pretrain_sets": [s.name for s in sets], "caption_enrichment": bool(train_spec.get("enrich_captions", True)),
               "per_set": {s.name: s.notes for s in sets}, "held_out_classes": held_out_classes(ctx.cfg["data"])}
    write_json_atomic(done, summary)
    return summary


# --- quality -----------------------------------------------------------------------------------------------

def _labelled_set(name: str, ds, limit: int | None, seed: int, templates: list[str] | None = None):
    from spae.data import class_names
    from spae.data.images import to_tensor

    if limit and len(ds) > limit:
        ds = ds.shuffle(seed=seed).select(range(limit))
    images = to_tensor(ds["image"], size=max(im.width for im in ds.select(range(min(8, len(ds))))["image"]))
    return (name, images, torch.tensor(ds["label"]), class_names(ds), templates)


def _classification_name(data_cfg: dict) -> str:
    """The classification set's name, tagged held-out when it is the class split's held-out side."""
    spec = data_cfg["classification"]
    split = data_cfg.get("class_split") or {}
    if split and spec.get("name") == split.get("dataset") and list(spec.get("classes") or []) == list(split["held_out"]):
        return f"{spec['name']}_held_out"
    return spec["name"]


def _seen_class_sets(ctx: StageContext, limit: int | None, seed: int) -> list:
    """Zero-shot on the *test* images of the pretraining sets' seen classes (a set with a class filter)."""
    from spae.data import load_split

    out = []
    cache_dir = str(Path(ctx.cfg["paths"]["cache_dir"]) / "datasets")
    for name, spec in sorted((ctx.cfg["data"].get("pretrain") or {}).items()):
        if spec.get("classes"):
            ds = load_split({**spec, "cache_dir": cache_dir}, "eval", offline=bool(ctx.cfg.get("offline", True)))
            out.append(_labelled_set(f"{name}_seen", ds, limit, seed))
    return out


def _eval_sets(ctx: StageContext, limit: int | None, seed: int, digit_templates: list[str]):
    """(name, images [N,3,H,W], labels, class names, templates or None) for the classification set (the
    held-out classes by default), the seen classes' test images, MNIST digit names (the generation set) and
    easy-VQA shapes/colours, from the data stage's held-out evaluation splits."""
    from spae.clip.captions import COLOURS, SHAPE_KNOWLEDGE, shape_colour
    from spae.data import load_prepared
    from spae.data.images import to_tensor

    out = []
    data_dir = ctx.input_dir("eval_data")
    try:
        ds = load_prepared(data_dir, "classification")
    except (FileNotFoundError, ValueError) as err:
        log.warning("clip_quality: no classification set (%s)", err)
        ds = None
    if ds is not None:
        out.append(_labelled_set(_classification_name(ctx.cfg["data"]), ds, limit, seed))
    out += _seen_class_sets(ctx, limit, seed)
    generation = ctx.cfg["data"].get("generation") or {}
    if generation.get("adapter") == "mnist" and ctx.cfg["data"]["classification"].get("adapter") != "mnist":
        out.append(_labelled_set("mnist_digits", load_prepared(data_dir, "generation"), limit, seed, digit_templates))
    try:
        vqa = load_prepared(data_dir, "vqa")
    except (FileNotFoundError, ValueError):
        vqa = None
    if vqa is not None and ctx.cfg["data"]["vqa"].get("adapter") == "easy_vqa":
        if limit and len(vqa) > limit:
            vqa = vqa.shuffle(seed=seed).select(range(limit))
        images = to_tensor(vqa["image"], size=64)
        parsed = [shape_colour(c) for c in vqa["caption"]]
        shapes, colours = list(SHAPE_KNOWLEDGE), list(COLOURS)
        keep = torch.tensor([s is not None for s, _ in parsed])
        out.append(("easy_vqa_shapes", images[keep], torch.tensor([shapes.index(s) for s, _ in parsed if s]), shapes,
                    None))
        keep = torch.tensor([c is not None for _, c in parsed])
        out.append(("easy_vqa_colours", images[keep], torch.tensor([colours.index(c) for _, c in parsed if c]),
                    colours, None))
    return out


def retrieval_sets(ctx: StageContext, clip, limit: int | None, seed: int) -> dict:
    """Image-to-caption R@1/R@5 on the held-out (test) split of every free-text captioned pretraining set."""
    from spae.clip.quality import retrieval_recall
    from spae.data import load_split
    from spae.data.images import to_tensor

    out = {}
    cache_dir = str(Path(ctx.cfg["paths"]["cache_dir"]) / "datasets")
    for name, spec in sorted((ctx.cfg["data"].get("pretrain") or {}).items()):
        if spec.get("adapter") not in ("openclipart", "tuxpaint"):
            continue
        ds = load_split({**spec, "cache_dir": cache_dir}, "eval", offline=bool(ctx.cfg.get("offline", True)))
        if limit and len(ds) > limit:
            ds = ds.shuffle(seed=seed).select(range(limit))
        images = to_tensor(ds["image"], size=clip.image_size)
        out[f"{name}_test"] = retrieval_recall(clip.encode_images(images), clip.encode_texts(list(ds["caption"])),
                                               list(ds["caption"]))
    return out


@stage("clip_quality", deps=("clip", "codebook", "eval_data"),
       config_keys=("clip", "data.classification", "data.vqa", "data.generation", "data.class_split", "data.pretrain",
                    "seed",
                    "bench.top_k", "bench.max_eval_images", "bench.digit_templates"),
       version=2)  # 2: held-out / seen / digit zero-shot and clip-art retrieval
def clip_quality_stage(ctx: StageContext) -> dict:
    from spae.clip.captions import words_in
    from spae.clip.loading import load_clip_from_stage
    from spae.clip.quality import (accuracy, class_relevance, class_text_embeddings, semantic_score,
                                   spelling_overlap, top_words, unseen_fraction, zero_shot_predictions)
    from spae.clip.scorer import RelevanceScorer
    from spae.codebook import Codebook

    opts = ctx.cfg.get("bench") or {}
    templates = list(ctx.cfg["clip"]["templates"])
    top_k = int(opts.get("top_k", 15))
    start = time.perf_counter()
    with torch_threads((ctx.cfg["clip"].get("train") or {}).get("threads")):
        clip = load_clip_from_stage(ctx.input_dir("clip"), ctx.cfg["paths"]["cache_dir"])
        words = Codebook.load(ctx.input_dir("codebook")).words
        scorer = RelevanceScorer(clip, words, templates, cache_dir=ctx.cfg["paths"]["cache_dir"])
        scorer.text_embeddings  # computed (or reused) up front, timed apart from the evaluation
        text_seconds = scorer.text_seconds
        caption_words = set(read_json(ctx.input_dir("clip") / "clip_stage.json").get("caption_words", []))
        metrics, sections, tables = {}, [], {}
        digit_templates = list(opts.get("digit_templates") or ["a photo of the digit {word}."])
        for name, images, labels, classes, own_templates in _eval_sets(ctx, opts.get("max_eval_images"),
                                                                       ctx.cfg.get("seed", 0), digit_templates):
            emb = clip.encode_images(images)
            pred = zero_shot_predictions(emb, class_text_embeddings(clip, classes, own_templates or templates))
            rel = class_relevance(scorer, emb, labels, len(classes))
            top = top_words(rel, words, top_k)
            sem = semantic_score(rel, words, classes)
            metrics[name] = {"zero_shot_accuracy": accuracy(pred, labels), "images": int(len(labels)),
                             "classes": list(classes), "chance": 1.0 / len(classes),
                             "semantic": sem["summary"], "spelling_overlap_top": spelling_overlap(top, classes),
                             **({"top_unseen_in_captions": unseen_fraction(top, caption_words)} if caption_words else {}),
                             "held_out_ranks": {c: v["ranks"] for c, v in sem["per_class"].items()},
                             f"top{top_k}": {c: row for c, row in zip(classes, top)}}
            tables[name] = (classes, top, sem)
        retrieval = retrieval_sets(ctx, clip, opts.get("max_eval_images"), ctx.cfg.get("seed", 0))
    metrics["clip"] = {"identity": clip.identity, "description": clip.description, "vocabulary_size": len(words),
                       "templates": templates, "text_embedding_seconds": round(text_seconds, 2),
                       "text_embedding_cache_hit": scorer.text_cache_hit,
                       "clip_stage_seconds": ctx.inputs["clip"].summary.get("seconds"),
                       "eval_seconds": round(time.perf_counter() - start, 2)}
    metrics["retrieval"] = retrieval
    return {"metrics": metrics, "markdown": quality_markdown(metrics, tables, top_k)}


def quality_markdown(metrics: dict, tables: dict, top_k: int) -> str:
    clip = metrics["clip"]
    lines = [f"## CLIP quality: {clip['description']}", "",
             f"Vocabulary: {clip['vocabulary_size']} words; prompts {clip['templates']}.", "",
             "| set | zero-shot acc (chance) | held-out words | mean rank | median rank | mean percentile | recall@100 | "
             "top words sharing a class-name prefix | top words in no training caption |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        if name in ("clip", "retrieval"):
            continue
        s = m["semantic"]
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {name} | {m['zero_shot_accuracy']:.3f} ({m['chance']:.2f}) | {s['held_out_words_scored']} | "
                     f"{fmt(s['mean_rank'], '.0f')} | {fmt(s['median_rank'], '.0f')} | "
                     f"{fmt(s['mean_percentile'], '.3f')} | {fmt(s['recall_at_100'], '.2f')} | "
                     f"{m['spelling_overlap_top']:.2f} | {fmt(m.get('top_unseen_in_captions'), '.2f')} |")
    if metrics.get("retrieval"):
        lines += ["", "Image-to-caption retrieval on held-out drawings (among the distinct captions):", "",
                  "| set | images | distinct captions | R@1 | R@5 | chance R@1 | median rank |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in metrics["retrieval"].items():
            lines.append(f"| {name} | {r['images']} | {r['distinct_captions']} | {r['recall_at_1']:.3f} | "
                         f"{r['recall_at_5']:.3f} | {r['chance_at_1']:.4f} | {r['median_rank']:.0f} |")
    for name, (classes, top, sem) in tables.items():
        lines += ["", f"### {name}: top {top_k} vocabulary words per class (held-out related words' ranks)", "",
                  "| class | top words | held-out ranks |", "|---|---|---|"]
        for cls, row in zip(classes, top):
            ranks = sem["per_class"].get(cls, {}).get("ranks", {})
            lines.append(f"| {cls} | {', '.join(row)} | {', '.join(f'{w} {r}' for w, r in ranks.items()) or '-'} |")
    return "\n".join(lines)

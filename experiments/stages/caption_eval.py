"""Stage `caption_eval`: in-context image captioning by a frozen LLM, for every compared method (bench.compare)
on the very same items (the shared in-context orchestration: experiments.incontext).

Steps (experiments.incontext.prepare_run does 1-4):
1. Plan the items (seeded): query images from the evaluation split (data.captioning), each with bench.shots
   (image, caption) examples drawn from the TRAINING split of the same dataset (bench.example_pool rows of it).
2. Read each compared model from its stage instance (`train[spae]`, ...; incontext.model_needs).
3. Render every image the items use once per method (words, word layers, or Frozen's prefix embeddings).
4. Build the LLM once; per method ask every item, appending prompts and answers to <stage>/records/<slug>.jsonl
   as they finish (a rerun resumes); copies land in the run folder.
5. Score: BLEU-4, ROUGE-L, CIDEr-D, and the cosine of the query image and the caption under the configured
   CLIP (also for the reference captions, as the scale's reference point).
The embedded data's captions are templated (easy-VQA: "a red circle"); every output says which kind it used.
"""
from __future__ import annotations

import time

from experiments.incontext import (InContextRun, copy_records, data_role, example_rows, methods_info, model_needs,
                                  prepare_run, setup_lines, timing_lines)
from experiments.pipeline import StageContext, stage

CAPTION_SOURCE_NOTE = {
    "real": "human-written reference captions",
    "templated": "TEMPLATED reference captions generated from labels/attributes (e.g. easy-VQA's \"a red circle\"), "
                 "not human captions: scores measure naming the object, not captioning skill",
}


# ------------------------------------------------------------------------------------------ captioning
def caption_source(ds) -> str:
    sources = sorted({s for s in ds["caption_source"] if s})
    return ",".join(sources) or "none"


def clip_scores(ctx: StageContext, run: InContextRun) -> tuple[str, dict[str, float], float]:
    """(CLIP label, {slug: mean cosine of query image and generated caption}, same for the first reference)."""
    from spae.clip.loading import load_clip_from_stage
    from spae.data.images import to_tensor
    from spae.tasks.text_metrics import clip_cosines

    clip = load_clip_from_stage(ctx.input_dir("clip"), cache_dir=ctx.cfg["paths"]["cache_dir"])
    rows = [int(item.image[1:]) for item in run.items]
    images = to_tensor(list(run.eval_ds.select(rows)["image"]), clip.image_size)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    per_method = {slug: mean(clip_cosines(clip, images, [r["answer"] for r in a["records"]]))
                  for slug, a in run.answered.items()}
    reference = mean(clip_cosines(clip, images, [item.references[0] for item in run.items]))
    label = clip.description or f"{ctx.cfg['clip'].get('name')} ({clip.identity})"
    return label, per_method, reference


def caption_markdown(cfg: dict, run: InContextRun, metrics: dict, source: str, clip_label: str) -> str:
    lines = setup_lines(cfg, run, "In-context captioning", data_role(cfg["bench"], "captioning"))
    lines += [f"Reference captions: **{source}** - " + "; ".join(CAPTION_SOURCE_NOTE.get(s, s) for s in source.split(","))
              + ".", "",
              f"CLIP score = mean cosine of the query image's and the caption's embeddings under CLIP {clip_label}. "
              "BLEU-4/ROUGE-L: torchmetrics; CIDEr-D: pycocoevalcap; captions lower-cased, punctuation removed.", "",
              "| method | BLEU-4 | ROUGE-L | CIDEr-D | CLIP score | empty answers |", "|---|---:|---:|---:|---:|---:|"]
    for slug, v in metrics["methods"].items():
        lines.append(f"| {run.labels[slug]} | {v['bleu4']:.3f} | {v['rouge_l']:.3f} | {v['cider_d']:.3f} | {v['clip_score']:.3f} | "
                     f"{v['empty_answers']}/{v['items']} |")
    lines.append(f"| reference captions (CLIP score scale) | - | - | - | {metrics['reference_clip_score']:.3f} | - |")
    lines += [""] + caption_caveats(run)
    return "\n".join(lines + [""] + timing_lines(run)) + "\n"


def caption_caveats(run: InContextRun) -> list[str]:
    """What the numbers cannot show in this setup."""
    notes = []
    longest = max(len(r.split()) for item in run.items for r in item.references)
    if longest < 4:
        notes.append(f"BLEU-4 is 0 by construction here: no reference caption has 4 words (longest: {longest}).")
    if any(m.kind == "clip" for m in run.methods):
        notes.append("CLIP top-k words are chosen by the same CLIP that computes the CLIP score, which favours them.")
    return [" ".join(notes)] if notes else []


def plan_captions(cfg: dict):
    from spae.tasks.captioning import plan_caption_items

    bench = cfg["bench"]
    seed = int(bench["item_seed"] if bench.get("item_seed") is not None else cfg.get("seed", 0))

    def plan(eval_ds, pool_ds, same_split):
        return plan_caption_items(list(eval_ds["captions"]), list(pool_ds["caption"]), int(bench.get("items", 100)),
                                  int(bench.get("shots", 3)), seed, same_split=same_split)

    return plan


# 3: per-method metrics keyed by the method's stable id (spae-l2, ...), its display label beside it
@stage("caption_eval", deps=("eval_data", "codebook", "clip"), version=3,  # 2: image words keep their leading space
       config_keys=("bench", "llm", "model", "codebook", "clip", "data", "trainer", "seed"), instances=model_needs)
def caption_eval(ctx: StageContext) -> dict:
    from spae.tasks.captioning import score_captions

    cfg = ctx.cfg
    run = prepare_run(ctx, data_role(cfg["bench"], "captioning"), plan_captions(cfg))
    source = caption_source(run.eval_ds)
    start = time.perf_counter()
    clip_label, clip_per_method, reference_clip = clip_scores(ctx, run)
    per_method = {}
    for m in run.methods:
        scores = score_captions(run.answered[m.slug]["records"])
        per_method[m.slug] = {**scores, "clip_score": clip_per_method[m.slug]}
    run.timing["scoring_seconds"] = round(time.perf_counter() - start, 2)
    metrics = {"caption_source": source, "clip": clip_label, "reference_clip_score": reference_clip,
               "methods": per_method}
    copied = copy_records(run, ctx.run_dir / "caption_eval")
    if ctx.logger is not None:
        ctx.logger.log_table("captioning/scores", ["method", "label", "bleu4", "rouge_l", "cider_d", "clip_score",
                                                   "items"],
                             [[slug, run.labels[slug], v["bleu4"], v["rouge_l"], v["cider_d"], v["clip_score"],
                               v["items"]] for slug, v in per_method.items()])
        ctx.logger.log_table("captioning/answers", ["method", "label", "item", "question", "answer", "references"],
                             example_rows(run))
        ctx.logger.log_metrics({"captioning": {slug: {k: v[k] for k in ("bleu4", "rouge_l", "cider_d", "clip_score")}
                                               for slug, v in per_method.items()}})
    return {"metrics": metrics, "markdown": caption_markdown(cfg, run, metrics, source, clip_label),
            "methods": methods_info(run), "timing": run.timing, "llm": run.llm, "items": len(run.items),
            "shots": int(cfg["bench"].get("shots", 0)), "records": copied, "caption_source": source}

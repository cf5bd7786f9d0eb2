"""Stage `vqa_eval`: in-context visual question answering by a frozen LLM, for every compared method
(bench.compare) on the very same items.

Items: questions of the evaluation split (data.vqa), each keeping all its reference answers, with bench.shots
(image, question, answer) examples from the training split. The answer (generation up to the first period or
newline) is scored (spae.tasks.vqa), overall and per answer type, beside the score of always giving the most
frequent training answer: with several human answers per question (VQAv2) by the VQAv2 accuracy and its answer
normalisation, under the key `vqa_accuracy`; with one answer per question (easy-VQA) by normalised exact
match, under the key `exact_match`. Orchestration shared with caption_eval (experiments.incontext.prepare_run).
"""
from __future__ import annotations

import time

from experiments.incontext import (InContextRun, copy_records, data_role, example_rows, methods_info, model_needs,
                                  prepare_run, setup_lines, timing_lines)
from experiments.pipeline import StageContext, stage


def plan_questions(cfg: dict):
    from spae.tasks.vqa import plan_vqa_items

    bench = cfg["bench"]
    seed = int(bench["item_seed"] if bench.get("item_seed") is not None else cfg.get("seed", 0))

    def plan(eval_ds, pool_ds, same_split):
        return plan_vqa_items(list(eval_ds["questions"]), list(eval_ds["reference_answers"]),
                              list(pool_ds["questions"]), list(pool_ds["answers"]), int(bench.get("items", 100)),
                              int(bench.get("shots", 3)), seed, same_split=same_split)

    return plan


def prior_scores(run: InContextRun) -> tuple[str, dict]:
    """The answer-prior baseline: always the most frequent training answer, scored like a method."""
    from spae.tasks.vqa import prior_answer, score_answers

    prior = prior_answer(list(run.pool_ds["answers"]))
    records = [{"answer": prior, "references": list(item.references)} for item in run.items]
    return prior, score_answers(records)


METRIC_NOTES = {
    "vqa_accuracy": ("VQA accuracy (VQAv2): min(#matching human answers / 3, 1) averaged over the leave-one-out "
                     "subsets of each question's {n} human answers, every answer after the VQAv2 answer "
                     "normalisation."),
    "exact_match": ("Exact match: this dataset has one reference answer per question, so answers are scored by "
                    "normalised exact match (VQAv2's answer normalisation); this is not VQAv2 accuracy."),
}


def vqa_markdown(cfg: dict, run: InContextRun, metrics: dict, prior: str) -> str:
    metric = metrics["metric"]
    types = sorted({t for v in metrics["methods"].values() for t in v["by_type"]})
    counts = sorted({len(item.references) for item in run.items})
    lines = setup_lines(cfg, run, "In-context VQA", data_role(cfg["bench"], "vqa"))
    lines += [METRIC_NOTES[metric].format(n="/".join(map(str, counts))), "",
              f"| method | {metric} | " + " | ".join(types) + " | empty answers |",
              "|---|---:|" + "---:|" * len(types) + "---:|"]
    rows = [(run.labels[slug], v) for slug, v in metrics["methods"].items()] + [(f"answer prior (always \"{prior}\")", metrics["answer_prior"])]
    for label, v in rows:
        per_type = " | ".join(f"{v['by_type'][t][metric]:.3f}" if t in v["by_type"] else "-" for t in types)
        lines.append(f"| {label} | {v[metric]:.3f} | {per_type} | {v['empty_answers']}/{v['items']} |")
    counts = next(iter(metrics["methods"].values()))["by_type"]
    lines += ["", "Questions per answer type: " + ", ".join(f"{t} {c['items']}" for t, c in counts.items()) + "."]
    return "\n".join(lines + [""] + timing_lines(run)) + "\n"


# 3: per-method metrics keyed by the method's stable id (spae-l2, ...), its display label beside it
@stage("vqa_eval", deps=("eval_data", "codebook", "clip"), version=3,  # 2: all human answers; spaced image words
       config_keys=("bench", "llm", "model", "codebook", "clip", "data", "trainer", "seed"), instances=model_needs)
def vqa_eval(ctx: StageContext) -> dict:
    from spae.tasks.vqa import score_answers

    cfg = ctx.cfg
    run = prepare_run(ctx, data_role(cfg["bench"], "vqa"), plan_questions(cfg))
    start = time.perf_counter()
    per_method = {m.slug: score_answers(run.answered[m.slug]["records"]) for m in run.methods}
    prior, prior_metrics = prior_scores(run)
    run.timing["scoring_seconds"] = round(time.perf_counter() - start, 2)
    metric = prior_metrics["metric"]
    metrics = {"metric": metric, "methods": per_method, "answer_prior": {**prior_metrics, "answer": prior}}
    copied = copy_records(run, ctx.run_dir / "vqa_eval")
    if ctx.logger is not None:
        ctx.logger.log_table(f"vqa/{metric}", ["method", "label", metric, "items", "empty_answers"],
                             [[slug, run.labels[slug], v[metric], v["items"], v["empty_answers"]]
                              for slug, v in per_method.items()])
        ctx.logger.log_table("vqa/answers", ["method", "label", "item", "question", "answer", "references"],
                             example_rows(run))
        ctx.logger.log_metrics({"vqa": {slug: {metric: v[metric]} for slug, v in per_method.items()}})
    return {"metrics": metrics, "markdown": vqa_markdown(cfg, run, metrics, prior), "methods": methods_info(run),
            "timing": run.timing, "llm": run.llm, "items": len(run.items),
            "shots": int(cfg["bench"].get("shots", 0)), "records": copied}

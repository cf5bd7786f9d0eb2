"""Stage `fewshot_eval`: SPAE Table 1, few-shot open-ended classification by a frozen LLM, for every compared
method (bench.compare) on the very same episodes, beside the paper's numbers.

Steps:
1. Sample each cell's episodes (Frozen's Real-Name protocol, seeded) from the evaluation split
   (data.classification). Every method is evaluated on exactly these episodes.
2. Read each compared model from the stage instances it declares (experiments.incontext.model_needs):
   `train[spae]`, `train[lqae]`, `frozen_train[frozen]`, each its training stage under the method, run (or
   reused) by the pipeline before this stage, so other runs and benches reuse the same models.
3. Render every image the episodes use once per method, in batches (words, or prefix embeddings).
4. Build the LLM backend once and run every (method, cell): prompts and answers go to one JSONL file per
   (method, cell) under the stage folder, appended as they finish, so an interrupted run resumes where it
   stopped; copies land in the run folder.
Summary: accuracy with 95% Wilson intervals per method and cell, a Markdown table beside the paper's
numbers, what the pretraining covered, the time per episode, and what each method's tokens carry about the
class without an LLM (`token_content`, spae.fewshot.token_content).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experiments import incontext
from experiments.pipeline import StageContext, StageResult, stage
from spae.hashing import stable_hash
from spae.errors import InvalidInputError
from spae.io import safe_name, write_text_atomic

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config
def cells_from_config(bench: dict) -> list:
    from spae.fewshot.table import Cell

    cells = []
    cap = bench.get("max_episodes")  # a quick run: at most this many episodes in every cell (null = no cap)
    for entry in bench.get("cells") or []:
        try:
            episodes = entry.get("episodes", bench.get("episodes")) if cap is not None else entry.get("episodes")
            episodes = episodes if cap is None or episodes is None else min(int(episodes), int(cap))
            cells.append(Cell(int(entry["n_way"]), int(entry["shots"]), int(entry.get("repeats", 0)),
                              bool(entry["task_induction"]), None if episodes is None else int(episodes)))
        except (KeyError, TypeError) as err:
            raise ValueError(f"bench.cells entry {entry!r} needs n_way, shots, task_induction (and optionally "
                             f"repeats): {err}") from None
    if not cells:
        raise ValueError("bench.cells is empty: list the cells to evaluate, e.g. "
                         "[{n_way: 2, shots: 1, repeats: 0, task_induction: true}]")
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ValueError(f"bench.cells lists a cell twice: {sorted(k for k in keys if keys.count(k) > 1)}")
    return cells


def prompt_template(bench: dict):
    from spae.fewshot.prompts import PromptTemplate

    spec = bench.get("prompt")
    if not isinstance(spec, dict):
        raise ValueError(f"bench.prompt must be a prompt template (conf/prompt/*.yaml), got {spec!r}; choose one "
                         "with `prompt@bench.prompt=<name>` (e.g. prompt@bench.prompt=qa)")
    return PromptTemplate.from_dict(dict(spec))


# ------------------------------------------------------------------------------------------ episodes
def plan_episodes(label_names: list[str], cells: list, n_episodes: int, seed: int,
                  source: str = "the data") -> dict[str, list]:
    """{cell key: episodes}: a cell's own `episodes` count, else the bench's. Cells differing only in task
    induction get the same episodes (paired); a larger count extends a smaller one (prefix-stable)."""
    from spae.fewshot.episodes import sample_episodes

    planned = {}
    for c in cells:
        count = n_episodes if c.episodes is None else c.episodes
        if count < 1:
            raise ValueError(f"episodes per cell must be >= 1, got {count} for cell {c.key} "
                             "(bench.episodes or the cell's `episodes`)")
        planned[c.key] = sample_episodes(label_names, c.n_way, c.shots, count, seed=seed, repeats=c.repeats,
                                         task_induction=c.task_induction, source=source)
    return planned


def used_images(episodes: dict[str, list]) -> list[int]:
    """Sorted indices of every image any episode shows (support or query)."""
    used = {i for eps in episodes.values() for e in eps for i, _ in [*e.support, e.query]}
    return sorted(used)


def classification_source(cfg: dict) -> str:
    """data.classification named for error messages: its name and, for a local copy, the folder read."""
    spec = cfg["data"].get("classification") or {}
    where = f" read from {spec['path']}" if spec.get("path") else ""
    return f"data.classification ({spec.get('name', '?')}{where})"


# ------------------------------------------------------------------------------------------ evaluation
def record_dirs(ctx: StageContext, methods: list, trained: dict[str, StageResult]) -> dict[str, Path]:
    """{slug: folder of that method's episode records}, shared by every run and bench that would produce the
    same answers: keyed by what determines an answer besides the episode, template and scoring (which each
    record's key holds): the evaluation data, the method's model (stage key) and rendering, the LLM. So the
    headline bench, the full grid and a rerun with more episodes reuse each other's finished episodes."""
    cfg = ctx.cfg
    llm = {k: v for k, v in cfg["llm"].items() if k != "batch_size"}  # batching does not change answers (tested)
    base = Path(cfg["paths"]["cache_dir"]) / "fewshot_records"
    out = {}
    for m in methods:
        identity = {"data": ctx.inputs["eval_data"].key, "codebook": ctx.inputs["codebook"].key,
                    "clip": ctx.inputs["clip"].key if m.kind == "clip" else None,
                    "model": trained[m.model].key if m.model else None,
                    "method": {"slug": m.slug, "kind": m.kind, "layers": m.layers, "k": m.k}, "llm": llm}
        out[m.slug] = base / f"{safe_name(m.slug, 'bench.compare method')}-{stable_hash(identity, 16)}"
    return out


def evaluate_methods(backend, renderings: dict[str, dict], episodes: dict[str, list], template, scoring: str,
                     out_dirs: dict[str, Path], chunk_size: int = 16, choice: bool = True
                     ) -> dict[str, dict[str, dict]]:
    """Every method on every cell's episodes. Returns {slug: {cell key: {"results", "seconds", "new"}}}.

    Per (method, cell) the episodes' prompts and answers go to <out_dirs[slug]>/<cell key>.jsonl; a rerun
    keeps what is there and evaluates the rest. A lock per file: concurrent runs never interleave lines.
    """
    from tqdm.auto import tqdm

    from spae.console import progress_enabled
    from spae.fewshot.engine import evaluate_episodes
    from spae.io import file_lock

    # cells outer, methods inner: an interrupted or partial run has every method on the first cells
    total = sum(len(eps) for eps in episodes.values()) * len(renderings)
    out: dict[str, dict[str, dict]] = {slug: {} for slug in renderings}
    name = safe_name(template.name, "bench.prompt.name")
    with tqdm(total=total, desc="few-shot episodes", unit="episode", disable=not progress_enabled()) as bar:
        for cell_key, eps in episodes.items():
            for slug, rendered in renderings.items():
                bar.set_postfix_str(f"{slug} {cell_key}")
                # one file per (cell, template, scoring): its episodes are a prefix-stable list, so the
                # finished lines are exactly the first episodes of any request
                tag = f"{cell_key}-{name}-{scoring}{'-choice' if choice else ''}-{stable_hash(asdict(template), 8)}"
                path = Path(out_dirs[slug]) / f"{tag}.jsonl"
                with file_lock(path.with_suffix(".lock")):
                    before = min(_finished_lines(path), len(eps))
                    bar.update(before)
                    seen = [before]

                    def progress(done: int, _total: int, seen=seen) -> None:
                        bar.update(done - seen[0])
                        seen[0] = done

                    start = time.perf_counter()
                    results = evaluate_episodes(backend, eps, rendered.__getitem__, template, scoring=scoring,
                                                jsonl_path=path, resume=True, chunk_size=chunk_size,
                                                progress=progress, choice=choice)
                bar.update(len(eps) - seen[0])
                out[slug][cell_key] = {"results": results, "seconds": time.perf_counter() - start,
                                       "new": len(eps) - before, "records": path}
    return out


def _finished_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def cell_metrics(results: list, scoring: str = "exact", choice: bool = True) -> dict:
    """The headline (accuracy under the run's scoring; exact match = the paper's protocol) and, under
    "constrained_choice", the log-likelihood ranking over the episode's classes (not the paper's protocol)."""
    from spae.fewshot.engine import summarize, summarize_choice
    from spae.fewshot.scoring import CHOICE_LABEL, CHOICE_NORMALISATION, SCORINGS, answered_a_class

    s = summarize(results)
    in_label_set = [answered_a_class(r.answer, r.classes) for r in results]
    named = [r.correct for r, inside in zip(results, in_label_set) if inside]
    out = {"accuracy": s["accuracy"], "ci95_low": s["ci_low"], "ci95_high": s["ci_high"], "episodes": s["n"],
           "metric": SCORINGS[scoring], "paper_protocol": scoring == "exact",
           "answer_is_a_class": sum(in_label_set) / len(results) if results else float("nan"),
           # diagnostic, not the paper's metric: how often a class-naming answer names the right class
           "accuracy_when_a_class": sum(named) / len(named) if named else float("nan")}
    if choice:
        c = summarize_choice(results)
        out["constrained_choice"] = (
            {"unavailable": c["unavailable"], "metric": CHOICE_LABEL, "paper_protocol": False} if "unavailable" in c
            else {"accuracy": c["accuracy"], "ci95_low": c["ci_low"], "ci95_high": c["ci_high"], "episodes": c["n"],
                  "metric": CHOICE_LABEL, "normalisation": CHOICE_NORMALISATION, "paper_protocol": False})
    return out


def mean_accuracy(per_cell: dict[str, dict]) -> float:
    values = [v["accuracy"] for v in per_cell.values() if v.get("episodes")]
    return math.fsum(values) / len(values) if values else float("nan")


def summarize_methods(methods: list, renderings: dict, evaluated: dict, trained: dict, scoring: str = "exact",
                      choice: bool = True) -> tuple:
    """(metrics, per-cell summaries for the tables {"headline", "choice"}, what each method is, timing): keyed by
    the method's stable id (ComparedMethod.slug), the tables' by its display label (methods_info's `label`)."""
    from spae.fewshot.engine import summarize, summarize_choice
    from spae.fewshot.methods import tokens_per_image

    metrics, for_table, methods_info, per_method_timing = {}, {"headline": {}, "choice": {}}, {}, {}
    for m in methods:
        first = next(iter(renderings[m.slug].values()))
        label = m.display_label(tokens_per_image(first))
        per_cell = {key: cell_metrics(r["results"], scoring, choice) for key, r in evaluated[m.slug].items()}
        average = {"accuracy": mean_accuracy(per_cell), "cells": len(per_cell)}
        if choice:
            average["constrained_choice"] = {"accuracy": mean_accuracy(
                {k: v["constrained_choice"] for k, v in per_cell.items()}), "cells": len(per_cell)}
        metrics[m.slug] = {**per_cell, "average": average}
        for_table["headline"][label] = {key: summarize(r["results"]) for key, r in evaluated[m.slug].items()}
        if choice:
            for_table["choice"][label] = {key: summarize_choice(r["results"]) for key, r in evaluated[m.slug].items()}
        new = sum(r["new"] for r in evaluated[m.slug].values())
        seconds = sum(r["seconds"] for r in evaluated[m.slug].values())
        per_method_timing[m.slug] = {"seconds": round(seconds, 2), "episodes_run": new,
                                     "seconds_per_episode": round(seconds / new, 3) if new else None,
                                     "per_cell": {key: {"seconds": round(r["seconds"], 2), "episodes_run": r["new"],
                                                        "seconds_per_episode": (round(r["seconds"] / r["new"], 3)
                                                                                if r["new"] else None)}
                                                  for key, r in evaluated[m.slug].items()}}
        methods_info[m.slug] = {"label": label, "method": m.method, "layers": m.layers, "k": m.k, "model": m.model,
                                "distinct": m.distinct,
                                "tokens_per_image": tokens_per_image(first),
                                "model_stage": (f"{trained[m.model].name}/{trained[m.model].key}"
                                                if m.model else None),
                                "model_reused": trained[m.model].cached if m.model else None,
                                "model_train_seconds": round(trained[m.model].seconds, 2) if m.model else None,
                                "model_summary": trained[m.model].summary if m.model else None}
    return metrics, for_table, methods_info, per_method_timing


# ------------------------------------------------------------------------------------------ fairness
def training_budgets(trained: dict[str, StageResult]) -> dict[str, dict]:
    """{model: steps, effective batch, pretraining images seen and their ratio to the tokenizers'} for every
    trained model, from its training stage's summary: the compared methods' pretraining, side by side."""
    out = {}
    for model, result in sorted(trained.items()):
        s = result.summary
        seen = s.get("images_seen")
        if seen is None:  # a summary written before images seen were counted
            out[model] = {"stage": result.name, "images_seen": None, "note": "not recorded by this cached model"}
            continue
        out[model] = {"stage": result.name, "steps": s.get("steps"), "effective_batch": s.get("effective_batch"),
                      "images_seen": seen,
                      # tokenizers are the reference (1.0); Frozen states its ratio (method.images_seen_ratio)
                      "images_seen_ratio": s.get("images_seen_ratio", 1.0)}
    return out


def training_note(budgets: dict[str, dict]) -> str:
    parts = [f"{m} {b['images_seen']}" + (f" ({b['images_seen_ratio']:g} x the tokenizers')"
                                          if b.get("images_seen_ratio", 1.0) != 1.0 else "")
             for m, b in budgets.items() if b.get("images_seen") is not None]
    return ("Pretraining images seen (steps x effective batch): " + ", ".join(parts) + ".") if parts else ""


def eval_class_exclusion(data_dir: Path, names: list[str]) -> dict[str, dict]:
    """{pretraining set: what data.exclude_eval_classes did to it} from the data stage's records."""
    from spae.data.prepared import excluded_record
    from spae.io import read_json

    out = {}
    for name in names:
        path = excluded_record(data_dir, "pretrain", name)
        out[name] = read_json(path) if path.is_file() else {"exclude_eval_classes": None}
    return out


def exclusion_note(exclusion: dict[str, dict]) -> str:
    parts = []
    for name, r in exclusion.items():
        if r.get("exclude_eval_classes") is None:
            parts.append(f"{name}: not recorded (data prepared before data.exclude_eval_classes existed)")
        elif not r["exclude_eval_classes"]:
            parts.append(f"{name}: off (data.exclude_eval_classes=false), nothing dropped")
        elif not r.get("excluded_class_ids"):
            parts.append(f"{name}: on, but no evaluation set names WordNet ids, nothing dropped")
        elif not r.get("class_ids"):
            parts.append(f"{name}: on, but the set has no WordNet ids, nothing dropped")
        else:
            parts.append(f"{name}: on, {r['rows_dropped']} rows of {len(r['classes_dropped'])} of the "
                         f"{r['excluded_class_ids']} evaluation classes dropped (by WordNet id)")
    return "Evaluation classes excluded from pretraining: " + "; ".join(parts) + "." if parts else ""


def training_stage_sets(cfg: dict, trained: dict[str, StageResult]) -> dict[str, list[str]]:
    """{training stage: the pretraining sets it reads}: the embedded CLIP and every compared model's stage
    read all of data.pretrain (their own subsets of it; counting the whole sets is the stricter check)."""
    names = sorted((cfg["data"].get("pretrain") or {}).keys())
    stages = {"clip": names} if cfg["clip"].get("kind") == "embedded" else {}
    for model, result in sorted(trained.items()):
        stages[f"{result.name}:{model}"] = names
    return stages


def fairness_report(data_dir: Path, cfg: dict, eval_rows, eval_labels: list[str], max_images: int | None,
                    stage_sets: dict[str, list[str]] | None = None, training: dict[str, dict] | None = None) -> dict:
    """Per training stage, the images it could train on of each evaluation class (by label where the pretraining
    set is the evaluation dataset, by pixel hash otherwise). Fails the run (FairnessError) when any count is not
    zero, unless the data setup is declared closed-world (then the overlap is reported and labelled). Also
    what data.exclude_eval_classes dropped and (`training`, from training_budgets) the images each trained
    method saw."""
    from spae.data import load_prepared
    from spae.data.fairness import class_exposure, enforce, is_closed_world, stage_exposure

    names = sorted((cfg["data"].get("pretrain") or {}).keys())
    pretrain = {n: (cfg["data"]["pretrain"][n], load_prepared(data_dir, "pretrain", n)) for n in names}
    per_set = class_exposure(pretrain, cfg["data"].get("classification") or {}, list(eval_rows), list(eval_labels),
                             max_images)
    stage_sets = stage_sets if stage_sets is not None else {"pretraining": names}
    per_stage = stage_exposure(per_set, stage_sets)
    closed = is_closed_world(cfg["data"])
    enforce(per_stage, cfg["data"])
    seen = sum(n for counts in per_stage.values() for n in counts.values())
    complete = all(s["complete"] for s in per_set.values())
    world = "CLOSED-WORLD: the evaluation classes are training classes" if closed else \
        "novel classes: no training stage saw an image of an evaluation class"
    note = (f"{world}. Per training stage, images of the {len(set(eval_labels))} evaluation classes it trained on: "
            + "; ".join(f"{st}: {sum(c.values())}" for st, c in per_stage.items())
            + " (by label where a pretraining set is the evaluation dataset, else by pixel hash of the "
            f"{len(eval_rows)} evaluation images the episodes use"
            + ("" if complete else ", over a capped subset of the pretraining images") + ").")
    exclusion = eval_class_exclusion(data_dir, names)
    training = training or {}
    note += " " + exclusion_note(exclusion) + ((" " + training_note(training)) if training_note(training) else "")
    return {"world": "closed-world" if closed else "novel-class", "per_stage": per_stage, "per_set": per_set,
            "eval_images": len(eval_rows), "images_of_eval_classes_trained_on": seen,
            "pretraining": {n: {"images": len(ds)} for n, (_, ds) in pretrain.items()},
            "check_complete": complete, "training": training, "eval_class_exclusion": exclusion, "note": note}


def fairness_markdown(fairness: dict) -> str:
    per_stage = fairness["per_stage"]
    classes = sorted({c for counts in per_stage.values() for c in counts})
    lines = [f"Fairness ({fairness['world']}): images of each evaluation class that each training stage trained on "
             "(must be 0 in the novel-class setups):", "",
             "| training stage | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for stage, counts in per_stage.items():
        lines.append(f"| {stage} | " + " | ".join(str(counts.get(c, 0)) for c in classes) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ report
def label_set_markdown(metrics: dict) -> str:
    """Per method and cell, the % of answers that name one of the episode's classes (right or wrong), and the
    accuracy among those answers (a diagnostic that separates format-following from recognition)."""
    cells = [k for k in next(iter(metrics.values()), {}) if k != "average"]
    lines = ["Answers that are one of the episode's class names, % (in brackets: % right among them; a "
             "diagnostic, not the paper's metric):", "",
             "| method | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]
    for label, per_cell in metrics.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * per_cell[c]['answer_is_a_class']:.0f} ({100 * per_cell[c]['accuracy_when_a_class']:.0f})"
            for c in cells) + " |")
    return "\n".join(lines)


def choice_markdown(choice: dict[str, dict[str, dict]]) -> list[str]:
    """The constrained-choice tables, labelled as not the paper's protocol, without the paper's rows; methods
    whose backend cannot score log-likelihoods are named with the reason."""
    from spae.fewshot.table import table1_markdown
    from spae.fewshot.scoring import CHOICE_LABEL

    shown = {m: cells for m, cells in choice.items() if not any("unavailable" in v for v in cells.values())}
    lines = [f"**Not the paper's protocol: {CHOICE_LABEL}.** It shows what the image tokens carry when the "
             "answer is constrained to the episode's classes; the paper's numbers are not comparable to it.", ""]
    if shown:
        lines += [table1_markdown(shown, metric="constrained-choice accuracy %, NOT the paper's protocol",
                                  with_paper=False).rstrip(), ""]
    for method, cells in choice.items():
        reasons = sorted({v["unavailable"] for v in cells.values() if "unavailable" in v})
        if reasons:
            lines += [f"Constrained choice unavailable for {method}: {'; '.join(reasons)}.", ""]
    return lines


def markdown_report(metrics_for_table: dict, cfg: dict, methods_info: dict, fairness: dict, timing: dict,
                    template_name: str, scoring: str, n_episodes: int, llm: dict, metrics: dict | None = None
                    ) -> str:
    from spae.fewshot.table import table1_markdown
    from spae.fewshot.scoring import SCORINGS
    from spae.results import provenance

    p = provenance(cfg)
    stand_ins = [f"data {p['data']} ({cfg['data'].get('classification', {}).get('name')} stands in for "
                 "mini-ImageNet)" if p["data_is_stand_in"] else None,
                 f"CLIP {p['clip']} (trained here)" if p["clip_is_stand_in"] else None,
                 f"LLM {p['llm']} (embedded, not PaLM 2)" if p["llm_is_embedded"] else None]
    stand_ins = [s for s in stand_ins if s]
    world = p.get("data_world") or ""
    title = "### Few-shot classification (SPAE Table 1 protocol)"
    if world == "closed-world":
        title += ", CLOSED-WORLD: the evaluation classes are training classes"
    elif world:
        title += f", {world}: classes no training stage saw"
    lines = [title, ""]
    if stand_ins:
        lines += ["Not the paper's setup, stand-ins: " + "; ".join(stand_ins) + ".", ""]
    lines += [f"LLM: {llm.get('name')} through {llm.get('backend')}. Prompt `{template_name}`, scoring `{scoring}`: {SCORINGS[scoring]}. {n_episodes} episodes per cell (or the cell's own count), "
              "the same episodes for every method.", ""]
    lines += [f"**Headline: {SCORINGS[scoring]}.**", "", table1_markdown(metrics_for_table["headline"]).rstrip(), ""]
    if metrics_for_table.get("choice"):
        lines += choice_markdown(metrics_for_table["choice"])
    if metrics:
        lines += [label_set_markdown({methods_info[slug]["label"]: cells for slug, cells in metrics.items()}), ""]
    lines += ["| method | tokens per image | model | seconds per episode |", "|---|---:|---|---:|"]
    for slug, info in methods_info.items():
        spe = timing.get(slug, {}).get("seconds_per_episode")
        lines.append(f"| {info['label']} | {info['tokens_per_image']} | {info.get('model_stage') or '-'} | "
                     f"{'-' if spe is None else f'{spe:.2f}'} |")
    lines += ["", f"Fairness: pretraining sets {', '.join(fairness['pretraining']) or 'none'}; " + fairness["note"], "",
              fairness_markdown(fairness)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the stage
# 3: leading space; 4: choice metric; 5: evaluation sets from eval_data, pretraining sets (fairness) from pretrain_data;
# 6: per-method metrics keyed by the method's stable id (spae-l2, ...), its display label beside it; 7: token_content;
# 8: the nearest-support reader per cell
@stage("fewshot_eval", deps=("eval_data", "pretrain_data", "codebook", "clip"), version=8,
       config_keys=("bench", "llm", "model", "codebook", "clip", "data", "trainer", "seed"),
       instances=incontext.model_needs)
def fewshot_eval(ctx: StageContext) -> dict:
    from spae.fewshot import token_content
    from spae.fewshot.scoring import check_scoring

    cfg, bench = ctx.cfg, ctx.cfg["bench"]
    methods = incontext.compared_methods(cfg)
    cells, template = cells_from_config(bench), prompt_template(bench)
    scoring = check_scoring(str(bench.get("scoring", "exact")))
    seed = int(bench["episode_seed"] if bench.get("episode_seed") is not None else cfg.get("seed", 0))
    n_episodes = int(bench.get("episodes", 100))
    timing: dict[str, Any] = {}

    label_names, episodes, indices, images = episode_images(ctx, cells, n_episodes, seed)
    log.info("fewshot_eval: %d cells x %d episodes, %d distinct images, %d methods", len(cells), n_episodes,
             len(indices), len(methods))

    trained, renderings = incontext.models_and_renderings(ctx, methods, images, indices, timing)
    save_renderings(ctx.out_dir / "renderings", renderings, label_names)

    start = time.perf_counter()
    backend = incontext.build_llm(cfg)
    timing["llm_load_seconds"] = round(time.perf_counter() - start, 2)
    choice = bool(bench.get("choice_metric", True))
    evaluated = evaluate_methods(backend, renderings, episodes, template, scoring, record_dirs(ctx, methods, trained),
                                 int(bench.get("chunk_size", 32)), choice=choice)

    metrics, for_table, methods_info, per_method_timing = summarize_methods(methods, renderings, evaluated, trained,
                                                                            scoring, choice)
    fairness = fairness_report(ctx.input_dir("pretrain_data"), cfg, images, [label_names[i] for i in indices],
                               bench.get("fairness_max_images"), training_stage_sets(cfg, trained),
                               training_budgets(trained))
    copied = copy_records(evaluated, ctx.run_dir / "fewshot_eval")
    markdown = markdown_report(for_table, cfg, methods_info, fairness, per_method_timing, template.name, scoring,
                               n_episodes, backend.describe(), metrics)
    content, content_md = token_content.report(renderings, {i: label_names[i] for i in indices},
                                               {slug: info["label"] for slug, info in methods_info.items()},
                                               episodes)
    log_accuracy(ctx.logger, metrics, methods_info)
    return {"metrics": metrics, "metric_labels": metric_labels(scoring, choice),
            "markdown": markdown + "\n" + content_md, "fairness": fairness, "methods": methods_info,
            "token_content": content,  # results.json lists it beside the metrics (experiments.run)
            "training": fairness["training"],  # results.json lists it (experiments.run)
            "timing": {**timing, "per_method": per_method_timing}, "prompt": template.name, "scoring": scoring,
            "episodes_per_cell": n_episodes, "episode_seed": seed, "cells": [c.key for c in cells],
            "llm": backend.describe(), "records": copied}


def episode_images(ctx: StageContext, cells: list, n_episodes: int, seed: int) -> tuple[list[str], dict, list, list]:
    """(class name of every evaluation row, {cell key: episodes}, sorted indices of the images they show,
    those images) from the evaluation split (data.classification)."""
    from spae.data import load_prepared

    ds = load_prepared(ctx.input_dir("eval_data"), "classification")
    label_names = list(ds["label_name"])
    source = classification_source(ctx.cfg)
    if not any(label_names):
        raise InvalidInputError(f"{source} has no class names (no labels); the few-shot bench needs named classes:"
                                " for an image folder, one sub-folder per class (e.g. cat/1.jpg, dog/2.jpg)")
    episodes = plan_episodes(label_names, cells, n_episodes, seed, source)
    indices = used_images(episodes)
    return label_names, episodes, indices, ds.select(indices)["image"]


def save_renderings(out_dir: Path, renderings: dict[str, dict], label_names: list[str]) -> None:
    """<out_dir>/<slug>.json: every rendered image's class and rendering, for inspection."""
    from spae.fewshot.methods import as_record
    from spae.io import write_json_atomic

    for slug, rendered in renderings.items():
        write_json_atomic(out_dir / f"{slug}.json",
                          {str(i): {"label": label_names[i], "rendering": as_record(r)} for i, r in rendered.items()})


def log_accuracy(logger, metrics: dict, methods_info: dict) -> None:
    """Per (method, cell) accuracies as a table and the numeric metrics, to the run's logger (if any)."""
    if logger is None:
        return
    rows = [[slug, methods_info[slug]["label"], key, v["accuracy"], v["ci95_low"], v["ci95_high"], v["episodes"],
             v["answer_is_a_class"], (v.get("constrained_choice") or {}).get("accuracy")]
            for slug, cells_ in metrics.items() for key, v in cells_.items() if key != "average"]
    logger.log_table("fewshot/accuracy", ["method", "label", "cell", "accuracy (exact match, paper's protocol)",
                                          "ci95_low", "ci95_high", "episodes", "answer_is_a_class",
                                          "constrained-choice accuracy (not the paper's protocol)"],
                     rows)
    logger.log_metrics({"fewshot": _numbers_only(metrics)})


def metric_labels(scoring: str, choice: bool) -> dict:
    """What each reported number is, for results.json readers: the headline and the constrained choice."""
    from spae.fewshot.scoring import CHOICE_LABEL, SCORINGS

    labels = {"accuracy": SCORINGS[scoring]}
    if choice:
        labels["constrained_choice"] = CHOICE_LABEL
    return labels


def _numbers_only(tree: dict) -> dict:
    """The numeric leaves of a nested dict (the metric labels stay in results.json, out of the metric logs)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _numbers_only(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def copy_records(evaluated: dict[str, dict[str, dict]], dst: Path) -> list[str]:
    """Copy each (method, cell)'s JSONL of prompts and answers into the run folder as <slug>/<cell>.jsonl
    (only this run's episodes: a shared record file may hold more); relative paths returned."""
    import json

    out = []
    for slug, cells in evaluated.items():
        for cell_key, entry in cells.items():
            rel = Path(slug) / f"{cell_key}.jsonl"
            lines = [json.dumps(asdict(r), ensure_ascii=False) for r in entry["results"]]
            write_text_atomic(Path(dst) / rel, "\n".join(lines) + "\n")
            out.append(str(Path(Path(dst).name) / rel))
    return out

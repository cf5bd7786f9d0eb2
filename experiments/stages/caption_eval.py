"""Stage `caption_eval`: in-context image captioning by a frozen LLM, for every compared method (bench.compare)
on the very same items. Also the shared orchestration of the in-context tasks (vqa_eval uses it).

Steps (as fewshot_eval, whose helpers this reuses):
1. Plan the items (seeded): query images from the evaluation split (data.captioning), each with bench.shots
   (image, caption) examples drawn from the TRAINING split of the same dataset (bench.example_pool rows of it).
2. Train or reuse each compared model through its own cached stage (nested pipeline run).
3. Render every image the items use once per method (words, word layers, or Frozen's prefix embeddings).
4. Build the LLM once; per method ask every item, appending prompts and answers to <stage>/records/<slug>.jsonl
   as they finish (a rerun resumes); copies land in the run folder.
5. Score: BLEU-4, ROUGE-L, CIDEr-D, and the cosine of the query image and the caption under the configured
   CLIP (also for the reference captions, as the scale's reference point).
The embedded data's captions are templated (easy-VQA: "a red circle"); every output says which kind it used.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.pipeline import StageContext, StageResult, stage

log = logging.getLogger(__name__)

CAPTION_SOURCE_NOTE = {
    "real": "human-written reference captions",
    "templated": "TEMPLATED reference captions generated from labels/attributes (e.g. easy-VQA's \"a red circle\"), "
                 "not human captions: scores measure naming the object, not captioning skill",
}


# ------------------------------------------------------------------------------------------ shared setup
@dataclass
class InContextRun:
    """What every in-context task stage prepares before scoring."""
    methods: list
    items: list
    labels: dict[str, str]  # slug -> display label
    answered: dict[str, dict]  # slug -> {"records", "seconds", "new", "path"}
    trained: dict[str, StageResult]
    eval_ds: Any
    pool_ds: Any
    same_split: bool
    llm: dict
    timing: dict = field(default_factory=dict)


def in_context_template(bench: dict):
    from spae.tasks.incontext import InContextTemplate

    spec = bench.get("prompt")
    if not isinstance(spec, dict):
        raise ValueError(f"bench.prompt must be an in-context template (example_item, query_item, ...), got {spec!r}")
    return InContextTemplate.from_dict(dict(spec))


def check_prefix_backend(cfg: dict, methods: list) -> None:
    if any(m.kind == "prefix" for m in methods) and cfg["llm"].get("backend") != "hf_local":
        raise ValueError(f"Frozen feeds prefix embeddings to the LLM, which needs llm backend hf_local; llm="
                         f"{cfg['llm'].get('name')!r} uses {cfg['llm'].get('backend')!r}. Drop frozen from "
                         "bench.compare or choose a local LLM (llm=gemma3_270m, llm=hf).")


def data_spec(cfg: dict, role: str) -> dict:
    spec = (cfg.get("data") or {}).get(role)
    if not isinstance(spec, dict):
        raise ValueError(f"this bench evaluates data.{role}, which the data setup {cfg['data'].get('name')!r} does not "
                         f"name; add `- /dataset@{role}: <dataset>` to conf/data/{cfg['data'].get('name')}.yaml or "
                         f"set it on the command line (+dataset@data.{role}=<dataset>)")
    return spec


def is_same_split(spec: dict) -> bool:
    """True when the dataset's training and evaluation splits are one split (VQAv2 on the hub has no train)."""
    return str(spec.get("train_split")) == str(spec.get("eval_split"))


def load_example_pool(cfg: dict, role: str, eval_ds):
    """The training split of data.<role> (a seeded subset of bench.example_pool rows), where the in-context
    examples come from; the evaluation split itself when the dataset has no other."""
    from spae.data import load_split

    spec = data_spec(cfg, role)
    if is_same_split(spec):
        log.warning("data.%s: train_split == eval_split (%s); examples come from the evaluation split, never "
                    "showing an item its own image", role, spec.get("eval_split"))
        return eval_ds
    limit = cfg["bench"].get("example_pool")
    return load_split({**spec, "cache_dir": str(Path(cfg["paths"]["cache_dir"]) / "datasets")}, "train",
                      offline=bool(cfg.get("offline", True)), limit=None if limit is None else int(limit),
                      seed=int(cfg.get("seed", 0)))


def item_images(items: list, eval_ds, pool_ds) -> tuple[list[str], list]:
    """(rendering keys, PIL images) of every image the items show: "q<row>" of the eval split, "x<row>" of
    the training pool."""
    keys = sorted({k for item in items for k in [item.image, *(e.image for e in item.examples)]})
    q_rows = [int(k[1:]) for k in keys if k[0] == "q"]
    x_rows = [int(k[1:]) for k in keys if k[0] == "x"]
    images = (list(eval_ds.select(q_rows)["image"]) if q_rows else []) + \
             (list(pool_ds.select(x_rows)["image"]) if x_rows else [])
    return [f"q{r}" for r in q_rows] + [f"x{r}" for r in x_rows], images


def answer_methods(backend, renderings: dict[str, dict], items: list, template, out_dir: Path,
                   chunk_size: int) -> dict[str, dict]:
    """Every method answers every item; per method a JSONL of prompts and answers that a rerun resumes."""
    from tqdm.auto import tqdm

    from spae.console import progress_enabled
    from spae.tasks.incontext import answer_items

    out = {}
    for slug, rendered in renderings.items():
        path = Path(out_dir) / f"{slug}.jsonl"
        before = path.read_bytes().count(b"\n") if path.exists() else 0
        with tqdm(total=len(items), desc=f"in-context {slug}", unit="item", disable=not progress_enabled()) as bar:
            seen = [0]

            def progress(done: int, _total: int) -> None:
                bar.update(done - seen[0])
                seen[0] = done

            start = time.perf_counter()
            records = answer_items(backend, items, rendered.__getitem__, template, jsonl_path=path,
                                   chunk_size=chunk_size, progress=progress)
            bar.update(len(items) - seen[0])
        out[slug] = {"records": records, "seconds": time.perf_counter() - start,
                     "new": max(0, len(items) - before), "path": path}
    return out


def data_role(bench: dict, default: str) -> str:
    """The data role the bench evaluates (bench.data_role, e.g. captions of the `vqa` set)."""
    return str(bench.get("data_role") or default)


def prepare_run(ctx: StageContext, role: str, plan) -> InContextRun:
    """Steps 1-4 of the module docstring; `plan(eval_ds, pool_ds, same_split)` returns the items."""
    from experiments.stages import fewshot_eval as fe
    from spae.data import load_prepared
    from spae.fewshot.methods import parse_compare, tokens_per_image

    cfg, bench = ctx.cfg, ctx.cfg["bench"]
    methods = parse_compare(bench.get("compare"), list((bench.get("methods") or {}).keys()))
    check_prefix_backend(cfg, methods)
    template = in_context_template(bench)
    timing: dict[str, Any] = {}
    data_spec(cfg, role)  # a clear error when the data setup lacks the role

    eval_ds = load_prepared(ctx.input_dir("eval_data"), role)
    same = is_same_split(data_spec(cfg, role))
    pool_ds = load_example_pool(cfg, role, eval_ds)
    items = plan(eval_ds, pool_ds, same)
    keys, images = item_images(items, eval_ds, pool_ds)
    log.info("%s: %d items x %d shots, %d distinct images, %d methods", role, len(items),
             int(bench.get("shots", 0)), len(keys), len(methods))

    start = time.perf_counter()
    trained = fe.train_models(ctx, methods)
    timing["models_seconds"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    renderings = fe.render_all(fe.build_renderers(ctx, methods, trained), images, keys,
                               int(bench.get("render_batch_size", 64)))
    timing["render_seconds"] = round(time.perf_counter() - start, 2)

    start = time.perf_counter()
    backend = fe.build_llm(cfg)
    timing["llm_load_seconds"] = round(time.perf_counter() - start, 2)
    answered = answer_methods(backend, renderings, items, template, ctx.out_dir / "records",
                              int(bench.get("chunk_size", 32)))
    labels = {m.slug: m.display_label(tokens_per_image(next(iter(renderings[m.slug].values())))) for m in methods}
    timing["per_method"] = {s: {"seconds": round(a["seconds"], 2), "items_run": a["new"],
                                "seconds_per_item": round(a["seconds"] / a["new"], 3) if a["new"] else None}
                            for s, a in answered.items()}
    return InContextRun(methods, items, labels, answered, trained, eval_ds, pool_ds, same, backend.describe(), timing)


def copy_records(run: InContextRun, dst: Path) -> list[str]:
    """The per-method JSONL files, copied into the run folder (paths relative to it)."""
    out = []
    for answered in run.answered.values():
        target = Path(dst) / answered["path"].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(answered["path"], target)
        out.append(str(Path(Path(dst).name) / target.name))
    return out


def methods_info(run: InContextRun) -> dict:
    info = {}
    for m in run.methods:
        first = run.answered[m.slug]["records"][0]["prompt"] if run.answered[m.slug]["records"] else ""
        model = run.trained.get(m.model) if m.model else None
        info[m.slug] = {"label": run.labels[m.slug], "method": m.method, "layers": m.layers, "k": m.k,
                        "model_stage": f"{model.name}/{model.key}" if model else None,
                        "model_reused": model.cached if model else None,
                        # pretraining images the model saw (steps x effective batch)
                        "images_seen": model.summary.get("images_seen") if model else None,
                        "first_prompt_chars": len(first)}
    return info


def setup_lines(cfg: dict, run: InContextRun, title: str, role: str) -> list[str]:
    """Markdown heading, stand-ins and protocol shared by the in-context task reports."""
    from spae.results import provenance

    p, bench = provenance(cfg), cfg["bench"]
    stand_ins = [f"data {cfg['data'][role].get('name')} (embedded stand-in)" if p["data_is_stand_in"] else None,
                 f"CLIP {p['clip']} (trained here)" if p["clip_is_stand_in"] else None,
                 f"LLM {p['llm']} (embedded, not PaLM 2)" if p["llm_is_embedded"] else None]
    stand_ins = [s for s in stand_ins if s]
    lines = [f"### {title}", ""]
    if stand_ins:
        lines += ["Not the paper's setup, stand-ins: " + "; ".join(stand_ins) + ".", ""]
    source = "the evaluation split itself (no separate training split; never the item's own image)" \
        if run.same_split else "the training split"
    lines += [f"LLM: {run.llm.get('name')} through {run.llm.get('backend')}. {len(run.items)} items of "
              f"{cfg['data'][role].get('name')} (evaluation split), each with {bench.get('shots')} in-context "
              f"examples from {source}; prompt `{bench['prompt'].get('name')}`; the same items and examples for "
              "every method; answer = generation up to the first period or newline.", ""]
    return lines


def timing_lines(run: InContextRun) -> list[str]:
    lines = ["| method | model | seconds per item |", "|---|---|---:|"]
    for m in run.methods:
        label = run.labels[m.slug]
        spi = run.timing["per_method"][m.slug]["seconds_per_item"]
        model = run.trained.get(m.model) if m.model else None
        lines.append(f"| {label} | {f'{model.name}/{model.key}' if model else '-'} | "
                     f"{'-' if spi is None else f'{spi:.2f}'} |")
    return lines


def example_rows(run: InContextRun, n: int = 5) -> list[list]:
    """(method id, label, item, question, answer, references) of the first n items of every method, for W&B."""
    rows = []
    for m in run.methods:
        for r in run.answered[m.slug]["records"][:n]:
            rows.append([m.slug, run.labels[m.slug], r["item_id"], r["question"], r["answer"],
                         " | ".join(r["references"])])
    return rows


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
       config_keys=("bench", "llm", "model", "codebook", "clip", "data", "trainer", "seed"))
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

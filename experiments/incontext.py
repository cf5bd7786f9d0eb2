"""In-context evaluation shared by every in-context bench (few-shot classification, captioning, VQA; generation
uses its LLM): the compared methods' models, their renderings, the LLM and the batched answering loop.

1. Models: each compared method's model is a stage instance the evaluation stage declares (model_needs): the
   pipeline trains or reuses `train[spae]`, `train[lqae]` (SPAE/LQAE) or `frozen_train[frozen]` (Frozen), each
   the stage run with bench.methods.<name> as `method`, before the evaluation starts; the stage reads them from
   its inputs (trained_models).
2. Renderings: every image the items use, rendered once per method (words, word layers, prefix embeddings).
3. The LLM backend of cfg["llm"], built once.
4. Answering (captioning, VQA): per method, every item; prompts and answers appended to a JSONL that a rerun
   resumes. The few-shot bench has its own loop over cells (fewshot_eval.evaluate_methods).

Tests inject models as pipeline substitutes (e.g. {"train[spae]": fake}, see experiments.pipeline.plan_stages),
and renderers and LLMs by patching this module's `build_renderers` and `build_llm`: every in-context stage
reaches them through this module.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.clip_relevance import relevance_scorer
from experiments.pipeline import StageContext, StageNeed, StageResult

log = logging.getLogger(__name__)

MODEL_STAGES = {"tokenizer": "train", "prefix": "frozen_train"}  # method kind -> the stage that trains it


# ------------------------------------------------------------------------------------------ models
def compared_methods(cfg: dict) -> list:
    """bench.compare parsed (spae.fewshot.methods.ComparedMethod), checked against bench.methods."""
    from spae.fewshot.methods import parse_compare

    bench = cfg["bench"]
    return parse_compare(bench.get("compare"), bench.get("methods") or {})


def compared_models(methods: list) -> list[str]:
    """The bench.methods keys whose trained models the compared methods read (CLIP top-k reads none), sorted."""
    return sorted({m.model for m in methods if m.model is not None})


def model_need(cfg: dict, model: str) -> StageNeed:
    """The stage instance that trains bench.methods.<model>: its kind's stage, with that method as `method`."""
    spec = cfg["bench"]["methods"][model]
    target = MODEL_STAGES.get(spec.get("kind"))
    if target is None:
        raise ValueError(f"bench.methods.{model} has kind {spec.get('kind')!r}; the few-shot bench knows "
                         f"{', '.join(MODEL_STAGES)}")
    return StageNeed(target, model, {"method": spec})


def model_needs(cfg: dict) -> list[StageNeed]:
    """The instances of an in-context evaluation stage: the model of every compared method (CLIP top-k needs
    none), checked when the run is planned, before anything runs."""
    methods = compared_methods(cfg)
    check_prefix_backend(cfg, methods)
    return [model_need(cfg, model) for model in compared_models(methods)]


def trained_models(ctx: StageContext, methods: list) -> dict[str, StageResult]:
    """{model: the stage result of its training} of every compared method, from the stage's inputs."""
    return {model: ctx.inputs[model_need(ctx.cfg, model).node] for model in compared_models(methods)}


def build_renderers(ctx: StageContext, methods: list, trained: dict[str, StageResult]) -> dict[str, tuple]:
    """{slug: (renderer, image size)} for every compared method."""
    from spae.fewshot.methods import clip_topk_renderer, prefix_renderer, tokenizer_renderer

    renderers: dict[str, tuple] = {}
    codebook = scorer = None
    for m in methods:
        if m.kind in ("tokenizer", "clip") and codebook is None:
            from spae.codebook import Codebook

            codebook = Codebook.load(ctx.input_dir("codebook"))
        if m.kind == "tokenizer":
            from spae.tokenizer import load_tokenizer

            tok = load_tokenizer(trained[m.model].dir, codebook)
            if m.layers is not None and m.layers > tok.pyramid.num_layers:
                raise ValueError(f"bench.compare asks {m.method} for layers 1-{m.layers}, but its pyramid has "
                                 f"{tok.pyramid.num_layers} layer(s); lower `layers` or drop it")
            renderers[m.slug] = (tokenizer_renderer(tok, m.layers, m.distinct), tok.spec.image_size)
        elif m.kind == "prefix":
            from spae.frozen_baseline import load_frozen_encoder

            encoder = load_frozen_encoder(trained[m.model].dir)
            renderers[m.slug] = (prefix_renderer(encoder), encoder.image_size)
        else:
            if scorer is None:  # the train stage's scorer: its text embeddings are reused from the cache
                scorer = relevance_scorer(ctx, codebook.words)
            renderers[m.slug] = (clip_topk_renderer(scorer, m.k), scorer.clip.image_size)
    return renderers


def render_all(renderers: dict[str, tuple], images: list, indices: list[int], batch_size: int) -> dict[str, dict]:
    """{slug: {image index: rendering}}: each method renders the episodes' images once."""
    from spae.fewshot.methods import render_images

    out = {}
    for slug, (renderer, size) in renderers.items():
        start = time.perf_counter()
        rendered = render_images(renderer, images, size, batch_size, desc=f"render {slug}")
        out[slug] = dict(zip(indices, rendered))
        log.info("fewshot_eval: rendered %d images for %s in %.1fs", len(indices), slug, time.perf_counter() - start)
    return out


def models_and_renderings(ctx: StageContext, methods: list, images: list, keys: list,
                          timing: dict) -> tuple[dict, dict]:
    """(each compared model's stage result, {slug: {key: rendering}} of `images`), the seconds each step took
    recorded in `timing` (models_seconds, render_seconds)."""
    trained = trained_models(ctx, methods)
    # the models trained for this run (0 where reused), before this stage started
    timing["models_seconds"] = round(sum(r.seconds for r in trained.values()), 2)
    start = time.perf_counter()
    renderings = render_all(build_renderers(ctx, methods, trained), images, keys,
                            int(ctx.cfg["bench"].get("render_batch_size", 64)))
    timing["render_seconds"] = round(time.perf_counter() - start, 2)
    return trained, renderings


def build_llm(cfg: dict):
    """The LLM backend of cfg["llm"], loaded once; bench.llm_batch_size overrides its batch size."""
    from spae.llm.backends import build_backend

    spec = dict(cfg["llm"])
    if cfg["bench"].get("llm_batch_size") is not None:
        spec["batch_size"] = int(cfg["bench"]["llm_batch_size"])
    return build_backend(spec, cache_dir=Path(cfg["paths"]["cache_dir"]))


def check_prefix_backend(cfg: dict, methods: list) -> None:
    """Frozen's prefix embeddings need a local LLM; a clear error before any work otherwise."""
    if any(m.kind == "prefix" for m in methods) and cfg["llm"].get("backend") != "hf_local":
        raise ValueError(f"Frozen feeds prefix embeddings to the LLM, which needs llm backend hf_local; llm="
                         f"{cfg['llm'].get('name')!r} uses {cfg['llm'].get('backend')!r}. Drop frozen from "
                         "bench.compare or choose a local LLM (llm=gemma3_270m, llm=hf).")


# ------------------------------------------------------------------------------------------ captioning and VQA
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
    """Plan the items, then steps 1-4 of the module docstring; `plan(eval_ds, pool_ds, same_split)` returns the
    items."""
    from spae.data import load_prepared
    from spae.fewshot.methods import tokens_per_image

    cfg, bench = ctx.cfg, ctx.cfg["bench"]
    methods = compared_methods(cfg)
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

    trained, renderings = models_and_renderings(ctx, methods, images, keys, timing)

    start = time.perf_counter()
    backend = build_llm(cfg)
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



"""Stage `generation_eval`: the paper's progressive in-context generation with a frozen LLM (spae.generation).

For every compared tokenizer (bench.compare; the stage instance `train[<method>]` it declares, trained or
reused by the pipeline before this stage, as the few-shot bench's models are), the first `bench.layers`
pyramid layers of the images are written as words and:
(a) class-conditional generation: in-context examples "class: <name> | layer 1 | layer 2 ..." drawn from
    the training split of data.generation (balanced over classes, a different seeded draw per sample),
    then "class: <target> |"; the LLM writes the layers one after the other;
(b) in-context denoising: examples "noisy: ... -> clean | ..." whose corruption decreases along the
    context, then a corrupted evaluation image; the LLM writes the clean layers one after the other.
Generated pyramids are decoded into images by the tokenizer (generated layers only). Metrics: the valid
codebook-word rate and the replacement counts; (a) CLIP zero-shot class accuracy of the generated images
(the configured CLIP over the class names; also a nearest-class-mean classifier on the FID backbone's
features of real images, for classes the CLIP does not know) and an FID-style distance to real evaluation images of the same
classes, beside references (real images, their reconstructions from the same layers, the fill rule's prior
alone, copies of in-context examples); (b) token accuracy against the clean tokens and PSNR against the
original and the clean decode, beside the corrupted input's. Image grids (PNG) go to the stage and run
folders and to the logger. Each (method, task) is saved when done, so an interrupted run resumes.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from experiments import incontext
from experiments.pipeline import StageContext, StageNeed, stage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config
def compared(bench: dict) -> list[dict]:
    """bench.compare entries (a name, or {method, layers}) as {method, layers, slug}; each names a tokenizer
    in bench.methods; `layers` overrides bench.layers for that entry (LQAE has one layer)."""
    entries = []
    for entry in bench.get("compare") or []:
        entry = {"method": entry} if isinstance(entry, str) else dict(entry)
        name = entry.get("method")
        spec = (bench.get("methods") or {}).get(name)
        if spec is None or spec.get("kind") != "tokenizer":
            raise ValueError(f"bench.compare entry {entry!r}: generation needs a tokenizer method composed in "
                             f"bench.methods (have: {', '.join(bench.get('methods') or {}) or 'none'}); "
                             "Frozen and CLIP top-k cannot write images")
        unknown = set(entry) - {"method", "layers"}
        if unknown:
            raise ValueError(f"bench.compare entry {entry!r}: unknown keys {sorted(unknown)}; valid: method, layers")
        layers = entry.get("layers")
        entries.append({"method": name, "layers": layers,
                        "slug": name if layers is None else f"{name}-l{int(layers)}"})  # the few-shot ids
    if not entries:
        raise ValueError("bench.compare is empty: name the tokenizers to generate with, e.g. [spae]")
    return entries


def generated_layers(bench: dict, tokenizer, override: int | None = None) -> int:
    total = tokenizer.pyramid.num_layers
    k = int(override if override is not None else bench.get("layers") or 2)
    if not 1 <= k <= total:
        raise ValueError(f"bench.layers={k}: the tokenizer has {total} layer(s); generate 1..{total} (per "
                         "method: bench.compare entries {method: lqae, layers: 1})")
    return k


# ------------------------------------------------------------------------------------------ models and data
def tokenizer_needs(cfg: dict) -> list[StageNeed]:
    """The stage's instances: the `train` stage of every compared tokenizer, with bench.methods.<name> as
    `method` (checked when the run is planned)."""
    names = dict.fromkeys(entry["method"] for entry in compared(cfg["bench"]))
    return [incontext.model_need(cfg, name) for name in names]


def trained_tokenizer(ctx: StageContext, method: str):
    """(the trained tokenizer of bench.methods.<method>, its `train[<method>]` stage result)."""
    from spae.codebook import Codebook
    from spae.tokenizer import load_tokenizer

    result = ctx.instance("train", method)
    return load_tokenizer(result.dir, Codebook.load(ctx.input_dir("codebook"))), result


def training_pool(cfg: dict, size: int):
    """The stratified, seeded subset of data.generation's TRAIN split the in-context examples come from
    (the data stage keeps only the evaluation split of evaluation sets)."""
    from spae.data import drop_unreadable_images, load_split

    spec = (cfg.get("data") or {}).get("generation")
    if not spec:
        raise ValueError("the generation bench needs data.generation (e.g. MNIST in conf/data/embedded.yaml)")
    ds = load_split({**spec, "cache_dir": str(Path(cfg["paths"]["cache_dir"]) / "datasets")}, "train",
                    offline=bool(cfg.get("offline", True)), limit=size, seed=int(cfg.get("seed", 0)))
    return drop_unreadable_images(ds)[0]


def tokenize(tokenizer, images: list, layers: int, batch_size: int = 128) -> tuple:
    """(images [N,3,S,S], words per image: list of layers) for PIL images."""
    import torch

    from spae.data.images import to_tensor

    tensors, words = [], []
    for start in range(0, len(images), batch_size):
        batch = to_tensor(images[start:start + batch_size], tokenizer.spec.image_size)
        pyramid = tokenizer.encode(batch, layers=layers)
        tensors.append(batch)
        words += [pyramid.for_image(i) for i in range(len(batch))]
    return torch.cat(tensors), words


def decode_words(tokenizer, pyramids: list, layers: int, batch_size: int = 128):
    """Images from word pyramids (layers 1..layers of each)."""
    import torch

    out = []
    for start in range(0, len(pyramids), batch_size):
        chunk = pyramids[start:start + batch_size]
        ids = [torch.stack([tokenizer.ids_of(p[li]) for p in chunk]) for li in range(layers)]
        out.append(tokenizer.decode(ids, layers=layers).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------------------ the two tasks
def class_conditional_queries(pool_words: list, pool_labels: list[int], class_names: list[str], opts: dict,
                              fmt, counts: list[int], seed: int) -> tuple[list, list[int], list[list[int]]]:
    """Queries (one per class and sample), their target class ids, and the pool rows each context shows."""
    import numpy as np

    from spae.generation import Query, context_text, positional_mode

    n_examples = int(opts.get("examples", 20))
    samples = int(opts.get("samples_per_class", 2))
    targets = list(range(len(class_names))) if opts.get("classes") is None else \
        [class_names.index(c) for c in opts["classes"]]
    by_class = {c: [i for i, l in enumerate(pool_labels) if l == c] for c in range(len(class_names))}
    queries, labels, contexts = [], [], []
    for s in range(samples):
        rng = np.random.default_rng(seed + 1000 * s)
        chosen = []  # balanced over classes, the remainder from random classes
        per, rest = divmod(n_examples, len(class_names))
        extra = set(rng.choice(len(class_names), size=rest, replace=False).tolist()) if rest else set()
        for c, rows in by_class.items():
            k = min(len(rows), per + (c in extra))
            chosen += rng.choice(rows, size=k, replace=False).tolist()
        rng.shuffle(chosen)
        contexts.append(chosen)
        context = context_text([fmt.line(fmt.class_header(class_names[pool_labels[i]]), pool_words[i])
                                for i in chosen])
        for c in targets:
            same = [pool_words[i] for i in chosen if pool_labels[i] == c] or [pool_words[i] for i in chosen]
            queries.append(Query(context, fmt.class_header(class_names[c]), positional_mode(same, counts)))
            labels.append(c)
    return queries, labels, contexts


def denoising_queries(pool_words: list, clean: list, opts: dict, fmt, vocabulary: list[str], seed: int) -> tuple:
    """(queries, corrupted query pyramids, example rates): one shared context of corrupted -> clean examples
    at decreasing corruption, then each evaluation image's corrupted tokens."""
    import numpy as np

    from spae.generation import Query, context_text, corrupt, example_rates

    rng = np.random.default_rng(seed)
    rates = example_rates(int(opts.get("examples", 8)), float(opts.get("example_rate_high", 0.5)),
                          float(opts.get("example_rate_low", 0.1)))
    rows = rng.choice(len(pool_words), size=len(rates), replace=False).tolist()
    lines = []
    for row, rate in zip(rows, rates):
        noisy, _ = corrupt(pool_words[row], rate, vocabulary, rng)
        lines.append(fmt.line(fmt.noisy_header(noisy), pool_words[row]))
    context = context_text(lines)
    rate = float(opts.get("query_rate", 0.3))
    corrupted = [corrupt(words, rate, vocabulary, rng)[0] for words in clean]
    return [Query(context, fmt.noisy_header(c), c) for c in corrupted], corrupted, rates


def run_queries(backend, queries, counts, codebook_words, fmt, bench, path: Path, desc: str) -> list:
    """Generate (or reload what an interrupted run saved at `path`)."""
    from spae.generation import ParsedLayer, generate_layers
    from spae.io import read_json, write_json_atomic

    if path.is_file():
        saved = read_json(path)
        if len(saved) == len(queries) and all(s["header"] == q.header for s, q in zip(saved, queries)):
            for s, q in zip(saved, queries):
                q.raw, q.prompts = s["raw"], s["prompts"]
                q.parsed = [ParsedLayer(**p) for p in s["parsed"]]
                q.written = [p.words for p in q.parsed]
            log.info("generation_eval: %s reloaded from %s", desc, path)
            return queries
    start = time.perf_counter()
    vocabulary = set(codebook_words)
    generate_layers(backend, queries, counts, vocabulary, fmt, float(bench.get("tokens_per_word", 1.5)),
                    progress=lambda done, total: log.info("generation_eval: %s layer %d/%d written (%.0fs)",
                                                          desc, done, total, time.perf_counter() - start))
    write_json_atomic(path, [{"header": q.header, "raw": q.raw, "prompts": q.prompts,
                              "parsed": [vars(p) for p in q.parsed]} for q in queries])
    return queries


# ------------------------------------------------------------------------------------------ grids and logging
def save_grid(rows: list, path: Path, ncol: int) -> Path:
    """Image rows (each [n, 3, S, S], n <= ncol) stacked into one PNG, ncol images per row."""
    import torch
    from torchvision.utils import save_image

    from spae.io import atomic_path

    padded = []
    for r in rows:
        r = r[:ncol]
        if len(r) < ncol:
            r = torch.cat([r, torch.ones(ncol - len(r), *r.shape[1:])])
        padded.append(r)
    with atomic_path(path) as tmp:
        save_image(torch.cat(padded), str(tmp), format="PNG", nrow=ncol, padding=1, pad_value=1.0)
    return path


def publish(ctx: StageContext, grid: Path, name: str, caption: str) -> str:
    target = ctx.run_dir / "generation_eval" / grid.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(grid, target)
    if ctx.logger is not None:
        ctx.logger.log_image(name, grid, caption=caption)
    return str(Path("generation_eval") / grid.name)


def _rate(hits, n: int) -> float:
    return round(float(hits) / n, 4) if n else 0.0


# ------------------------------------------------------------------------------------------ evaluation
def backbone_class_accuracy(distance, real, real_labels, num_classes: int, sets: dict) -> dict:
    """Nearest-class-mean accuracy in the FID backbone's feature space, fit on the real images (real:
    leave-one-out); {} when the backbone is not a plain feature module (Inception)."""
    from spae.generation import nearest_centroid_accuracy

    net = distance.real.inception
    if not distance.real.used_custom_model:
        return {}
    ref = net(real)
    out = {"real": round(nearest_centroid_accuracy(ref, real_labels, None, None, num_classes), 4)}
    for name, (imgs, labels) in sets.items():
        out[name] = round(nearest_centroid_accuracy(ref, real_labels, net(imgs), labels, num_classes), 4)
    return out


def eval_class_conditional(ctx, backend, tokenizer, clip, slug: str, K: int, pool, eval_set, fmt) -> dict:
    import torch

    from spae.generation import word_stats, zero_shot_classes
    from spae.metrics import SetDistance

    cfg, bench = ctx.cfg, ctx.cfg["bench"]
    opts = bench.get("class_conditional") or {}
    pool_words, pool_labels, class_names = pool
    eval_images, eval_labels, _ = eval_set
    counts = tokenizer.pyramid.token_counts[:K]
    queries, targets, contexts = class_conditional_queries(pool_words, pool_labels, class_names, opts, fmt, counts,
                                                           int(cfg.get("seed", 0)))
    run_queries(backend, queries, counts, tokenizer.words, fmt, bench,
                ctx.out_dir / slug / "class_conditional.json", f"{slug} class-conditional")
    generated = decode_words(tokenizer, [q.written for q in queries], K)
    prior = decode_words(tokenizer, [q.fallback for q in queries], K)
    templates = list(cfg["clip"].get("templates") or ["{word}"])
    target_t = torch.tensor(targets)
    # references: real evaluation images of the target classes and their reconstructions from K layers
    wanted = set(targets)
    ref_rows = [i for i, l in enumerate(eval_labels) if l in wanted][: int(bench.get("real_images", 200))]
    real = eval_images[ref_rows]
    real_labels = torch.tensor([eval_labels[i] for i in ref_rows])
    recon = tokenizer.forward_eval(real.to(tokenizer.device), layers=K).cpu()
    accuracy = {name: _rate((zero_shot_classes(clip, imgs, class_names, templates) == labels).sum(), len(labels))
                for name, imgs, labels in (("generated", generated, target_t), ("prior_only", prior, target_t),
                                           ("real", real, real_labels), ("reconstructed", recon, real_labels))}
    distance = SetDistance(["generated", "prior_only", "reconstructed"], str(bench.get("fid", "auto")),
                           bool(cfg.get("offline", True)), int(bench.get("fid_image_size", 128)))
    distance.update_real(real)
    for name, imgs in (("generated", generated), ("prior_only", prior), ("reconstructed", recon)):
        distance.update(name, imgs)
    fid = distance.compute() if len(generated) >= 2 and len(real) >= 2 else {}
    feature_accuracy = backbone_class_accuracy(distance, real, real_labels, len(class_names),
                                               {"generated": (generated, target_t), "prior_only": (prior, target_t),
                                                "reconstructed": (recon, real_labels)})
    example_sets = [{tuple(map(tuple, pool_words[i])) for i in ctx_rows} for ctx_rows in contexts]
    per_sample = len(queries) // len(contexts)
    copies = sum(tuple(map(tuple, q.written)) in example_sets[j // per_sample] for j, q in enumerate(queries))
    # grid: one row per sample set (columns = target classes), the prior row, real reconstructions, real images
    n_cls = len(set(targets))
    rows = [generated[s * n_cls:(s + 1) * n_cls] for s in range(len(contexts))] + [prior[:n_cls]]
    first_real = [next((i for i, l in enumerate(real_labels.tolist()) if l == c), None) for c in targets[:n_cls]]
    for source in (recon, real):  # a real image of each class, reconstructed from K layers, then itself
        rows.append(torch.stack([source[i] if i is not None else torch.ones_like(source[0]) for i in first_real]))
    grid = save_grid(rows, ctx.out_dir / f"generation_class_{slug}.png", n_cls)
    metrics = {"queries": len(queries), "layers": K, "tokens_per_image": sum(counts), **word_stats(queries),
               "clip_accuracy": accuracy["generated"], "clip_accuracy_prior_only": accuracy["prior_only"],
               "clip_accuracy_real": accuracy["real"], "clip_accuracy_reconstructed": accuracy["reconstructed"],
               "chance": round(1 / len(class_names), 4),
               "copied_example_rate": _rate(copies, len(queries)), "real_images": len(real)}
    metrics.update({f"fid_{k}": v for k, v in fid.items()})
    metrics.update({f"backbone_accuracy_{k}": v for k, v in feature_accuracy.items()})
    return {"metrics": metrics, "fid_label": distance.label,
            "grid": publish(ctx, grid, f"generation/class_{slug}",
                            f"columns: {', '.join(class_names[c] for c in targets[:n_cls])}; rows: one per sample "
                            "(own in-context draw), then the fill rule's prior alone, a real image reconstructed, the real image"),
            "samples": [{"class": class_names[t], "raw": q.raw, "words": q.written} for t, q in
                        zip(targets[:n_cls], queries[:n_cls])]}


def eval_denoising(ctx, backend, tokenizer, slug: str, K: int, pool_words, eval_set, fmt) -> dict:
    import torch

    from spae.generation import psnr, token_accuracy, word_stats

    cfg, bench = ctx.cfg, ctx.cfg["bench"]
    opts = bench.get("denoising") or {}
    eval_images, _, eval_words = eval_set
    n = min(len(eval_images), int(opts.get("queries", 10)))
    images, clean = eval_images[:n], eval_words[:n]
    queries, corrupted, rates = denoising_queries(pool_words, clean, opts, fmt, tokenizer.words,
                                                  int(cfg.get("seed", 0)) + 1)
    counts = tokenizer.pyramid.token_counts[:K]
    run_queries(backend, queries, counts, tokenizer.words, fmt, bench, ctx.out_dir / slug / "denoising.json",
                f"{slug} denoising")
    denoised_words = [q.written for q in queries]
    clean_img, noisy_img, denoised = (decode_words(tokenizer, w, K) for w in (clean, corrupted, denoised_words))
    grid = save_grid([images, clean_img, noisy_img, denoised], ctx.out_dir / f"generation_denoise_{slug}.png",
                     min(n, int(opts.get("grid_images", 10))))
    metrics = {"queries": n, "layers": K, "query_corruption": float(opts.get("query_rate", 0.3)),
               "example_corruption": [round(r, 3) for r in rates], **word_stats(queries),
               "token_accuracy": round(token_accuracy(denoised_words, clean), 4),
               "token_accuracy_corrupted_input": round(token_accuracy(corrupted, clean), 4),
               "psnr_vs_image": round(psnr(denoised, images), 3),
               "psnr_vs_clean_decode": round(psnr(denoised, clean_img), 3),
               "psnr_corrupted_vs_image": round(psnr(noisy_img, images), 3),
               "psnr_corrupted_vs_clean_decode": round(psnr(noisy_img, clean_img), 3),
               "psnr_clean_decode_vs_image": round(psnr(clean_img, images), 3)}
    return {"metrics": metrics,
            "grid": publish(ctx, grid, f"generation/denoise_{slug}",
                            "rows: original, clean tokens decoded, corrupted tokens decoded, LLM-denoised decoded"),
            "samples": [{"corrupted": c, "clean": w, "denoised": q.written, "raw": q.raw}
                        for c, w, q in list(zip(corrupted, clean, queries))[:3]]}


def _num(m: dict, key: str, spec: str = ".3f") -> str:
    return "n/a" if m.get(key) is None else format(m[key], spec)


def markdown(results: dict, fid_label: str, llm: dict, cfg: dict) -> str:
    from spae.results import provenance

    p = provenance(cfg)
    lines = ["### In-context generation (progressive, layer by layer)", "",
             f"LLM {llm.get('name')} ({llm.get('backend')}); data {cfg['data']['generation'].get('name')} "
             f"(examples from its train split, references from its evaluation split); CLIP {p['clip']}"
             + (" (trained here, a stand-in)" if p["clip_is_stand_in"] else "") + f"; distances: {fid_label}.",
             "Invalid or missing words are replaced (class-conditional: the examples' most frequent word at that "
             "position for the class; denoising: the corrupted input's token); only the generated layers are decoded.",
             ""]
    for slug, r in results.items():
        cc, dn = r.get("class_conditional"), r.get("denoising")
        if cc:
            m = cc["metrics"]
            lines += [f"**{slug}, class-conditional** ({m['queries']} images, layers 1-{m['layers']} = "
                      f"{m['tokens_per_image']} tokens)", "",
                      "| images | CLIP class accuracy | backbone nearest-class-mean accuracy | FID-style to real | "
                      "valid words | replaced tokens |",
                      "|---|---:|---:|---:|---:|---:|",
                      f"| generated by the LLM | {m['clip_accuracy']:.3f} | {_num(m, 'backbone_accuracy_generated')} | "
                      f"{_num(m, 'fid_generated', '.2f')} | {m['valid_word_rate']:.3f} | {m['replaced_rate']:.3f} |",
                      f"| fill rule's prior only | {m['clip_accuracy_prior_only']:.3f} | "
                      f"{_num(m, 'backbone_accuracy_prior_only')} | {_num(m, 'fid_prior_only', '.2f')} | - | 1.000 |",
                      f"| real images | {m['clip_accuracy_real']:.3f} | {_num(m, 'backbone_accuracy_real')} "
                      "(leave-one-out) | (reference set) | - | - |",
                      f"| real, reconstructed from {m['layers']} layers | {m['clip_accuracy_reconstructed']:.3f} | "
                      f"{_num(m, 'backbone_accuracy_reconstructed')} | {_num(m, 'fid_reconstructed', '.2f')} | - | - |",
                      "",
                      f"Chance {m['chance']:.3f}. Backbone accuracy: nearest class mean of the real images' features "
                      f"(the FID backbone), a second judge where the CLIP does not know the classes. "
                      f"{m['copied_example_rate']:.3f} of the generated pyramids copy an "
                      f"in-context example exactly. Grid: {cc['grid']}.", ""]
        if dn:
            m = dn["metrics"]
            lines += [f"**{slug}, in-context denoising** ({m['queries']} images, {m['query_corruption']:.0%} of the "
                      f"tokens of layers 1-{m['layers']} corrupted; examples at {m['example_corruption']})", "",
                      "| tokens | token accuracy vs clean | PSNR vs image | PSNR vs clean decode |",
                      "|---|---:|---:|---:|",
                      f"| corrupted input | {m['token_accuracy_corrupted_input']:.3f} | "
                      f"{m['psnr_corrupted_vs_image']:.2f} | {m['psnr_corrupted_vs_clean_decode']:.2f} |",
                      f"| LLM-denoised | {m['token_accuracy']:.3f} | {m['psnr_vs_image']:.2f} | "
                      f"{m['psnr_vs_clean_decode']:.2f} |",
                      f"| clean tokens | 1.000 | {m['psnr_clean_decode_vs_image']:.2f} | - |", "",
                      f"Valid words {m['valid_word_rate']:.3f}, replaced tokens {m['replaced_rate']:.3f}. "
                      f"Grid: {dn['grid']}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the stage
@stage("generation_eval", deps=("eval_data", "codebook", "clip"), version=2,  # 2: ids spae-l2 (was spae_l2)
       config_keys=("bench", "llm", "model", "codebook", "clip", "data", "trainer", "seed", "offline"),
       instances=tokenizer_needs)
def generation_eval(ctx: StageContext) -> dict:
    import torch

    from spae.clip.loading import load_clip_from_stage
    from spae.data import class_names as names_of
    from spae.data import load_prepared
    from spae.generation import LineFormat

    cfg, bench = ctx.cfg, ctx.cfg["bench"]
    entries = compared(bench)
    fmt = LineFormat.from_dict(bench.get("format"))
    tasks = [t for t in ("class_conditional", "denoising") if (bench.get(t) or {}).get("enabled", True)]
    if not tasks:
        raise ValueError("bench.class_conditional.enabled and bench.denoising.enabled are both false: nothing to do")
    torch.manual_seed(int(cfg.get("seed", 0)))
    pool_ds = training_pool(cfg, int(bench.get("train_pool", 1000)))
    eval_ds = load_prepared(ctx.input_dir("eval_data"), "generation")
    class_names = names_of(eval_ds)  # before subsetting: every class id present
    # a seeded random subset: the split may be ordered by class
    eval_ds = eval_ds.shuffle(seed=int(cfg.get("seed", 0))).select(range(min(len(eval_ds),
                                                                            int(bench.get("eval_images", 500)))))
    if "class_conditional" in tasks and not class_names:
        raise ValueError("class-conditional generation needs named classes (data.generation has no label names)")
    clip = load_clip_from_stage(ctx.input_dir("clip"), cache_dir=cfg["paths"]["cache_dir"])
    start = time.perf_counter()
    backend = incontext.build_llm(cfg)
    timing = {"llm_load_seconds": round(time.perf_counter() - start, 2)}
    results, fid_label = {}, ""
    for entry in entries:
        slug = entry["slug"]
        tokenizer, trained = trained_tokenizer(ctx, entry["method"])
        K = generated_layers(bench, tokenizer, entry["layers"])
        _, pool_words = tokenize(tokenizer, pool_ds["image"], K)
        eval_images, eval_words = tokenize(tokenizer, eval_ds["image"], K)
        eval_set = (eval_images, list(eval_ds["label"]), eval_words)
        results[slug] = {"model_stage": f"train/{trained.key}", "model_reused": trained.cached}
        t0 = time.perf_counter()
        if "class_conditional" in tasks:
            pool = (pool_words, list(pool_ds["label"]), class_names)
            results[slug]["class_conditional"] = eval_class_conditional(ctx, backend, tokenizer, clip, slug, K, pool,
                                                                        eval_set, fmt)
            fid_label = results[slug]["class_conditional"]["fid_label"]
        t1 = time.perf_counter()
        if "denoising" in tasks:
            results[slug]["denoising"] = eval_denoising(ctx, backend, tokenizer, slug, K, pool_words, eval_set, fmt)
        timing[slug] = {"class_conditional_seconds": round(t1 - t0, 1),
                        "denoising_seconds": round(time.perf_counter() - t1, 1)}
        log.info("generation_eval %s: %s", slug, {t: results[slug][t]["metrics"] for t in tasks})
    metrics = {slug: {t: r[t]["metrics"] for t in tasks} for slug, r in results.items()}
    if ctx.logger is not None:
        ctx.logger.log_metrics({"generation": metrics})
    if not fid_label:
        from spae.metrics import FID_LABELS, resolve_backbone

        fid_label = FID_LABELS[resolve_backbone(str(bench.get("fid", "auto")), bool(cfg.get("offline", True)),
                                                "inception", "efficientnet_lite0", FID_LABELS)]
    llm = backend.describe()
    return {"metrics": metrics, "details": results, "timing": timing, "llm": llm, "distances": fid_label,
            "markdown": markdown(results, fid_label, llm, cfg)}

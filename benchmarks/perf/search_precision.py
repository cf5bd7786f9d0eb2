"""Certified bf16 shortlist search vs exact fp32 search on real Gemma rows and real SAQ layer queries.

Run from the repo root (after the main command has built the codebook and trained a tokenizer)::

    .venv/bin/python -m benchmarks.perf.search_precision
    .venv/bin/python -m benchmarks.perf.search_precision --images 64 --shortlists 8 16 32

Query sets:

* ``saq_l<l>``: the layer queries of a trained SAQ tokenizer (the newest ``train`` stage of method spae in
  the cache, or ``--tokenizer-dir``) on real pre-training images of the data stage, per pyramid layer:
  exactly what the training step searches;
* ``random_latent``: N(codebook mean, codebook std) vectors, i.e. what an untrained encoder produces after
  the codebook latent normalisation (the hardest case: far from every row).

For each set it reports the agreement of ``nearest(precision="fp32")`` and of
``nearest(precision="bf16_rerank", shortlist=m)`` with the float64 ``torch.cdist`` argmin, the rate of rows
whose certificate failed (re-searched in fp32), and best-of-``--repeats`` times, the methods interleaved
so machine load hits them alike.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time
from pathlib import Path

import torch

from spae.nn_search import nearest, squared_norms

REPO = Path(__file__).resolve().parents[2]


def default_cache() -> Path:
    return Path(os.environ.get("SPAE_CACHE_DIR", REPO / ".cache" / "spae"))


def newest(pattern: str) -> Path | None:
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    return Path(found[-1]).parent if found else None


def find_spae_tokenizer(cache: Path) -> Path | None:
    candidates = sorted(glob.glob(str(cache / "stages" / "train" / "*" / "tokenizer.json")), key=os.path.getmtime)
    for path in reversed(candidates):
        config = json.loads(Path(path).read_text())["config"]
        if config["method"].get("quantizer") == "saq" and not config["method"].get("single_layer", False):
            return Path(path).parent
    return None


def layer_queries(tokenizer_dir: Path, codebook, data_dir: Path, n_images: int) -> dict[str, torch.Tensor]:
    from spae.data.images import to_tensor
    from spae.data.prepared import load_prepared
    from spae.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir, codebook)
    names = sorted(p.name for p in (data_dir / "pretrain").iterdir() if (p / "state.json").exists())
    images = []
    for name in names:  # an even mix of the pre-training datasets
        ds = load_prepared(data_dir, "pretrain", name)
        take = min(len(ds), n_images // len(names))
        images += [ds[i]["image"] for i in range(take)]
    x = to_tensor(images, tok.spec.image_size, tok.spec.in_channels)
    with torch.no_grad():
        out = tok.quantizer(tok.encode_latent(x))
    return {f"saq_l{i + 1}": q.reshape(-1, q.shape[-1]).detach() for i, q in enumerate(out.layer_queries)}


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(name: str, q: torch.Tensor, e: torch.Tensor, shortlists: list[int], repeats: int) -> list[dict]:
    e_sq, e_bf16 = squared_norms(e), e.to(torch.bfloat16)
    ref = torch.cdist(q.double(), e.double()).argmin(1)
    variants = [("fp32", 1)] + [("bf16_rerank", m) for m in shortlists]
    runs = {v: (lambda v=v: nearest(q, e, codebook_sq_norms=e_sq, codebook_bf16=e_bf16, precision=v[0],
                                    shortlist=v[1])) for v in variants}
    times = {v: [] for v in variants}
    for _ in range(repeats):  # interleaved rounds: load spikes hit every variant alike
        for v, fn in runs.items():
            times[v].append(best_time(fn, 1))
    exact_idx = runs[("fp32", 1)]()[0]
    rows = []
    for v in variants:
        stats: dict = {}
        idx, _ = nearest(q, e, codebook_sq_norms=e_sq, codebook_bf16=e_bf16, precision=v[0], shortlist=v[1],
                         stats=stats)
        rows.append({"queries": name, "n": q.shape[0], "precision": v[0], "shortlist": v[1] if v[0] != "fp32" else None,
                     "seconds": round(min(times[v]), 4),
                     "mismatch_vs_cdist64": int((idx != ref).sum()),
                     "mismatch_vs_fp32": int((idx != exact_idx).sum()),
                     "fallback_rate": round(stats["fallback_rows"] / max(1, stats["rows"]), 4)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=None, help="the pipeline cache (default: SPAE_CACHE_DIR or .cache/spae)")
    parser.add_argument("--codebook-dir", default=None, help="a codebook stage folder (default: newest in cache)")
    parser.add_argument("--tokenizer-dir", default=None, help="a spae train stage folder (default: newest)")
    parser.add_argument("--data-dir", default=None, help="a data stage folder (default: newest in cache)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--random", type=int, default=1024, help="random-latent queries (0: skip)")
    parser.add_argument("--shortlists", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from spae.codebook import Codebook

    cache = Path(args.cache) if args.cache else default_cache()
    cb_dir = Path(args.codebook_dir) if args.codebook_dir else newest(str(cache / "stages/codebook/*/codebook.json"))
    if cb_dir is None:
        raise SystemExit(f"no codebook in {cache}: run the main command first or pass --codebook-dir")
    codebook = Codebook.load(cb_dir)
    e = codebook.embeddings
    print(f"codebook {cb_dir}: {codebook.size} x {codebook.dim} ({codebook.source}); torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    sets: dict[str, torch.Tensor] = {}
    tok_dir = Path(args.tokenizer_dir) if args.tokenizer_dir else find_spae_tokenizer(cache)
    data_dir = Path(args.data_dir) if args.data_dir else newest(str(cache / "stages/data/*/_SUCCESS.json"))
    if tok_dir is not None and data_dir is not None and args.images > 0:
        print(f"tokenizer {tok_dir}, images from {data_dir}")
        sets.update(layer_queries(tok_dir, codebook, data_dir, args.images))
    else:
        print("no trained SAQ tokenizer or data stage in the cache: real layer queries skipped")
    if args.random:
        g = torch.Generator().manual_seed(0)
        sets["random_latent"] = torch.randn(args.random, e.shape[1], generator=g) * e.std(0) + e.mean(0)
    rows = []
    print(f"{'queries':<14} {'n':>6} {'precision':<12} {'m':>4} {'seconds':>8} {'!=cdist64':>9} {'!=fp32':>7} "
          f"{'fallback':>8}")
    for name, q in sets.items():
        for r in compare(name, q, e, args.shortlists, args.repeats):
            rows.append(r)
            print(f"{r['queries']:<14} {r['n']:>6} {r['precision']:<12} {str(r['shortlist'] or '-'):>4} "
                  f"{r['seconds']:8.3f} {r['mismatch_vs_cdist64']:>9} {r['mismatch_vs_fp32']:>7} "
                  f"{r['fallback_rate']:8.2%}")
    return rows


if __name__ == "__main__":
    main()

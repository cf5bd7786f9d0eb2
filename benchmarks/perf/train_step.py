"""Where a tokenizer training step spends its time, per part, before vs after the quantizer options.

Run from the repo root::

    .venv/bin/python -m benchmarks.perf.train_step                    # embedded preset, batch 16
    .venv/bin/python -m benchmarks.perf.train_step --caps 22262 8192 4096 --rounds 2

Each *variant* is one ``method.search`` setting on one vocabulary size, trained for ``--warmup`` +
``--steps`` batches with Lightning's real loop (manual optimisation, both optimisers, the method's
losses; conf/model/<model>.yaml + conf/method/spae.yaml as they are). Variants run in rounds and every
part keeps its best round, so a load spike from other processes does not favour one variant.
Per part: seconds per step of each ``SPAETokenizer.step_seconds`` entry (encoder, quantizer, decoder,
perceptual, clip_relevance, semantic_loss, backward, ...), ``other`` = the rest of the step (optimiser
steps, Lightning, logging).

Inputs: the real Gemma word codebook of the pipeline cache when it exists (else a random N(0, 1) codebook
of ``--vocab`` rows, said so in the output); a vocabulary cap ``V`` takes its first ``V`` rows (the time
depends on the size only, not on which words). Images are uniform noise and the CLIP relevance is a random
stand-in (the semantic loss's cost does not depend on their values; the real CLIP scoring's cost is not
measured here). Weights are re-initialised with the same seed for every variant.
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import time
from pathlib import Path

import torch
import yaml

CONF = Path(__file__).resolve().parents[2] / "conf"
REPO = CONF.parent


def load_codebook(cache: Path, vocab: int) -> tuple[torch.Tensor, str]:
    from spae.codebook import Codebook

    found = sorted(glob.glob(str(cache / "stages/codebook/*/codebook.json")), key=os.path.getmtime)
    for path in reversed(found):
        cb = Codebook.load(Path(path).parent)
        if cb.size >= vocab:
            return cb.embeddings, f"{cb.source} word codebook ({cb.size} x {cb.dim}) from {Path(path).parent}"
    g = torch.Generator().manual_seed(0)
    return torch.randn(vocab, 640, generator=g), f"RANDOM N(0,1) codebook {vocab} x 640 (no cached codebook)"


def random_relevance(vocab: int):
    def relevance(images: torch.Tensor) -> torch.Tensor:  # stand-in CLIP: random, min-max normalised
        scores = torch.rand(images.shape[0], vocab, device=images.device)
        low, high = scores.amin(1, keepdim=True), scores.amax(1, keepdim=True)
        return (scores - low) / (high - low)
    return relevance


def build(model_preset: str, method_overrides: dict, codebook: torch.Tensor, seed: int = 0):
    from spae.tokenizer import SPAETokenizer

    model = yaml.safe_load((CONF / "model" / f"{model_preset}.yaml").read_text())
    method = copy.deepcopy(yaml.safe_load((CONF / "method" / "spae.yaml").read_text()))
    method.update(copy.deepcopy(method_overrides))
    torch.manual_seed(seed)
    tok = SPAETokenizer({"model": model, "method": method, "seed": seed, "offline": True}, codebook,
                        words=[f"w{i}" for i in range(codebook.shape[0])],
                        relevance_fn=random_relevance(codebook.shape[0]))
    return tok, model


def time_variant(model_preset: str, method_overrides: dict, codebook: torch.Tensor, batch: int, warmup: int,
                 steps: int) -> dict:
    """Seconds per step of every part (and the whole step) over `steps` batches after `warmup`."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    tok, model = build(model_preset, method_overrides, codebook)
    size = int(model["image_size"])
    g = torch.Generator().manual_seed(1)
    images = torch.rand(batch * (warmup + steps), 3, size, size, generator=g)
    loader = DataLoader(TensorDataset(images), batch_size=batch, shuffle=False)
    tok.transfer_batch_to_device = lambda b, device, idx: b[0].to(device)
    search = {"rows": 0, "fallback_rows": 0}

    def count_search(module, inputs, out):
        for key in search:
            search[key] += out.search_stats.get(key, 0)

    tok.quantizer.register_forward_hook(count_search)

    class Timer(pl.Callback):
        def __init__(self):
            self.step_times, self.t0 = [], 0.0

        def on_train_batch_start(self, trainer, module, b, batch_idx):
            if batch_idx == warmup:  # parts accumulate from here on
                module.step_seconds.clear()
                search.update(rows=0, fallback_rows=0)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, b, batch_idx):
            if batch_idx >= warmup:
                self.step_times.append(time.perf_counter() - self.t0)

    timer = Timer()
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true",
                         max_steps=(warmup + steps) * tok.optimizer_steps_per_batch, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(tok, train_dataloaders=loader)
    n = len(timer.step_times)
    parts = {k: v / n for k, v in tok.step_seconds.items()}
    step = sum(timer.step_times) / n
    parts["other"] = step - sum(parts.values())
    return {"step": step, "parts": parts, "fallback_rate": search["fallback_rows"] / max(1, search["rows"])}


def parse_loss_variant(text: str) -> dict:
    """"prefix_recon=all,ssim_weight=0.1" -> {"prefix_recon": "all", "ssim_weight": 0.1} (YAML values)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--loss-variants entry {text!r}: expected key=value pairs separated by commas")
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def variants_for(caps: list[int], precisions: list[str], shortlist: int, loss_variants: list[str] = ("",)
                 ) -> list[tuple[str, int, dict]]:
    out = []
    for loss_text in loss_variants:
        for cap in caps:
            for precision in precisions:
                label = f"V={cap} {precision}" + (f" m={shortlist}" if precision != "fp32" else "")
                label = f"{loss_text} {label}" if loss_text else label
                overrides = {"search": {"precision": precision, "shortlist": shortlist}}
                if loss_text:
                    overrides["loss"] = parse_loss_variant(loss_text)
                out.append((label, cap, overrides))
    return out


def table(results: dict[str, dict], baseline: str) -> str:
    parts = list(dict.fromkeys(p for r in results.values() for p in r["parts"]))
    labels = list(results)
    width = max(14, *(len(label) for label in labels))
    lines = [f"{'part (s/step)':<16}" + "".join(f"{label:>{width + 2}}" for label in labels)]
    for part in parts:
        lines.append(f"{part:<16}" + "".join(f"{results[label]['parts'].get(part, 0.0):>{width + 2}.3f}"
                                             for label in labels))
    lines.append(f"{'step':<16}" + "".join(f"{results[label]['step']:>{width + 2}.3f}" for label in labels))
    base = results[baseline]["step"]
    lines.append(f"{'speed-up':<16}" + "".join(f"{base / results[label]['step']:>{width + 1}.2f}x"
                                               for label in labels))
    base_q = results[baseline]["parts"].get("quantizer", float("nan"))
    lines.append(f"{'quantizer share':<16}" + "".join(
        f"{results[label]['parts'].get('quantizer', 0.0) / results[label]['step']:>{width + 2}.1%}"
        for label in labels))
    lines.append(f"{'quantizer x':<16}" + "".join(
        f"{base_q / results[label]['parts'].get('quantizer', float('nan')):>{width + 1}.2f}x" for label in labels))
    lines.append(f"{'bf16 fallback':<16}" + "".join(f"{results[label]['fallback_rate']:>{width + 2}.2%}"
                                                    for label in labels))
    return "\n".join(lines)


def best_of(rounds: list[dict]) -> dict:
    """Per part, the fastest round (and the fastest whole step), so load spikes do not count."""
    parts = {p: min(r["parts"].get(p, 0.0) for r in rounds) for p in rounds[0]["parts"]}
    return {"step": min(r["step"] for r in rounds), "parts": parts,
            "fallback_rate": max(r["fallback_rate"] for r in rounds)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=22262, help="codebook rows (the full Gemma word codebook)")
    parser.add_argument("--caps", type=int, nargs="*", default=[], help="also time these vocabulary caps")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16_rerank"])
    parser.add_argument("--shortlist", type=int, default=32)
    parser.add_argument("--perceptual", default=None, help="override method.loss.perceptual (e.g. none)")
    parser.add_argument("--loss-variants", nargs="+", default=[""], help="method.loss overrides to compare, one "
                        "entry per variant, e.g. prefix_recon=random 'prefix_recon=all,ssim_weight=0.1'")
    parser.add_argument("--cache", default=None, help="pipeline cache holding the codebook stage")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice); 1 is "
                        "the least disturbed by other processes on an oversubscribed machine")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cache = Path(args.cache or os.environ.get("SPAE_CACHE_DIR", REPO / ".cache" / "spae"))
    codebook, source = load_codebook(cache, args.vocab)
    codebook = codebook[: args.vocab]
    caps = [args.vocab] + [c for c in args.caps if c != args.vocab]
    variants = variants_for(caps, args.precisions, args.shortlist, args.loss_variants)
    print(f"model {args.model}, batch {args.batch}, {args.steps} timed steps after {args.warmup}, best of "
          f"{args.rounds} rounds; codebook: {source}; torch threads {torch.get_num_threads()}; load average "
          f"{os.getloadavg()[0]:.1f}; images: noise, CLIP relevance: random stand-in", flush=True)
    rounds: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    loss = yaml.safe_load((CONF / "method" / "spae.yaml").read_text())["loss"]
    for _ in range(args.rounds):
        for label, cap, overrides in variants:
            merged_loss = {**loss, **overrides.get("loss", {})}
            if args.perceptual is not None:
                merged_loss["perceptual"] = args.perceptual
            overrides = {**overrides, "loss": merged_loss}
            rounds[label].append(time_variant(args.model, overrides, codebook[:cap], args.batch, args.warmup,
                                              args.steps))
    results = {label: best_of(r) for label, r in rounds.items()}
    text = table(results, variants[0][0])
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps({"source": source, "results": results, "table": text}, indent=1))
    return results


if __name__ == "__main__":
    main()

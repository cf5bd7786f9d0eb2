"""Tokenizer training throughput (images/s) for a model preset, on CPU or GPU.

Random images and a random frozen codebook of the real size (V x 640) stand in for data and Gemma's
embedding rows: throughput does not depend on their values. Runs Lightning's real training loop
(manual optimisation, both optimisers) and times steps after a warm-up.

    python -m benchmarks.perf.tokenizer_train --model paper --vocab 22262 --batch 32 --steps 60
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import yaml

CONF = Path(__file__).resolve().parents[2] / "conf"


class _StepTimer:
    """Lightning callback: wall time of every training batch after `warmup` batches."""

    def __init__(self, warmup: int):
        import pytorch_lightning as pl

        class Timer(pl.Callback):
            def __init__(inner):
                inner.times, inner.t0 = [], None

            def on_train_batch_start(inner, trainer, module, batch, batch_idx):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                inner.t0 = time.perf_counter()

            def on_train_batch_end(inner, trainer, module, outputs, batch, batch_idx):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                if batch_idx >= warmup:
                    inner.times.append(time.perf_counter() - inner.t0)

        self.callback = Timer()


def build(model_preset: str, vocab: int, perceptual: str, gan_from_start: bool, dim: int = 640):
    from spae.tokenizer import SPAETokenizer

    model = yaml.safe_load((CONF / "model" / f"{model_preset}.yaml").read_text())
    method = yaml.safe_load((CONF / "method" / "spae.yaml").read_text())
    method = copy.deepcopy(method)
    method["loss"]["perceptual"] = perceptual
    if gan_from_start:
        method["loss"]["gan"]["start_step"] = 0
    codebook = torch.randn(vocab, dim) * (640 ** 0.5 / dim ** 0.5)

    def relevance(images: torch.Tensor) -> torch.Tensor:  # stand-in CLIP: random, min-max normalised
        scores = torch.rand(images.shape[0], vocab, device=images.device)
        return (scores - scores.amin(1, keepdim=True)) / (scores.amax(1, keepdim=True) - scores.amin(1, keepdim=True))

    tok = SPAETokenizer({"model": model, "method": method, "seed": 0, "offline": True}, codebook,
                        words=[f"w{i}" for i in range(vocab)], relevance_fn=relevance)
    return tok, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="paper")
    parser.add_argument("--vocab", type=int, default=22262)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32-true on CPU")
    parser.add_argument("--perceptual", default="none", help="none | efficientnet_lite0 (needs its wheel)")
    parser.add_argument("--gan", action="store_true", help="GAN loss active from step 0")
    parser.add_argument("--out", default=None, help="write the result as JSON here too")
    args = parser.parse_args()

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    gpu = torch.cuda.is_available()
    tok, model = build(args.model, args.vocab, args.perceptual, args.gan)
    size = int(model["image_size"])
    images = torch.rand(args.batch * 4, 3, size, size)
    loader = DataLoader(TensorDataset(images), batch_size=args.batch, shuffle=False)

    tok.transfer_batch_to_device = lambda batch, device, idx: batch[0].to(device)
    timer = _StepTimer(args.warmup)
    total = args.warmup + args.steps
    precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    trainer = pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision=precision,
                         max_steps=total * tok.optimizer_steps_per_batch, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer.callback], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(tok, train_dataloaders=loader)
    times = timer.callback.times
    per_step = sum(times) / len(times)
    result = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
        "model": args.model, "image_size": size, "vocab": args.vocab, "batch": args.batch,
        "precision": precision, "perceptual": args.perceptual, "gan": args.gan, "timed_steps": len(times),
        "seconds_per_step": round(per_step, 4), "images_per_second": round(args.batch / per_step, 1),
        "trainable_parameters": sum(p.numel() for p in tok.parameters() if p.requires_grad),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

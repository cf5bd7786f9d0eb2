"""DDP on CPU: the train stage trains a tiny tokenizer with 2 processes (Lightning strategy `ddp`, gloo backend),
as `trainer=ddp` does on GPUs. Documented result (docs/scaling.md): both ranks end with identical weights, each
rank reads its own shard of the data stream (effective batch = batch_size x world size), the loss falls, and the
saved tokenizer (written by rank 0 only) holds exactly those weights.

The test runs this file as a script: Lightning's launcher re-executes the same command for rank 1, as it
re-executes `python -m experiments.run ...` on a GPU node.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
STEPS = 12
WORLD = 2


# ------------------------------------------------------------------------------------------ the worker
def prepare_inputs(work: Path) -> None:
    """Tiny prepared data and a random codebook, written once by the test before the workers start."""
    import numpy as np
    import torch
    from PIL import Image

    from spae.codebook import Codebook
    from spae.data import save_prepared
    from spae.data.schema import from_columns

    rng = np.random.default_rng(0)
    # smooth random images (a few colour blobs): learnable in a dozen steps, unlike pixel noise
    base = rng.random((48, 4, 4, 3))
    images = [Image.fromarray((np.kron(b, np.ones((5, 5, 1))) * 255).astype(np.uint8)) for b in base]
    save_prepared(from_columns(images), work / "pretrain_data", "pretrain", "blobs")
    gen = torch.Generator().manual_seed(0)
    Codebook(torch.randn(64, 16, generator=gen), [f"word{i}" for i in range(64)], torch.arange(64),
             "random").save(work / "codebook")


def worker_config(work: Path) -> dict:
    from tests.tokenizer_helpers import TINY_METHOD, TINY_MODEL

    method = copy.deepcopy(TINY_METHOD)
    method["optim"].update({"lr": 3e-3, "warmup_steps": 0, "schedule": "constant"})
    return {
        "model": copy.deepcopy(TINY_MODEL), "method": method, "seed": 0, "offline": True,
        # conf/trainer/ddp.yaml with the accelerator and sizes a CPU test affords
        "trainer": {**yaml.safe_load((REPO / "conf" / "trainer" / "ddp.yaml").read_text()),
                    "accelerator": "cpu", "devices": WORLD, "precision": "32-true", "max_steps": STEPS,
                    "batch_size": 4, "checkpoint_every_n_steps": 4, "progress_bar": False, "log_every_n_steps": 1,
                    "num_workers": 0},
        "data": {"pretrain": {"blobs": {}}},
        "paths": {"cache_dir": str(work / "cache")},
    }


class RecordRank:
    """Lightning callback (test only): each rank's loss per step, first batch, and final weights."""

    def __init__(self, work: Path):
        self.work, self.losses, self.first_batch = work, [], None

    def hooks(self):
        import pytorch_lightning as pl

        record = self

        class _Callback(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                record.losses.append(float(trainer.callback_metrics["train/rec"]))
                if record.first_batch is None:
                    record.first_batch = float(batch["image"].mean())

            def on_train_end(self, trainer, module):
                from safetensors.torch import save_file

                rank = trainer.global_rank
                state = {k: v.detach().cpu().contiguous() for k, v in module.trainable_state_dict().items()}
                save_file(state, str(record.work / f"rank{rank}.safetensors"))
                (record.work / f"rank{rank}.json").write_text(json.dumps(
                    {"rank": rank, "world_size": trainer.world_size, "losses": record.losses,
                     "first_batch_mean": record.first_batch, "strategy": type(trainer.strategy).__name__,
                     "backend": trainer.strategy._process_group_backend}))

        return _Callback()


def run_worker(work: Path) -> None:
    """Both ranks run the real train stage; a callback records what each rank holds at the end."""
    import experiments.stages.train as train_mod
    from experiments import clip_relevance
    from experiments.pipeline import StageContext, StageResult
    from tests.tokenizer_helpers import fake_relevance

    record = RecordRank(work)
    original = train_mod.build_trainer

    def build_with_record(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.callbacks.append(record.hooks())
        return trainer

    train_mod.build_trainer = build_with_record
    clip_relevance.relevance_function = lambda ctx, codebook: fake_relevance(codebook.size)
    inputs = {name: StageResult(name, "k", work / name, {}, True, 0.0) for name in ("pretrain_data", "codebook", "clip")}
    summary = train_mod.train_stage(StageContext(worker_config(work), work / "train", work / "run", inputs))
    rank = int(os.environ.get("LOCAL_RANK", 0))
    (work / f"summary{rank}.json").write_text(json.dumps(summary))


# ------------------------------------------------------------------------------------------ the test
@pytest.mark.slow  # two fresh processes import torch + Lightning: ~25 s idle, about a minute on a busy CPU
def test_ddp_two_cpu_processes_train_identical_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    from spae.tokenizer import WEIGHTS_FILE

    prepare_inputs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(tmp_path)], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == WORLD for r in ranks)
    assert ranks[0]["strategy"] == "DDPStrategy" and ranks[0]["backend"] == "gloo"  # gloo: Lightning's CPU default
    # each rank trained every step, on its own shard of the data stream
    assert all(len(r["losses"]) == STEPS for r in ranks)
    assert ranks[0]["first_batch_mean"] != ranks[1]["first_batch_mean"]
    # the loss falls (mean of the last 3 steps below the first 3, on both ranks)
    for r in ranks:
        assert sum(r["losses"][-3:]) < sum(r["losses"][:3]), r["losses"]

    # gradients were all-reduced: both ranks hold the same weights. The LeCam running means of the
    # discriminator's logits are statistics of each rank's own batches (DDP broadcasts rank 0's buffers at
    # the start of every step, so after the last step they differ); rank 0's are the ones saved.
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    assert w0.keys() == w1.keys() and len(w0) > 10
    rank_local = {k for k in w0 if k.startswith("lecam.")}
    assert rank_local == {"lecam.ema_real", "lecam.ema_fake", "lecam.initialised"}, rank_local
    for key in w0.keys() - rank_local:
        assert torch.equal(w0[key], w1[key]), f"{key} differs between ranks"
    # the saved tokenizer (rank 0 writes it) equals those weights
    saved = load_file(str(tmp_path / "train" / WEIGHTS_FILE))
    shared = [k for k in saved if k in w0]
    assert len(shared) == len(w0)
    for key in shared:
        assert torch.equal(saved[key], w0[key]), f"saved {key} differs from rank 0's"
    summary = json.loads((tmp_path / "summary0.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == WORLD


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run_worker(Path(sys.argv[1]))

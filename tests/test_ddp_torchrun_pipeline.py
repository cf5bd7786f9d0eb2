"""torchrun starts every rank once for the whole run: a run whose DAG holds two distributed trainings (as the
few-shot bench's `train[spae]` and `train[lqae]` do) must have every rank in both trainings, then rank 0 alone in
the evaluation. Two CPU processes (gloo) under `torch.distributed.run`, each training a tiny Lightning model
with strategy `ddp` inside a pipeline stage; the test runs this file as the script torchrun starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ the ranks
def fit_tiny_model(ctx) -> dict:
    """Two DDP steps of a linear model: every rank must join, or rank 0 waits forever."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(16, 4)), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), data)
    work = Path(ctx.cfg["work"])
    with open(work / f"joined{os.environ['RANK']}.txt", "a") as out:
        out.write(f"{ctx.cfg['method']} world={trainer.world_size}\n")
    return {"method": ctx.cfg["method"]}


def main(work: Path) -> None:
    from experiments.pipeline import STAGES, StageNeed, run_stages, stage

    if "torchrun_model" not in STAGES:
        stage("torchrun_model", config_keys=("work", "method"), distributed=True)(fit_tiny_model)

        @stage("torchrun_eval", config_keys=("work", "compare"),
               instances=lambda cfg: [StageNeed("torchrun_model", m, {"method": m}) for m in cfg["compare"]])
        def _evaluate(ctx):
            (Path(ctx.cfg["work"]) / f"evaluated{os.environ['RANK']}.txt").write_text("yes")
            return {}

    cfg = {"work": str(work), "compare": ["a", "b"], "method": None}
    run_stages(["torchrun_eval"], cfg, work / "cache", work / "run")


# ------------------------------------------------------------------------------------------ the test
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two fresh processes import torch + Lightning and train twice: ~30 s idle
def test_torchrun_ranks_join_every_training_and_only_rank0_evaluates(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}",  # port 0 hangs the rendezvous
                           str(Path(__file__).resolve()), str(tmp_path)],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for rank in (0, 1):
        assert (tmp_path / f"joined{rank}.txt").read_text().splitlines() == ["a world=2", "b world=2"], rank
    assert (tmp_path / "evaluated0.txt").exists() and not (tmp_path / "evaluated1.txt").exists()
    markers = sorted(p.parent.parent.name for p in (tmp_path / "cache").rglob("_SUCCESS.json"))
    assert markers == ["torchrun_eval", "torchrun_model", "torchrun_model"]
    assert json.loads(next((tmp_path / "cache").rglob("torchrun_eval/*/_SUCCESS.json")).read_text())["node"]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main(Path(sys.argv[1]))

"""A tiny pipeline stage for the concurrency tests: it counts its executions in a file and sleeps, so two
processes that start it at once overlap. Run as `python _reliability_helpers.py CACHE RUN COUNTER KNOB`."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.pipeline import STAGES, run_stages, stage  # noqa: E402

SLEEP_S = 1.0


def _slow_counting(ctx):
    counter = Path(ctx.cfg["rel"]["counter"])
    with open(counter, "a") as handle:  # O_APPEND: one line per execution, from any process
        handle.write(f"{os.getpid()} {ctx.out_dir}\n")
    time.sleep(SLEEP_S)
    (ctx.out_dir / "artefact.txt").write_text(f"knob={ctx.cfg['rel']['knob']}")
    return {"value": ctx.cfg["rel"]["knob"] * 10, "pid": os.getpid()}


if "_rel_slow" not in STAGES:
    stage("_rel_slow", config_keys=("rel.knob",))(_slow_counting)


def main(cache: str, run: str, counter: str, knob: int) -> None:
    cfg = {"rel": {"knob": knob, "counter": counter}}
    result = run_stages(["_rel_slow"], cfg, Path(cache), Path(run))["_rel_slow"]
    print(json.dumps({"dir": str(result.dir), "summary": result.summary, "cached": result.cached}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))


# ------------------------------------------------------------------------------------------ resume
class Interrupted(Exception):
    """Stands in for a kill: raised before a batch, after the previous batch's checkpoint was written."""


def fit_tiny_tokenizer(out_dir: Path, batches: int, stop_after: int | None = None, resume: bool = False):
    """Train the tiny tokenizer of tests/tokenizer_helpers.py with the train stage's Trainer recipe and data
    stream, a checkpoint every batch; `stop_after` interrupts it mid-stream, `resume` continues from
    last.ckpt. Returns the module."""
    import datasets
    import numpy as np
    import pytorch_lightning as pl
    from PIL import Image

    from spae.datamodule import PretrainDataModule
    from spae.tokenizer import SPAETokenizer
    from spae.training import build_trainer
    from tests.tokenizer_helpers import fake_relevance, random_codebook, tiny_config

    pl.seed_everything(0)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(12)]
    data = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    config = tiny_config()
    config["method"]["optim"]["total_steps"] = batches
    codebook, words = random_codebook()
    module = SPAETokenizer(config, codebook, words, fake_relevance(len(words)))
    per_batch = module.optimizer_steps_per_batch
    dm = PretrainDataModule([data], 16, batch_size=4, seed=0, total_batches=batches)  # 3 batches per epoch
    trainer = build_trainer({"accelerator": "cpu", "progress_bar": False}, out_dir, False,
                            max_steps=batches * per_batch, max_time_s=None, checkpoint_every=per_batch)
    if stop_after is not None:
        class Kill(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if pl_module.iteration >= stop_after:
                    raise Interrupted

        trainer.callbacks.append(Kill())
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    except Interrupted:
        pass
    return module

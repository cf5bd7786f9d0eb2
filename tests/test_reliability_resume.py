"""Interrupted runs (issue 8, part 2): a training run or a few-shot evaluation SIGKILLed through the CLI and
rerun with the same command ends with exactly the results of an uninterrupted run.

The CLI tests (slow) run `python -m experiments.run` as a subprocess on toy data (tiny random HF LLM as
codebook source, tiny Fashion-MNIST idx files, a 2-step CLIP). The reference run uses another cache folder
(a non-identity key) seeded with the same upstream stages, so only the stage under test differs.
The fast test checks the cause of the one resume bug found this way, at any interruption point.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from _data_fixtures import tiny_fashion_mnist
from _llm_fixtures import save_tiny_lm
from conftest import REPO

TRAIN_STEPS = 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("toy")
    lm = save_tiny_lm(root / "lm")
    fm = tiny_fashion_mnist(root / "fm", n_train=40, n_test=40)
    spec = f"{{name: tiny, backend: hf_local, source: hf, model_id: '{lm}', dtype: float32}}"
    return {"common": ["logger=none", "~codebook.source", f"+codebook.source={spec}", "codebook.min_zipf=null",
                       f"data.pretrain.fashion_mnist.path={fm}", f"data.classification.path={fm}",
                       "~data.pretrain.easy_vqa", "~data.pretrain.openclipart", "~data.pretrain.tuxpaint", "~data.vqa", "~data.generation", "clip.train.steps=2",
                       "clip.train.batch_size=4", "clip.train.warmup_steps=1", "clip.train.checkpoint_every=1"]}


def _argv(cache: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "experiments.run", *overrides, f"paths.cache_dir={cache}",
            f"paths.runs_dir={cache / 'runs'}"]


def _run(cache: Path, overrides: list[str]) -> dict:
    proc = subprocess.run(_argv(cache, overrides), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())


def _kill_when(cache: Path, overrides: list[str], ready: Callable[[], bool], timeout: float = 400) -> None:
    """Start the CLI and SIGKILL it (no cleanup of any kind) as soon as `ready()` holds."""
    proc = subprocess.Popen(_argv(cache, overrides), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed:\n" + proc.stderr.read()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("the run did not reach the kill point in time")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _seed_cache(src: Path, dst: Path, skip: tuple[str, ...]) -> None:
    """dst = src's cache without the stage/records under test (upstream stages are reused, not recomputed)."""
    def ignore(folder, names):
        rel = Path(folder).relative_to(src)
        return [n for n in names if str(rel / n) in skip or n.endswith(".lock")]

    shutil.copytree(src, dst, ignore=ignore)


def _only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


# ------------------------------------------------------------------------------------------ training
def _train_overrides(toy: dict) -> list[str]:
    return ["+bench=smoke", "bench.stages=[train]", *toy["common"], "model.image_size=16", "model.latent_size=4",
            "model.channels=[8,16,16]", "model.groups=4", "model.layers=[1,2,4]", f"trainer.max_steps={TRAIN_STEPS}",
            "trainer.batch_size=4", "trainer.max_time_s=null", "trainer.progress_bar=false",
            "trainer.checkpoint_every_n_steps=1", "method.loss.perceptual=none", "method.semantic.num_negatives=null",
            "method.semantic.warmup_steps=2", "method.optim.warmup_steps=2"]


@pytest.mark.slow
def test_training_sigkilled_through_the_cli_resumes_to_the_same_metrics_and_weights(toy, tmp_path):
    from safetensors.torch import load_file

    overrides = _train_overrides(toy)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    _kill_when(killed, overrides, lambda: bool(list((killed / "stages" / "train").glob("*/checkpoints/last.ckpt"))))
    train_dir = _only(list((killed / "stages" / "train").glob("*/")))
    assert not (train_dir / "_SUCCESS.json").exists() and not (train_dir / "tokenizer.safetensors").exists()
    step = torch.load(train_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 2 * TRAIN_STEPS  # killed mid-way (two optimiser steps per batch)

    _seed_cache(killed, straight, skip=("stages/train", "runs"))
    reference = _run(straight, overrides)
    resumed = _run(killed, overrides)  # the same command again

    marker = json.loads((train_dir / "_SUCCESS.json").read_text())["summary"]
    assert marker["resumed"] is True and marker["steps"] == TRAIN_STEPS
    assert resumed["metrics"]["train"] == reference["metrics"]["train"]
    assert resumed["metrics"]["train"]["final_train"]["rec"] > 0
    a = load_file(train_dir / "tokenizer.safetensors")
    b = load_file(_only(list((straight / "stages" / "train").glob("*/tokenizer.safetensors"))))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_tokenizer_training_resumes_exactly_from_a_mid_stream_checkpoint(tmp_path):
    """Why the CLI test first failed: Lightning took the resumed loader's length as the epoch length and
    counted the batches before the checkpoint against it, so it replayed part of the stream. Same Trainer
    recipe as the train stage (spae.training.build_trainer), a checkpoint every batch, killed after 1 of 4."""
    from _reliability_helpers import fit_tiny_tokenizer

    straight = fit_tiny_tokenizer(tmp_path / "straight", batches=4)
    fit_tiny_tokenizer(tmp_path / "resumed", batches=4, stop_after=1)
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()
    resumed = fit_tiny_tokenizer(tmp_path / "resumed", batches=4, resume=True)
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ------------------------------------------------------------------------------------------ evaluation
EPISODES, CHUNK = 12, 2


def _fewshot_overrides(toy: dict) -> list[str]:
    # the dummy LLM answers by word overlap; delay_s makes each chunk take a second, so the kill lands mid-way
    return ["+bench=mini_imagenet", *toy["common"], "llm=hf", "llm.backend=dummy", "llm.name=dummy",
            "llm.model_id=none", "+llm.delay_s=1.0", "bench.compare=[{method: clip_topk, k: 3}]",
            "bench.cells=[{n_way: 2, shots: 1, repeats: 0, task_induction: true}]",
            f"bench.episodes={EPISODES}", f"bench.chunk_size={CHUNK}"]


def _records(cache: Path) -> list[Path]:
    return sorted((cache / "fewshot_records").glob("*/*.jsonl"))


def _lines(path: Path) -> list[str]:
    """Complete lines only: the kill may land while a line is being written (the rerun cuts such a line)."""
    raw = path.read_text()
    return raw[: raw.rfind("\n") + 1].splitlines()


@pytest.mark.slow
def test_fewshot_eval_sigkilled_through_the_cli_keeps_finished_episodes_and_completes(toy, tmp_path):
    overrides = _fewshot_overrides(toy)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    _kill_when(killed, overrides, lambda: bool(_records(killed)) and len(_lines(_records(killed)[0])) >= CHUNK)
    records = _only(_records(killed))
    kept = _lines(records)
    assert CHUNK <= len(kept) < EPISODES, len(kept)
    assert not list((killed / "stages" / "fewshot_eval").glob("*/_SUCCESS.json"))

    _seed_cache(killed, straight, skip=("stages/fewshot_eval", "fewshot_records", "runs"))
    reference = _run(straight, overrides)
    resumed = _run(killed, overrides)

    assert resumed["metrics"]["fewshot_eval"] == reference["metrics"]["fewshot_eval"]
    (label, per_cell), = resumed["metrics"]["fewshot_eval"].items()
    assert per_cell["2way-ti-1shot-0rep"]["episodes"] == EPISODES
    after = _lines(records)
    assert after[: len(kept)] == kept and len(after) == EPISODES  # finished episodes kept, not redone
    assert [json.loads(x) for x in after] == [json.loads(x) for x in _lines(_only(_records(straight)))]
    summary = json.loads(_only(list((killed / "stages" / "fewshot_eval").glob("*/_SUCCESS.json"))).read_text())
    assert summary["summary"]["timing"]["per_method"][label]["episodes_run"] == EPISODES - len(kept)


# ------------------------------------------------------------------------------------------ mismatch
@pytest.mark.slow
def test_resuming_from_a_checkpoint_of_another_config_through_the_cli_is_a_clean_error(toy, tmp_path):
    """A stage folder holding a training checkpoint of another architecture (copied in, or left by other code)
    stops the rerun with exit code 2 and a message naming the file and the fix, not a torch traceback."""
    overrides = [*_train_overrides(toy), "trainer.max_steps=2"]
    cache = tmp_path / "cache"
    _run(cache, overrides)
    train_dir = _only(list((cache / "stages" / "train").glob("*/")))
    last = train_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("encoder.") and k.endswith(".weight"))
    checkpoint["state_dict"][key] = torch.zeros(3, 3)  # another architecture's tensor
    torch.save(checkpoint, last)
    for name in ("_SUCCESS.json", "tokenizer.safetensors", "tokenizer.json"):  # "interrupted" before the end
        (train_dir / name).unlink()
    proc = subprocess.run(_argv(cache, overrides), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"error: the checkpoint {last} was written by another model configuration" in proc.stderr
    assert key in proc.stderr and "force=[<stage>]" in proc.stderr

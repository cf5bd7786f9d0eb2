"""The default training, shrunk, is deterministic and runs every loss term of the objective.

The real composed default config (conf/, as the CLI builds it; shrunk as in tests/test_training_options.py)
with the perceptual net on and the GAN from the second batch, trained 3 batches twice on one thread: the
final weights must be bit-for-bit equal. A refactor of the tokenizer or its objective must also leave them
as they were on the old code, which a test cannot compare: run `fingerprint` of this state on both versions
(issue 18's refactor reports the hashes it compared)."""
from __future__ import annotations

import hashlib

import pytest
import torch

from test_training_options import composed, shrunk, train_one_step, with_option

STEPS = 3
GAN_START = 1  # the GAN's first batch: the discriminator is untouched before it


def fingerprint(module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def default_config(method: str, tmp_path) -> dict:
    cfg = shrunk(composed([f"method={method}"], tmp_path))
    cfg["trainer"]["max_steps"] = STEPS
    cfg = with_option(cfg, "loss.gan.start_step", GAN_START)
    return with_option(cfg, "loss.perceptual", "efficientnet_lite0")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["spae", "lqae"])
def test_default_training_is_bit_for_bit_repeatable_and_runs_every_term(method, tmp_path, one_thread):
    cfg = default_config(method, tmp_path)
    first, trainer = train_one_step(cfg, tmp_path / "first")
    second, _ = train_one_step(cfg, tmp_path / "second")
    assert fingerprint(first) == fingerprint(second)

    logged = set(trainer.callback_metrics)
    terms = {"rec", "commit", "ssim_loss", "perceptual", "gan_g", "gan_weight", "disc/loss", "nll", "loss", "lr"}
    if method == "spae":  # a pyramid: prefixes and the semantic loss; LQAE has one layer and no CLIP guidance
        terms |= {"rec_prefix", "semantic", "semantic_weight"}
    assert {f"train/{t}" for t in terms} <= logged
    assert ("train/semantic" in logged) == (method == "spae")
    # the GAN ran (from batch GAN_START on): the discriminator and the LeCam anchors moved
    assert first.objective.gan_active(STEPS - 1) and not first.objective.gan_active(GAN_START - 1)
    assert bool(first.lecam.initialised)
    torch.manual_seed(0)  # as train_one_step built it: the discriminator's initial weights
    fresh = type(first)(first.config, first.quantizer.codebook, with_perceptual=False)
    assert any(not torch.equal(a, b) for a, b in zip(first.discriminator.state_dict().values(),
                                                     fresh.discriminator.state_dict().values()))

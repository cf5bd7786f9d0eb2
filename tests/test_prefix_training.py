"""Which pyramid prefixes get the reconstruction losses each step (method.loss.prefix_recon), and the
SSIM term (method.loss.ssim_weight)."""
from __future__ import annotations

import copy

import pytest
import torch

from spae.tokenizer import SPAETokenizer
from tests.tokenizer_helpers import TINY_METHOD, fake_relevance, random_codebook, tiny_config


def tokenizer(prefix_recon: str, **loss) -> SPAETokenizer:
    cb, words = random_codebook()
    method_loss = {**copy.deepcopy(TINY_METHOD["loss"]), "prefix_recon": prefix_recon, **loss}
    return SPAETokenizer(tiny_config(loss=method_loss), cb, words, fake_relevance(len(words)))


def plan(module: SPAETokenizer, batch: int, step: int) -> list[tuple[int, list[int]]]:
    gen = torch.Generator().manual_seed(step)
    return [(p, idx.tolist()) for p, idx in module.objective.prefix_plan(batch, gen)]


@pytest.mark.parametrize("batch", [3, 4, 7])
def test_stratified_trains_every_prefix_each_step_on_disjoint_shares_of_the_batch(batch):
    module = tokenizer("stratified")  # 3 layers: prefixes 1 and 2 besides the full pyramid
    for step in range(5):
        steps = plan(module, batch, step)
        assert [p for p, _ in steps] == [1, 2]
        images = sorted(i for _, idx in steps for i in idx)
        assert images == list(range(batch))  # each image once: the cost of one extra decoder pass
    assert plan(module, 4, 0) == plan(module, 4, 0)  # a function of the step's generator (resume-safe)
    assert len({str(plan(module, 8, s)) for s in range(6)}) > 1  # shares change between steps


def test_all_random_and_none_modes():
    assert plan(tokenizer("all"), 4, 0) == [(1, [0, 1, 2, 3]), (2, [0, 1, 2, 3])]
    drawn = {plan(tokenizer("random"), 4, s)[0][0] for s in range(20)}
    assert drawn == {1, 2} and all(len(plan(tokenizer("random"), 4, s)) == 1 for s in range(3))
    assert plan(tokenizer("none"), 4, 0) == []
    with pytest.raises(ValueError, match="stratified"):
        plan(tokenizer("every"), 4, 0)


def test_ssim_term_is_logged_and_trains_the_decoder():
    images = torch.rand(4, 3, 16, 16)
    with_ssim = tokenizer("stratified", ssim_weight=0.5)
    without = tokenizer("stratified")
    without.load_state_dict(with_ssim.state_dict())
    losses = with_ssim.generator_losses(images, 0, torch.Generator().manual_seed(0))
    plain = without.generator_losses(images, 0, torch.Generator().manual_seed(0))
    assert "ssim_loss" in losses and "ssim_loss" not in plain
    assert float(losses["nll"]) == pytest.approx(float(plain["nll"]) + 0.5 * float(losses["ssim_loss"]), rel=1e-5)
    losses["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in with_ssim.decoder.parameters())

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
    return [(p, idx.tolist()) for p, idx in module._prefix_plan(batch, gen)]


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


def order_rows(module: SPAETokenizer, batch: int, step: int):
    base = module._prefix_plan(batch, torch.Generator().manual_seed(step))
    extras, pairs = module._order_extras(base, batch)
    rows = [(3, i) for i in range(batch)]  # (prefix length, image) per decoder row: the tiny config has 3 layers
    rows += [(p, i) for p, idx in base + extras for i in idx.tolist()]
    assert all(p < 3 for p, _ in extras)  # the full pyramid is decoded for every image anyway
    return base, rows, pairs


@pytest.mark.parametrize("mode", ["stratified", "all", "random"])
def test_prefix_order_pairs_compare_the_same_image_with_one_layer_more(mode):
    module = tokenizer(mode, prefix_order_weight=1.0)
    for step in range(4):
        base, rows, (longer, shorter) = order_rows(module, 6, step)
        planned = [(p, i) for p, idx in base for i in idx.tolist()]
        assert [rows[s] for s in shorter.tolist()] == planned  # one comparison per planned row
        for lo, sh in zip(longer.tolist(), shorter.tolist()):
            assert rows[lo][1] == rows[sh][1] and rows[lo][0] == rows[sh][0] + 1
    if mode == "stratified":  # every consecutive pair (1, 2) and (2, 3) is compared each step
        _, rows, (_, shorter) = order_rows(module, 6, 0)
        assert {rows[s][0] for s in shorter.tolist()} == {1, 2}


def test_prefix_order_loss_charges_only_images_that_got_worse_and_only_the_longer_prefix():
    from spae.losses import prefix_order_loss

    shorter = torch.tensor([0.5, 0.2, 0.3], requires_grad=True)
    longer = torch.tensor([0.4, 0.6, 0.3], requires_grad=True)
    loss = prefix_order_loss(longer, shorter)
    assert float(loss.detach()) == pytest.approx(0.4 / 3)
    loss.backward()
    assert shorter.grad is None or not shorter.grad.any()
    assert longer.grad.tolist() == pytest.approx([0.0, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="per-image"):
        prefix_order_loss(longer[:2], shorter)


def test_prefix_order_term_trains_the_tokenizer():
    images = torch.rand(4, 3, 16, 16)
    module = tokenizer("stratified", ssim_weight=0.5, prefix_order_weight=2.0)
    losses = module.generator_losses(images, 0, torch.Generator().manual_seed(0))
    assert float(losses["prefix_order"]) > 0  # random nets: some images get worse with a layer more
    losses["total"].backward()
    for net in (module.encoder, module.decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_prefix_order_term_leaves_the_appearance_losses_as_they_were():
    images = torch.rand(5, 3, 16, 16)
    ordered = tokenizer("stratified", ssim_weight=0.5, prefix_order_weight=3.0)
    plain = tokenizer("stratified", ssim_weight=0.5)
    plain.load_state_dict(ordered.state_dict())
    with_order = ordered.generator_losses(images, 0, torch.Generator().manual_seed(1))
    without = plain.generator_losses(images, 0, torch.Generator().manual_seed(1))
    for key in ("rec", "rec_prefix", "ssim_loss", "perceptual"):
        if key in without:
            assert float(with_order[key]) == pytest.approx(float(without[key]), rel=1e-5)
    assert float(with_order["nll"]) == pytest.approx(
        float(without["nll"]) + 3.0 * float(with_order["prefix_order"]), rel=1e-5)

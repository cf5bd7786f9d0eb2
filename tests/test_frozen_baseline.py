"""Frozen baseline: prefix encoder, captioning loss through a frozen LLM, checkpoints, saved weights.

Tiny random LLMs on one thread; weights only matter where a test says so.
"""
from __future__ import annotations

import datasets
import pytest
import pytorch_lightning as pl
import torch
from _llm_fixtures import tiny_gemma3
from _tiny_lm import one_thread, tiny_tokenizer
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from spae.data.schema import from_columns
from spae.frozen_baseline import (CaptionDataModule, FrozenCaptioner, FrozenVisionEncoder, caption_loss,
                                  caption_target, load_frozen_encoder, names_target, prefix_embeddings,
                                  save_frozen_encoder, special_prefix_ids, tokenize_captions,
                                  typical_embedding_norm)
from spae.io import torch_load_safe

CAPTIONS = ["red ball", "green box", "blue cat", "yellow dog"]
CONV = {"width": 8, "depth": 3}

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def peaky_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A tiny random Llama whose logits can be far from uniform (large init), so a prefix can steer it."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.5, bos_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def encoder_for(llm, n_prefix: int = 2, seed: int = 0) -> FrozenVisionEncoder:
    torch.manual_seed(seed)
    dim = llm.get_input_embeddings().weight.shape[1]
    return FrozenVisionEncoder(n_prefix, dim, "conv", 32, embed_norm=typical_embedding_norm(llm),
                               pretrained=False, backbone_kwargs=CONV)


def fixed_images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_prefix_shape_scale_and_gray_input(tok):
    llm = peaky_llama(len(tok))
    encoder = encoder_for(llm, n_prefix=3)
    prefix = encoder(fixed_images(5))
    assert prefix.shape == (5, 3, 32)
    norms = prefix.norm(dim=-1)  # starts on the scale of the LLM's own input embeddings
    torch.testing.assert_close(norms, torch.full_like(norms, typical_embedding_norm(llm)), rtol=1e-3, atol=1e-3)
    gray = encoder(torch.rand(2, 1, 20, 20))  # any size, 1 or 3 channels
    assert gray.shape == (2, 3, 32)
    with pytest.raises(ValueError, match="images must be"):
        encoder(torch.rand(2, 4, 32, 32))


def test_embedding_norm_includes_gemma_scale():
    gemma = tiny_gemma3(hidden=32)
    table = gemma.get_input_embeddings()(torch.arange(gemma.config.vocab_size))
    assert typical_embedding_norm(gemma) == pytest.approx(float(table.detach().norm(dim=1).median()), rel=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_caption_loss_matches_the_models_own_loss_on_token_embeddings(tok, kind):
    """With a prefix made of real token embeddings, the loss equals the LM loss of the same token sequence
    with labels masked on everything but the caption: layout, shift, padding and scale are right."""
    llm = peaky_llama(len(tok)) if kind == "llama" else tiny_gemma3(vocab_size=len(tok), hidden=32)
    embed = llm.get_input_embeddings()
    lead, prompt = special_prefix_ids(tok), tok(" this is", add_special_tokens=False)["input_ids"]
    prefix_ids = torch.tensor([[5, 6], [7, 8]])
    ids, mask = tokenize_captions(tok, ["red ball", "a small square box"], max_tokens=12)
    with torch.no_grad():
        ours = caption_loss(llm, embed(prefix_ids), ids, mask, lead, prompt, reduction="none")
    for row in range(2):
        n = int(mask[row].sum())
        full = torch.tensor([lead + prefix_ids[row].tolist() + prompt + ids[row, :n].tolist()])
        labels = full.clone()
        labels[0, : full.shape[1] - n] = -100
        with torch.no_grad():
            expected = llm(input_ids=full, labels=labels).loss
        torch.testing.assert_close(ours[row], expected, rtol=1e-4, atol=1e-4)


def test_tokenize_captions_pads_cuts_and_ends_with_eos(tok):
    ids, mask = tokenize_captions(tok, ["red", "red ball blue box green cat"], max_tokens=4)
    assert ids.shape == mask.shape and ids.shape[1] <= 4
    for row in range(2):
        n = int(mask[row].sum())
        assert ids[row, n - 1] == tok.eos_token_id and mask[row, :n].all() and not mask[row, n:].any()
    with pytest.raises(ValueError, match="non-empty"):
        tokenize_captions(tok, ["red", " "], max_tokens=4)


def test_gradients_reach_the_encoder_not_the_llm(tok):
    llm = peaky_llama(len(tok))
    module = FrozenCaptioner(encoder_for(llm), llm, tok)
    module.loss(fixed_images(), CAPTIONS).backward()
    assert all(p.grad is None for p in llm.parameters())
    grads = {n: p.grad for n, p in module.encoder.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert grads["head.weight"].abs().sum() > 0 and grads["backbone.net.0.weight"].abs().sum() > 0
    # The frozen LLM is not part of the module's state (checkpoints hold the encoder only).
    assert all(k.startswith("encoder.") for k in module.state_dict())
    assert not any(p is q for p in module.parameters() for q in llm.parameters())


def test_overfits_a_handful_of_fixed_pairs(tok):
    llm = peaky_llama(len(tok))
    module = FrozenCaptioner(encoder_for(llm), llm, tok, lr=1e-2, backbone_lr=1e-2)
    optimizer = module.configure_optimizers()
    images = fixed_images()
    losses = []
    for _ in range(40):
        loss = module.loss(images, CAPTIONS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def tiny_pairs(n: int = 12) -> datasets.Dataset:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    images = [Image.new("RGB", (16, 16), colours[i % 4]) for i in range(n)]
    captions = [CAPTIONS[i % 4] for i in range(n)]
    captions[-1] = ""  # rows without a caption are skipped
    return from_columns(images, captions=captions, caption_source="templated")


def fit(tok, root, steps: int, total: int, resume: bool = False) -> FrozenCaptioner:
    from pytorch_lightning.callbacks import ModelCheckpoint

    pl.seed_everything(0)
    llm = peaky_llama(len(tok))
    module = FrozenCaptioner(encoder_for(llm), llm, tok, lr=1e-2)
    dm = CaptionDataModule([tiny_pairs()], image_size=32, batch_size=4, seed=0, total_batches=total)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                         callbacks=[ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True,
                                                    every_n_train_steps=1)])
    last = root / "checkpoints" / "last.ckpt"
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True)
    assert trainer.global_step == steps
    return module


def test_checkpoint_is_weights_only_and_resume_matches_an_uninterrupted_run(tok, tmp_path):
    straight = fit(tok, tmp_path / "a", steps=4, total=4)
    fit(tok, tmp_path / "b", steps=2, total=4)
    checkpoint = torch_load_safe(tmp_path / "b" / "checkpoints" / "last.ckpt")  # weights_only=True
    assert checkpoint["global_step"] == 2
    assert checkpoint["state_dict"] and all(k.startswith("encoder.") for k in checkpoint["state_dict"])
    resumed = fit(tok, tmp_path / "b", steps=4, total=4, resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming")


def test_caption_data_module_skips_uncaptioned_rows_and_batches_pairs():
    dm = CaptionDataModule([tiny_pairs()], image_size=24, batch_size=4, seed=0, total_batches=2)
    assert len(dm.dataset) == 11
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 24, 24) and len(batch["caption"]) == 4
    assert all(c in CAPTIONS for c in batch["caption"])


def test_saved_encoder_round_trip_gives_the_same_prefixes(tok, tmp_path):
    llm = peaky_llama(len(tok))
    encoder = encoder_for(llm)
    save_frozen_encoder(encoder, tmp_path, extra={"llm": "tiny"})
    loaded = load_frozen_encoder(tmp_path, expected_llm="tiny")
    with pytest.raises(ValueError, match="trained for llm 'tiny'"):
        load_frozen_encoder(tmp_path, expected_llm="gemma3_270m")
    images = [Image.new("RGB", (32, 32), (i * 60, 20, 200)) for i in range(3)]
    expected = prefix_embeddings(encoder, images)
    assert expected.shape == (3, 2, 32)
    torch.testing.assert_close(prefix_embeddings(loaded, images), expected)
    with pytest.raises(FileNotFoundError, match="frozen_train"):
        load_frozen_encoder(tmp_path / "missing")


def test_heldout_check_matching():
    assert caption_target("ankle boot", "a photo of an ankle boot") == "ankle boot"
    assert names_target("a photo of a T shirt.", caption_target("t-shirt", ""))
    assert caption_target("", "a red circle") == "red circle"
    assert names_target("a product photo of an Ankle boot", "ankle boot")
    assert not names_target("a photo of a shirtdress", "shirt")
    assert not names_target("a blue circle", "red circle")

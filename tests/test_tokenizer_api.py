"""Public tokenizer API: encode/decode round trips, prefixes, words, LQAE, paper preset, gradients."""
from __future__ import annotations

import pytest
import torch

from spae.tokenizer import SPAETokenizer, TokenPyramid, UnknownWordError
from tests.tokenizer_helpers import fake_relevance, lqae_config, random_codebook, tiny_config


@pytest.fixture
def tokenizer():
    torch.manual_seed(0)
    cb, words = random_codebook()
    return SPAETokenizer(tiny_config(), cb, words, fake_relevance(len(words))).eval()


def test_decode_of_encode_equals_eval_forward_for_every_prefix(tokenizer):
    x = torch.rand(3, 3, 16, 16)
    pyramid = tokenizer.encode(x)
    assert [p.shape for p in pyramid.ids] == [(3, 1), (3, 4), (3, 16)]
    for layers in range(1, 4):
        assert torch.equal(tokenizer.decode(pyramid, layers=layers), tokenizer.forward_eval(x, layers))
        # encoding only a prefix gives the same first layers
        assert torch.equal(tokenizer.encode(x, layers=layers).ids[-1], pyramid.ids[layers - 1])


def test_words_round_trip_and_shapes(tokenizer):
    x = torch.rand(2, 3, 16, 16)
    pyramid = tokenizer.encode(x)
    assert isinstance(pyramid, TokenPyramid)
    assert len(pyramid.words[1]) == 2 and len(pyramid.words[1][0]) == 4
    assert all(w.startswith("word") for w in pyramid.words[0][0])
    # words of image 1 (one list per layer) decode to the same image as its ids
    from_words = tokenizer.decode(pyramid.for_image(1, layers=2))
    assert torch.equal(from_words, tokenizer.decode([i[1:2] for i in pyramid.ids], layers=2))
    # batched words: per layer, one list per image
    batched = tokenizer.decode([pyramid.words[0], pyramid.words[1]], layers=2)
    assert torch.equal(batched, tokenizer.decode(pyramid, layers=2))
    assert batched.min() >= 0 and batched.max() <= 1


def test_unknown_word_fails_clearly(tokenizer):
    with pytest.raises(UnknownWordError, match="notaword"):
        tokenizer.decode([["notaword"]])
    with pytest.raises(ValueError, match="layer 2 takes 4 words"):
        tokenizer.decode([["word1"], ["word2"]])


def test_bad_inputs_fail_clearly(tokenizer):
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 16, 16\]"):
        tokenizer.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="layers=4 must be in 1..3"):
        tokenizer.forward_eval(torch.rand(1, 3, 16, 16), layers=4)


def test_gradient_reaches_encoder_through_quantizer():
    cb, words = random_codebook()
    tok = SPAETokenizer(tiny_config(semantic_loss=False), cb, words)
    x = torch.rand(2, 3, 16, 16)
    losses = tok.generator_losses(x, it=0, gen=torch.Generator().manual_seed(0))
    losses["total"].backward()
    first = tok.encoder.net[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    # the reconstruction term alone also reaches it (straight-through, not only via the commitment loss)
    tok.zero_grad()
    z = tok.encoder(x)
    q = tok.quantizer(z)
    torch.nn.functional.mse_loss(tok.decode_latent(q.z_q), x).backward()
    assert tok.encoder.net[0].weight.grad.abs().sum() > 0


def test_semantic_loss_gives_encoder_gradient():
    cb, words = random_codebook()
    tok = SPAETokenizer(tiny_config(), cb, words, fake_relevance(len(words)))
    x = torch.rand(2, 3, 16, 16)
    z = tok.encoder(x)
    q = tok.quantizer(z)
    tok.semantic_loss(q.layer_queries, fake_relevance(len(words))(x)).loss.backward()
    assert tok.encoder.net[0].weight.grad.abs().sum() > 0


def test_semantic_loss_without_relevance_fails_clearly():
    cb, words = random_codebook()
    tok = SPAETokenizer(tiny_config(), cb, words)
    with pytest.raises(RuntimeError, match="set_relevance_fn"):
        tok.generator_losses(torch.rand(1, 3, 16, 16), 0, torch.Generator())


def test_lqae_is_one_full_grid_layer_of_plain_vq():
    cb, words = random_codebook()
    tok = SPAETokenizer(lqae_config(), cb, words).eval()
    assert tok.semantic_loss is None
    assert tok.pyramid.layer_sides == [4] and tok.pyramid.token_counts == [16]
    assert tok.quantizer.name == "vq"
    x = torch.rand(2, 3, 16, 16)
    pyramid = tok.encode(x)
    assert len(pyramid.ids) == 1 and pyramid.ids[0].shape == (2, 16)
    assert torch.equal(tok.decode(pyramid), tok.forward_eval(x))


@pytest.mark.slow  # ~50 s on 2 busy cores: 56M parameters at 128 px
def test_paper_preset_forward_backward_batch_of_one(capsys):
    import yaml

    from tests.conftest import CONF_DIR

    model = yaml.safe_load((CONF_DIR / "model" / "paper.yaml").read_text())
    method = yaml.safe_load((CONF_DIR / "method" / "spae.yaml").read_text())
    method["loss"]["perceptual"] = "none"  # the backbone is tested elsewhere; keeps this test fast
    method["loss"]["gan"]["start_step"] = 0
    cb, words = random_codebook(k=128, d=32)
    tok = SPAETokenizer({"model": model, "method": method, "seed": 0}, cb, words, fake_relevance(128))
    info = tok.describe()
    assert info["cumulative_tokens"] == [1, 5, 21, 85, 341, 597]
    assert info["token_counts"] == [1, 4, 16, 64, 256, 256]
    x = torch.rand(1, 3, 128, 128)
    losses = tok.generator_losses(x, it=0, gen=torch.Generator().manual_seed(0))
    losses["total"].backward()
    assert tok.encoder.net[0].weight.grad.abs().sum() > 0
    assert "gan_g" in losses and losses["recon_full"].shape == (1, 3, 128, 128)
    params = info["params_encoder"] + info["params_decoder"]
    with capsys.disabled():
        print(f"\npaper preset: encoder {info['params_encoder']:,} + decoder {info['params_decoder']:,} "
              f"= {params:,} params (codebook dim 32), discriminator {info['params_discriminator']:,}; "
              f"tokens per layer {info['token_counts']}, cumulative {info['cumulative_tokens']}")
    assert params > 1_000_000


def test_arch_mismatch_fails_clearly():
    cb, words = random_codebook()
    cfg = tiny_config()
    cfg["model"]["channels"] = [8, 16]  # 16 px -> 4 latent needs 2 downsamples = 3 levels
    with pytest.raises(ValueError, match="needs 2 downsamples"):
        SPAETokenizer(cfg, cb, words)


def test_latent_norm_spreads_a_fresh_encoder_over_an_offset_codebook():
    # LLM codebooks sit far from the origin with a shared mean direction; raw encoder outputs then all
    # pick the same few "hub" words. Normalising onto the codebook statistics spreads the choice.
    gen = torch.Generator().manual_seed(0)
    cb = torch.randn(256, 16, generator=gen) + 4.0 * torch.randn(16, generator=gen)
    words = [f"w{i}" for i in range(256)]
    x = torch.rand(4, 3, 16, 16, generator=gen)
    used = {}
    for mode in ("codebook", "none"):
        torch.manual_seed(0)
        cfg = lqae_config()
        cfg["method"]["latent_norm"] = mode
        tok = SPAETokenizer(cfg, cb, words).eval()
        used[mode] = int(torch.unique(tok.encode(x).ids[0]).numel())
    assert used["codebook"] >= 3 * used["none"], used
    with pytest.raises(ValueError, match="latent_norm"):
        SPAETokenizer({**lqae_config(), "method": {**lqae_config()["method"], "latent_norm": "bad"}}, cb, words)

"""Remedy A for repeated words (issue 16): `distinct=True` encodes give the positions of each layer of one image
distinct words, greedily in raster order (PyramidQuantizer._distinct_codes); default encodes are unchanged."""
from __future__ import annotations

import pytest
import torch

from spae.errors import InvalidInputError
from spae.fewshot.methods import tokenizer_renderer
from spae.nn_search import nearest
from spae.pyramid import Pyramid
from spae.quantizers import build_quantizer
from spae.tokenizer import SPAETokenizer
from tests.tokenizer_helpers import random_codebook, tiny_config

D, LATENT, SIDES = 8, 4, [1, 2, 4]


def flat_latent(batch: int = 3, seed: int = 0) -> torch.Tensor:
    """One vector per image over the whole grid: every position of a layer has the same target, so the plain
    search repeats one word over each layer."""
    v = torch.randn(batch, D, 1, 1, generator=torch.Generator().manual_seed(seed))
    return v.expand(batch, D, LATENT, LATENT).contiguous()


def has_repeats(codes: torch.Tensor) -> bool:
    return any(len(set(row)) < len(row) for row in codes.tolist())


def greedy_reference(query: torch.Tensor, codebook: torch.Tensor) -> list[list[int]]:
    """Per image, each position in turn takes its nearest word not yet taken (full distance rows)."""
    out = []
    for image in query:
        taken: list[int] = []
        for q in image:
            order = torch.cdist(q[None].double(), codebook.double())[0].argsort(stable=True).tolist()
            taken.append(next(c for c in order if c not in taken))
        out.append(taken)
    return out


@pytest.mark.parametrize("kind", ["saq", "rq", "vq"])
def test_distinct_layers_repeat_no_word_where_the_plain_search_does(kind):
    codebook = torch.randn(40, D, generator=torch.Generator().manual_seed(1))
    q = build_quantizer(kind, codebook, Pyramid(SIDES, LATENT), search={"precision": "fp32"})
    z = flat_latent()
    plain, distinct = q(z), q(z, distinct=True)
    assert all(has_repeats(c) for c in plain.codes[1:])  # the premise: repeats when off
    assert not any(has_repeats(c) for c in distinct.codes)
    assert torch.equal(distinct.codes[0], plain.codes[0])  # one position: nothing to make distinct
    for li, (codes, query) in enumerate(zip(distinct.codes, distinct.layer_queries)):
        assert codes.tolist() == greedy_reference(query.detach(), codebook), li
        # the first position of every layer keeps its nearest word
        assert torch.equal(codes[:, 0], nearest(query.detach()[:, 0], codebook)[0])
    # the next layer follows the chosen codes: the codes alone decode to the output
    assert torch.equal(q.decode_codes(distinct.codes), distinct.z_q)


def test_default_encode_is_the_plain_nearest_search_bit_for_bit():
    codebook = torch.randn(64, D, generator=torch.Generator().manual_seed(2))
    q = build_quantizer("saq", codebook, Pyramid(SIDES, LATENT), search={"precision": "fp32"})
    z = torch.randn(4, D, LATENT, LATENT, generator=torch.Generator().manual_seed(3))
    default, off = q(z), q(z, distinct=False)
    for li, query in enumerate(default.layer_queries):
        idx, _ = nearest(query.detach().reshape(-1, D), codebook)
        assert torch.equal(default.codes[li], idx.view(4, -1)) and torch.equal(off.codes[li], default.codes[li])
    assert torch.equal(default.z_q, off.z_q) and torch.equal(default.commit_loss, off.commit_loss)


def test_distinct_needs_a_codebook_at_least_as_large_as_a_layer():
    q = build_quantizer("saq", torch.randn(3, D), Pyramid(SIDES, LATENT), search={"precision": "fp32"})
    with pytest.raises(InvalidInputError, match="at least 4 words"):
        q(flat_latent(), distinct=True)


def test_tokenizer_encode_and_renderer_with_distinct_words():
    torch.manual_seed(0)
    codebook, words = random_codebook(k=20, d=16)  # 20 words for layer 3's 16 positions: repeats when off
    tok = SPAETokenizer(tiny_config(), codebook, words).eval()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain, distinct = tok.encode(images), tok.encode(images, distinct=True)
    assert any(has_repeats(ids) for ids in plain.ids[1:])
    assert not any(has_repeats(ids) for ids in distinct.ids)
    assert torch.equal(tok.encode(images, distinct=False).ids[2], plain.ids[2])
    rendered = tokenizer_renderer(tok, 2, distinct=True)(images)
    assert [len(set(layer)) for layer in rendered[0]] == [1, 4]
    assert rendered == [distinct.for_image(i, 2) for i in range(4)]
    # the rendered words decode (they are the tokenizer's own codes)
    assert tok.decode([[r[0] for r in rendered], [r[1] for r in rendered]]).shape == (4, 3, 16, 16)

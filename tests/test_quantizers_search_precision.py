"""Certified bf16-shortlist search (precision="bf16_rerank"): exact assignments, measured fallback rate,
a sound error bound, and the method.search knobs from config to the quantizer."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import spae.nn_search as ns
from conftest import compose
from spae.errors import InvalidConfigError
from spae.nn_search import bf16_score_error_bound, native_bf16_matmul, nearest, resolve_precision, squared_norms
from spae.pyramid import Pyramid
from spae.quantizers import SAQuantizer, SearchOptions, build_quantizer


def llm_like(n_codes: int, n_queries: int, dim: int = 64, seed: int = 0):
    """Rows of equal norm around a shared mean (like Gemma's: norm ~26, mean norm ~13) and latent-like
    queries from the codebook statistics: scores ~1e3, where plain bf16 would change many assignments."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=g) * 1.5
    e = torch.randn(n_codes, dim, generator=g) + mean
    e = e / e.norm(dim=1, keepdim=True) * 26.0
    q = torch.randn(n_queries, dim, generator=g) * e.std(0) + e.mean(0)
    return q, e


@pytest.mark.parametrize("shortlist", [4, 16, 64])
def test_bf16_rerank_assignments_equal_cdist_argmin(shortlist):
    q, e = llm_like(5000, 700)
    ref = torch.cdist(q.double(), e.double()).argmin(1)
    stats = {}
    idx, dist = nearest(q, e, precision="bf16_rerank", shortlist=shortlist, code_chunk=1024, row_chunk=300,
                        stats=stats)
    assert torch.equal(idx, ref)
    exact_idx, exact_dist = nearest(q, e)
    assert torch.equal(idx, exact_idx)
    torch.testing.assert_close(dist, exact_dist)
    assert stats["rows"] == 700 and 0 <= stats["fallback_rows"] <= 700


def test_fallback_rate_is_measured_and_bounded_on_a_random_codebook():
    q, e = llm_like(5000, 1000, seed=1)
    rates = {}
    for m in (2, 32):
        stats = {}
        nearest(q, e, precision="bf16_rerank", shortlist=m, stats=stats)
        rates[m] = stats["fallback_rows"] / stats["rows"]
    # a 2-code shortlist rarely certifies, 32 almost always does (the speed-up needs a low rate)
    assert rates[32] <= 0.05, rates
    assert rates[2] > rates[32], rates
    # almost exact copies of codebook rows certify with a tiny shortlist
    stats = {}
    idx, _ = nearest(e[:500] + 0.01, e, precision="bf16_rerank", shortlist=2, stats=stats)
    assert torch.equal(idx, torch.arange(500)) and stats["fallback_rows"] == 0


def test_topk_and_ties_match_the_exact_search():
    q, e = llm_like(3000, 200, seed=2)
    e[2000] = e[17]  # duplicate row: the lower index wins, as in the fp32 search and argmin
    q[:5] = e[17]
    idx, dist = nearest(q, e, k=5, precision="bf16_rerank", shortlist=16)
    exact_idx, exact_dist = nearest(q, e, k=5)
    assert torch.equal(idx, exact_idx)
    torch.testing.assert_close(dist, exact_dist)
    one, _ = nearest(q[:5], e, precision="bf16_rerank", shortlist=16)
    assert one.tolist() == [17] * 5


def test_error_bound_holds_for_the_shortlist_scores():
    q, e = llm_like(4000, 300, seed=3)
    e_sq = squared_norms(e)
    shift = e_sq.mean()
    bias = e_sq - shift
    approx = torch.addmm(bias.bfloat16(), q.bfloat16(), e.bfloat16().T, beta=1.0, alpha=-2.0).float() + shift
    exact = e_sq.double() - 2.0 * q.double() @ e.double().T
    bound = bf16_score_error_bound(q.norm(dim=1), e_sq.max().sqrt(), bias.abs().max()).double()
    error = (approx.double() - exact).abs().amax(dim=1)
    assert torch.all(error <= bound)
    assert error.max() > 0  # bf16 really is approximate here, so the test can fail


def test_a_backend_that_breaks_the_error_model_falls_back_to_fp32(monkeypatch):
    q, e = llm_like(3000, 100, seed=4)
    monkeypatch.setattr(ns, "BF16_UNIT_ROUNDOFF", 1e-12)  # pretend bf16 were exact: observed errors exceed it
    stats = {}
    with pytest.warns(RuntimeWarning, match="certified bound"):
        idx, _ = nearest(q, e, precision="bf16_rerank", shortlist=8, stats=stats)
    assert stats["fallback_rows"] == 100
    assert torch.equal(idx, nearest(q, e)[0])


def test_auto_precision_follows_the_hardware():
    expected = "bf16_rerank" if native_bf16_matmul("cpu") else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32"
    q, e = llm_like(500, 50)
    assert torch.equal(nearest(q, e, precision="auto", shortlist=8)[0], nearest(q, e)[0])


@pytest.mark.parametrize("kw,match", [({"precision": "fp16"}, "precision"),
                                      ({"precision": "bf16_rerank", "shortlist": 2, "k": 3}, "shortlist")])
def test_bad_search_arguments_fail_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        nearest(torch.randn(3, 4), torch.randn(10, 4), **kw)


def test_shortlist_covering_the_codebook_is_the_exact_search():
    q, e = llm_like(20, 30)
    stats = {}
    idx, _ = nearest(q, e, precision="bf16_rerank", shortlist=20, stats=stats)
    assert torch.equal(idx, nearest(q, e)[0]) and stats == {"rows": 30, "fallback_rows": 0}


# --------------------------------------------------------------------------- quantizer and config
def test_saq_with_bf16_rerank_gives_the_fp32_codes_and_latents():
    _, e = llm_like(3000, 1, dim=16, seed=5)
    pyramid = Pyramid([1, 2, 4], 4)
    z = torch.randn(3, 16, 4, 4) * e.std(0)[None, :, None, None] + e.mean(0)[None, :, None, None]
    exact = SAQuantizer(e, pyramid)(z)
    fast_q = SAQuantizer(e, pyramid, search={"precision": "bf16_rerank", "shortlist": 8})
    fast = fast_q(z)
    assert all(torch.equal(a, b) for a, b in zip(exact.codes, fast.codes))
    assert torch.equal(exact.z_q, fast.z_q)
    assert fast.search_stats["rows"] == 3 * (1 + 4 + 16)
    assert exact.search_stats["fallback_rows"] == 0
    assert "bf16_rerank" in repr(fast_q) and fast_q.codebook_bf16.dtype == torch.bfloat16
    assert SAQuantizer(e, pyramid).codebook_bf16 is None  # no bf16 copy kept for the fp32 search


@pytest.mark.parametrize("search,match", [({"precison": "fp32"}, "Unknown method.search key"),
                                          ({"precision": "int8"}, "precision"),
                                          ({"shortlist": 0}, "shortlist")])
def test_bad_search_options_fail_clearly(search, match):
    with pytest.raises(InvalidConfigError, match=match):
        build_quantizer("saq", torch.randn(10, 4), Pyramid([1], 1), search=search)


def test_search_knobs_compose_from_config_into_the_tokenizer(tmp_dirs):
    from experiments.stages.train import tokenizer_config
    from spae.tokenizer import SPAETokenizer

    cfg = compose(["+bench=reconstruction", "++method.search.precision=bf16_rerank", "++method.search.shortlist=8",
                   *tmp_dirs])
    config = tokenizer_config(OmegaConf.to_container(cfg, resolve=True))
    assert config["method"]["search"] == {"precision": "bf16_rerank", "shortlist": 8}
    tok = SPAETokenizer(config, torch.randn(50, 16), with_perceptual=False)
    assert tok.quantizer.search == SearchOptions("bf16_rerank", 8)
    default = SPAETokenizer({**config, "method": {**config["method"], "search": None}}, torch.randn(50, 16),
                            with_perceptual=False)
    # a null method.search takes the config default (conf/method/spae.yaml's, spae.config.SearchConfig)
    assert default.quantizer.search == SearchOptions("auto", ns.DEFAULT_SHORTLIST)

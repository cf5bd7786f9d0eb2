"""Exact chunked nearest-neighbour search == cdist + argmin (and top-k), in fp32 under autocast."""
import pytest
import torch

from spae.nn_search import nearest, squared_norms


@pytest.mark.parametrize("n,k_size,d,row_chunk,code_chunk", [
    (500, 3000, 32, 4096, 8192),  # one block
    (777, 3001, 24, 100, 512),    # ragged blocks in both directions
    (1, 5, 3, 1, 1),              # degenerate chunking
])
def test_nearest_matches_cdist_argmin(n, k_size, d, row_chunk, code_chunk):
    g = torch.Generator().manual_seed(n)
    q = torch.randn(n, d, generator=g)
    e = torch.randn(k_size, d, generator=g)
    idx, dist = nearest(q, e, row_chunk=row_chunk, code_chunk=code_chunk)
    ref = torch.cdist(q.double(), e.double()) ** 2
    ref_idx = ref.argmin(1)
    assert idx.dtype == torch.long and idx.shape == (n,)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist.double(), ref.min(1).values, rtol=1e-4, atol=1e-4)
    # precomputed norms give the same answer
    idx2, _ = nearest(q, e, codebook_sq_norms=squared_norms(e), row_chunk=row_chunk, code_chunk=code_chunk)
    assert torch.equal(idx, idx2)


def test_nearest_finds_exact_members_and_ties_pick_lowest_index():
    e = torch.randn(50, 8)
    e[30] = e[7]  # duplicate row: the lower index wins, like argmin
    idx, dist = nearest(e[[7, 3, 49]], e, code_chunk=16)
    assert idx.tolist() == [7, 3, 49]
    assert torch.all(dist < 1e-4)


def test_topk_matches_sorted_cdist():
    g = torch.Generator().manual_seed(1)
    q, e = torch.randn(64, 16, generator=g), torch.randn(1000, 16, generator=g)
    idx, dist = nearest(q, e, k=5, row_chunk=10, code_chunk=128)
    ref = torch.cdist(q.double(), e.double()) ** 2
    ref_dist, ref_idx = ref.topk(5, dim=1, largest=False)
    assert idx.shape == (64, 5)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-4, atol=1e-4)


def test_fp32_under_bf16_autocast():
    # offset data: scores ~ 1e3, where bf16 scores (8-bit mantissa) would change ~25% of assignments
    g = torch.Generator().manual_seed(2)
    q, e = torch.randn(300, 64, generator=g) + 3, torch.randn(4000, 64, generator=g) + 3
    plain_idx, plain_dist = nearest(q, e)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx, dist = nearest(q, e)
    assert dist.dtype == torch.float32
    assert torch.equal(idx, plain_idx)
    torch.testing.assert_close(dist, plain_dist)


@pytest.mark.parametrize("q_shape,e_shape,kw,match", [
    ((4, 3), (5, 4), {}, "dim"),
    ((4,), (5, 4), {}, r"queries \[N, D\]"),
    ((4, 4), (0, 4), {}, "empty"),
    ((4, 4), (5, 4), {"k": 6}, "k=6"),
    ((4, 4), (5, 4), {"row_chunk": 0}, "positive"),
])
def test_bad_inputs(q_shape, e_shape, kw, match):
    with pytest.raises(ValueError, match=match):
        nearest(torch.zeros(q_shape), torch.zeros(e_shape), **kw)


def test_reduced_matmul_precision_setting_is_overridden_and_restored():
    g = torch.Generator().manual_seed(3)
    q, e = torch.randn(200, 64, generator=g) + 3, torch.randn(3000, 64, generator=g) + 3
    ref_idx, _ = nearest(q, e)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # what a trainer may set for TF32/bf16 matmuls
        idx, _ = nearest(q, e)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert torch.equal(idx, ref_idx)

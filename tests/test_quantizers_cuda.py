"""On a GPU the quantizers give the CPU's fp32 codes, even with TF32 enabled and under bf16 autocast.

Skipped without CUDA (the default CI machine); run on a GPU machine with
``python -m pytest tests/test_quantizers_cuda.py``.
"""
import pytest
import torch

from spae.nn_search import nearest
from spae.pyramid import Pyramid
from spae.quantizers import build_quantizer
from spae.semantic_loss import SemanticLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KINDS = ["saq", "rq", "vq"]


@pytest.fixture
def tf32_enabled():
    """What a trainer typically sets on a GPU: TF32 matmuls would perturb distances."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(previous)


def offset_data(n, k, d, seed):
    g = torch.Generator().manual_seed(seed)  # offset: reduced precision would change many assignments
    return torch.randn(n, d, generator=g) + 3, torch.randn(k, d, generator=g) + 3


def test_nearest_on_gpu_matches_cpu(tf32_enabled):
    q, e = offset_data(3000, 20000, 64, 0)
    cpu_idx, cpu_dist = nearest(q, e)
    gpu_idx, gpu_dist = nearest(q.cuda(), e.cuda(), row_chunk=1000, code_chunk=7000)
    assert (gpu_idx.cpu() == cpu_idx).float().mean() > 0.999  # fp32 summation order may flip near-ties
    torch.testing.assert_close(gpu_dist.cpu(), cpu_dist, rtol=1e-4, atol=1e-3)
    assert torch.get_float32_matmul_precision() == "high"  # restored


@pytest.mark.parametrize("kind", KINDS)
def test_quantizer_on_gpu_matches_cpu_and_decodes_exactly(kind, tf32_enabled):
    z, codebook = offset_data(2 * 8 * 8, 4096, 32, 1)
    z = z.view(2, 8, 8, 32).permute(0, 3, 1, 2).contiguous()
    pyramid = Pyramid([1, 2, 4, 8, 8], 8)
    cpu = build_quantizer(kind, codebook, pyramid)
    gpu = build_quantizer(kind, codebook, pyramid).cuda()
    ref = cpu(z)
    zg = z.cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(zg)
    assert out.z_q.dtype == torch.float32 and out.z_q.is_cuda
    for a, b in zip(out.codes, ref.codes):
        assert (a.cpu() == b).float().mean() > 0.99
    for n in range(1, 6):
        assert torch.equal(gpu.decode_codes(out.codes, n), out.z_q_prefix[n - 1])
    (grad,) = torch.autograd.grad(out.z_q.sum() + out.commit_loss, zg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_semantic_loss_on_gpu():
    codebook = torch.randn(1000, 16).cuda()
    rel = torch.rand(2, 1000).cuda()
    rel = (rel - rel.min(1, keepdim=True).values) / (rel.max(1, keepdim=True).values - rel.min(1, keepdim=True).values)
    queries = [torch.randn(2, 1, 16, device="cuda", requires_grad=True), torch.randn(2, 4, 16, device="cuda")]
    loss = SemanticLoss(codebook, [0.95, 0.9], 1.0, [1, 2], num_negatives=64, target="sample")
    out = loss(queries, rel, generator=torch.Generator().manual_seed(0))
    assert out.loss.is_cuda and torch.isfinite(out.loss)
    out.loss.backward()
    assert queries[0].grad.abs().sum() > 0

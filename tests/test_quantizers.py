"""SAQ / RQ / VQ pyramid quantizers: one interface, exact code arithmetic, straight-through, fp32."""
import pytest
import torch

from spae.pyramid import Pyramid
from spae.quantizers import (
    QUANTIZERS,
    PyramidQuantizer,
    QuantizerOutput,
    ResidualQuantizer,
    SAQuantizer,
    VectorQuantizer,
    build_quantizer,
)

KINDS = ["saq", "rq", "vq"]
SIDES, LATENT, D = [1, 2, 4, 8, 8], 8, 16


@pytest.fixture(scope="module")
def codebook():
    return torch.randn(4096, D, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pyramid():
    return Pyramid(SIDES, LATENT)


def make_z(batch=3, seed=1, scale=0.5):
    return scale * torch.randn(batch, D, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


def code_grid(q: PyramidQuantizer, codes, layer):
    """Codebook rows of one layer's codes painted over their cells, computed from cover() directly."""
    rows = q.codebook[codes[layer]]  # [B, n, D]
    return rows[:, q.pyramid.cover(layer)].transpose(1, 2).reshape(rows.shape[0], D, LATENT, LATENT)


@pytest.mark.parametrize("kind", KINDS)
def test_shared_interface(kind, codebook, pyramid):
    q = build_quantizer(kind, codebook, pyramid, beta=0.25)
    assert isinstance(q, PyramidQuantizer) and q.name == kind
    assert list(q.parameters()) == []  # frozen codebook: nothing to train
    assert "codebook" not in q.state_dict()  # rebuilt from the codebook stage, not checkpointed
    z = make_z()
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == z.shape and out.z_q.dtype == torch.float32
    assert len(out.z_q_prefix) == len(out.codes) == len(out.layer_queries) == len(SIDES)
    assert len(out.unique_codes) == len(SIDES)
    for layer, n in enumerate(pyramid.token_counts):
        assert out.codes[layer].shape == (3, n) and out.codes[layer].dtype == torch.long
        assert out.layer_queries[layer].shape == (3, n, D)
        assert out.z_q_prefix[layer].shape == z.shape
        assert out.unique_codes[layer] == out.codes[layer].unique().numel()
    assert torch.equal(out.z_q, out.z_q_prefix[-1])
    assert out.commit_loss.dim() == 0 and out.commit_loss >= 0
    # a prefix of layers gives the same first codes as the full run
    short = q(z, num_layers=2)
    assert len(short.codes) == 2
    for a, b in zip(short.codes, out.codes[:2]):
        assert torch.equal(a, b)


def test_registry_lists_all_three():
    assert QUANTIZERS.names() == sorted(KINDS)
    with pytest.raises(KeyError, match="saq"):
        QUANTIZERS.get("fsq")


def test_saq_latent_is_exact_mean_of_covering_codes(codebook, pyramid):
    q = SAQuantizer(codebook, pyramid)
    out = q(make_z())
    total = None
    for layer in range(len(SIDES)):
        grid = code_grid(q, out.codes, layer)
        total = grid if total is None else total + grid
        assert torch.equal(out.z_q_prefix[layer], total / (layer + 1))


def test_saq_codes_are_nearest_to_streaming_targets(codebook, pyramid):
    """Layer l quantizes the cell mean of z_l = z_{l-1} + (z - e_{l-1}) (z_1 = z), the paper's recursion."""
    q = SAQuantizer(codebook, pyramid)
    z = make_z()
    out = q(z)
    target, prev_code = z, None
    for layer in range(len(SIDES)):
        if prev_code is not None:
            target = target + (z - prev_code)
        query = pyramid.pool(target, layer)
        torch.testing.assert_close(out.layer_queries[layer], query, rtol=1e-5, atol=1e-5)
        ref = torch.cdist(query.reshape(-1, D).double(), codebook.double()).argmin(1)
        assert torch.equal(out.codes[layer].reshape(-1), ref)
        prev_code = code_grid(q, out.codes, layer)


def test_rq_latent_is_exact_sum_of_codes_and_quantizes_residuals(codebook, pyramid):
    q = ResidualQuantizer(codebook, pyramid)
    z = make_z()
    out = q(z)
    total = torch.zeros_like(z)
    for layer in range(len(SIDES)):
        residual_query = pyramid.pool(z - total, layer)
        ref = torch.cdist(residual_query.reshape(-1, D).double(), codebook.double()).argmin(1)
        assert torch.equal(out.codes[layer].reshape(-1), ref)
        total = total + code_grid(q, out.codes, layer)
        assert torch.equal(out.z_q_prefix[layer], total)


def test_vq_picks_true_nearest_row_of_each_cell_mean(codebook, pyramid):
    q = VectorQuantizer(codebook, pyramid)
    z = make_z()
    out = q(z)
    for layer in range(len(SIDES)):
        query = pyramid.pool(z, layer)
        ref = torch.cdist(query.reshape(-1, D).double(), codebook.double()).argmin(1)
        assert torch.equal(out.codes[layer].reshape(-1), ref)
        assert torch.equal(out.z_q_prefix[layer], code_grid(q, out.codes, layer))


def test_lqae_full_grid_vq_is_plain_per_position_vq(codebook):
    q = VectorQuantizer(codebook, Pyramid.full(LATENT))
    z = make_z()
    out = q(z)
    flat = z.flatten(2).transpose(1, 2).reshape(-1, D)
    ref = torch.cdist(flat.double(), codebook.double()).argmin(1)
    assert torch.equal(out.codes[0].reshape(-1), ref)
    assert torch.equal(out.z_q.flatten(2).transpose(1, 2).reshape(-1, D), codebook[ref])


def test_subsample_pooling_reads_the_dilated_positions(codebook, pyramid):
    q = VectorQuantizer(codebook, pyramid, pooling="subsample")
    z = make_z()
    out = q(z)
    for layer in range(len(SIDES)):
        query = z.flatten(2)[:, :, pyramid.positions(layer)].transpose(1, 2)
        assert torch.equal(out.layer_queries[layer], query)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_codes_reproduces_every_prefix_exactly(kind, codebook, pyramid):
    q = build_quantizer(kind, codebook, pyramid).eval()
    out = q(make_z())
    for n in range(1, len(SIDES) + 1):
        assert torch.equal(q.decode_codes(out.codes, num_layers=n), out.z_q_prefix[n - 1])
    assert torch.equal(q.decode_codes(out.codes), out.z_q)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_z_straight_through(kind, codebook, pyramid):
    q = build_quantizer(kind, codebook, pyramid, beta=0.25)
    z = make_z().requires_grad_(True)
    out = q(z)
    # straight-through: d z_q / d z is the identity, for the final latent and every prefix
    for latent in [out.z_q, *out.z_q_prefix]:
        (grad,) = torch.autograd.grad(latent.sum(), z, retain_graph=True)
        assert torch.equal(grad, torch.ones_like(z))
    # layer queries and the commitment loss carry gradient to z too
    for query in out.layer_queries:
        (grad,) = torch.autograd.grad(query.pow(2).sum(), z, retain_graph=True)
        assert grad.abs().sum() > 0
    (grad,) = torch.autograd.grad(out.commit_loss, z)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_commit_loss_definition(kind, codebook, pyramid):
    """beta * mean over layers of mse(pool_l(z), pool_l(prefix latent l))."""
    q = build_quantizer(kind, codebook, pyramid, beta=0.7)
    z = make_z()
    out = q(z)
    ref = torch.stack([
        torch.mean((pyramid.pool(z, layer) - pyramid.pool(out.z_q_prefix[layer], layer)) ** 2)
        for layer in range(len(SIDES))
    ]).mean() * 0.7
    torch.testing.assert_close(out.commit_loss, ref)
    if kind == "saq":  # = mse(q_l, e_l) / l^2: the SAQ query deviates l times the prefix error
        alt = torch.stack([
            torch.mean((out.layer_queries[layer] - codebook[out.codes[layer]]) ** 2) / (layer + 1) ** 2
            for layer in range(len(SIDES))
        ]).mean() * 0.7
        torch.testing.assert_close(out.commit_loss, alt)


@pytest.mark.parametrize("kind", KINDS)
def test_quantization_stays_fp32_under_bf16_autocast(kind, pyramid):
    # offset codebook: bf16 distances (scores ~ 1e3) would change many assignments
    g = torch.Generator().manual_seed(3)
    codebook = torch.randn(2048, D, generator=g) + 3
    q = build_quantizer(kind, codebook, pyramid)
    z = make_z(scale=1.0) + 3
    ref = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
        out_bf16_input = q(z.bfloat16())
    assert out.z_q.dtype == torch.float32 and out.commit_loss.dtype == torch.float32
    assert all(x.dtype == torch.float32 for x in out.layer_queries)
    for a, b in zip(out.codes, ref.codes):
        assert torch.equal(a, b)
    # bf16 input: searched in fp32 on the bf16 values, exactly as an fp32 run on those values
    ref_rounded = q(z.bfloat16().float())
    for a, b in zip(out_bf16_input.codes, ref_rounded.codes):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["saq", "rq"])
def test_reconstruction_improves_as_layers_are_added(kind):
    """With a dense codebook, the prefix latent approximates z better with every layer (on average)."""
    g = torch.Generator().manual_seed(4)
    codebook = torch.randn(4096, D, generator=g)
    q = build_quantizer(kind, codebook, Pyramid(SIDES, LATENT))
    z = 0.5 * torch.randn(16, D, LATENT, LATENT, generator=g)
    out = q(z)
    errors = [torch.mean((p - z) ** 2).item() for p in out.z_q_prefix]
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.6 * errors[0], errors


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_inputs_raise_clear_errors(kind, codebook, pyramid):
    q = build_quantizer(kind, codebook, pyramid)
    with pytest.raises(ValueError, match=r"Expected z of shape \[B, 16, 8, 8\]"):
        q(torch.zeros(2, 15, 8, 8))
    with pytest.raises(ValueError, match="num_layers=6"):
        q(make_z(), num_layers=6)
    with pytest.raises(ValueError, match="num_layers=0"):
        q(make_z(), num_layers=0)
    out = q(make_z())
    with pytest.raises(ValueError, match="needs codes for 5 layers"):
        q.decode_codes(out.codes[:2], num_layers=5)
    bad = [c.clone() for c in out.codes]
    bad[1][0, 0] = 10**6
    with pytest.raises(ValueError, match="outside the codebook"):
        q.decode_codes(bad)
    with pytest.raises(ValueError, match=r"LongTensor \[B, 4\]"):
        q.decode_codes([out.codes[0], out.codes[2]])


def test_invalid_constructor_arguments(codebook, pyramid):
    with pytest.raises(ValueError, match="beta"):
        SAQuantizer(codebook, pyramid, beta=-1)
    with pytest.raises(ValueError, match="pooling"):
        SAQuantizer(codebook, pyramid, pooling="max")
    with pytest.raises(ValueError, match="NaN"):
        SAQuantizer(torch.full((4, D), float("nan")), pyramid)
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        SAQuantizer(torch.zeros(D), pyramid)
    with pytest.raises(TypeError, match="Pyramid"):
        SAQuantizer(codebook, [1, 2])

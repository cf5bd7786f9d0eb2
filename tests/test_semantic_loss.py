"""Semantic loss towards CLIP-relevant words, the relevance metric and the weight schedule."""
import math

import pytest
import torch

from spae.pyramid import Pyramid
from spae.quantizers import SAQuantizer
from spae.semantic_loss import SemanticLoss, schedule_weight, semantic_relevance

K, D = 500, 8


@pytest.fixture(scope="module")
def codebook():
    return torch.randn(K, D, generator=torch.Generator().manual_seed(0))


def normalised_relevance(batch=2, seed=1):
    r = torch.rand(batch, K, generator=torch.Generator().manual_seed(seed))
    lo, hi = r.min(1, keepdim=True).values, r.max(1, keepdim=True).values
    return (r - lo) / (hi - lo)


def loss_fn(codebook, **kw):
    args = dict(thresholds=[0.99, 0.9], temperature=1.0, layers=[1, 2], num_negatives=None, target="all")
    args.update(kw)
    return SemanticLoss(codebook, **args)


@pytest.mark.parametrize("target", ["sample", "all"])
@pytest.mark.parametrize("num_negatives", [None, 32])
def test_loss_decreases_when_query_moves_onto_a_candidate(codebook, target, num_negatives):
    rel = normalised_relevance()
    on_candidate = codebook[rel.argmax(1)][:, None, :]  # the top word is always a candidate
    loss = loss_fn(codebook, thresholds=[0.999], layers=[1], target=target, num_negatives=num_negatives)

    def value(query):
        return loss([query], rel, generator=torch.Generator().manual_seed(5)).loss.item()

    for seed in range(5):
        far = 3 * torch.randn(2, 1, D, generator=torch.Generator().manual_seed(seed))
        assert value(on_candidate) < value(far)
    # and gradient steps on the loss move a query towards the candidate
    query = (3 * torch.randn(2, 1, D, generator=torch.Generator().manual_seed(9))).requires_grad_(True)
    start = torch.dist(query.detach(), on_candidate).item()
    for step in range(50):
        out = loss([query], rel, generator=torch.Generator().manual_seed(step))
        (grad,) = torch.autograd.grad(out.loss, query)
        query = (query - 0.5 * grad).detach().requires_grad_(True)
    assert torch.dist(query.detach(), on_candidate).item() < 0.5 * start


def candidate_free_cross_entropy(logits: torch.Tensor, target: int, columns: list[int], candidates: set[int]):
    """-log p(target) over the columns that are the target itself or not a candidate of the image."""
    kept = [k for k in columns if k == target or k not in candidates]
    return -torch.log_softmax(logits[..., kept], -1)[..., kept.index(target)]


def test_all_target_matches_full_codebook_expectation_over_candidates(codebook):
    rel = normalised_relevance()
    queries = torch.randn(2, 4, D, requires_grad=True)
    out = loss_fn(codebook, thresholds=[0.95], layers=[1])([queries], rel)
    logits = -torch.cdist(queries, codebook) ** 2  # [2, 4, K]
    cand = rel >= 0.95
    w = rel * cand
    w = w / w.sum(1, keepdim=True)
    ref = 0.0
    for b in range(2):
        cands = set(cand[b].nonzero().squeeze(1).tolist())
        for k in cands:
            ref = ref + w[b, k] * candidate_free_cross_entropy(logits[b], k, list(range(K)), cands).sum()
    torch.testing.assert_close(out.loss, ref / 8, rtol=1e-4, atol=1e-4)
    assert out.num_candidates[1] == pytest.approx(cand.sum(1).float().mean().item())
    (grad,) = torch.autograd.grad(out.loss, queries)
    assert grad.abs().sum() > 0


def test_sample_target_averages_to_all_target(codebook):
    rel = normalised_relevance()
    queries = torch.randn(2, 64, D)
    all_loss = loss_fn(codebook, thresholds=[0.9], layers=[1], target="all")([queries], rel).loss
    sampler = loss_fn(codebook, thresholds=[0.9], layers=[1], target="sample")
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([sampler([queries], rel, generator=g).loss for _ in range(50)]).mean()
    assert abs(mean.item() - all_loss.item()) < 0.05 * all_loss.item()


# Hand-built batch: word W is a candidate of image b (relevance 1e-6 >= rho, so b draws it with
# probability 1e-6) and the only candidate of image a; T is b's top word; X is image c's only word.
W, T, X = 0, 1, 2


def three_image_batch():
    rel = torch.zeros(3, K)
    rel[0, W] = 1.0
    rel[1, T], rel[1, W] = 1.0, 1e-6
    rel[2, X] = 1.0
    queries = torch.randn(3, 1, D, generator=torch.Generator().manual_seed(3))
    return rel, queries


def test_a_word_of_image_b_drawn_by_another_image_is_no_negative_for_b(codebook):
    rel, queries = three_image_batch()
    loss = loss_fn(codebook, thresholds=[1e-6], layers=[1], num_negatives=0, target="sample")
    got = loss([queries], rel, generator=torch.Generator().manual_seed(0)).loss
    logits = -torch.cdist(queries[:, 0], codebook) ** 2  # [3, K]
    columns = [W, T, X]  # the drawn targets
    a = candidate_free_cross_entropy(logits[0], W, columns, {W})
    b = candidate_free_cross_entropy(logits[1], T, columns, {T, W})  # = W's column removed
    c = candidate_free_cross_entropy(logits[2], X, columns, {X})
    assert b == pytest.approx(-torch.log_softmax(logits[1, [T, X]], 0)[0].item())
    torch.testing.assert_close(got, (a + b + c) / 3)


@pytest.mark.parametrize("num_negatives", [None, 200])
def test_a_sampled_or_full_codebook_negative_that_is_a_candidate_does_not_count(codebook, num_negatives):
    small = codebook[:8]  # 200 uniform draws cover all 8 words (miss probability 8 (7/8)^200 ~ 1e-11)
    rel, queries = three_image_batch()
    rel, queries = rel[1:2, :8], queries[1:2]  # image b alone: every column but T and W is a negative
    loss = loss_fn(small, thresholds=[1e-6], layers=[1], num_negatives=num_negatives, target="sample")
    got = loss([queries], rel, generator=torch.Generator().manual_seed(0)).loss
    logits = -torch.cdist(queries[:, 0], small)[0] ** 2
    without_w = [k for k in range(8) if k != W]
    torch.testing.assert_close(got, -torch.log_softmax(logits[without_w], 0)[without_w.index(T)])


@pytest.mark.parametrize("target", ["sample", "all"])
def test_no_negative_column_gives_zero_loss_and_finite_gradient(codebook, target):
    rel = torch.zeros(1, K)
    rel[0, T] = 1.0
    q = torch.randn(1, 2, D, requires_grad=True)
    out = loss_fn(codebook, thresholds=[0.5], layers=[1], num_negatives=0, target=target)([q], rel)
    (grad,) = torch.autograd.grad(out.loss, q)
    assert out.loss.item() == 0.0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("target", ["sample", "all"])
def test_sampled_negatives_bound_the_softmax_columns(codebook, target, monkeypatch):
    rel = normalised_relevance()
    loss = loss_fn(codebook, thresholds=[0.5], layers=[1], num_negatives=16, target=target)
    seen = []
    original = loss._columns
    monkeypatch.setattr(loss, "_columns", lambda req, g: seen.append((req, original(req, g))) or seen[-1][1])
    loss([torch.randn(2, 3, D)], rel, generator=torch.Generator().manual_seed(0))
    required, cols = seen[0]
    assert set(required.tolist()) <= set(cols.tolist()) and cols.unique().numel() == cols.numel()
    assert cols.numel() <= required.unique().numel() + 16
    if target == "sample":  # only the drawn targets: cost bounded by B * n + m whatever rho
        assert required.numel() == 2 * 3 and cols.numel() <= 6 + 16
    else:  # every candidate of the batch
        assert required.numel() == (rel >= 0.5).any(0).sum()


def test_threshold_one_keeps_the_top_word_and_stricter_thresholds_shrink_candidates(codebook):
    rel = normalised_relevance()
    out = loss_fn(codebook, thresholds=[1.0, 0.5], layers=[1, 2])([torch.randn(2, 1, D), torch.randn(2, 4, D)], rel)
    assert out.num_candidates[1] == 1.0
    assert out.num_candidates[2] > 100
    assert set(out.per_layer) == {1, 2} and torch.isfinite(out.loss)


def test_constant_relevance_row_still_has_a_target(codebook):
    rel = torch.zeros(1, K)
    out = loss_fn(codebook, thresholds=[0.5], layers=[1])([torch.randn(1, 2, D)], rel)
    assert torch.isfinite(out.loss) and out.num_candidates[1] == 1.0


def test_unguided_prefix_gives_zero_loss_with_graph(codebook):
    rel = normalised_relevance()
    q = torch.randn(2, 1, D, requires_grad=True)
    out = loss_fn(codebook, thresholds=[0.9, 0.9, 0.9], layers=[3])([q], rel)
    assert out.loss.item() == 0.0 and out.loss.requires_grad and out.per_layer == {}


def test_works_with_quantizer_outputs_and_bf16_autocast(codebook):
    q = SAQuantizer(codebook, Pyramid([1, 2, 4], 4))
    z = torch.randn(2, D, 4, 4, requires_grad=True)
    out = q(z)
    loss = loss_fn(codebook, thresholds=[0.99, 0.9, 0.8], layers=[1, 2], num_negatives=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sem = loss(out.layer_queries, normalised_relevance().bfloat16())
    assert sem.loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(sem.loss, z)
    assert grad.abs().sum() > 0


def test_semantic_relevance_metric():
    rel = normalised_relevance()
    codes = [rel.argmax(1, keepdim=True), rel.argmin(1, keepdim=True).repeat(1, 4),
             torch.tensor([[0, 1], [2, 3]])]
    got = semantic_relevance(codes, rel)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(0.0)
    assert got[2] == pytest.approx(((rel[0, 0] + rel[0, 1] + rel[1, 2] + rel[1, 3]) / 4).item())
    with pytest.raises(ValueError, match="codes"):
        semantic_relevance([torch.zeros(3, 1, dtype=torch.long)], rel)


@pytest.mark.parametrize("kw,match", [
    (dict(thresholds=[1.2, 0.5]), r"\[0, 1\]"),
    (dict(thresholds=[-0.1, 0.5]), r"\[0, 1\]"),
    (dict(thresholds=[]), "empty"),
    (dict(layers=[0]), "1-based"),
    (dict(layers=[3]), "out of range"),
    (dict(layers=[]), "empty"),
    (dict(layers=[1, 1]), "repeat"),
    (dict(temperature=0.0), "temperature"),
    (dict(num_negatives=-1), "num_negatives"),
    (dict(target="best"), "target"),
])
def test_invalid_configs_raise_clear_errors(codebook, kw, match):
    with pytest.raises(ValueError, match=match):
        loss_fn(codebook, **kw)


def test_invalid_inputs_raise_clear_errors(codebook):
    loss = loss_fn(codebook)
    q = [torch.randn(2, 1, D)]
    with pytest.raises(ValueError, match=r"relevance must be \[B, 500\]"):
        loss(q, torch.rand(2, K + 1))
    with pytest.raises(ValueError, match="min-max"):
        loss(q, torch.rand(2, K) * 2)
    with pytest.raises(ValueError, match="NaN"):
        loss(q, torch.full((2, K), float("nan")))
    with pytest.raises(ValueError, match=r"layer_queries\[0\]"):
        loss([torch.randn(3, 1, D)], normalised_relevance())


def test_schedule_weight():
    assert schedule_weight(123, weight=0.3) == 0.3
    assert schedule_weight(0, weight=1.0, schedule="linear_warmup", warmup_steps=10) == 0.0
    assert schedule_weight(5, weight=1.0, schedule="linear_warmup", warmup_steps=10) == 0.5
    assert schedule_weight(50, weight=1.0, schedule="linear_warmup", warmup_steps=10) == 1.0
    kw = dict(weight=1.0, schedule="cosine_decay", warmup_steps=10, total_steps=110, final_weight=0.1)
    assert schedule_weight(10, **kw) == pytest.approx(1.0)
    assert schedule_weight(60, **kw) == pytest.approx(0.55)
    assert schedule_weight(110, **kw) == pytest.approx(0.1) == schedule_weight(500, **kw)
    values = [schedule_weight(s, **kw) for s in range(10, 111)]
    assert all(b <= a for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="schedule"):
        schedule_weight(1, weight=1.0, schedule="step")
    with pytest.raises(ValueError, match="total_steps"):
        schedule_weight(20, weight=1.0, schedule="cosine_decay", warmup_steps=10)
    assert not math.isnan(schedule_weight(0, weight=1.0, schedule="cosine_decay", total_steps=5))


# ------------------------------------------------------------------------------------------ distinct targets
def few_candidates_relevance() -> torch.Tensor:
    """Image 0: every word relevant (many candidates); image 1: two words of non-zero weight only."""
    rel = torch.zeros(2, K)
    rel[0] = torch.linspace(0.0, 1.0, K)
    rel[1, 7], rel[1, 9] = 1.0, 0.95
    return rel


def test_distinct_targets_are_drawn_without_replacement_when_an_image_has_enough_candidates(codebook, monkeypatch):
    drawn = []
    real = SemanticLoss._draw_targets

    def spy(self, weights, n, generator):
        picks = real(self, weights, n, generator)
        drawn.append((weights.clone(), picks))
        return picks

    monkeypatch.setattr(SemanticLoss, "_draw_targets", spy)
    loss = loss_fn(codebook, thresholds=[0.5, 0.5], target="sample", num_negatives=16, distinct_targets=True)
    queries = [torch.randn(2, 1, D), torch.randn(2, 4, D, requires_grad=True)]
    for seed in range(20):
        out = loss(queries, few_candidates_relevance(), generator=torch.Generator().manual_seed(seed))
        assert torch.isfinite(out.loss)
    assert len(drawn) == 40  # two guided layers per call
    for weights, picks in drawn:
        assert bool((weights.gather(1, picks) > 0).all())  # every target is a weighted candidate
        if picks.shape[1] == 4:
            assert len(set(picks[0].tolist())) == 4  # 250 candidates: four distinct targets
            assert set(picks[1].tolist()) <= {7, 9}  # two candidates for four queries: with replacement


def test_plain_sampling_repeats_targets_and_the_default_loss_is_unchanged(codebook):
    rel = few_candidates_relevance()
    rel[0] = 0.0
    rel[0, :5] = torch.tensor([1.0, 0.99, 0.98, 0.97, 0.96])  # five candidates of about equal weight
    weights = SemanticLoss._target_weights(rel, SemanticLoss._candidates(rel, 0.5))
    default = loss_fn(codebook, target="sample")
    repeats = 0
    for seed in range(50):
        picks = default._draw_targets(weights, 4, torch.Generator().manual_seed(seed))
        # exactly the draw the loss always made: multinomial with replacement on the step's generator
        assert torch.equal(picks, torch.multinomial(weights, 4, replacement=True,
                                                    generator=torch.Generator().manual_seed(seed)))
        repeats += len(set(picks[0].tolist())) < 4
    assert repeats > 0  # the premise of the remedy: with replacement, one layer's targets repeat
    queries = [torch.randn(2, 1, D), torch.randn(2, 4, D)]
    off = loss_fn(codebook, target="sample", distinct_targets=False)
    a = default(queries, rel, generator=torch.Generator().manual_seed(3))
    b = off(queries, rel, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.loss, b.loss)


def test_distinct_targets_must_be_a_bool(codebook):
    with pytest.raises(ValueError, match="distinct_targets"):
        loss_fn(codebook, distinct_targets="yes")

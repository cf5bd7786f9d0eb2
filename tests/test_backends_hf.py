"""HFLocalBackend: batched greedy decoding with prefix KV reuse gives exactly plain `model.generate` answers."""
from __future__ import annotations

import random

import pytest
import torch

from _tiny_lm import WORDS, one_thread, tiny_llama, tiny_tokenizer
from spae.llm.backends import build_backend
from spae.llm.hf_local import HFLocalBackend, plan_prefix_groups, plain_generate


_one_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def lm():
    tok = tiny_tokenizer()
    return tiny_llama(len(tok)), tok


def _prompts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    shared_a, shared_b = words(30), words(25)
    return ([shared_a + " " + words(rng.randint(1, 8)) for _ in range(5)]
            + [shared_b + "\n" + words(rng.randint(1, 4)) for _ in range(3)]
            + [words(rng.randint(1, 12)) for _ in range(4)])


@pytest.fixture(scope="module")
def reference(lm):
    model, tok = lm
    return [plain_generate(model, tok, p, 10, []) for p in _prompts()]


@pytest.mark.parametrize("batch_size,share", [(1, False), (3, False), (4, True), (16, True)])
def test_identical_to_plain_generate(lm, reference, batch_size, share):
    model, tok = lm
    prompts = _prompts()
    assert len(set(reference)) > 3  # the check is meaningful: answers differ between prompts
    backend = HFLocalBackend(model, tok, batch_size=batch_size, share_prefixes=share, min_shared_prefix=8)
    assert backend.generate(prompts, 10, []) == reference


def test_stop_strings_and_eos_cut_like_plain_generate(lm):
    model, tok = lm
    prompts = _prompts(1)
    full = [plain_generate(model, tok, p, 12, []) for p in prompts]
    stop = [full[0][3:5], full[1][2:3]]  # strings the model really writes
    reference = [plain_generate(model, tok, p, 12, stop) for p in prompts]
    assert reference[0] == full[0][:3] or len(reference[0]) < 3
    backend = HFLocalBackend(model, tok, batch_size=4, min_shared_prefix=8)
    assert backend.generate(prompts, 12, stop) == reference
    # an EOS token the model emits ends that row early in both paths
    eos = tok(full[2], add_special_tokens=False)["input_ids"][2]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos
    try:
        reference = [plain_generate(model, tok, p, 12, []) for p in prompts]
        assert HFLocalBackend(model, tok, batch_size=4, min_shared_prefix=8).generate(prompts, 12, []) == reference
    finally:
        model.generation_config.eos_token_id = old


def test_prefix_groups_are_planned_and_reused(lm):
    model, tok = lm
    prompts = _prompts()
    tokens = [tok(p)["input_ids"] for p in prompts]
    groups = plan_prefix_groups(tokens, [0] * len(tokens), min_shared=8)
    shared = [g for g in groups if g.prefix_len > 0]
    assert sorted(len(g.rows) for g in shared) == [3, 5]
    assert sorted(i for g in groups for i in g.rows) == list(range(len(prompts)))
    for g in shared:  # the prefix really is common, and every row keeps a suffix token
        assert all(tokens[i][: g.prefix_len] == tokens[g.rows[0]][: g.prefix_len] for i in g.rows)
        assert all(len(tokens[i]) > g.prefix_len for i in g.rows)
    # prefix forward passes: one per shared group (counted through the model's forward)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        HFLocalBackend(model, tok, batch_size=16, min_shared_prefix=8).generate(prompts, 1, [])
    finally:
        handle.remove()
    assert sorted(s[0] for s in calls) == [1, 1, 3, 4, 5]  # 2 prefixes, then 3 batched groups


def test_loglikelihood_matches_full_forward(lm):
    model, tok = lm
    ctx = _prompts()[0]
    pairs = [(ctx, " red ball"), (ctx, " box"), (ctx, " green dog"), ("red", " ball"), (ctx, "")]
    got = HFLocalBackend(model, tok, batch_size=2, min_shared_prefix=4).loglikelihood(pairs)
    for (c, x), score in zip(pairs, got):
        ci, xi = tok(c)["input_ids"], tok(x, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ci + xi])).logits[0].float(), -1)
        expected = sum(logp[len(ci) - 1 + k, t].item() for k, t in enumerate(xi))
        assert score == pytest.approx(expected, abs=1e-4)
    assert got[-1] == 0.0


def test_generate_from_embeds_equals_token_path(lm):
    model, tok = lm
    backend = HFLocalBackend(model, tok, batch_size=2)
    emb = model.get_input_embeddings()
    texts = [" red ball", " blue box is", " a cat"]
    segments = []
    for t in texts:
        ids = tok(" green square", add_special_tokens=False)["input_ids"]
        segments.append(["Answer:", emb(torch.tensor(ids)).detach(), t])
    reference = [plain_generate(model, tok, "Answer: green square" + t, 6, []) for t in texts]
    # same token ids either way only if the pieces tokenize the same apart and together
    joined = [tok("Answer:")["input_ids"] + tok(" green square", add_special_tokens=False)["input_ids"]
              + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert joined == [tok("Answer: green square" + t)["input_ids"] for t in texts]
    assert backend.generate_from_embeds(segments, 6, []) == reference
    with pytest.raises(ValueError, match="FloatTensor"):
        backend.generate_from_embeds([["x", torch.zeros(2, 3)]], 2, [])


def test_build_backend_from_loaded(lm):
    model, tok = lm

    class Loaded:  # the fields of spae.llm.loading.LoadedLLM that the backend reads
        name = "tiny"

    Loaded.model, Loaded.tokenizer = model, tok
    backend = build_backend({"backend": "hf_local", "batch_size": 2}, loaded=Loaded)
    assert isinstance(backend, HFLocalBackend) and backend.batch_size == 2 and backend.name == "tiny"
    with pytest.raises(KeyError, match="Valid names: dummy, hf_local, openai_http"):
        build_backend({"backend": "nope"})


def tiny_sliding_window_model(vocab_size: int):
    """A Gemma-3-like model (sliding-window and full attention layers), seeded, in eval mode."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                           sliding_window=16, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return Gemma3ForCausalLM(cfg).eval()


def test_sliding_window_model_identical(lm):
    """Gemma-3-like sliding-window attention: long rows run alone, short ones batch; answers unchanged."""
    _, tok = lm
    model = tiny_sliding_window_model(len(tok))
    rng = random.Random(0)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    shared = words(12)
    prompts = [shared + " " + words(rng.randint(1, 6)) for _ in range(4)] + [words(rng.randint(1, 3)) for _ in range(4)]
    reference = [plain_generate(model, tok, p, 6, []) for p in prompts]
    backend = HFLocalBackend(model, tok, batch_size=4, min_shared_prefix=4)
    assert backend.generate(prompts, 6, []) == reference


def _full_forward_logprob(model, ids: list[int], n_cont: int, embeds: torch.Tensor | None = None) -> float:
    """Reference: one forward pass over prompt + continuation, no cache, no padding."""
    with torch.no_grad():
        if embeds is None:
            logits = model(torch.tensor([ids])).logits[0]
        else:
            logits = model(inputs_embeds=embeds[None]).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    start = len(ids) - n_cont
    return sum(logp[start - 1 + k, t].item() for k, t in enumerate(ids[start:]))


def test_choice_scores_from_the_cached_prompt_equal_full_forward_passes(lm):
    model, tok = lm
    prompts = _prompts(2)[:7]
    choices = [[" red ball.", " box.", " green square dog."][: 1 + i % 3] for i in range(len(prompts))]
    backend = HFLocalBackend(model, tok, batch_size=3, min_shared_prefix=8)
    texts, scores = backend.generate_with_choices(prompts, choices, 6, [])
    assert texts == [plain_generate(model, tok, p, 6, []) for p in prompts]  # the cache stays intact for decoding
    for p, cands, got in zip(prompts, choices, scores):
        for c, s in zip(cands, got):
            xi = tok(c, add_special_tokens=False)["input_ids"]
            assert s == pytest.approx(_full_forward_logprob(model, tok(p)["input_ids"] + xi, len(xi)), abs=1e-4)
    flat = [s for row in scores for s in row]
    assert [s for row in backend.score_choices(prompts, choices) for s in row] == pytest.approx(flat, abs=1e-5)
    assert flat == pytest.approx(
        backend.loglikelihood([(p, c) for p, cs in zip(prompts, choices) for c in cs]), abs=1e-4)


def test_choice_scores_of_embedding_prompts_equal_full_forward_passes(lm):
    model, tok = lm
    emb = model.get_input_embeddings()
    gen = torch.Generator().manual_seed(1)
    prompts = [["Answer with cat or dog.\n", torch.randn(n, 64, generator=gen), " This is a"] for n in (2, 5, 3)]
    choices = [[" cat.", " dog."]] * 3
    scores = HFLocalBackend(model, tok, batch_size=2).score_choices(prompts, choices)
    for p, cands, got in zip(prompts, choices, scores):
        head = tok(p[0])["input_ids"]  # BOS + text
        tail = tok(p[2], add_special_tokens=False)["input_ids"]
        for c, s in zip(cands, got):
            xi = tok(c, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                seq = torch.cat([emb(torch.tensor(head)), p[1], emb(torch.tensor(tail + xi))])
            ids = [0] * (len(head) + p[1].shape[0] + len(tail)) + xi  # only the continuation's ids are read
            assert s == pytest.approx(_full_forward_logprob(model, ids, len(xi), seq), abs=1e-4)


def test_choice_scores_exact_on_a_sliding_window_model(lm):
    _, tok = lm
    model = tiny_sliding_window_model(len(tok))
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20))) for _ in range(5)]
    choices = [[" red ball.", " box."]] * 5
    scores = HFLocalBackend(model, tok, batch_size=4, min_shared_prefix=4).score_choices(prompts, choices)
    for p, cands, got in zip(prompts, choices, scores):
        for c, s in zip(cands, got):
            xi = tok(c, add_special_tokens=False)["input_ids"]
            assert s == pytest.approx(_full_forward_logprob(model, tok(p)["input_ids"] + xi, len(xi)), abs=1e-4)

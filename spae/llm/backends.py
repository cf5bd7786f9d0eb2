"""One interface for every LLM the in-context benchmarks talk to, and a registry of implementations.

- "hf_local": a transformers causal LM in this process (spae.llm.hf_local.HFLocalBackend), with batched
  greedy decoding, prefix KV-cache reuse and per-row early stop; also accepts input embeddings.
- "openai_http": any OpenAI-compatible HTTP server (spae.llm.openai_http.OpenAIHTTPBackend).
- "dummy": a deterministic rule-based model for tests (spae.llm.dummy.DummyBackend).

A backend is built from an llm spec (conf/llm/*.yaml as a plain dict) with `build_backend(spec, loaded)`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence, Union

import torch

from spae.registry import Registry

# A prompt for prefix-embedding methods (Frozen): text pieces and FloatTensor[n, D] input embeddings.
Segment = Union[str, torch.Tensor]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string (the whole text if none occurs)."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


class ChoiceScoringUnavailable(NotImplementedError):
    """The backend cannot rank given continuations by log-likelihood (the reason is the message)."""


class LLMBackend(ABC):
    """Greedy text generation (required) and log-likelihood scoring (optional)."""

    name: str = "llm"

    @abstractmethod
    def generate(self, prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[str]:
        """Greedy continuation of each prompt: the text after the prompt, cut before the first stop string."""

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Sum of log-probabilities of each continuation given its context (natural log)."""
        raise NotImplementedError(f"backend {self.name!r} does not score log-likelihoods; "
                                  "use scoring=exact or prefix, or the hf_local backend")

    def generate_from_embeds(self, prompts: list[list[Segment]], max_new_tokens: int,
                             stop: list[str]) -> list[str]:
        """Like generate, but each prompt is a list of text pieces and FloatTensor[n, D] input embeddings."""
        raise NotImplementedError(f"backend {self.name!r} cannot take input embeddings (prefix methods such "
                                  "as Frozen need a local model: llm.backend=hf_local)")

    # ---------------------------------------------------------------- constrained choice
    def choice_scoring_unavailable(self, with_embeddings: bool = False) -> str | None:
        """None when score_choices works for such prompts; else why not (recorded beside the results)."""
        if type(self).score_choices is LLMBackend.score_choices and \
                type(self).loglikelihood is LLMBackend.loglikelihood:
            return f"backend {self.name!r} does not score log-likelihoods of given continuations"
        if with_embeddings and type(self).score_choices is LLMBackend.score_choices:
            return f"backend {self.name!r} cannot score continuations of input-embedding prompts"
        return None

    def score_choices(self, prompts: list, choices: list[list[str]]) -> list[list[float]]:
        """Total log-probability (natural log, summed over tokens, not length-normalised) of each of a prompt's
        candidate continuations. prompts: str, or lists of segments (str | FloatTensor[n, D]).
        The default scores (prompt, continuation) pairs with loglikelihood (text prompts only)."""
        reason = self.choice_scoring_unavailable(any(not isinstance(p, str) for p in prompts))
        if reason:
            raise ChoiceScoringUnavailable(reason)
        flat = iter(self.loglikelihood([(p, c) for p, cs in zip(prompts, choices) for c in cs]))
        return [[next(flat) for _ in cs] for cs in choices]

    def generate_with_choices(self, prompts: list, choices: list[list[str]], max_new_tokens: int,
                              stop: list[str]) -> tuple[list[str], list[list[float]]]:
        """Greedy answers and candidate scores of the same prompts. Backends that can run a prompt once for
        both (hf_local: one prefill, the candidates scored from its KV cache) override this."""
        if all(isinstance(p, str) for p in prompts):
            texts = self.generate(prompts, max_new_tokens, stop)
        else:
            texts = self.generate_from_embeds([p if isinstance(p, list) else [p] for p in prompts],
                                              max_new_tokens, stop)
        return texts, self.score_choices(prompts, choices)

    def describe(self) -> dict[str, Any]:
        """What to record in results.json about the model used (never secrets)."""
        return {"backend": type(self).__name__, "name": self.name}


BackendFactory = Callable[..., LLMBackend]
BACKENDS: Registry[BackendFactory] = Registry("LLM backend")


@BACKENDS.register("hf_local")
def _build_hf_local(spec: dict, loaded=None, cache_dir=None) -> LLMBackend:
    from spae.llm.hf_local import HFLocalBackend

    if loaded is None:
        from spae.llm.loading import load_llm  # written by the model-loading module

        loaded = load_llm(spec, cache_dir)
    return HFLocalBackend.from_loaded(loaded, batch_size=int(spec.get("batch_size", 8)),
                                      share_prefixes=bool(spec.get("share_prefixes", True)),
                                      min_shared_prefix=int(spec.get("min_shared_prefix", 16)))


@BACKENDS.register("openai_http")
def _build_openai_http(spec: dict, loaded=None, cache_dir=None) -> LLMBackend:
    from spae.llm.openai_http import OpenAIHTTPBackend

    return OpenAIHTTPBackend.from_spec(spec)


@BACKENDS.register("dummy")
def _build_dummy(spec: dict, loaded=None, cache_dir=None) -> LLMBackend:
    from spae.llm.dummy import DummyBackend

    return DummyBackend(delay_s=float(spec.get("delay_s") or 0.0))


def build_backend(spec: dict, loaded=None, cache_dir=None) -> LLMBackend:
    """Build the backend named by spec["backend"]; `loaded` is a LoadedLLM for hf_local (else it is loaded)."""
    if "backend" not in spec:
        raise ValueError(f"llm spec has no 'backend' key (one of {', '.join(BACKENDS.names())}): {spec}")
    return BACKENDS.get(spec["backend"])(spec, loaded=loaded, cache_dir=cache_dir)

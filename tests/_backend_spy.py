"""Test helper: count what reaches the LLM backend (to prove reruns reuse finished answers)."""
from __future__ import annotations


def count_generate_calls(monkeypatch) -> list[int]:
    """Patch spae.llm.backends.build_backend (as it is now) so every backend it builds appends the number of
    prompts of each generate call to the returned list."""
    import spae.llm.backends as backends

    real_build = backends.build_backend
    calls: list[int] = []

    def counting(spec, loaded=None, cache_dir=None):
        backend = real_build(spec, loaded, cache_dir)
        original = backend.generate
        backend.generate = lambda prompts, *a: calls.append(len(prompts)) or original(prompts, *a)
        return backend

    monkeypatch.setattr(backends, "build_backend", counting)
    return calls

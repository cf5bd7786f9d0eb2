"""Frozen LLMs: loading (weights, tokenizer, input-embedding table) and generation backends."""
from spae.llm.loading import (
    LLM_SOURCES,
    LLMLoadError,
    LoadedLLM,
    detect_embedding_scale,
    input_embedding_table,
    load_llm,
    load_tokenizer,
)

__all__ = [
    "LLM_SOURCES",
    "LLMLoadError",
    "LoadedLLM",
    "detect_embedding_scale",
    "input_embedding_table",
    "load_llm",
    "load_tokenizer",
]

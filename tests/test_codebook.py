"""Codebook: word/id mapping, clear errors, safetensors+json round trip, build from an LLM, the stage."""
from __future__ import annotations

import json

import pytest
import torch
from _llm_fixtures import TOKENS, WORDS_KEPT, save_tiny_lm, tiny_gemma3

from spae.codebook import Codebook, UnknownWordsError, build_codebook


def small_codebook() -> Codebook:
    words = ["the", "cat", "dog", "house"]
    return Codebook(torch.randn(4, 8), words, torch.tensor([10, 11, 12, 13]), "toy")


def test_words_and_ids_round_trip_in_any_shape():
    cb = small_codebook()
    assert (cb.size, cb.dim) == (4, 8)
    ids = cb.ids_of(["dog", "the", "dog"])
    assert ids.tolist() == [2, 0, 2] and ids.dtype == torch.long
    assert cb.words_of(ids) == ["dog", "the", "dog"]
    assert cb.words_of(torch.tensor([[0, 1], [3, 2]])) == [["the", "cat"], ["house", "dog"]]
    assert cb.words_of(torch.tensor(3)) == "house"
    with pytest.raises(IndexError):
        cb.words_of(torch.tensor([4]))


def test_unknown_words_are_named_with_close_matches():
    cb = small_codebook()
    with pytest.raises(KeyError) as err:
        cb.ids_of(["cat", "hous", "zebra"])
    assert isinstance(err.value, UnknownWordsError)
    message = str(err.value)
    assert "'hous'" in message and "house" in message and "'zebra'" in message
    assert "'cat'" not in message


def test_embeddings_are_frozen_fp32_and_shapes_checked():
    cb = Codebook(torch.randn(3, 4, dtype=torch.float64, requires_grad=True), ["a", "b", "c"],
                  [1, 2, 3], "toy")
    assert cb.embeddings.dtype == torch.float32 and not cb.embeddings.requires_grad
    with pytest.raises(ValueError, match="inconsistent"):
        Codebook(torch.randn(3, 4), ["a", "b"], [1, 2, 3], "toy")
    with pytest.raises(ValueError, match="unique"):
        Codebook(torch.randn(2, 4), ["a", "a"], [1, 2], "toy")


def test_save_load_round_trip_without_pickle(tmp_path):
    cb = small_codebook()
    cb.save(tmp_path / "cb")
    assert sorted(p.name for p in (tmp_path / "cb").iterdir()) == ["codebook.json", "codebook.safetensors"]
    meta = json.loads((tmp_path / "cb" / "codebook.json").read_text())
    assert meta["words"] == cb.words and meta["size"] == 4 and meta["source"] == "toy"
    back = Codebook.load(tmp_path / "cb")
    torch.testing.assert_close(back.embeddings, cb.embeddings, rtol=0, atol=0)
    assert back.words == cb.words and back.token_ids.tolist() == [10, 11, 12, 13] and back.source == "toy"
    with pytest.raises(FileNotFoundError, match="codebook"):
        Codebook.load(tmp_path / "nothing")


def _codebook_cfg(folder, **extra) -> dict:
    source = {"name": "tiny_gemma", "source": "hf", "model_id": str(folder), "dtype": "float32"}
    return {"name": "tiny_words", "source": source, "lowercase_only": True, "min_chars": 3,
            "min_zipf": 3.0, "max_size": None, **extra}


def test_build_codebook_takes_scaled_embedding_rows_of_whole_words(tmp_path):
    model = tiny_gemma3(hidden=32)
    folder = save_tiny_lm(tmp_path / "lm", model)
    cb = build_codebook(_codebook_cfg(folder), tmp_path / "cache")
    assert sorted(cb.words) == sorted(WORDS_KEPT) and cb.words[0] == "the"
    assert cb.source == "tiny_gemma" and cb.dim == 32
    assert [TOKENS[i] for i in cb.token_ids.tolist()] == ["\u0120" + w for w in cb.words]
    # Rows equal what Gemma's (sqrt(d)-scaled) embedding module feeds the model for those tokens.
    torch.testing.assert_close(cb.embeddings, model.get_input_embeddings()(cb.token_ids))
    capped = build_codebook(_codebook_cfg(folder, max_size=3), tmp_path / "cache")
    assert capped.words == cb.words[:3]
    with pytest.raises(ValueError, match="relax"):
        build_codebook(_codebook_cfg(folder, min_chars=30), tmp_path / "cache")


def test_codebook_stage_writes_and_reuses(tmp_path):
    import experiments.stages.codebook  # noqa: F401  (registers the stage)
    from experiments.pipeline import run_stages

    folder = save_tiny_lm(tmp_path / "lm")
    cfg = {"codebook": _codebook_cfg(folder), "paths": {"cache_dir": str(tmp_path / "cache")}}
    first = run_stages(["codebook"], cfg, tmp_path / "cache", tmp_path / "run")["codebook"]
    assert first.summary["size"] == len(WORDS_KEPT) and first.summary["dim"] == 32
    assert first.summary["source"] == "tiny_gemma" and first.summary["metrics"]["size"] == len(WORDS_KEPT)
    assert Codebook.load(first.dir).words == first.summary["first_words"]
    again = run_stages(["codebook"], cfg, tmp_path / "cache", tmp_path / "run")["codebook"]
    assert again.cached and again.dir == first.dir


@pytest.mark.parametrize("name, llm", [("gemma3_words", "gemma3_270m"), ("smollm2_words", "smollm2_135m")])
def test_codebook_configs_carry_a_loadable_llm_spec(name, llm):
    from conftest import compose
    from omegaconf import OmegaConf

    from spae.llm.loading import LLM_SOURCES

    cfg = OmegaConf.to_container(compose([f"codebook={name}"]).codebook, resolve=True)
    assert cfg["name"] == name and cfg["source"]["name"] == llm
    assert cfg["source"]["source"] in LLM_SOURCES and cfg["source"]["pip"]
    assert {"lowercase_only", "min_chars", "min_zipf", "max_size"} <= set(cfg)

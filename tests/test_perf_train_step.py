"""benchmarks/perf/train_step.py and search_precision.py run end to end on tiny inputs."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.perf import search_precision, train_step


@pytest.mark.slow
def test_train_step_prints_parts_for_every_variant(tmp_path, capsys):
    """Two tiny Lightning fits (~20 s under load)."""
    results = train_step.main(["--vocab", "300", "--steps", "1", "--warmup", "1", "--rounds", "1", "--batch", "2",
                               "--perceptual", "none", "--shortlist", "8", "--cache", str(tmp_path),
                               "--out", str(tmp_path / "out.json")])
    assert list(results) == ["V=300 fp32", "V=300 bf16_rerank m=8"]
    for r in results.values():
        assert r["step"] > 0 and r["parts"]["quantizer"] > 0 and "backward" in r["parts"]
        assert 0.0 <= r["fallback_rate"] <= 1.0
    out = capsys.readouterr().out
    assert "RANDOM N(0,1) codebook" in out and "quantizer share" in out  # the stand-in is said
    assert json.loads((tmp_path / "out.json").read_text())["results"].keys() == results.keys()


def test_best_of_takes_each_parts_fastest_round():
    rounds = [{"step": 2.0, "parts": {"quantizer": 1.0, "decoder": 0.2}, "fallback_rate": 0.1},
              {"step": 1.5, "parts": {"quantizer": 1.2, "decoder": 0.1}, "fallback_rate": 0.0}]
    best = train_step.best_of(rounds)
    assert best == {"step": 1.5, "parts": {"quantizer": 1.0, "decoder": 0.1}, "fallback_rate": 0.1}


def test_search_precision_reports_agreement_on_a_cached_codebook(tmp_path, capsys):
    from spae.codebook import Codebook

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(400, 32, generator=g) + 2.0
    Codebook(emb, [f"w{i}" for i in range(400)], torch.arange(400), "tiny").save(
        tmp_path / "stages" / "codebook" / "abc")
    rows = search_precision.main(["--cache", str(tmp_path), "--random", "128", "--shortlists", "4", "16",
                                  "--repeats", "1"])
    assert [r["precision"] for r in rows] == ["fp32", "bf16_rerank", "bf16_rerank"]
    assert all(r["mismatch_vs_fp32"] == 0 for r in rows)  # certified: the same codes as fp32
    assert all(r["queries"] == "random_latent" and r["n"] == 128 for r in rows)
    assert "real layer queries skipped" in capsys.readouterr().out

"""The few-shot benchmark stage (experiments/stages/fewshot_eval.py) and its method renderers.

Fast: the compared models and the codebook/CLIP stages are replaced by fakes (words computed from the
pixels), the LLM by the rule-based dummy backend, the data by tiny Fashion-MNIST idx files; the stage's own
orchestration (episodes, rendering, per-(method, cell) JSONL with resume, summary, results.json) is real.
"""
from __future__ import annotations

import json

import pytest
import torch
from _data_fixtures import tiny_fashion_mnist
from _incontext_fixtures import execute_with_fakes
from conftest import compose

import experiments.stages  # noqa: F401  (registers the stages)
from tests._backend_spy import count_generate_calls
from experiments import incontext
from spae.fewshot.methods import ComparedMethod, parse_compare, render_images, tokens_per_image
from spae.llm.dummy import DummyBackend

COMPARE = "bench.compare=[{method: spae, layers: 2},{method: lqae},{method: clip_topk, k: 3}]"
CELLS = ("bench.cells=[{n_way: 2, shots: 1, repeats: 0, task_induction: false},"
         "{n_way: 2, shots: 1, repeats: 0, task_induction: true},{n_way: 5, shots: 1, repeats: 1, task_induction: true}]")


# ------------------------------------------------------------------------------------------ fakes
def _words_renderer(prefix: str, n_words: int):
    """Words from coarse pixel statistics: similar images share words, so the dummy LLM answers non-trivially."""

    def render(images: torch.Tensor) -> list[list[str]]:
        out = []
        for img in images:
            stats = [img.mean(), img[:, :8].mean(), img[:, 8:].mean(), img.std()]
            out.append([f"{prefix}{i}v{int(float(s) * 6)}" for i, s in enumerate(stats[:n_words])])
        return out

    return render


def _fake_build_renderers(ctx, methods, trained):
    return {m.slug: (_words_renderer(m.slug[:2], 2 if m.layers else 4), 16) for m in methods}


class FailingDummy(DummyBackend):
    """Dies (like a killed process) after `calls` generate calls."""

    def __init__(self, calls: int):
        self.calls = calls

    def generate(self, prompts, max_new_tokens, stop):
        if self.calls <= 0:
            raise KeyboardInterrupt("simulated kill")
        self.calls -= 1
        return super().generate(prompts, max_new_tokens, stop)


@pytest.fixture
def stage_env(tmp_path, monkeypatch):
    """Tiny data; fake codebook/clip stages and models; returns a function composing the bench config."""
    fm = tiny_fashion_mnist(tmp_path / "fm", n_train=30, n_test=60)
    monkeypatch.setattr(incontext, "build_renderers", _fake_build_renderers)

    def cfg(*extra: str, cache: str = "cache", runs: str = "runs", data: str = "embedded"):
        broad = ["~data.pretrain.openclipart", "~data.pretrain.tuxpaint"] if data == "embedded" else []
        return compose(["+bench=mini_imagenet", f"data={data}", f"paths.cache_dir={tmp_path / cache}",
                        f"paths.runs_dir={tmp_path / runs}", "logger=none", "llm=smollm2_135m", "llm.backend=dummy",
                        f"data.pretrain.fashion_mnist.path={fm}", f"data.classification.path={fm}",
                        "~data.pretrain.easy_vqa", *broad, "~data.vqa", "~data.generation",
                        COMPARE, CELLS, "bench.episodes=12", "bench.chunk_size=5", *extra])

    return cfg


def _stage_dir(root, name="fewshot_eval"):
    (d,) = [p for p in (root / "stages" / name).iterdir() if p.is_dir()]
    return d


def _records(cache_dir):
    """{"<method slug>/<cell key>.jsonl": records} from the shared episode-record store of a cache."""
    out = {}
    for p in sorted((cache_dir / "fewshot_records").rglob("*.jsonl")):
        slug, cell = p.parent.name.rsplit("-", 1)[0], "-".join(p.stem.split("-")[:4])
        out[f"{slug}/{cell}.jsonl"] = [json.loads(line) for line in p.read_text().splitlines()]
    return out


# ------------------------------------------------------------------------------------------ stage
def test_stage_compares_methods_on_identical_episodes_and_writes_the_table(stage_env, tmp_path):
    results = json.loads(execute_with_fakes(stage_env()).read_text())
    metrics = results["metrics"]["fewshot_eval"]
    assert set(metrics) == {"spae-l2", "lqae", "clip_topk-k3"}  # stable ids; the display names beside them
    assert results["method_labels"] == {"spae-l2": "SPAE (2 tokens, layers 1-2)", "lqae": "LQAE (4 tokens, all layers)",
                                        "clip_topk-k3": "CLIP top-3 words"}
    cells = {"2way-noti-1shot-0rep", "2way-ti-1shot-0rep", "5way-ti-1shot-1rep"}
    for per_cell in metrics.values():
        assert set(per_cell) == cells | {"average"}
        for key in cells:
            m = per_cell[key]
            assert m["episodes"] == 12 and m["ci95_low"] <= m["accuracy"] <= m["ci95_high"]
    records = _records(tmp_path / "cache")
    assert len(records) == 9 and all(len(r) == 12 for r in records.values())
    by_cell: dict[str, list] = {}
    for name, rows in records.items():
        by_cell.setdefault(name.split("/")[1], []).append(
            [(r["episode_id"], r["target"], r["classes"], r["task_induction"]) for r in rows])
    for cell, per_method in by_cell.items():  # every method answered the very same episodes
        assert len(per_method) == 3 and all(p == per_method[0] for p in per_method), cell
    # induction on/off cells are paired: same episodes, only the induction flag differs
    assert [e[:3] for e in by_cell["2way-ti-1shot-0rep.jsonl"][0]] == \
        [e[:3] for e in by_cell["2way-noti-1shot-0rep.jsonl"][0]]
    md = (tmp_path / "runs").rglob("results.md").__next__().read_text()
    assert "| SPAE (2 tokens, layers 1-2) (ours) |" in md and "| SPAE_PaLM (paper) |" in md
    assert "stand-ins" in md and "Fairness" in md
    summary = json.loads((_stage_dir(tmp_path / "cache") / "_SUCCESS.json").read_text())["summary"]
    assert summary["fairness"]["eval_images"] > 0 and "pretraining" in summary["fairness"]
    run_records = list((tmp_path / "runs").rglob("fewshot_eval/*/*.jsonl"))
    assert len(run_records) == 9
    # what the tokens carry without an LLM, over every rendered episode image, beside the metrics
    content = results["token_content"]["fewshot_eval"]
    assert content == summary["token_content"] and set(content) == set(metrics)
    for c in content.values():
        assert c["images"] == summary["fairness"]["eval_images"] and 0.0 <= c["class_1nn_accuracy"] <= 1.0
        assert 0.2 <= c["chance"] < 1.0 and c["tokens_per_image"] in (2, 4) and c["per_layer"][0]["layer"] == 1
        # the nearest-support reader ran on every cell's own episodes
        assert set(c["nearest_support"]) == set(summary["cells"])
        assert all(0.0 <= v["accuracy"] <= 1.0 and v["n"] > 0 for v in c["nearest_support"].values())
    assert "Nearest-support reader on the same episodes (no LLM)" in md
    assert "What the tokens carry (no LLM)" in md and "Top words of 5 images per class" in md
    assert "| SPAE (2 tokens, layers 1-2) | 2 | " in md.split("What the tokens carry")[1]
    for name in ("trouser", "dress", "bag", "coat", "sneaker"):
        assert f"**{name}**" in md.split("Top words of 5 images per class")[1]


def test_models_are_nodes_run_before_the_stage_and_forced_by_stage_or_node_name(stage_env):
    """The compared models are the DAG's `train[spae]`, `train[lqae]` nodes (substituted here, no registry
    patched): run before fewshot_eval, listed in results.json, reused, forced by stage or by node name."""
    trained = []

    def counting_model(ctx):
        trained.append(ctx.cfg["method"]["name"])  # the node runs under its variant config
        return {"images_seen": 7}

    first = json.loads(execute_with_fakes(stage_env(), train=counting_model).read_text())
    order = list(first["stage_seconds"])
    assert order.index("train[spae]") < order.index("fewshot_eval") and order.index("train[lqae]") < order.index(
        "fewshot_eval")
    assert trained == ["lqae", "spae"] and "frozen_train[frozen]" not in order  # bench.compare has no Frozen
    assert first["training"]["fewshot_eval"]["spae"]["images_seen"] == 7  # the stage read the node's summary
    trained.clear()
    again = json.loads(execute_with_fakes(stage_env(), train=counting_model).read_text())
    assert trained == [] and {"train[spae]", "train[lqae]", "fewshot_eval"} <= set(again["stages_reused"])
    execute_with_fakes(stage_env("force=[train]"), train=counting_model)
    assert trained == ["lqae", "spae"]
    trained.clear()
    forced = json.loads(execute_with_fakes(stage_env("force=['train[lqae]']"), train=counting_model).read_text())
    assert trained == ["lqae"] and "train[spae]" in forced["stages_reused"]


def test_same_seed_same_episodes_and_accuracies_other_seed_differs(stage_env, tmp_path):
    first = json.loads(execute_with_fakes(stage_env(cache="a", runs="ra")).read_text())["metrics"]["fewshot_eval"]
    again = json.loads(execute_with_fakes(stage_env(cache="b", runs="rb")).read_text())["metrics"]["fewshot_eval"]
    assert first == again
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
    execute_with_fakes(stage_env("seed=1", cache="c", runs="rc"))
    ids = lambda root: [(r["classes"], r["target"]) for r in _records(root)["spae-l2/2way-ti-1shot-0rep.jsonl"]]  # noqa: E731
    assert ids(tmp_path / "c") != ids(tmp_path / "a")


def test_interrupted_evaluation_resumes_and_matches_an_uninterrupted_run(stage_env, tmp_path, monkeypatch):
    import spae.llm.backends as backends

    reference = json.loads(execute_with_fakes(stage_env(cache="ref", runs="rref")).read_text())
    reference = reference["metrics"]["fewshot_eval"]
    real_build = backends.build_backend
    monkeypatch.setattr(backends, "build_backend", lambda spec, loaded=None, cache_dir=None: FailingDummy(4))
    with pytest.raises(KeyboardInterrupt):
        execute_with_fakes(stage_env())
    partial = _records(tmp_path / "cache")
    done = sum(len(r) for r in partial.values())
    assert 0 < done < 9 * 12 and not (_stage_dir(tmp_path / "cache") / "_SUCCESS.json").exists()
    monkeypatch.setattr(backends, "build_backend", real_build)
    calls = count_generate_calls(monkeypatch)
    resumed = json.loads(execute_with_fakes(stage_env()).read_text())["metrics"]["fewshot_eval"]
    assert sum(calls) == 9 * 12 - done  # only the missing episodes ran
    assert resumed == reference
    assert _records(tmp_path / "cache") == _records(tmp_path / "ref")


def test_more_episodes_extend_the_finished_ones_and_other_benches_reuse_them(stage_env, tmp_path, monkeypatch):
    first = json.loads(execute_with_fakes(stage_env()).read_text())
    before = _records(tmp_path / "cache")
    calls = count_generate_calls(monkeypatch)
    # another bench config (one cell asks for 20 episodes): only the 3 methods x 8 new episodes run
    grown = CELLS.replace("{n_way: 2, shots: 1, repeats: 0, task_induction: true}",
                          "{n_way: 2, shots: 1, repeats: 0, task_induction: true, episodes: 20}")
    assert grown != CELLS
    second = json.loads(execute_with_fakes(stage_env(grown, runs="runs2")).read_text())
    assert sum(calls) == 3 * 8
    after = _records(tmp_path / "cache")
    for name, rows in before.items():  # the first 12 episodes are the same episodes with the same answers
        assert after[name][:12] == rows
    m1, m2 = first["metrics"]["fewshot_eval"], second["metrics"]["fewshot_eval"]
    for label in m1:
        assert m2[label]["2way-ti-1shot-0rep"]["episodes"] == 20
        assert m2[label]["2way-noti-1shot-0rep"] == m1[label]["2way-noti-1shot-0rep"]
        rate = m2[label]["2way-ti-1shot-0rep"]["answer_is_a_class"]
        assert 0.0 <= rate <= 1.0 and rate >= m2[label]["2way-ti-1shot-0rep"]["accuracy"]
        if rate > 0:  # accuracy = (share of class-naming answers) x (accuracy among them)
            cell = m2[label]["2way-ti-1shot-0rep"]
            assert cell["accuracy"] == pytest.approx(rate * cell["accuracy_when_a_class"])
    md = next((tmp_path / "runs2").rglob("results.md")).read_text()
    assert "Answers that are one of the episode's class names" in md


def test_frozen_needs_a_local_llm(stage_env):
    with pytest.raises(ValueError, match="hf_local"):
        execute_with_fakes(stage_env("bench.compare=[{method: frozen}]"))


def test_prompt_must_be_a_template(stage_env):
    with pytest.raises(ValueError, match=r"prompt@bench.prompt"):
        execute_with_fakes(stage_env("bench.prompt=qa"))


# ------------------------------------------------------------------------------------------ library
def test_parse_compare_validates_entries():
    methods = parse_compare([{"method": "spae", "layers": 2}, {"method": "clip_topk", "k": 5}, {"method": "frozen"}],
                            ["spae", "lqae", "frozen"])
    assert [m.slug for m in methods] == ["spae-l2", "clip_topk-k5", "frozen"]
    assert [m.model for m in methods] == ["spae", None, "frozen"]
    with pytest.raises(ValueError, match="unknown method"):
        parse_compare([{"method": "dalle"}])
    with pytest.raises(ValueError, match="needs k"):
        parse_compare([{"method": "clip_topk"}])
    with pytest.raises(ValueError, match="applies to spae and lqae"):
        parse_compare([{"method": "frozen", "layers": 2}])
    with pytest.raises(ValueError, match="twice"):
        parse_compare([{"method": "lqae"}, {"method": "lqae"}])
    with pytest.raises(ValueError, match="bench.methods.lqae"):
        parse_compare([{"method": "lqae"}], ["spae"])
    assert ComparedMethod("spae", layers=3).display_label(21) == "SPAE (21 tokens, layers 1-3)"


def test_render_images_batches_and_keeps_order():
    from PIL import Image

    images = [Image.new("L", (28, 28), v) for v in range(0, 250, 25)]
    seen = []

    def renderer(batch):
        seen.append(batch.shape)
        return [[f"v{int(round(float(x.mean()) * 10))}"] for x in batch]

    out = render_images(renderer, images, 16, batch_size=4)
    assert [s[0] for s in seen] == [4, 4, 2] and seen[0][1:] == (3, 16, 16)
    assert out == [[f"v{int(round(v / 255 * 10))}"] for v in range(0, 250, 25)]
    assert tokens_per_image([["a"], ["b", "c"]]) == 3 and tokens_per_image(torch.zeros(2, 8)) == 2


class WrongWordsRightRanking(DummyBackend):
    """Generates a word that is never a class (exact match 0) while its log-likelihoods rank the dummy's
    answer first (constrained choice = the dummy's nearest-neighbour accuracy): the two metrics differ."""

    def generate(self, prompts, max_new_tokens, stop):
        return [" zzz" for _ in prompts]


def test_results_carry_both_metrics_with_their_labels_and_never_swap_them(stage_env, tmp_path, monkeypatch):
    monkeypatch.setattr(incontext, "build_llm", lambda cfg: WrongWordsRightRanking())
    results = json.loads(execute_with_fakes(stage_env()).read_text())
    metrics = results["metrics"]["fewshot_eval"]
    choice_accuracies = []
    for per_cell in metrics.values():
        for key, m in per_cell.items():
            if key == "average":
                continue
            assert m["accuracy"] == 0.0 and m["paper_protocol"] is True and "paper's protocol" in m["metric"]
            assert m["metric"].startswith("exact match") and "not the paper" not in m["metric"].lower()
            c = m["constrained_choice"]
            assert c["paper_protocol"] is False and "NOT the paper's protocol" in c["metric"]
            assert c["normalisation"] == "total_logprob" and c["episodes"] == m["episodes"] == 12
            assert c["ci95_low"] <= c["accuracy"] <= c["ci95_high"]
            choice_accuracies.append(c["accuracy"])
    assert max(choice_accuracies) > 0.0  # the ranking read the prompts: not the (all-wrong) generations
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    headline, rest = md.split("Not the paper's protocol: constrained choice", 1)
    assert "| SPAE_PaLM (paper) |" in headline and "(paper)" not in rest.split("Answers that are")[0]
    row = next(line for line in headline.splitlines() if line.startswith("| SPAE (2 tokens, layers 1-2) (ours)"))
    assert row.count("0.0 [0.0, ") == 2  # 2-way: no-induction and induction 1-shot, both all wrong
    choice_row = next(line for line in rest.splitlines() if line.startswith("| SPAE (2 tokens, layers 1-2) (ours)"))
    spae = metrics["spae-l2"]["2way-ti-1shot-0rep"]["constrained_choice"]
    assert f"{100 * spae['accuracy']:.1f} [" in choice_row


def test_a_backend_without_loglikelihoods_reports_the_choice_as_unavailable(stage_env, tmp_path, monkeypatch):
    class NoScores(DummyBackend):
        def choice_scoring_unavailable(self, with_embeddings=False):
            return "this server cannot score given continuations"

    monkeypatch.setattr(incontext, "build_llm", lambda cfg: NoScores())
    metrics = json.loads(execute_with_fakes(stage_env()).read_text())["metrics"]["fewshot_eval"]
    for per_cell in metrics.values():
        for key, m in per_cell.items():
            if key != "average":
                assert m["constrained_choice"]["unavailable"] == "this server cannot score given continuations"
                assert "accuracy" not in m["constrained_choice"] and m["episodes"] == 12
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "Constrained choice unavailable for SPAE (2 tokens, layers 1-2): this server cannot" in md


# ------------------------------------------------------------------------------------------ open world
def test_default_is_novel_class_with_zero_held_out_images_in_every_training_stage(stage_env, tmp_path):
    results = json.loads(execute_with_fakes(stage_env()).read_text())
    summary = json.loads((_stage_dir(tmp_path / "cache") / "_SUCCESS.json").read_text())["summary"]
    fairness = summary["fairness"]
    assert fairness["world"] == "novel-class" and fairness["images_of_eval_classes_trained_on"] == 0
    assert set(fairness["per_stage"]) == {"clip", "train:spae", "train:lqae"}
    for counts in fairness["per_stage"].values():
        assert set(counts) == {"trouser", "dress", "bag", "coat", "sneaker"} and not any(counts.values())
    assert fairness["per_set"]["fashion_mnist"]["by"] == "label"
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "novel-class (fashion_mnist: trouser, dress, bag, coat, sneaker)" in md and "CLOSED" not in md
    assert results["data_world"].startswith("novel-class")


def test_held_out_classes_in_pretraining_fail_the_run_before_training(stage_env):
    from spae.data.fairness import FairnessError

    with pytest.raises(FairnessError, match="coat"):
        execute_with_fakes(stage_env("data.pretrain.fashion_mnist.classes=[t-shirt,coat]"))


def test_closed_world_option_runs_and_is_labelled_closed_world(stage_env, tmp_path):
    execute_with_fakes(stage_env(data="embedded_closed"))
    summary = json.loads((_stage_dir(tmp_path / "cache") / "_SUCCESS.json").read_text())["summary"]
    assert summary["fairness"]["world"] == "closed-world"
    assert summary["fairness"]["images_of_eval_classes_trained_on"] > 0  # reported, not failed
    md = next((tmp_path / "runs").rglob("results.md")).read_text()
    assert "CLOSED-WORLD" in md


def test_max_episodes_caps_every_cell_including_those_with_their_own_count():
    from experiments.stages.fewshot_eval import cells_from_config

    bench = {"episodes": 50, "cells": [{"n_way": 2, "shots": 1, "task_induction": True, "episodes": 100},
                                       {"n_way": 5, "shots": 1, "task_induction": True}]}
    assert [c.episodes for c in cells_from_config(bench)] == [100, None]  # None: the bench's 50
    assert [c.episodes for c in cells_from_config({**bench, "max_episodes": 4})] == [4, 4]
    assert [c.episodes for c in cells_from_config({**bench, "max_episodes": 70})] == [70, 50]

"""Safety (issue 8, part 5): secrets only from the environment and never in outputs, checkpoints loaded
with weights_only=True, and config values cannot move project writes outside the run/cache folders."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import REPO, compose

from experiments.run import ConfigError, execute
from spae.io import PathEscapeError, safe_name
from spae.logging_utils import redact, secrets_in_config

SECRET = "sk-reliability-test-0123456789abcdef"


def test_redact_hides_secret_values_but_not_ordinary_token_settings():
    cfg = {"llm": {"api_key": SECRET, "api_key_env": "OPENAI_API_KEY", "max_new_tokens": 8, "token_ids": [1]},
           "hub": [{"hf_token": SECRET}], "logger": {"WANDB_API_KEY": SECRET, "password": None}}
    out = redact(cfg)
    assert SECRET not in json.dumps(out)
    assert out["llm"] == {"api_key": "<redacted>", "api_key_env": "OPENAI_API_KEY", "max_new_tokens": 8,
                          "token_ids": [1]}
    assert out["hub"] == [{"hf_token": "<redacted>"}] and out["logger"]["password"] is None


def test_secrets_in_config_finds_keys_and_environment_values_without_echoing_them():
    env = {"OPENAI_API_KEY": SECRET, "HOME": "/root", "HF_TOKEN": "short"}
    found = secrets_in_config({"llm": {"api_key_env": "OPENAI_API_KEY", "note": f"key {SECRET}"},
                               "x": [{"token": "abc"}], "max_new_tokens": 3}, env)
    assert found == ["llm.note (holds the value of $OPENAI_API_KEY)", "x[0].token (a secret-looking key with a value)"]
    assert SECRET not in " ".join(found)


def _no_stage_run(tmp_path, *overrides):
    return compose(["+bench=smoke", "bench.stages=[]", f"paths.cache_dir={tmp_path / 'cache'}",
                    f"paths.runs_dir={tmp_path / 'runs'}", "logger=csv", *overrides])


@pytest.mark.parametrize("override", [f"+llm.api_key={SECRET}", "+llm.note=${oc.env:OPENAI_API_KEY}"])
def test_a_secret_in_the_config_is_refused_before_anything_is_written(tmp_path, monkeypatch, override):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with pytest.raises(ConfigError) as excinfo:
        execute(_no_stage_run(tmp_path, override))
    assert "environment variable" in str(excinfo.value) and SECRET not in str(excinfo.value)
    assert not (tmp_path / "runs").exists()


def test_api_key_in_the_environment_never_reaches_run_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    results_path = execute(_no_stage_run(tmp_path, "llm=openai"))
    results = json.loads(results_path.read_text())
    assert results["config"]["llm"]["api_key_env"] == "OPENAI_API_KEY"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert results_path in written and any(p.name == "metrics.jsonl" for p in written)
    for path in written:
        assert SECRET not in path.read_text(errors="replace"), path


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_every_torch_load_uses_weights_only_true_and_nothing_unpickles():
    sources = sorted((REPO / "spae").rglob("*.py")) + sorted((REPO / "experiments").rglob("*.py"))
    assert len(sources) > 20
    unsafe, calls = [], 0
    for path in sources:
        text = path.read_text()
        tree = ast.parse(text)
        for call in _torch_load_calls(tree):
            calls += 1
            flags = {k.arg: k.value for k in call.keywords}
            if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                unsafe.append(f"{path.relative_to(REPO)}:{call.lineno} torch.load without weights_only=True")
        for needle in ("pickle.load(", "pickle.loads(", "joblib.load(", "allow_pickle=True", "dill.load"):
            if needle in text:
                unsafe.append(f"{path.relative_to(REPO)}: {needle}")
    assert calls >= 1  # the check sees spae.io.torch_load_safe at least
    assert unsafe == []


@pytest.mark.parametrize("value", ["..", "../../etc", "a/b", "/abs", "", "x\\..\\y"])
def test_config_names_used_as_folders_cannot_escape(value):
    with pytest.raises(PathEscapeError) as excinfo:
        safe_name(value, "data.classification.name")
    assert "data.classification.name" in str(excinfo.value) and "rename it" in str(excinfo.value)


def test_run_folder_stays_inside_runs_dir(tmp_path):
    with pytest.raises(PathEscapeError, match="bench.name"):
        execute(_no_stage_run(tmp_path, "bench.name=../../outside"))
    assert not (tmp_path / "outside").exists() and not list(tmp_path.glob("**/outside*"))


def test_prepared_dataset_names_stay_inside_the_stage_folder(tmp_path):
    from spae.data.prepared import prepared_path

    assert prepared_path(tmp_path, "classification", "mine") == tmp_path / "classification" / "mine"
    with pytest.raises(PathEscapeError):
        prepared_path(tmp_path, "classification", "../../elsewhere")

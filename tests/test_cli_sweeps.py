"""Hydra's own sweep syntax reaches Hydra, and every run folder records the command that produced it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.run import ConfigError, check_group_choices, group_choices

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value,names", [
    ("spae", ["spae"]), ("spae,lqae", ["spae", "lqae"]), ("[spae,lqae]", ["spae", "lqae"]),
    ("choice(spae,lqae)", ["spae", "lqae"]), ("choice(spae, 'lqae')", ["spae", "lqae"]),
    ("glob(*)", []), ("glob([sp*],exclude=frozen)", []), ("null", []),
])
def test_group_choices_reads_hydra_sweep_syntax(value, names):
    assert group_choices(value) == names


def test_sweep_functions_pass_the_name_check_and_bad_names_inside_them_do_not():
    check_group_choices(["-m", "+bench=smoke", "method=choice(spae,lqae)", "llm=glob(*)"])
    with pytest.raises(ConfigError, match="Unknown method 'nope'"):
        check_group_choices(["-m", "+bench=smoke", "method=choice(spae,nope)"])


def _cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args, "hydra/launcher=basic",
                           f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}",
                           "logger=none"], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_multirun_with_choice_runs_each_job_and_records_its_overrides(tmp_path):
    """`-m method=choice(spae,lqae)` used to fail with "Unknown method"; now both jobs run and each run folder
    holds the job's exact overrides (command.json, command.sh)."""
    from _data_fixtures import tiny_fashion_mnist

    fm = tiny_fashion_mnist(tmp_path / "fm")
    out = _cli(tmp_path, "-m", "+bench=smoke", "method=choice(spae,lqae)", "~data.pretrain.easy_vqa",
               "~data.pretrain.openclipart", "~data.pretrain.tuxpaint",
               "~data.vqa", "~data.generation", f"data.pretrain.fashion_mnist.path={fm}",
               f"data.classification.path={fm}")
    assert out.returncode == 0, out.stderr[-3000:]
    records = sorted((tmp_path / "runs" / "smoke").glob("*/command.json"))
    assert len(records) == 2, out.stdout[-2000:]
    methods = sorted(o for r in records for o in json.loads(r.read_text())["overrides"] if o.startswith("method="))
    assert methods == ["method=lqae", "method=spae"]
    for record in records:
        results = json.loads((record.parent / "results.json").read_text())
        assert results["invocation"]["overrides"] == json.loads(record.read_text())["overrides"]
        assert "python -m experiments.run" in (record.parent / "command.sh").read_text()

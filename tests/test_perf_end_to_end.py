"""benchmarks/perf/end_to_end.py: cold + warm runs of the main command, timings and peak memory."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks.perf import end_to_end as e2e

FAKE_RUN = """
import json, sys, time
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
blob = bytearray(60 * 2**20)  # ~60 MB resident, so the peak-memory readings have something to see
for i in range(0, len(blob), 4096): blob[i] = 1
time.sleep(0.3)
(out / "results.json").write_text(json.dumps({"stage_seconds": {"data": 0.2, "train": 0.1},
                                              "stages_reused": ["data"], "wall_seconds": 0.35}))
print("log line"); print(out / "results.json")
"""


def test_measure_reads_stage_seconds_and_peak_memory(tmp_path):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    m = e2e.measure("cold", [sys.executable, str(script), str(tmp_path / "run")], dict(os.environ),
                    tmp_path / "logs", sample_s=0.05)
    assert m.returncode == 0 and m.stage_seconds == {"data": 0.2, "train": 0.1}
    assert m.stages_reused == ["data"] and m.run_wall_seconds == 0.35
    assert m.wall_seconds >= 0.3
    assert m.peak_rss_max_process_mb >= 60 and m.peak_rss_tree_sampled_mb >= 60
    table = e2e.side_by_side(m, m)
    assert "data" in table and "train" in table and "wall (process)" in table


def test_measure_reports_a_failing_run_with_its_stderr(tmp_path):
    cmd = [sys.executable, "-c", "import sys; sys.stderr.write('bad override xyz'); sys.exit(2)"]
    with pytest.raises(RuntimeError, match="bad override xyz"):
        e2e.measure("cold", cmd, dict(os.environ), tmp_path / "logs", sample_s=0.05)


def test_cold_run_refuses_a_used_cache(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "leftover").write_text("x")
    with pytest.raises(FileExistsError, match="fresh folders"):
        e2e.run_cold_and_warm("smoke", [], tmp_path)


def test_main_command_points_caches_at_the_given_folders(tmp_path):
    cmd = e2e.main_command("mini_imagenet", tmp_path / "c", tmp_path / "r", ["trainer.max_steps=5"])
    assert cmd[1:4] == ["-m", "experiments.run", "+bench=mini_imagenet"]
    assert f"paths.cache_dir={tmp_path / 'c'}" in cmd and f"paths.runs_dir={tmp_path / 'r'}" in cmd
    assert cmd[-1] == "trainer.max_steps=5"


@pytest.mark.slow
def test_smoke_bench_cold_then_warm(tmp_path, capsys):
    """The real main-command path on the tiny smoke bench (~45 s): warm reuses every stage."""
    result = e2e.main(["--bench", "smoke", "--workdir", str(tmp_path), "--sample-s", "0.2",
                       "--out", str(tmp_path / "e2e.json"), "experiment=debug",
                       "~data.pretrain.openclipart", "~data.pretrain.tuxpaint"])
    cold, warm = result["cold"], result["warm"]
    assert cold["stage_seconds"]["pretrain_data"] > 0 and cold["stages_reused"] == []
    assert warm["stages_reused"] == ["eval_data", "pretrain_data"] and warm["stage_seconds"]["pretrain_data"] == 0.0
    assert warm["wall_seconds"] < cold["wall_seconds"]
    assert json.loads(Path(tmp_path / "e2e.json").read_text())["table"] == result["table"]
    assert "pretrain_data" in capsys.readouterr().out


def test_executed_stages_lists_the_stages_from_the_cache_markers(tmp_path):
    import time

    stages = tmp_path / "stages"
    for stage, node, key, seconds in [("data", None, "k1", 3.0), ("train", "train[spae]", "k2", 200.0),
                                      ("fewshot_eval", "fewshot_eval", "k3", 250.0)]:
        (stages / stage / key).mkdir(parents=True)
        marker = {"stage": stage, "key": key, "seconds": seconds, **({"node": node} if node else {})}
        (stages / stage / key / "_SUCCESS.json").write_text(json.dumps(marker))
        time.sleep(0.02)
    found = e2e.executed_stages(tmp_path, since=0.0)
    assert [(d["stage"], d["seconds"]) for d in found] == [("data", 3.0), ("train[spae]", 200.0),
                                                           ("fewshot_eval", 250.0)]
    assert e2e.executed_stages(tmp_path, since=time.time() + 60) == []
    assert e2e.executed_stages(tmp_path / "missing", since=0.0) == []

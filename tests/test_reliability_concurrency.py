"""Concurrency (issue 8, part 3): runs started at once share the stage cache without doubling work or
corrupting it, and different configs never share a folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HELPER = Path(__file__).parent / "_reliability_helpers.py"


def _start(tmp_path, knob: int, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), str(tmp_path / "cache"), str(tmp_path / name),
                             str(tmp_path / "counter.txt"), str(knob)], stdout=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def test_same_stage_started_twice_at_once_runs_once_and_both_see_it(tmp_path):
    first, second = _start(tmp_path, 3, "run_a"), _start(tmp_path, 3, "run_b")
    a, b = _finish(first), _finish(second)
    executions = (tmp_path / "counter.txt").read_text().splitlines()
    assert len(executions) == 1, executions  # the lock made the later process reuse the result
    assert a["dir"] == b["dir"] and a["summary"] == b["summary"] == {"value": 30, "pid": a["summary"]["pid"]}
    assert sorted([a["cached"], b["cached"]]) == [False, True]
    stage_dir = Path(a["dir"])
    assert (stage_dir / "artefact.txt").read_text() == "knob=3"
    assert json.loads((stage_dir / "_SUCCESS.json").read_text())["summary"]["value"] == 30
    assert not list(stage_dir.parent.glob("**/.*.tmp"))  # no half-written files left behind


def test_different_configs_at_once_use_different_folders(tmp_path):
    first, second = _start(tmp_path, 1, "run_a"), _start(tmp_path, 2, "run_b")
    a, b = _finish(first), _finish(second)
    assert a["dir"] != b["dir"] and not a["cached"] and not b["cached"]
    assert (Path(a["dir"]) / "artefact.txt").read_text() == "knob=1"
    assert (Path(b["dir"]) / "artefact.txt").read_text() == "knob=2"
    assert len((tmp_path / "counter.txt").read_text().splitlines()) == 2


def test_a_stage_killed_mid_way_is_not_complete_and_a_rerun_finishes_it(tmp_path):
    """SIGKILL while the stage works: no _SUCCESS marker, the lock dies with the process, a rerun completes."""
    import signal
    import time

    victim = _start(tmp_path, 5, "run_a")
    counter = tmp_path / "counter.txt"
    deadline = time.monotonic() + 60
    while not (counter.exists() and counter.read_text()):  # the stage has started working
        assert time.monotonic() < deadline and victim.poll() is None
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    (stage_dir,) = [p for p in (tmp_path / "cache" / "stages" / "_rel_slow").iterdir() if p.is_dir()]
    assert not (stage_dir / "_SUCCESS.json").exists()
    rerun = _finish(_start(tmp_path, 5, "run_b"))
    assert rerun["dir"] == str(stage_dir) and not rerun["cached"] and rerun["summary"]["value"] == 50
    assert len(counter.read_text().splitlines()) == 2

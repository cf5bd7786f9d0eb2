"""The README's main command end to end: cold (empty cache and runs folders) then warm (same folders).

Run from the repo root::

    .venv/bin/python -m benchmarks.perf.end_to_end                       # the full main command
    .venv/bin/python -m benchmarks.perf.end_to_end -- trainer.max_steps=5 bench.episodes=4   # reduced

Everything after ``--`` is passed to ``python -m experiments.run +bench=<bench>`` as Hydra overrides. The
cache and runs folders are fresh folders under ``--workdir`` (default: a new temporary folder), passed as
``paths.cache_dir`` / ``paths.runs_dir`` overrides (and SPAE_CACHE_DIR / SPAE_RUNS_DIR), so the cold run
really starts from nothing and the warm run reuses exactly what the cold run left.

For each run it reports the process's wall time, its peak memory two ways, and each stage's seconds and
share of the wall time (from results.json's ``stage_seconds``: one entry per node of the run's DAG, the
compared models' trainings included as ``train[spae]``, ``frozen_train[frozen]``, ...; a reused stage takes
0 s). A last line per run lists every stage it executed, from the cache's ``_SUCCESS.json`` markers written
during it (a cross-check of the table, read from the cache).

* ``peak_rss_max_process``: the largest peak RSS of any single process of the tree (``wait4``'s
  ``ru_maxrss``: exact, but misses concurrent children adding up);
* ``peak_rss_tree_sampled``: the largest sum of RSS over the process and its descendants, sampled every
  ``--sample-s`` seconds with psutil (catches concurrency, may miss spikes shorter than a sample).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunMeasurement:
    label: str
    returncode: int
    wall_seconds: float
    peak_rss_max_process_mb: float
    peak_rss_tree_sampled_mb: float
    results_path: str | None = None
    run_wall_seconds: float | None = None  # what experiments.run measured around its stages
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stages_reused: list[str] = field(default_factory=list)
    executed: list[dict] = field(default_factory=list)  # every stage the run executed (cache markers)


def main_command(bench: str, cache_dir: Path, runs_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "experiments.run", f"+bench={bench}", f"paths.cache_dir={cache_dir}",
            f"paths.runs_dir={runs_dir}", *overrides]


class TreeRssSampler:
    """Largest sum of RSS over a process and all its descendants, sampled in a background thread."""

    def __init__(self, pid: int, interval_s: float):
        self.peak_bytes = 0
        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeRssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self._proc, *self._proc.children(recursive=True)]
            except psutil.Error:  # the root exited
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:  # a child exited between listing and reading
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self._interval)


def executed_stages(cache_dir: Path | None, since: float) -> list[dict]:
    """Stages whose success marker was written at or after ``since`` (epoch seconds), oldest first."""
    if cache_dir is None or not (cache_dir / "stages").is_dir():
        return []
    found = []
    for marker in (cache_dir / "stages").glob("*/*/_SUCCESS.json"):
        mtime = marker.stat().st_mtime
        if mtime >= since:
            done = json.loads(marker.read_text())
            name = done.get("node") or done.get("stage", marker.parent.parent.name)  # e.g. train[spae]
            found.append({"stage": name, "key": done.get("key"),
                          "seconds": round(float(done.get("seconds", 0.0)), 3), "finished": mtime})
    return sorted(found, key=lambda d: d["finished"])


def measure(label: str, cmd: list[str], env: dict[str, str], log_dir: Path, sample_s: float,
            cache_dir: Path | None = None) -> RunMeasurement:
    """Run ``cmd`` once; wall time, peak memory, and the run's results.json stage timings."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time() - 1.0  # marker mtimes have coarse resolution on some file systems
    out_path, err_path = log_dir / f"{label}.stdout", log_dir / f"{label}.stderr"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        with TreeRssSampler(proc.pid, sample_s) as sampler:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child tree only (not earlier runs)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = RunMeasurement(label, proc.returncode, round(wall, 3), round(usage.ru_maxrss / 1024, 1),
                       round(sampler.peak_bytes / 2**20, 1))
    if proc.returncode != 0:
        tail = err_path.read_text()[-3000:]
        raise RuntimeError(f"the {label} run failed (exit {proc.returncode}): {' '.join(cmd)}\n--- stderr tail ---\n"
                           f"{tail}\n(full logs in {log_dir})")
    lines = [line.strip() for line in out_path.read_text().splitlines() if line.strip()]
    results = Path(lines[-1]) if lines else None
    if results is None or not results.is_file():
        raise RuntimeError(f"the {label} run did not print the path of its results.json (stdout in {out_path})")
    payload = json.loads(results.read_text())
    m.results_path = str(results)
    m.run_wall_seconds = payload.get("wall_seconds")
    m.stage_seconds = dict(payload.get("stage_seconds", {}))
    m.stages_reused = list(payload.get("stages_reused", []))
    m.executed = executed_stages(cache_dir, started)
    return m


def side_by_side(cold: RunMeasurement, warm: RunMeasurement) -> str:
    """A table: every stage's seconds and share of the process wall time, cold next to warm."""
    def share(seconds: float, run: RunMeasurement) -> str:
        return f"{100 * seconds / run.wall_seconds:5.1f}%" if run.wall_seconds else "   -  "

    stages = list(dict.fromkeys([*cold.stage_seconds, *warm.stage_seconds]))
    width = max([16, *map(len, stages)])  # node names such as frozen_train[frozen]
    rows = [f"{'stage':<{width}} {'cold s':>9} {'share':>7} {'warm s':>9} {'share':>7}  warm reused?"]
    for name in stages:
        c, w = cold.stage_seconds.get(name, 0.0), warm.stage_seconds.get(name, 0.0)
        rows.append(f"{name:<{width}} {c:9.2f} {share(c, cold):>7} {w:9.2f} {share(w, warm):>7}  "
                    f"{'yes' if name in warm.stages_reused else 'no'}")
    c_other = cold.wall_seconds - sum(cold.stage_seconds.values())
    w_other = warm.wall_seconds - sum(warm.stage_seconds.values())
    rows.append(f"{'(startup+report)':<{width}} {c_other:9.2f} {share(c_other, cold):>7} {w_other:9.2f} "
                f"{share(w_other, warm):>7}")
    rows.append(f"{'wall (process)':<{width}} {cold.wall_seconds:9.2f} {'100.0%':>7} {warm.wall_seconds:9.2f} "
                f"{'100.0%':>7}")
    rows.append(f"{'peak RSS, max process (MB)':<28} cold {cold.peak_rss_max_process_mb:9.1f}   warm "
                f"{warm.peak_rss_max_process_mb:9.1f}")
    rows.append(f"{'peak RSS, tree sampled (MB)':<28} cold {cold.peak_rss_tree_sampled_mb:9.1f}   warm "
                f"{warm.peak_rss_tree_sampled_mb:9.1f}")
    for run in (cold, warm):
        rows.append(f"stages executed by the {run.label} run (from the cache markers): "
                    + (", ".join(f"{d['stage']} {d['seconds']:.1f}s ({100 * d['seconds'] / run.wall_seconds:.1f}%)"
                                 for d in run.executed) or "none"))
    return "\n".join(rows)


def run_cold_and_warm(bench: str, overrides: list[str], workdir: Path, sample_s: float = 0.5) -> dict:
    cache_dir, runs_dir = workdir / "cache", workdir / "runs"
    for d in (cache_dir, runs_dir):
        if d.exists() and any(d.iterdir()):
            raise FileExistsError(f"{d} is not empty: a cold run needs fresh folders; pass a new --workdir")
        d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPAE_CACHE_DIR": str(cache_dir), "SPAE_RUNS_DIR": str(runs_dir)}
    cmd = main_command(bench, cache_dir, runs_dir, overrides)
    cold = measure("cold", cmd, env, workdir / "logs", sample_s, cache_dir)
    warm = measure("warm", cmd, env, workdir / "logs", sample_s, cache_dir)
    return {"command": " ".join(cmd[1:]), "workdir": str(workdir), "cold": asdict(cold), "warm": asdict(warm),
            "table": side_by_side(cold, warm)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="mini_imagenet", help="the +bench= of the main command")
    parser.add_argument("--workdir", default=None, help="parent of the fresh cache/ and runs/ folders "
                        "(default: a new temporary folder)")
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval (seconds)")
    parser.add_argument("--out", default=None, help="also write the measurements as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, after `--`")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="spae_e2e_"))
    result = run_cold_and_warm(args.bench, list(args.overrides), workdir, args.sample_s)
    print(f"command: {result['command']}")
    print(f"workdir: {workdir}  (logs in {workdir / 'logs'})")
    print(result["table"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

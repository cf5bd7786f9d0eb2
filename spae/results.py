"""The results contract: every evaluation writes results.json and results.md in its run folder."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from spae.io import write_json_atomic, write_text_atomic


def git_sha(repo_dir: str | Path | None = None) -> str:
    """HEAD's sha, with '+dirty' when the work tree has uncommitted changes; 'unknown' outside git."""
    cwd = str(repo_dir or Path(__file__).resolve().parent.parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_world(data: dict) -> str:
    """What the evaluation classes are to the trained models: "novel-class" (held out of every training stage),
    "closed-world" (also trained on), or "" where the data setup does not say."""
    world = str(data.get("world") or "")
    classification = (data.get("classification") or {}).get("name")
    if world == "novel-class" and classification:
        held = (data.get("class_split") or {}).get("held_out")
        classes = data["classification"].get("classes")
        return f"novel-class ({classification}" + (f": {', '.join(classes)}" if classes and classes == held else "") + ")"
    return world


def provenance(cfg: dict) -> dict:
    """Which data, CLIP and LLM a run used, and whether each is a stand-in for the paper's."""
    data = cfg.get("data", {})
    clip = cfg.get("clip", {})
    llm = cfg.get("llm", {})
    return {
        "data": data.get("name"),
        "data_is_stand_in": bool(data.get("stand_in", False)),
        "data_world": data_world(data),
        "clip": clip.get("name"),
        "clip_is_stand_in": clip.get("kind") == "embedded",
        "llm": llm.get("name"),
        "llm_is_embedded": bool(llm.get("embedded", False)),
    }


def method_label(cfg: dict) -> str:
    """The method a run evaluates; a bench that compares several (bench.compare) names them all."""
    compare = (cfg.get("bench") or {}).get("compare")
    if compare:
        names = []
        for entry in compare:
            name = entry.get("method") if isinstance(entry, dict) else str(entry)
            if name not in names:
                names.append(name)
        return "+".join(names)
    return (cfg.get("method") or {}).get("name", "unknown")


def build_results(cfg: dict, config_hash: str, metrics: dict, stage_seconds: dict[str, float], code_version: str,
                  extra: dict | None = None) -> dict:
    """code_version: git_sha() taken when the run started (a long run must not report a later checkout)."""
    bench = cfg.get("bench", {})
    return {
        "bench": bench.get("name"),
        "task": bench.get("task"),
        "method": method_label(cfg),
        **provenance(cfg),
        "dataset": _dataset_for_task(cfg),
        "seed": cfg.get("seed"),
        "metrics": metrics,
        "stage_seconds": stage_seconds,
        "config_hash": config_hash,
        "git_sha": code_version,
        **(extra or {}),
        "config": cfg,
    }


def _dataset_for_task(cfg: dict) -> str | None:
    data = cfg.get("data", {})
    task = cfg.get("bench", {}).get("task", "")
    key = {"fewshot_classification": "classification", "captioning": "captioning", "vqa": "vqa",
           "generation": "generation"}.get(task)
    if key and isinstance(data.get(key), dict):
        return data[key].get("name")
    return None


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_results(run_dir: Path, results: dict, markdown: str) -> Path:
    path = Path(run_dir) / "results.json"
    write_json_atomic(path, results)
    header = _markdown_header(results)
    write_text_atomic(Path(run_dir) / "results.md", header + "\n\n" + markdown.strip() + "\n")
    return path


def _markdown_header(results: dict) -> str:
    notes = []
    if results.get("data_is_stand_in"):
        notes.append(f"stand-in data ({results.get('data')})")
    if results.get("data_world"):
        notes.append(f"evaluation classes: {results['data_world'].upper() if results['data_world'] == 'closed-world' else results['data_world']}")
    if results.get("clip_is_stand_in"):
        notes.append(f"stand-in CLIP ({results.get('clip')}, trained here)")
    if results.get("llm_is_embedded"):
        notes.append(f"embedded LLM ({results.get('llm')})")
    lines = [f"# {results.get('bench')}: {results.get('method')}",
             "",
             f"config {results.get('config_hash')}, git {results.get('git_sha')}, seed {results.get('seed')}"]
    if notes:
        lines.append("Not the paper's setup: " + "; ".join(notes) + ".")
    return "\n".join(lines)

"""Collect results.json files into paper-style tables and Figure-10-style plots.

    python -m experiments.report outputs/ablation                    # a runs folder (searched recursively)
    python -m experiments.report 'outputs/*/*/results.json' --out report --wandb offline

Writes into --out (default: <first folder given>/report):
- table1.md / table1.csv: SPAE Table 1, few-shot accuracy per cell for every (run, method), the paper's numbers
  below ours (benchmarks/paper_numbers.yaml, read by spae.fewshot.table);
- table4.md / table4.csv: SPAE Table 4-style ablation rows, one per run with reconstruction metrics: the
  ablation knobs, PSNR / SSIM / semantic relevance per layer prefix, code usage and few-shot accuracy;
- figure10.png: PSNR, SSIM and semantic relevance against the token count, one line per variant;
- report.md: all of the above in one page.
Every row says which data, CLIP and LLM it used and whether each stands in for the paper's.
With --wandb the same tables, line charts and the PNG go to one W&B run (offline by default).
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import itertools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable

from experiments.pipeline import select
from spae.errors import UserError

log = logging.getLogger("experiments.report")

# Ablation knobs: config path -> short column name. The variant label of a run names the knobs whose values
# differ among the runs collected together.
KNOBS = {
    "method.name": "method",
    "method.quantizer": "quantizer",
    "model.layers": "layers",
    "method.semantic_loss": "semantic loss",
    "method.semantic.weight": "sem. weight",
    "method.semantic.thresholds": "thresholds",
    "codebook.name": "codebook",
    "bench.llm_layers": "LLM layers",
    "trainer.max_steps": "steps",
}
READER_KNOBS = ("bench.llm_layers",)  # what the LLM reads: no effect on the tokenizer or its reconstruction
PAPER_TABLE4_NOTE = ("Paper numbers for Table 4 are not shown: the text of SPAE's Table 4 was not available to us "
                     "(not in /work/shared nor in the stored sources we could search), so none are quoted.")


class ReportError(UserError, ValueError):
    """Nothing to report, or unreadable input; the message says what to pass."""


# ------------------------------------------------------------------------------------------ loading
def find_results(patterns: Iterable[str]) -> list[Path]:
    """results.json files under each folder, or matched by each glob (a matched folder is searched too)."""
    found: list[Path] = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))]
        if not matches:
            raise ReportError(f"{pattern!r} matches no file or folder; pass a runs folder (e.g. outputs/ablation) "
                              "or a glob of results.json files")
        for match in matches:
            found.extend(sorted(match.rglob("results.json")) if match.is_dir() else [match])
    unique = list(dict.fromkeys(p.resolve() for p in found if p.name == "results.json"))
    if not unique:
        raise ReportError(f"no results.json under {', '.join(patterns)}; run a bench first "
                          "(python -m experiments.run +bench=<name>, or -m +sweep=<name> for an ablation)")
    return unique


def load_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ReportError(f"{path} is not a readable results.json ({err}); delete it or rerun its bench") from None
        if not isinstance(data, dict) or "metrics" not in data or "config" not in data:
            raise ReportError(f"{path} lacks `metrics` or `config`: not a results.json written by experiments.run")
        data["_path"] = str(path)
        runs.append(data)
    return runs


def knob(cfg: dict, path: str) -> str:
    """A knob's value as shown in tables (bench.llm_layers=null means the LLM reads all layers)."""
    value = select(cfg, path)
    if value is None and path == "bench.llm_layers" and isinstance(cfg.get("bench"), dict) and "llm_layers" in cfg["bench"]:
        return "all"
    return _show(value)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def varying_knobs(runs: list[dict]) -> list[str]:
    """Knob paths whose values differ among the runs (in KNOBS order)."""
    out = []
    for path in KNOBS:
        values = {json.dumps(select(r["config"], path), sort_keys=True) for r in runs}
        if len(values) > 1:
            out.append(path)
    return out


def variant_label(run: dict, knobs: list[str]) -> str:
    if not knobs:
        return "default"
    return ", ".join(f"{KNOBS[k]}={knob(run['config'], k)}" for k in knobs)


def method_name(run: dict, method_id: str) -> str:
    """A compared method's display name (results.json keys its metrics by stable id, e.g. spae-l2, and lists
    the display names in `method_labels`)."""
    return (run.get("method_labels") or {}).get(method_id, method_id)


def provenance(run: dict) -> dict:
    def tag(name: Any, stand_in: bool) -> str:
        return f"{name} (stand-in)" if stand_in else str(name)

    cfg = run.get("config") or {}
    data = run.get("dataset") or select(cfg, "data.classification.name") or run.get("data")
    llm = run.get("llm")
    return {"data": tag(data, bool(run.get("data_is_stand_in"))),
            "clip": tag(run.get("clip"), bool(run.get("clip_is_stand_in"))),
            "llm": f"{llm} (embedded)" if run.get("llm_is_embedded") else str(llm)}


# ------------------------------------------------------------------------------------------ Table 1
def table1_rows(runs: list[dict], knobs: list[str]) -> tuple[list[dict], list]:
    """One row per (run, compared method) with few-shot metrics, then the paper's rows; and the cells shown."""
    from spae.fewshot.table import Cell, load_paper_numbers, table1_grid

    grid = {c.key: c for c in table1_grid()}
    rows, present = [], set()
    for run in runs:
        fewshot = (run["metrics"] or {}).get("fewshot_eval") or {}
        for method_id, cells in fewshot.items():
            method = method_name(run, method_id)
            base = {"source": "ours", "variant": variant_label(run, knobs), **provenance(run),
                    "run": run.get("run_id") or Path(run["_path"]).parent.name}
            row = {**base, "method": method, "cells": {}}
            # the constrained choice (not the paper's protocol) gets its own, labelled row when recorded
            choice = {**base, "method": f"{method} [constrained choice, NOT the paper's protocol]", "cells": {}}
            for key, m in cells.items():
                if key == "average" or not isinstance(m, dict) or not m.get("episodes"):
                    continue
                row["cells"][key] = _cell_percent(m)
                present.add(key)
                if (m.get("constrained_choice") or {}).get("episodes"):
                    choice["cells"][key] = _cell_percent(m["constrained_choice"])
            rows += [row, choice] if choice["cells"] else [row]
    paper = load_paper_numbers()
    for method, numbers in paper["methods"].items():
        cells = {k: {"accuracy": v["value"], "stated": v["repeats_stated"]} for k, v in numbers.items()
                 if k in present}
        if cells:
            rows.append({"source": "paper", "method": method, "variant": "", "data": "mini-ImageNet",
                         "clip": "-", "llm": "PaLM 2" if "PaLM" in method else "-", "run": paper["source"],
                         "cells": cells})
    order = [c for c in table1_grid() if c.key in present] + sorted(
        (Cell.from_key(k) for k in present if k not in grid), key=lambda c: c.key)
    return rows, order


def _cell_percent(m: dict) -> dict:
    return {"accuracy": 100 * m["accuracy"], "ci_low": 100 * m["ci95_low"], "ci_high": 100 * m["ci95_high"],
            "n": m["episodes"]}


def table1_markdown(rows: list[dict], cells: list) -> str:
    head = ["method", "variant", "data", "CLIP", "LLM"] + [f"{c.n_way}-way {c.header}" for c in cells] + ["avg"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        shown, accs = [], []
        for c in cells:
            v = r["cells"].get(c.key)
            if v is None:
                shown.append("-")
            elif r["source"] == "paper":
                shown.append(f"{v['accuracy']:.1f}" + ("" if v["stated"] else "†"))
            else:
                shown.append(f"{v['accuracy']:.1f} [{v['ci_low']:.1f}, {v['ci_high']:.1f}] (n={v['n']})")
            if v is not None:
                accs.append(v["accuracy"])
        avg = f"{math.fsum(accs) / len(accs):.1f}" if accs and r["source"] == "ours" else "-"
        name = f"{r['method']} ({r['source']})"
        lines.append("| " + " | ".join([name, r["variant"] or "-", r["data"], r["clip"], r["llm"], *shown, avg]) + " |")
    return "\n".join(lines) + "\n"


def table1_csv(rows: list[dict], cells: list) -> str:
    head = ["source", "method", "variant", "data", "clip", "llm", "run"]
    for c in cells:
        head += [f"{c.key}_accuracy", f"{c.key}_ci95_low", f"{c.key}_ci95_high", f"{c.key}_episodes"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(head)
    for r in rows:
        line = [r["source"], r["method"], r["variant"], r["data"], r["clip"], r["llm"], r["run"]]
        for c in cells:
            v = r["cells"].get(c.key) or {}
            line += [_num(v.get("accuracy")), _num(v.get("ci_low")), _num(v.get("ci_high")), v.get("n", "")]
        writer.writerow(line)
    return out.getvalue()


def _num(value: Any, digits: int = 4) -> Any:
    return "" if value is None else round(float(value), digits)


# ------------------------------------------------------------------------------------------ Table 4
def cumulative_tokens(cfg: dict) -> list[int]:
    """Tokens in each prefix of layers, from the run's model and method config (as the tokenizer builds it)."""
    from spae.pyramid import Pyramid

    model, method = cfg.get("model") or {}, cfg.get("method") or {}
    pyramid = (Pyramid.full(int(model["latent_size"])) if method.get("single_layer")
               else Pyramid([int(s) for s in model["layers"]], int(model["latent_size"])))
    return pyramid.cumulative_tokens


def table4_rows(runs: list[dict], knobs: list[str]) -> list[dict]:
    """One row per (run, reconstruction dataset): knobs, metrics per layer prefix, few-shot accuracy."""
    rows = []
    for run in runs:
        recon = (run["metrics"] or {}).get("recon_eval") or {}
        fewshot = (run["metrics"] or {}).get("fewshot_eval") or {}
        for (dataset, m), (reader, cells) in itertools.product(recon.items(), list(fewshot.items()) or [("-", {})]):
            reader = method_name(run, reader)
            tokens = cumulative_tokens(run["config"])
            L = len(tokens)
            per_layer = {key: [m.get(f"{key}_l{l}") for l in range(1, L + 1)]
                         for key in ("psnr", "ssim", "relevance", "codes_used")}
            row = {"variant": variant_label(run, knobs),
                   "tokenizer": variant_label(run, [k for k in knobs if k not in READER_KNOBS]),
                   **{KNOBS[k]: knob(run["config"], k) for k in KNOBS},
                   **provenance(run), "eval set": dataset, "images": m.get("images"), "tokens": tokens,
                   "per_layer": per_layer, "codes_used": m.get("codes_used"), "code_usage": m.get("code_usage"),
                   "run": run.get("run_id") or Path(run["_path"]).parent.name, "LLM reads": reader, "fewshot": {}}
            for key, v in cells.items():
                if key != "average" and isinstance(v, dict) and v.get("episodes"):
                    row["fewshot"][key] = {"accuracy": 100 * v["accuracy"], "n": v["episodes"]}
            rows.append(row)
    return rows


def _at(values: list, index: int) -> Any:
    return values[index] if -len(values) <= index < len(values) else None


def table4_markdown(rows: list[dict], knobs: list[str]) -> str:
    shown_knobs = [KNOBS[k] for k in knobs] or ["method"]
    fewshot_cols = sorted({k for r in rows for k in r["fewshot"]})
    head = (shown_knobs + ["tokens (all)", "PSNR l1..L", "SSIM l1..L", "relevance l1..L", "PSNR (all)",
                           "SSIM (all)", "rel. l1", "rel. l2", "codes used"]
            + ["LLM reads"] + [f"acc % {_cell_header(c)}" for c in fewshot_cols] + ["data", "CLIP", "LLM"])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        pl = r["per_layer"]
        cells = [r[k] for k in shown_knobs] + [
            str(r["tokens"][-1]), _series(pl["psnr"], 1), _series(pl["ssim"], 3), _series(pl["relevance"], 3),
            _fmt(_at(pl["psnr"], -1), 2), _fmt(_at(pl["ssim"], -1), 4), _fmt(_at(pl["relevance"], 0), 3),
            _fmt(_at(pl["relevance"], 1), 3), str(r["codes_used"])]
        cells += [r["LLM reads"]]
        cells += [(f"{r['fewshot'][c]['accuracy']:.1f} (n={r['fewshot'][c]['n']})" if c in r["fewshot"] else "-")
                  for c in fewshot_cols]
        cells += [r["data"], r["clip"], r["llm"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell_header(key: str) -> str:
    from spae.fewshot.table import Cell

    try:
        cell = Cell.from_key(key)
    except ValueError:
        return key
    return f"{cell.n_way}-way {cell.header}"


def _series(values: list, digits: int) -> str:
    return " / ".join("-" if v is None else f"{v:.{digits}f}" for v in values)


def _fmt(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table4_csv(rows: list[dict]) -> str:
    L = max((len(r["tokens"]) for r in rows), default=0)
    fewshot_cols = sorted({k for r in rows for k in r["fewshot"]})
    head = (["variant", *KNOBS.values(), "eval set", "images", "data", "clip", "llm", "run", "codes_used", "code_usage",
             "llm_reads"]
            + [f"{key}_l{l}" for l in range(1, L + 1) for key in ("tokens", "psnr", "ssim", "relevance")]
            + [f"accuracy {c}" for c in fewshot_cols])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(head)
    for r in rows:
        line = [r["variant"], *(r[k] for k in KNOBS.values()), r["eval set"], r["images"], r["data"], r["clip"],
                r["llm"], r["run"], r["codes_used"], r["code_usage"], r["LLM reads"]]
        for l in range(L):
            line += [_at(r["tokens"], l) if l < len(r["tokens"]) else ""]
            line += [_num(r["per_layer"][k][l]) if l < len(r["tokens"]) else "" for k in ("psnr", "ssim", "relevance")]
        line += [_num(r["fewshot"][c]["accuracy"], 2) if c in r["fewshot"] else "" for c in fewshot_cols]
        writer.writerow(line)
    return out.getvalue()


def figure10_series(rows: list[dict]) -> list[dict]:
    """One line per distinct tokenizer (runs that differ only in what the LLM reads share their recon metrics)."""
    series, seen = [], set()
    for r in rows:
        key = json.dumps([r["tokens"], r["per_layer"], r["eval set"]], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        label = r["tokenizer"] if len({x["eval set"] for x in rows}) == 1 else f"{r['tokenizer']} [{r['eval set']}]"
        series.append({"label": label, "tokens": r["tokens"], **{k: r["per_layer"][k] for k in ("psnr", "ssim", "relevance")}})
    return series


# ------------------------------------------------------------------------------------------ W&B
def log_to_wandb(mode: str, project: str, out_dir: Path, group: str | None, table1: tuple, table4: list[dict],
                 series: list[dict], figure: Path | None) -> str:
    """One W&B run (job_type=report): both tables, a line chart per Figure-10 panel, and the PNG."""
    import wandb

    from spae.plots import FIGURE10_PANELS

    run = wandb.init(project=project, group=group, job_type="report", dir=str(out_dir), mode=mode,
                     name=f"report-{group or 'runs'}", settings=wandb.Settings(silent=True, console="off"))
    try:
        for name, text in (("table1", table1_csv(*table1)), ("table4", table4_csv(table4))):
            rows = list(csv.reader(io.StringIO(text)))
            if len(rows) > 1:
                run.log({name: wandb.Table(columns=rows[0], data=rows[1:])})
        for key, label in FIGURE10_PANELS.items():
            usable = [s for s in series if any(v is not None for v in s[key])]
            if usable:
                xs = [[t for t, v in zip(s["tokens"], s[key]) if v is not None] for s in usable]
                ys = [[v for v in s[key] if v is not None] for s in usable]
                run.log({f"figure10/{key}": wandb.plot.line_series(xs=xs, ys=ys, keys=[s["label"] for s in usable],
                                                                     title=f"{label} vs tokens", xname="tokens")})
        if figure is not None:
            run.log({"figure10/png": wandb.Image(str(figure))})
        return run.dir
    finally:
        run.finish()


# ------------------------------------------------------------------------------------------ main
def build_report(patterns: list[str], out_dir: Path | None = None, wandb_mode: str | None = None,
                 wandb_project: str = "spae") -> dict[str, Path]:
    """Collect, write the tables and plots; returns {name: path} of what was written."""
    from spae.io import write_text_atomic

    runs = load_runs(find_results(patterns))
    out_dir = Path(out_dir) if out_dir else _default_out(patterns)
    knobs = varying_knobs(runs)
    written: dict[str, Path] = {}
    t1_rows, cells = table1_rows(runs, knobs)
    t4_rows = table4_rows(runs, knobs)
    sections = [f"# Report: {len(runs)} runs", "",
                "Variants differ in: " + (", ".join(KNOBS[k] for k in knobs) or "nothing (one configuration)") + ".",
                "(stand-in) marks data/CLIP that stand in for the paper's and an embedded LLM instead of PaLM 2.", ""]
    has_ours = any(r["source"] == "ours" for r in t1_rows)
    if has_ours:
        md = table1_markdown(t1_rows, cells)
        written["table1.md"] = _write(out_dir / "table1.md", md, write_text_atomic)
        written["table1.csv"] = _write(out_dir / "table1.csv", table1_csv(t1_rows, cells), write_text_atomic)
        from spae.fewshot.table import load_paper_numbers

        sections += ["## Table 1: few-shot classification (accuracy %, 95% Wilson interval, episodes)", "", md,
                     f"Paper: {load_paper_numbers()['source']}. † repeats not stated in the quote. "
                     "'-': not run here, or not available from the paper.", ""]
    figure = None
    if t4_rows:
        md = table4_markdown(t4_rows, knobs)
        written["table4.md"] = _write(out_dir / "table4.md", md + "\n" + PAPER_TABLE4_NOTE + "\n", write_text_atomic)
        written["table4.csv"] = _write(out_dir / "table4.csv", table4_csv(t4_rows), write_text_atomic)
        sections += ["## Table 4: ablations (per layer prefix: 1..L)", "", md, PAPER_TABLE4_NOTE, ""]
        series = figure10_series(t4_rows)
        figure = _figure(series, out_dir / "figure10.png")
        if figure is not None:
            written["figure10.png"] = figure
            sections += ["## Figure 10: reconstruction and semantic relevance vs tokens", "",
                         "![figure 10](figure10.png)", ""]
    if not has_ours and not t4_rows:
        raise ReportError("the results.json files found hold neither few-shot (fewshot_eval) nor reconstruction "
                          "(recon_eval) metrics; pass runs of +bench=mini_imagenet, reconstruction or ablation")
    sections += ["## Runs", ""] + [f"- {r.get('run_id')}: {r['_path']}" for r in runs]
    written["report.md"] = _write(out_dir / "report.md", "\n".join(sections) + "\n", write_text_atomic)
    if wandb_mode:
        groups = {select(r["config"], "logger.group") for r in runs}
        group = groups.pop() if len(groups) == 1 else None
        written["wandb"] = Path(log_to_wandb(wandb_mode, wandb_project, out_dir, group, (t1_rows, cells), t4_rows,
                                             figure10_series(t4_rows) if t4_rows else [], figure))
    return written


def _figure(series: list[dict], path: Path) -> Path | None:
    from spae.plots import figure10

    try:
        return figure10(series, path, title="Reconstruction and semantic relevance per token count")
    except ImportError:  # matplotlib is a pinned dependency; a trimmed install still gets its tables
        log.warning("matplotlib is not installed: figure10.png not written (pip install matplotlib)")
        return None


def _write(path: Path, text: str, writer) -> Path:
    writer(path, text)
    return path


def _default_out(patterns: list[str]) -> Path:
    """<first folder given>/report; for a glob, the folder before its first wildcard."""
    first = Path(patterns[0]).expanduser()
    if not first.is_dir():
        parts = []
        for part in first.parts:
            if glob.has_magic(part):
                break
            parts.append(part)
        first = Path(*parts) if parts else Path(".")
        first = first if first.is_dir() else first.parent
    return first / "report"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="runs folders (searched for results.json) or globs of results.json")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first folder>/report)")
    parser.add_argument("--wandb", choices=("offline", "online"), default=None,
                        help="also log tables and charts to one W&B run (offline: `wandb sync <dir>` uploads later)")
    parser.add_argument("--wandb-project", default="spae")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = build_report(args.runs, args.out, args.wandb, args.wandb_project)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

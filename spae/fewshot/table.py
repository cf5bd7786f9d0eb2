"""SPAE Table 1 (few-shot mini-ImageNet): the evaluation grid, its cells, the paper's numbers and a Markdown table
of ours beside the paper's.

Pure functions: evaluation itself is spae.fewshot.engine; the few-shot stage and the report call these.
Per-cell results are dicts from spae.fewshot.scoring.accuracy_summary: accuracy (0..1), ci_low, ci_high, n.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The paper's quoted numbers are data, kept beside the benchmarks they belong to (benchmarks/paper_numbers.yaml,
# shipped as that package's data): read by path, so the library imports no benchmarks code.
PAPER_NUMBERS = Path(__file__).resolve().parents[2] / "benchmarks" / "paper_numbers.yaml"


@dataclass(frozen=True)
class Cell:
    n_way: int
    shots: int
    repeats: int
    task_induction: bool
    episodes: int | None = field(default=None, compare=False)  # per-cell count (None: the bench's); not in key

    @classmethod
    def from_key(cls, key: str) -> "Cell":
        """The cell a key names (the inverse of `key`); ValueError for a key of another form."""
        ways, ti, shots, reps = key.split("-")
        return cls(int(ways.removesuffix("way")), int(shots.removesuffix("shot")), int(reps.removesuffix("rep")),
                   ti == "ti")

    @property
    def key(self) -> str:
        return f"{self.n_way}way-{'ti' if self.task_induction else 'noti'}-{self.shots}shot-{self.repeats}rep"

    @property
    def header(self) -> str:
        induction = "TI" if self.task_induction else "no TI"
        return f"{induction}, {self.shots} shot" + (f", {self.repeats} rep" if self.repeats else "")


# SPAE Table 1 / Frozen Table 2 columns: (task induction, inner shots, repeats), for 2-way and 5-way.
TABLE1_COLUMNS = [(False, 1, 0), (True, 1, 0), (True, 3, 0), (True, 5, 0), (True, 1, 1), (True, 1, 3)]
TABLE1_WAYS = (2, 5)


def table1_grid(ways=TABLE1_WAYS) -> list[Cell]:
    return [Cell(n_way, shots, repeats, induction) for n_way in ways for induction, shots, repeats in TABLE1_COLUMNS]


def load_paper_numbers(path: str | Path = PAPER_NUMBERS, benchmark: str = "mini_imagenet_fewshot") -> dict:
    """{method: {cell_key: {"value": percent, "repeats_stated": bool}}} plus the source line."""
    data = yaml.safe_load(Path(path).read_text())[benchmark]
    methods: dict[str, dict] = {}
    for e in data["entries"]:
        cell = Cell(e["n_way"], e["shots"], e["repeats"], e["task_induction"])
        methods.setdefault(e["method"], {})[cell.key] = {"value": float(e["value"]),
                                                        "repeats_stated": bool(e.get("repeats_stated", True))}
    return {"source": data["source"], "methods": methods}


def table1_markdown(ours: dict[str, dict[str, dict]], paper: dict | None = None, ways=TABLE1_WAYS,
                    metric: str = "accuracy %", with_paper: bool = True) -> str:
    """One Markdown table per N-way: our methods (accuracy % [95% CI], n) then the paper's rows.

    ours: {method label: {cell key: accuracy_summary dict}}. Missing cells print '-'. The average column
    is the mean over the cells present, with the count when not all six are there. with_paper=False leaves
    the paper's rows out (for metrics that are not the paper's protocol); `metric` names what is shown.
    """
    paper = paper if paper is not None else load_paper_numbers()
    if not with_paper:
        paper = {"source": paper["source"], "methods": {}}
    blocks, footnote = [], False
    for n_way in ways:
        cells = table1_grid([n_way])
        head = "| method | " + " | ".join(c.header for c in cells) + " | avg |"
        rule = "|---" * (len(cells) + 2) + "|"
        rows = []
        for method, results in ours.items():
            values = [results.get(c.key) for c in cells]
            shown = [_ours_cell(v) for v in values]
            accs = [100 * v["accuracy"] for v in values if v and v.get("n")]
            rows.append(f"| {method} (ours) | " + " | ".join(shown) + f" | {_avg(accs, len(cells))} |")
        for method, numbers in paper["methods"].items():
            shown = []
            for c in cells:
                entry = numbers.get(c.key)
                if entry is None:
                    shown.append("-")
                    continue
                mark = "" if entry["repeats_stated"] else "†"
                footnote = footnote or bool(mark)
                shown.append(f"{entry['value']:.1f}{mark}")
            rows.append(f"| {method} (paper) | " + " | ".join(shown) + " | - |")
        blocks.append(f"**{n_way}-way** ({metric}, ours with 95% Wilson interval and number of episodes)\n\n"
                      + "\n".join([head, rule, *rows]))
    notes = ([f"Paper numbers: {paper['source']}; '-' = not available to us (not run, or not quoted)."] if with_paper
             else ["'-' = not run (or not available for that method)."])
    if footnote:
        notes.append("† quoted as '1 inner shot, with task induction'; the number of repeats is not stated in the quote.")
    return "\n\n".join(blocks) + "\n\n" + "\n".join(notes) + "\n"


def _ours_cell(summary: dict | None) -> str:
    if not summary or not summary.get("n"):
        return "-"
    return (f"{100 * summary['accuracy']:.1f} [{100 * summary['ci_low']:.1f}, {100 * summary['ci_high']:.1f}] "
            f"(n={summary['n']})")


def _avg(values: list[float], total: int) -> str:
    if not values:
        return "-"
    mean = math.fsum(values) / len(values)
    return f"{mean:.1f}" if len(values) == total else f"{mean:.1f} ({len(values)}/{total} cells)"


def formats_markdown(per_format: dict[str, dict[str, dict]], cells: list[Cell] | None = None) -> str:
    """Prompt-format comparison: one row per template name, accuracy % [95% CI] per cell."""
    if cells is None:
        present = {k for results in per_format.values() for k in results}
        cells = [c for c in table1_grid() if c.key in present]
    head = "| prompt format | " + " | ".join(f"{c.n_way}-way {c.header}" for c in cells) + " |"
    rule = "|---" * (len(cells) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(_ours_cell(results.get(c.key)) for c in cells) + " |"
            for name, results in per_format.items()]
    return "\n".join([head, rule, *rows]) + "\n"

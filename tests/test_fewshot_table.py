"""Table 1 grid, the paper's numbers file and the Markdown tables."""
from __future__ import annotations

import pytest

from spae.fewshot.table import Cell, formats_markdown, load_paper_numbers, table1_grid, table1_markdown


def test_grid_is_spae_table1():
    grid = table1_grid()
    assert len(grid) == 12 and len({c.key for c in grid}) == 12
    assert [(c.task_induction, c.shots, c.repeats) for c in grid[:6]] == [
        (False, 1, 0), (True, 1, 0), (True, 3, 0), (True, 5, 0), (True, 1, 1), (True, 1, 3)]
    assert {c.n_way for c in grid} == {2, 5}


def test_paper_numbers_as_quoted():
    paper = load_paper_numbers()
    spae = paper["methods"]["SPAE_PaLM"]
    assert spae[Cell(2, 1, 0, False).key]["value"] == 32.2 and spae[Cell(5, 1, 0, True).key]["value"] == 67.0
    assert paper["methods"]["Frozen"][Cell(5, 1, 0, False).key]["value"] == 0.9
    assert paper["methods"]["LQAE"][Cell(2, 1, 0, True).key]["value"] == 68.7
    assert all(len(cells) == 4 for cells in paper["methods"].values())  # nothing beyond the quote
    assert "De-Diffusion" in paper["source"]


def test_markdown_has_ours_beside_paper():
    ours = {"SPAE (gemma3)": {Cell(2, 1, 0, True).key: {"accuracy": 0.625, "ci_low": 0.5, "ci_high": 0.73, "n": 40}},
            "LQAE (gemma3)": {}}
    text = table1_markdown(ours)
    assert "| SPAE (gemma3) (ours) | - | 62.5 [50.0, 73.0] (n=40) |" in text
    assert "| SPAE_PaLM (paper) | 32.2 | 85.4† |" in text and "| Frozen (paper) | 0.9 | 33.8† |" in text
    assert "62.5 (1/6 cells)" in text and "repeats is not stated" in text
    fmt = formats_markdown({"frozen": ours["SPAE (gemma3)"], "qa": {}})
    assert "| frozen | 62.5 [50.0, 73.0] (n=40) |" in fmt and "| qa | - |" in fmt


def test_grid_end_to_end_with_dummy(tmp_path):
    from spae.fewshot.engine import evaluate_cells
    from spae.fewshot.prompts import PromptTemplate
    from spae.llm.dummy import DummyBackend

    names = ["cat", "dog", "ship", "car", "bird", "frog"]
    labels = [i % 6 for i in range(60)]
    template = PromptTemplate.from_yaml(__import__("pathlib").Path(__file__).parents[1] / "conf/prompt/frozen.yaml")
    cells = table1_grid()
    summaries = evaluate_cells(DummyBackend(), labels, cells, lambda i: [f"f{labels[i]}", f"n{i}"], template,
                               n_episodes=5, seed=0, out_dir=tmp_path, label_names=names)
    assert set(summaries) == {c.key for c in cells}
    assert all(s["n"] == 5 and s["accuracy"] == 1.0 for s in summaries.values())
    assert len(list(tmp_path.glob("*.jsonl"))) == 12
    text = table1_markdown({"dummy": summaries})
    assert "| dummy (ours) | 100.0 [56.6, 100.0] (n=5) |" in text and "| 100.0 |" in text


def test_a_cell_is_read_back_from_its_key():
    for cell in table1_grid():
        assert Cell.from_key(cell.key) == cell
    with pytest.raises(ValueError):
        Cell.from_key("5-way, 1 shot")

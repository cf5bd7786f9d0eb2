"""Code shape the developers' guide asks for: no function over 60 lines in spae/ or experiments/, and the
tokenizer class (networks, encode/decode, word maps, its Lightning step) under 250 lines: its losses live
in spae/objective.py. And the module boundaries: no stage module imports another, experiments/ and spae/ import
nothing from benchmarks/, the library nothing from experiments/."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_TOKENIZER_CLASS_LINES = 250


def _length(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1  # from the `def` line (decorators not counted) to the last line


def long_functions(package: str, root: Path = REPO) -> list[str]:
    """'path:line name (N lines)' for each function or method of `package` longer than the limit."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _length(node) > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({_length(node)} lines)")
    return found


def test_the_checker_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions("pkg", root=tmp_path) == [f"pkg/m.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]


def test_no_function_in_spae_is_over_60_lines():
    assert long_functions("spae") == []


def test_no_function_in_experiments_is_over_60_lines():
    assert long_functions("experiments") == []


def test_the_tokenizer_class_is_under_250_lines():
    tree = ast.parse((REPO / "spae" / "tokenizer.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SPAETokenizer"]
    assert _length(cls) < MAX_TOKENIZER_CLASS_LINES


# ------------------------------------------------------------------------------------------ module boundaries
def imported_names(path: Path, root: Path = REPO) -> set[str]:
    """Every dotted name a module imports: `import a.b` gives a.b; `from a import b` gives a and a.b; relative
    imports are resolved against the module's own package."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def boundary_violations(folder: str, forbidden: str, root: Path = REPO, skip: tuple[str, ...] = ()) -> list[str]:
    """'path: name' for each import of `forbidden` (a package, or a module and what is below it) by a module
    under `folder`."""
    found = []
    for path in sorted((root / folder).rglob("*.py")):
        if path.name in skip:
            continue
        found += [f"{path.relative_to(root)}: {name}" for name in sorted(imported_names(path, root))
                  if _within(name, forbidden)]
    return found


def test_the_boundary_checker_finds_absolute_and_relative_imports(tmp_path):
    stages = tmp_path / "experiments" / "stages"
    stages.mkdir(parents=True)
    (stages / "__init__.py").write_text("from experiments.stages import a, b  # registers them\n")
    (stages / "a.py").write_text("from experiments.pipeline import stage\n")
    (stages / "b.py").write_text("from .a import helper\nimport experiments.stages.a as other\n")
    (tmp_path / "experiments" / "report.py").write_text("def f():\n    from benchmarks.fewshot import Cell\n")
    assert boundary_violations("experiments/stages", "experiments.stages", tmp_path, skip=("__init__.py",)) == [
        "experiments/stages/b.py: experiments.stages.a", "experiments/stages/b.py: experiments.stages.a.helper"]
    assert boundary_violations("experiments", "benchmarks", tmp_path) == [
        "experiments/report.py: benchmarks.fewshot", "experiments/report.py: benchmarks.fewshot.Cell"]


def test_no_stage_module_imports_another_stage_module():
    """Shared pieces live in experiments/ (incontext, clip_relevance) or the library, never in a stage."""
    assert boundary_violations("experiments/stages", "experiments.stages", skip=("__init__.py",)) == []


def test_experiments_and_the_library_import_nothing_from_benchmarks():
    assert boundary_violations("experiments", "benchmarks") == []
    assert boundary_violations("spae", "benchmarks") == []
    assert boundary_violations("spae", "experiments") == []

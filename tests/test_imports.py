"Imports point down: the package's module graph (every import, function-level ones included) has no cycle."
import ast
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

PACKAGE = ROOT / "derma_jepa"


def module_imports(path: Path) -> set[str]:
    "The `derma_jepa` modules a module imports anywhere in its source (top level, functions, methods)."
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split(".")[0])
            elif node.level == 1: out |= {a.name for a in node.names}
            elif node.module == "derma_jepa": out |= {a.name for a in node.names}
            elif node.module and node.module.startswith("derma_jepa."): out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("derma_jepa.")}
    return out


def graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    return {m: module_imports(p) & set(mods) - {m} for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str]:
    "One cycle of `g` as a list of modules (first repeated last), or [] when there is none."
    state, stack = {}, []
    def visit(n):
        state[n] = "open"; stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == "open": return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)): return c
        state[n] = "done"; stack.pop(); return []
    for n in sorted(g):
        if n not in state and (c := visit(n)): return c
    return []


def test_cycle_finder_finds_a_function_level_cycle(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from derma_jepa.a import y\n")
    g = {p.stem: module_imports(p) for p in tmp_path.glob("*.py")}
    assert find_cycle(g) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_package_imports_point_down():
    cycle = find_cycle(graph())
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_backbones_do_not_import_pretraining():
    assert "pretrain" not in module_imports(PACKAGE / "backbones.py")
    assert module_imports(PACKAGE / "registry.py") == set()


def test_one_definition_of_each_list():
    "METRICS, OBJECTIVES, ConfigError and Interrupted are each assigned or defined in exactly one module."
    for name in ("METRICS", "OBJECTIVES", "ConfigError", "Interrupted"):
        where = [p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_") and any(
            (isinstance(n, ast.Assign) and any(getattr(t, "id", None) == name for t in n.targets)) or
            (isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == name) or
            (isinstance(n, ast.ClassDef) and n.name == name) for n in ast.parse(p.read_text()).body)]
        assert len(where) == 1, (name, where)


def test_executors_import_config_error_from_where_it_is_defined():
    assert "experiment" not in module_imports(PACKAGE / "executors.py")


def defining_notebooks() -> dict[str, str]:
    "Module -> the numbered notebook that exports it (the package's own reader of `#| default_exp`)."
    from derma_jepa.notebooks import defining_notebooks as owners
    return {m: p.stem for m, p in owners(ROOT / "nbs").items()}


def notebook_imports(path: Path, tmp: Path) -> set[str]:
    code = "\n".join(line for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"
                     for line in c.source.splitlines() if not line.lstrip().startswith(("%", "!")))
    (tmp / "code.py").write_text(code)
    return module_imports(tmp / "code.py")


def test_reading_order_is_import_order(tmp_path):
    "No notebook, and no module, imports the module of a notebook that comes later in the reading order."
    owner = defining_notebooks()
    assert {"data", "safety", "registry", "backbones", "pretrain", "plan", "exp009"} <= set(owner)
    bad = []
    for p in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        bad += [f"notebook {p.stem} imports {m} ({owner[m]})" for m in notebook_imports(p, tmp_path) if owner.get(m, "") > p.stem]
    for m, nb in owner.items():
        bad += [f"module {m} ({nb}) imports {x} ({owner[x]})" for x in module_imports(PACKAGE / f"{m}.py") if owner.get(x, "") > nb]
    assert not bad, "\n".join(bad)


def test_every_module_stays_under_500_lines():
    long = {p.name: n for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")
            and (n := len(p.read_text().splitlines())) >= 500}
    assert not long, f"modules of 500 lines or more (split them by concept): {long}"


def test_the_paper_notebook_reads_runs_not_the_pipeline(tmp_path):
    "nbs/paper.ipynb renders run directories: it imports none of the modules that make runs (so their edits leave it current)."
    pipeline = {"experiment", "plan", "executors", "backbones", "embed", "pairs", "split", "baselines", "predictors"}
    assert not notebook_imports(ROOT / "nbs" / "paper.ipynb", tmp_path) & pipeline
    render = module_imports(PACKAGE / "render.py") | module_imports(PACKAGE / "report.py") | module_imports(PACKAGE / "text.py")
    assert not render & pipeline, render & pipeline


def test_exp009_tables_read_frames_not_the_pipeline():
    "25_exp009_report renders EXP-009 from its frames: it imports no module that makes runs or encoders, nor exp009 itself."
    pipeline = {"experiment", "plan", "executors", "backbones", "embed", "pairs", "split", "baselines", "predictors", "pretrain", "exp009"}
    got = module_imports(PACKAGE / "exp009_report.py")
    assert "report" in got and not got & pipeline, got & pipeline

# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp notebooks

# %% [markdown]
# # Notebooks: executed, committed, never stale
#
# > Execute every notebook in place, stamp what its outputs were made from, and refuse outputs that no longer match their code.

# %% [markdown]
# A reader of this repository reads the method as *executed* notebooks: the nuisance gallery, the
# pair galleries, the fits and the audit are outputs committed beside the code. Committed outputs
# bring one risk that a notebook without outputs does not have: they can be **stale**, showing what
# an older version of the code made. Three rules close it.
#
# 1. **A stamp.** When a notebook is executed, its metadata records a digest of its code cells and
#    a digest of every `derma_jepa` module those cells import, directly or through other modules
#    (an edit to `08_metrics` changes what `10_experiment` shows). Markdown is left out of the
#    digest: prose cannot change an output. The stamp lives under the notebook metadata key
#    `derma_jepa`, which `nbdev_clean` keeps (`allowed_metadata_keys` in settings.ini) and jupytext
#    leaves in the `.ipynb` (the paired `.py` carries sources only).
# 2. **A check** (`check_notebooks`, part of `make test`): a notebook without outputs, without a
#    stamp, or whose code or imported modules no longer match its stamp fails, with its name and
#    what changed. So do outputs that would not be the same on another machine or another day: an
#    absolute path, a progress bar, a wall-clock time.
# 3. **One way to execute** (`make notebooks`): the numbered notebooks are executed in place with
#    `nbclient` (working directory `nbs/`, progress bars off, figures at the size and dpi of
#    `nbs/matplotlibrc`); the three papermill notebooks are *adopted* from the runs that executed
#    them (`run.ipynb` from EXP-004 under `symmetric` on the real copy, `paper.ipynb` from
#    `make paper`, `exp009.ipynb` from `make exp009`), after checking that they ran exactly the
#    code of `nbs/`. Everything is cleaned by `nbdev_clean`, so executing unchanged code twice
#    changes no committed byte.

# %%
#| export
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import nbformat

# %%
#| hide
import tempfile

# %% [markdown]
# ## The stamp
#
# The code digest is over the code cells' sources in order; a papermill notebook's
# `injected-parameters` cell counts as code (it is what ran). Module dependencies are read from the
# import statements of the package itself, so the closure follows the code as it is today.

# %%
#| export
ROOT = Path(__import__("derma_jepa").__file__).resolve().parents[1]     # the checkout: nbs/ and derma_jepa/
STAMP_KEY = "derma_jepa"
_IMPORT = re.compile(r"(?:from\s+(?:derma_jepa)?\.(\w+)\s+import|from\s+derma_jepa\s+import\s+([\w, ]+)|import\s+derma_jepa\.(\w+))")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_digest(nb) -> str:
    "Digest of a notebook's code cells (sources, in order)."
    return _sha(json.dumps([c["source"] for c in nb["cells"] if c["cell_type"] == "code"]))


def imported_modules(code: str) -> set[str]:
    "Names of the `derma_jepa` modules that `code` imports."
    out = set()
    for a, b, c in _IMPORT.findall(code):
        out |= {a, c} if not b else {n.strip() for n in b.split(",")}
    return {n for n in out if n}


def module_closure(names, package: Path) -> dict[str, str]:
    "Every module in `names` and what they import, transitively: name -> digest of its file."
    todo, seen = list(names), {}
    while todo:
        n = todo.pop()
        f = Path(package) / f"{n}.py"
        if n in seen or not f.exists(): continue
        text = f.read_text()
        seen[n] = _sha(text)
        todo += sorted(imported_modules(text))
    return dict(sorted(seen.items()))


def stamp_of(nb, package: Path) -> dict:
    "What a notebook's outputs are made from: its code and the package modules it runs."
    code = "\n".join(c["source"] for c in nb["cells"] if c["cell_type"] == "code")
    return {"code": code_digest(nb), "modules": module_closure(imported_modules(code), package)}


# %% [markdown]
# A toy package and notebook: the stamp follows the code and the modules, and nothing else.

# %%
_pkg = Path(tempfile.mkdtemp())
(_pkg / "a.py").write_text("from .b import f\n"); (_pkg / "b.py").write_text("def f(): return 1\n")
(_pkg / "c.py").write_text("x = 2\n")
_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Toy"),
                                      nbformat.v4.new_code_cell("from derma_jepa.a import f\nf()")])
_s = stamp_of(_nb, _pkg)
assert set(_s["modules"]) == {"a", "b"}, _s                      # b through a; c is not imported
_nb.cells[0].source = "# Toy, reworded"; _nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
assert stamp_of(_nb, _pkg) == _s                                  # prose and outputs do not count
(_pkg / "b.py").write_text("def f(): return 2\n")
assert stamp_of(_nb, _pkg)["modules"]["b"] != _s["modules"]["b"]  # a module two imports away does
_nb.cells[1].source += "  # changed"
assert stamp_of(_nb, _pkg)["code"] != _s["code"]
assert imported_modules("from derma_jepa import data, metrics\nimport derma_jepa.embed\nfrom .pairs import x") == \
    {"data", "metrics", "embed", "pairs"}

# %% [markdown]
# ## The check
#
# Besides the stamp, outputs are read for what would differ between machines or days: an absolute
# path (the checkout's own folder, a home, `/tmp`), a progress bar (`it/s`, `|█`), or a
# wall-clock time printed as seconds. A notebook may show a *ratio* measured in one run, rounded;
# raw timings belong in `benchmarks/`.

# %%
#| export
LEAKS = {
    "an absolute path": re.compile(r"(?<![\w.])/(?:tmp|home|root|work|Users|private|var/folders|mnt|opt|srv)/[\w.-]"),
    "a progress bar": re.compile(r"\d+(?:\.\d+)?\s*(?:it|s)/(?:s|it)\b|\|[█▏▎▍▌▋▊▉ ]{3,}\|"),
    "a wall-clock time": re.compile(r"(?:\b(?:wall|elapsed|took|in)\b[^\n]{0,20}?|:\s*)\d+(?:\.\d+)?\s*(?:s|sec|seconds|ms|min)\b", re.I),
}


def output_text(cell) -> str:
    "The text a reader sees in a code cell's outputs (stream, plain text, HTML, errors)."
    parts = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream": parts.append(o["text"])
        elif o["output_type"] == "error": parts += [o["ename"], o["evalue"]]
        else:
            for mime in ("text/plain", "text/html", "text/markdown", "text/latex"):
                if mime in o.get("data", {}): parts.append(o["data"][mime] if isinstance(o["data"][mime], str) else "".join(o["data"][mime]))
    return "\n".join(parts)


def notebook_problems(path, package: Path) -> list[str]:
    "What is wrong with the committed outputs of one notebook (an empty list when nothing is)."
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not any(c.get("outputs") for c in code):
        return [f"{path}: has no outputs (execute it: make notebooks)"]
    out = []
    if any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])):
        out.append(f"{path}: a cell's output is an error")
    stamp = nb.metadata.get(STAMP_KEY)
    if not stamp:
        out.append(f"{path}: no stamp in its metadata ({STAMP_KEY!r}): its outputs cannot be traced to its code")
    else:
        now = stamp_of(nb, package)
        if now["code"] != stamp.get("code"):
            out.append(f"{path}: its code changed since its outputs were made (re-execute: make notebooks)")
        changed = sorted(n for n in set(now["modules"]) | set(stamp.get("modules", {}))
                         if now["modules"].get(n) != stamp.get("modules", {}).get(n))
        if changed:
            out.append(f"{path}: module(s) {', '.join(changed)} changed since its outputs were made (re-execute: make notebooks)")
    for i, c in enumerate(nb.cells):
        text = output_text(c)
        for what, rx in LEAKS.items():
            m = rx.search(text)
            if m: out.append(f"{path}: cell {i} shows {what} ({m.group(0).strip()!r})")
    return out


def check_notebooks(paths, package: Path) -> None:
    "Raise one error listing every stale, unexecuted or unportable notebook among `paths`."
    problems = [p for path in paths for p in notebook_problems(path, package)]
    if problems: raise SystemExit("notebook outputs are not current:\n  " + "\n  ".join(problems))


# %% [markdown]
# The check on toy notebooks: each way of going wrong is named, and a stamped notebook with clean
# outputs passes.

# %%
def _write(cells, stamp=True, out=None):
    nb = nbformat.v4.new_notebook(cells=cells)
    if stamp: nb.metadata[STAMP_KEY] = stamp_of(nb, _pkg)
    p = Path(out or tempfile.mkstemp(suffix=".ipynb")[1]); nbformat.write(nb, p); return p

_ok = nbformat.v4.new_code_cell("from derma_jepa.a import f\nf()", outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"})])
assert notebook_problems(_write([_ok]), _pkg) == []
assert "has no outputs" in notebook_problems(_write([nbformat.v4.new_code_cell("1")]), _pkg)[0]
assert "no stamp" in notebook_problems(_write([_ok], stamp=False), _pkg)[0]
_p = _write([_ok]); (_pkg / "b.py").write_text("def f(): return 3\n")
assert notebook_problems(_p, _pkg) == [f"{_p}: module(s) b changed since its outputs were made (re-execute: make notebooks)"]
for _text, _what in [("saved to /tmp/x1/run\n", "an absolute path"), ("100%|██████████| 10/10 [00:01<00:00, 9.1it/s]\n", "a progress bar"),
                     ("embedded 800 sides in 12.3 s\n", "a wall-clock time"), ("probe mae: 16 s\n", "a wall-clock time")]:
    _c = nbformat.v4.new_code_cell("print()", outputs=[nbformat.v4.new_output("stream", name="stdout", text=_text)])
    _probs = notebook_problems(_write([_c]), _pkg)
    assert len(_probs) == 1 and _what in _probs[0], _probs
_c = nbformat.v4.new_code_cell("print()", outputs=[nbformat.v4.new_output("stream", name="stdout", text="runs/demo; bf16 is 2.6x fp32; 3 s/it\n")])
assert any("progress bar" in p for p in notebook_problems(_write([_c]), _pkg))
_c.outputs[0].text = "runs/notebooks/exp004-symmetric; bf16 runs at 2.6x the fp32 rate\n"
assert notebook_problems(_write([_c]), _pkg) == []


# %% [markdown]
# ## Executing and adopting
#
# `execute` runs one notebook in place through `nbclient` (the client papermill and nbdev use)
# and stamps it; the notebook is written only when every cell ran, through a temporary file, so a
# failure leaves the committed notebook as it was. `adopt` takes a notebook that papermill
# executed elsewhere and files it as the committed one, after checking that it ran the committed
# code: every code cell equal, apart from papermill's `injected-parameters` cell. That cell gets a
# fixed id and loses its trailing blank lines, and papermill's empty `tags: []` are dropped, so a
# re-run gives the same bytes and the jupytext pair still round-trips.

# %%
#| export
def _atomic_write(nb, path: Path) -> None:
    from derma_jepa.data import atomic_write_bytes
    atomic_write_bytes(Path(path), (nbformat.writes(nb) + "\n").encode())


def execution_env() -> dict:
    "The environment of an executing kernel: no progress bars (figures: nbs/matplotlibrc, read from the working directory)."
    # tqdm.auto, imported by some libraries, warns that ipywidgets is missing: noise to a reader, not a finding
    return dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore:IProgress not found")


def execute(path, package: Path, kernel: str = "python3", timeout: int = 3600) -> Path:
    "Execute the notebook at `path` in place (working directory: its folder) and stamp it."
    from nbclient import NotebookClient
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=execution_env())                   # the kernel gets the environment above
    nb.metadata[STAMP_KEY] = stamp_of(nb, package)
    _atomic_write(nb, path)
    return path


def adopt(executed, dest, package: Path) -> Path:
    "File the notebook papermill `executed` as `dest`, refusing one that ran other code than `dest` holds."
    ran = nbformat.read(executed, as_version=4)
    mine = nbformat.read(dest, as_version=4)
    def code(nb): return [c.source for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    if code(ran) != code(mine):
        raise SystemExit(f"{executed}: it ran other code than {dest} (re-run it from the current {dest})")
    ran.metadata = {k: v for k, v in ran.metadata.items() if k != "papermill"}
    for c in ran.cells:                                   # papermill gives every cell `tags: []`; keep the .py pair clean
        if c.metadata.get("tags") == []: del c.metadata["tags"]
        if "injected-parameters" in c.metadata.get("tags", []):
            c.id, c.source = "injected-parameters", c.source.rstrip()   # papermill's id is random; its blank lines break pairing
    ran.metadata[STAMP_KEY] = stamp_of(ran, package)
    _atomic_write(ran, Path(dest))
    return Path(dest)


# %% [markdown]
# A toy notebook executed for real: outputs appear, the stamp passes the check, and a cell that
# fails leaves the file untouched. A toy "papermill" run is adopted only when it ran the same code.

# %%
_d = Path(tempfile.mkdtemp())
_p = _write([nbformat.v4.new_code_cell("import os\nprint(os.environ.get('TQDM_DISABLE'))")],
            stamp=False, out=_d / "toy.ipynb")
execute(_p, _pkg)
_nb = nbformat.read(_p, as_version=4)
assert _nb.cells[0].outputs[0].text == "1\n" and notebook_problems(_p, _pkg) == []
_bad = _write([nbformat.v4.new_code_cell("1 / 0")], stamp=False, out=_d / "bad.ipynb"); _before = _bad.read_bytes()
try: execute(_bad, _pkg); raise AssertionError("a failing cell must raise")
except Exception as e: assert "ZeroDivisionError" in str(e)
assert _bad.read_bytes() == _before
_ran = nbformat.read(_p, as_version=4)
_ran.cells.insert(0, nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["injected-parameters"]}))
nbformat.write(_ran, _d / "ran.ipynb"); adopt(_d / "ran.ipynb", _p, _pkg)
assert nbformat.read(_p, as_version=4).cells[0].source == "x = 1" and notebook_problems(_p, _pkg) == []
_ran.cells[-1].source = "print('other code')"; nbformat.write(_ran, _d / "ran.ipynb")
try: adopt(_d / "ran.ipynb", _p, _pkg); raise AssertionError("other code must be refused")
except SystemExit as e: assert "ran other code" in str(e)


# %% [markdown]
# ## The command
#
# `main` (`execute PATH…`, `adopt EXECUTED DEST`, `check [PATH…]`) is what `make notebooks` and
# `make test` call. `check` with no paths checks every notebook in `nbs/`.

# %%
#| export
def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="derma_jepa.notebooks", description="Execute, adopt and check committed notebooks.")
    ap.add_argument("command", choices=["execute", "adopt", "check"])
    ap.add_argument("paths", nargs="*", type=Path)
    a = ap.parse_args(argv)
    root, package = ROOT, ROOT / "derma_jepa"
    if a.command == "check":
        paths = a.paths or sorted((root / "nbs").glob("*.ipynb"))
        check_notebooks(paths, package)
        print(f"{len(paths)} notebooks: outputs present, stamped and current")
    elif a.command == "execute":
        for p in a.paths:
            print(f"executing {p}", flush=True); execute(p, package)
    else:
        if len(a.paths) != 2: ap.error("adopt takes EXECUTED DEST")
        adopt(*a.paths, package); print(f"adopted {a.paths[0]} as {a.paths[1]}")

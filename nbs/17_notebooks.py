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
# an older version of the code made. Three rules close it, and a fourth keeps a change cheap.
#
# 1. **A stamp.** When a notebook is executed, its metadata records what its outputs were made
#    from, *as the kernel saw it*: a digest of its code cells, of every `derma_jepa` module the
#    kernel actually imported while it ran (read from `sys.modules` at the end, so a lazy import
#    that never ran does not count, nor does a module named in a string), of every checkout file
#    it opened for reading (an experiment YAML, `nbs/matplotlibrc`), and the requirement pins of
#    the distributions it imported (`settings.ini`). Markdown is left out: prose cannot change an
#    output. The stamp lives under the notebook metadata key `derma_jepa`, which `nbdev_clean`
#    keeps (`allowed_metadata_keys` in settings.ini) and jupytext leaves in the `.ipynb`.
# 2. **A check** (`check_notebooks`, part of `make test`): a notebook without outputs, without a
#    stamp, or whose code, modules, inputs or pins no longer match its stamp fails, with its name
#    and what changed. So do outputs that would not be the same on another machine or another
#    day: an absolute path, a progress bar, a wall-clock time.
# 3. **One way to execute**: the numbered notebooks are executed in place with `nbclient`
#    (working directory `nbs/`, progress bars off, figures at the size and dpi of
#    `nbs/matplotlibrc`); the three papermill notebooks are *adopted* from the runs that executed
#    them (`run.ipynb` from EXP-004 under `symmetric` on the real copy, `paper.ipynb` from
#    `make paper`, `exp009.ipynb` from `make exp009`), after checking that they ran exactly the
#    code of `nbs/`. Papermill runs them through this module's engine (`--engine derma_jepa`), so
#    their stamps are read from their kernels too. Everything is cleaned by `nbdev_clean`, so
#    executing unchanged code twice changes no committed byte.
# 4. **Each notebook once per change** (`make notebooks`): only the stale notebooks are executed,
#    each with the reason it is stale; `make notebooks ALL=1` executes all of them.
# 5. **Slow cells run where they are needed.** A cell that exists to show a real result at full
#    size (a real-data run, the full overlap audit, bf16 timings of three ViTs) carries `#| slow`:
#    `make notebooks` runs it like any cell, so its output is made and stamped; `make test`'s
#    `nbdev_test` skips it (settings.ini's `tst_flags`), since the check above already requires its
#    output present, error-free and current; `make test-all` runs it too.

# %%
#| export
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat

# %%
#| hide
import tempfile

# %% [markdown]
# ## What the kernel saw
#
# Two pieces of code run in every executing kernel, outside the notebook's cells and without
# output: a *prologue* before the first cell installs an audit hook (PEP 578) that notes every
# file opened, for reading or for writing; an *epilogue* after the last cell returns, as one JSON
# string, the package modules in `sys.modules` (with their files), the top-level names of every
# other imported module (to find their distributions) and the files the hook saw. The audit hook
# sees Python's `open` (and so PIL, pandas, YAML and matplotlib's rc file) in every thread of the
# kernel; it does not see what a subprocess reads, nor files opened by C code of its own
# (pyarrow), which the notebooks here only use for products of the run, not for its inputs.

# %%
#| export
TRACE_KEY = "derma_jepa_trace"          # where the papermill engine leaves the trace in an executed notebook


def trace_code(root: Path, lib: str = "derma_jepa") -> tuple[str, str]:
    "The kernel's prologue (code) and epilogue (an expression): files opened, and modules imported, while it ran."
    prologue = f"""
def __dj_trace(root={str(Path(root).resolve())!r}, lib={lib!r}):
    import json, os, sys
    reads, writes = set(), set()
    def hook(event, args):
        if event != "open" or args[0] is None or isinstance(args[0], int): return
        try:
            path, mode, flags = os.path.abspath(os.fsdecode(args[0])), args[1] or "", args[2] or 0
            (writes if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR) else reads).add(path)
        except Exception: pass
    sys.addaudithook(hook)
    def report():
        mods = {{n: getattr(m, "__file__", None) for n, m in list(sys.modules.items()) if n == lib or n.startswith(lib + ".")}}
        top = sorted({{n.split(".")[0] for n in list(sys.modules)}})
        under = lambda s: sorted(p for p in s if p.startswith(root + os.sep))
        return json.dumps({{"modules": mods, "top": top, "reads": under(reads), "writes": under(writes)}})
    return report
__dj_trace = __dj_trace()
"""
    return prologue, "__dj_trace()"


def kernel_call(client, code: str = "", expr: str | None = None):
    "Run `code` silently in `client`'s kernel; return the value of `expr` (a Python literal) when given."
    msg_id = client.kc.execute(code, silent=True, store_history=False, user_expressions={"r": expr} if expr else {})
    reply = client.wait_for_reply(msg_id)
    c = reply["content"] if reply else {"status": "no reply"}
    r = c.get("user_expressions", {}).get("r", {}) if expr else {}
    if c["status"] != "ok" or (expr and r.get("status") != "ok"):
        err = r if expr and c["status"] == "ok" else c
        raise RuntimeError(f"the kernel's trace failed: {err.get('ename', err.get('status'))}: {err.get('evalue', '')}")
    return ast.literal_eval(r["data"]["text/plain"]) if expr else None


# %% [markdown]
# ## The stamp
#
# The stamp is built from the trace. *Modules*: the package's modules the kernel imported, each
# with a digest of its file. *Inputs*: the checkout's tracked files the kernel opened for reading
# and did not write, except the package's modules (above) and the project's **products**: the
# committed notebooks (`nbs/*.ipynb` and their `.py` pairs) and `paper/`. A product has a stamp of
# its own; a notebook that reads one (18_docs builds the site from all of them) only records that
# it does (`products`), so that `make notebooks` executes it after them. *Pins*: for every imported
# distribution that `settings.ini` requires, the requirement as written there (a new `pillow` pin
# stales what imported PIL, and nothing else).

# %%
#| export
STAMP_KEY = "derma_jepa"
STAMP_VERSION = 2
PRODUCTS = ("nbs", "paper")             # committed products: a notebook reading them runs after them


def _sha(data) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()[:16]


def code_digest(nb) -> str:
    "Digest of a notebook's code cells (sources, in order)."
    return _sha(json.dumps([c["source"] for c in nb["cells"] if c["cell_type"] == "code"]))


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def requirement_pins(root: Path) -> dict[str, str]:
    "Every requirement of `settings.ini` (run and dev), by normalised distribution name: the requirement as written."
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=["="]); cfg.read(Path(root) / "settings.ini", encoding="utf-8")
    reqs = " ".join(cfg["DEFAULT"].get(k, "") for k in ("requirements", "dev_requirements")).split()
    return {_norm(re.split(r"[<>=!~\[;]", r, maxsplit=1)[0]): r for r in reqs}


def distributions_of(top_names) -> set[str]:
    "The installed distributions (normalised names) that provide the top-level modules `top_names`."
    from importlib.metadata import packages_distributions
    pd_ = packages_distributions()
    return {_norm(d) for n in top_names for d in pd_.get(n, [])}


def tracked_files(root: Path) -> set[str] | None:
    "The checkout's files under version control (relative paths), or None outside a git checkout."
    r = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True)
    return set(r.stdout.decode().split("\0")) - {""} if r.returncode == 0 else None


def _product(rel: str) -> str | None:
    top = rel.split("/")[0]
    if top == "nbs" and rel.endswith((".ipynb", ".py")) and rel.count("/") == 1: return "nbs"
    return top if top in PRODUCTS and top != "nbs" else None


def stamp_of(nb, trace: dict, root: Path, lib: str = "derma_jepa") -> dict:
    "What a notebook's outputs are made from, from the `trace` its kernel returned."
    root = Path(root).resolve(); package = root / lib
    mods = {}
    for name, f in trace["modules"].items():
        if name == lib or not f or not Path(f).resolve().is_relative_to(package): continue
        mods[name.split(".", 1)[1]] = _sha(Path(f).read_bytes())
    tracked, written = tracked_files(root), set(trace["writes"])
    inputs, products = {}, set()
    for p in trace["reads"]:
        rel = Path(p).relative_to(root).as_posix()
        if p in written or not Path(p).is_file() or rel.startswith(lib + "/") or (tracked is not None and rel not in tracked):
            continue
        if (product := _product(rel)): products.add(product)
        else: inputs[rel] = _sha(Path(p).read_bytes())
    pins = requirement_pins(root)
    return {"version": STAMP_VERSION, "code": code_digest(nb), "modules": dict(sorted(mods.items())),
            "inputs": dict(sorted(inputs.items())),
            "pins": {d: pins[d] for d in sorted(distributions_of(trace["top"]) & set(pins))}, "products": sorted(products)}


def staleness(nb, root: Path, lib: str = "derma_jepa") -> list[str]:
    "Why a notebook's outputs no longer match what made them (an empty list when they do)."
    root = Path(root).resolve()
    stamp = nb.metadata.get(STAMP_KEY)
    if not stamp: return [f"no stamp in its metadata ({STAMP_KEY!r}): its outputs cannot be traced to its code"]
    if stamp.get("version") != STAMP_VERSION: return ["its stamp predates the kernel-read stamp (version 2)"]
    out = []
    if code_digest(nb) != stamp["code"]: out.append("its code changed")
    def changed(kind, files):
        bad = [n for n, (f, d) in files.items() if not f.is_file() or _sha(f.read_bytes()) != d]
        if bad: out.append(f"{kind} {', '.join(bad)} changed")
    changed("module(s)", {n: (root / lib / f"{n.replace('.', '/')}.py", d) for n, d in stamp["modules"].items()})
    changed("input(s)", {n: (root / n, d) for n, d in stamp["inputs"].items()})
    pins = requirement_pins(root)
    moved = [f"{d} ({v} -> {pins.get(d, 'not required')})" for d, v in stamp["pins"].items() if pins.get(d) != v]
    if moved: out.append(f"pin(s) {', '.join(moved)} changed")
    return out


# %% [markdown]
# A toy stamp, from a hand-made trace (the kernel's own trace is tested further down): a module the
# kernel did not import does not count, a read of a product is recorded as an ordering hint only,
# and each kind of change is named.

# %%
_root = Path(tempfile.mkdtemp()); (_root / "toypkg").mkdir(); (_root / "nbs").mkdir()
(_root / "toypkg" / "__init__.py").write_text(""); (_root / "toypkg" / "a.py").write_text("x = 1\n")
(_root / "toypkg" / "b.py").write_text("y = 2\n"); (_root / "exp.yaml").write_text("seed: 1\n")
nbformat.write(nbformat.v4.new_notebook(), _root / "nbs" / "other.ipynb"); (_root / "out.txt").write_text("made here")
(_root / "settings.ini").write_text("[DEFAULT]\nrequirements = numpy==2.4.6 pandas\ndev_requirements = pytest\n")
_trace = {"modules": {"toypkg": str(_root / "toypkg/__init__.py"), "toypkg.a": str(_root / "toypkg/a.py")},
          "top": ["numpy", "json", "toypkg"], "reads": [str(_root / f) for f in ("exp.yaml", "nbs/other.ipynb", "out.txt")],
          "writes": [str(_root / "out.txt")]}
_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import toypkg.a")])
_s = stamp_of(_nb, _trace, _root, "toypkg")
assert set(_s["modules"]) == {"a"} and list(_s["inputs"]) == ["exp.yaml"] and _s["products"] == ["nbs"], _s
assert _s["pins"] == {"numpy": "numpy==2.4.6"}, _s               # pandas is required but was not imported
_nb.metadata[STAMP_KEY] = _s
assert staleness(_nb, _root, "toypkg") == []
(_root / "toypkg" / "b.py").write_text("y = 3\n"); nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x")]), _root / "nbs" / "other.ipynb")
assert staleness(_nb, _root, "toypkg") == []                     # not imported; a product
(_root / "toypkg" / "a.py").write_text("x = 2\n"); (_root / "exp.yaml").write_text("seed: 2\n")
(_root / "settings.ini").write_text("[DEFAULT]\nrequirements = numpy==2.4.7 pandas\n")
assert staleness(_nb, _root, "toypkg") == ["module(s) a changed", "input(s) exp.yaml changed",
                                           "pin(s) numpy (numpy==2.4.6 -> numpy==2.4.7) changed"], staleness(_nb, _root, "toypkg")
_nb.cells[0].source += "  # edited"
assert staleness(_nb, _root, "toypkg")[0] == "its code changed"

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


def needs_execution(nb, root: Path, lib: str = "derma_jepa") -> list[str]:
    "Why a notebook must be executed again: no outputs, an error output, or a stale stamp ([] when it need not)."
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not any(c.get("outputs") for c in code): return ["it has no outputs"]
    err = ["a cell's output is an error"] if any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])) else []
    return err + staleness(nb, root, lib)


def notebook_problems(path, root: Path, lib: str = "derma_jepa") -> list[str]:
    "What is wrong with the committed outputs of one notebook (an empty list when nothing is)."
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    out = [f"{path}: {r} (re-execute: make notebooks)" for r in needs_execution(nb, root, lib)]
    for i, c in enumerate(nb.cells):
        text = output_text(c)
        for what, rx in LEAKS.items():
            m = rx.search(text)
            if m: out.append(f"{path}: cell {i} shows {what} ({m.group(0).strip()!r})")
    return out


def check_notebooks(paths, root: Path, lib: str = "derma_jepa") -> None:
    "Raise one error listing every stale, unexecuted or unportable notebook among `paths`."
    problems = [p for path in paths for p in notebook_problems(path, root, lib)]
    if problems: raise SystemExit("notebook outputs are not current:\n  " + "\n  ".join(problems))


# %% [markdown]
# The check on toy notebooks: each way of going wrong is named, and a stamped notebook with clean
# outputs passes.

# %%
def _write(cells, stamp=True, out=None):
    nb = nbformat.v4.new_notebook(cells=cells)
    if stamp: nb.metadata[STAMP_KEY] = stamp_of(nb, _trace, _root, "toypkg")
    p = Path(out or tempfile.mkstemp(suffix=".ipynb")[1]); nbformat.write(nb, p); return p

_ok = nbformat.v4.new_code_cell("import toypkg.a", outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"})])
assert notebook_problems(_write([_ok]), _root, "toypkg") == []
assert "has no outputs" in notebook_problems(_write([nbformat.v4.new_code_cell("1")]), _root, "toypkg")[0]
assert "no stamp" in notebook_problems(_write([_ok], stamp=False), _root, "toypkg")[0]
_p = _write([_ok]); (_root / "toypkg" / "a.py").write_text("x = 3\n")
assert notebook_problems(_p, _root, "toypkg") == [f"{_p}: module(s) a changed (re-execute: make notebooks)"]
_old = nbformat.read(_p, as_version=4); _old.metadata[STAMP_KEY] = {"code": "x", "modules": {}}; nbformat.write(_old, _p)
assert "predates" in notebook_problems(_p, _root, "toypkg")[0]
for _text, _what in [("saved to /tmp/x1/run\n", "an absolute path"), ("100%|██████████| 10/10 [00:01<00:00, 9.1it/s]\n", "a progress bar"),
                     ("embedded 800 sides in 12.3 s\n", "a wall-clock time"), ("probe mae: 16 s\n", "a wall-clock time")]:
    _c = nbformat.v4.new_code_cell("print()", outputs=[nbformat.v4.new_output("stream", name="stdout", text=_text)])
    _probs = notebook_problems(_write([_c]), _root, "toypkg")
    assert len(_probs) == 1 and _what in _probs[0], _probs
_c = nbformat.v4.new_code_cell("print()", outputs=[nbformat.v4.new_output("stream", name="stdout", text="runs/demo; bf16 is 2.6x fp32; 3 s/it\n")])
assert any("progress bar" in p for p in notebook_problems(_write([_c]), _root, "toypkg"))
_c.outputs[0].text = "runs/notebooks/exp004-symmetric; bf16 runs at 2.6x the fp32 rate\n"
assert notebook_problems(_write([_c]), _root, "toypkg") == []

# %% [markdown]
# ## Executing and adopting
#
# `execute` runs one notebook in place through `nbclient` (the client papermill and nbdev use),
# with the prologue before its first cell and the epilogue after its last, and stamps it from the
# trace; the notebook is written only when every cell ran, through a temporary file, so a failure
# leaves the committed notebook as it was. It reports each cell that took long (on stderr, not in
# the notebook), which is how the heavy cells were found that carry `#| slow`.
#
# Papermill runs the three papermill notebooks through `traced_engine()` (registered as the
# papermill engine `derma_jepa` in setup.py; built on first use, since papermill imports this
# module while it loads its engines), which wraps papermill's own client in the same
# prologue and epilogue and leaves the trace in the executed notebook's metadata. `adopt` takes such
# a notebook and files it as the committed one, after checking that it ran the committed code: every
# code cell equal, apart from papermill's `injected-parameters` cell. That cell gets a fixed id and
# loses its trailing blank lines, and papermill's empty `tags: []` are dropped, so a re-run gives the
# same bytes and the jupytext pair still round-trips.

# %%
#| export
ROOT = Path(__import__("derma_jepa").__file__).resolve().parents[1]     # the checkout: nbs/ and derma_jepa/
SLOW_CELL_S = 20                        # cells slower than this are reported while executing


def _atomic_write(nb, path: Path) -> None:
    from derma_jepa.data import atomic_write_bytes
    atomic_write_bytes(Path(path), (nbformat.writes(nb) + "\n").encode())


def execution_env(**extra) -> dict:
    "The environment of an executing kernel: no progress bars (figures: nbs/matplotlibrc, read from the working directory)."
    # tqdm.auto, imported by some libraries, warns that ipywidgets is missing: noise to a reader, not a finding
    return dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore:IProgress not found", **extra)


def _traced_cells(client, run_cells, root: Path, lib: str) -> dict:
    prologue, epilogue = trace_code(root, lib)
    kernel_call(client, prologue)
    run_cells()
    return json.loads(kernel_call(client, expr=epilogue))


def execute(path, root: Path = None, lib: str = "derma_jepa", kernel: str = "python3", timeout: int = 3600,
            env: dict | None = None) -> Path:
    "Execute the notebook at `path` in place (working directory: its folder), trace its kernel and stamp it."
    from nbclient import NotebookClient
    path, root = Path(path), Path(root or ROOT)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    def cells():
        for i, cell in enumerate(nb.cells):
            t0 = time.monotonic()
            client.execute_cell(cell, i, execution_count=client.code_cells_executed + 1)
            if time.monotonic() - t0 > SLOW_CELL_S:
                print(f"  {path.name}: cell {i} took {time.monotonic() - t0:.0f} s{'' if '#| slow' in cell.source else ' (not marked slow)'}",
                      file=sys.stderr, flush=True)
    client.reset_execution_trackers()
    with client.setup_kernel(env=env or execution_env()):
        trace = _traced_cells(client, cells, root, lib)
    nb.metadata[STAMP_KEY] = stamp_of(nb, trace, root, lib)
    _atomic_write(nb, path)
    return path


_ENGINE = []


def traced_engine():
    "Papermill's nbclient engine with the kernel traced (the trace goes to the notebook's metadata), built on first use."
    if not _ENGINE:                     # papermill imports this module while it loads its engines: import papermill late
        from papermill.clientwrap import PapermillNotebookClient
        from papermill.engines import NBClientEngine
        from papermill.utils import merge_kwargs, remove_args

        class TracedClient(PapermillNotebookClient):
            def papermill_execute_cells(self):
                self.nb.metadata[TRACE_KEY] = _traced_cells(self, super().papermill_execute_cells, ROOT, "derma_jepa")

        class TracedEngine(NBClientEngine):
            @classmethod
            def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                         start_timeout=60, execution_timeout=None, **kwargs):
                kwargs = remove_args(["input_path"], **kwargs)
                safe = remove_args(["timeout", "startup_timeout"], **kwargs)
                final = merge_kwargs(safe, timeout=execution_timeout if execution_timeout else kwargs.get("timeout"),
                                     startup_timeout=start_timeout, kernel_name=kernel_name, log_output=log_output,
                                     stdout_file=stdout_file, stderr_file=stderr_file)
                return TracedClient(nb_man, **final).execute()
        _ENGINE.append(TracedEngine)
    return _ENGINE[0]


def __getattr__(name):                  # the entry point `derma_jepa.notebooks:TracedEngine` (setup.py) lands here
    if name == "TracedEngine": return traced_engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def adopt(executed, dest, root: Path = None, lib: str = "derma_jepa") -> Path:
    "File the notebook papermill `executed` (through `--engine derma_jepa`) as `dest`, refusing one that ran other code."
    ran = nbformat.read(executed, as_version=4)
    mine = nbformat.read(dest, as_version=4)
    def code(nb): return [c.source for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    if code(ran) != code(mine):
        raise SystemExit(f"{executed}: it ran other code than {dest} (re-run it from the current {dest})")
    trace = ran.metadata.get(TRACE_KEY)
    if not trace:
        raise SystemExit(f"{executed}: no kernel trace in its metadata: run papermill with `--engine derma_jepa`")
    ran.metadata = {k: v for k, v in ran.metadata.items() if k not in ("papermill", TRACE_KEY)}
    for c in ran.cells:                                   # papermill gives every cell `tags: []`; keep the .py pair clean
        if c.metadata.get("tags") == []: del c.metadata["tags"]
        if "injected-parameters" in c.metadata.get("tags", []):
            c.id, c.source = "injected-parameters", c.source.rstrip()   # papermill's id is random; its blank lines break pairing
    ran.metadata[STAMP_KEY] = stamp_of(ran, trace, root or ROOT, lib)
    _atomic_write(ran, Path(dest))
    return Path(dest)


# %% [markdown]
# A toy package and notebooks executed for real, in a kernel that finds the package through
# `PYTHONPATH`. The stamp names the module the kernel imported (`a`, and `c` through it), not the
# one a function would import lazily and never did (`lazy`), nor the one a string names (`b`); the
# YAML the notebook read is an input, and editing it, or an imported module, makes the notebook
# stale. A cell that fails leaves the file untouched. A papermill run through the traced engine is
# adopted only when it ran the same code.

# %%
(_root / "toypkg" / "a.py").write_text("from toypkg import c\ndef later():\n    from toypkg import lazy\n")
(_root / "toypkg" / "c.py").write_text("z = 1\n"); (_root / "toypkg" / "lazy.py").write_text("w = 1\n")
(_root / "settings.ini").write_text("[DEFAULT]\nrequirements = pyyaml==6.0 pandas\n")
_env = execution_env(PYTHONPATH=str(_root))
_p = _write([nbformat.v4.new_code_cell("import os, yaml\nimport toypkg.a\ns = 'from toypkg import b'\n"
                                       "print(os.environ.get('TQDM_DISABLE'), yaml.safe_load(open('../exp.yaml')))")],
            stamp=False, out=_root / "nbs" / "toy.ipynb")
execute(_p, _root, "toypkg", env=_env)
_nb = nbformat.read(_p, as_version=4); _st = _nb.metadata[STAMP_KEY]
assert _nb.cells[0].outputs[0].text == "1 {'seed': 2}\n" and notebook_problems(_p, _root, "toypkg") == []
assert set(_st["modules"]) == {"a", "c"} and list(_st["inputs"]) == ["exp.yaml"], _st     # not lazy, not b
assert _st["pins"] == {"pyyaml": "pyyaml==6.0"}, _st                # yaml imported; pandas required, not imported
(_root / "toypkg" / "lazy.py").write_text("w = 2\n"); (_root / "toypkg" / "b.py").write_text("y = 4\n")
assert notebook_problems(_p, _root, "toypkg") == []
(_root / "exp.yaml").write_text("seed: 3\n")
assert staleness(nbformat.read(_p, as_version=4), _root, "toypkg") == ["input(s) exp.yaml changed"]
(_root / "toypkg" / "c.py").write_text("z = 2\n")
assert staleness(nbformat.read(_p, as_version=4), _root, "toypkg") == ["module(s) c changed", "input(s) exp.yaml changed"]
_bad = _write([nbformat.v4.new_code_cell("1 / 0")], stamp=False, out=_root / "nbs" / "bad.ipynb"); _before = _bad.read_bytes()
try: execute(_bad, _root, "toypkg", env=_env); raise AssertionError("a failing cell must raise")
except Exception as e: assert "ZeroDivisionError" in str(e)
assert _bad.read_bytes() == _before

# %%
import papermill as pm
_d = Path(tempfile.mkdtemp())
_src = _write([nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}),
               nbformat.v4.new_code_cell("import derma_jepa.report\nprint(x)")], stamp=False, out=_d / "src.ipynb")
pm.execute_notebook(str(_src), str(_d / "ran.ipynb"), parameters={"x": 5}, engine_name="derma_jepa", kernel_name="python3", language="python", progress_bar=False)
adopt(_d / "ran.ipynb", _src)
_nb = nbformat.read(_src, as_version=4)
assert [c.source for c in _nb.cells][1] == "# Parameters\nx = 5" and _nb.cells[2].outputs[0].text == "5\n"
assert "report" in _nb.metadata[STAMP_KEY]["modules"] and "papermill" not in _nb.metadata and TRACE_KEY not in _nb.metadata
_ran = nbformat.read(_d / "ran.ipynb", as_version=4); _ran.cells[-1].source = "print('other code')"; nbformat.write(_ran, _d / "ran.ipynb")
try: adopt(_d / "ran.ipynb", _src); raise AssertionError("other code must be refused")
except SystemExit as e: assert "ran other code" in str(e)
_ran.cells[-1].source = _nb.cells[-1].source; del _ran.metadata[TRACE_KEY]; nbformat.write(_ran, _d / "ran.ipynb")
try: adopt(_d / "ran.ipynb", _src); raise AssertionError("an untraced run must be refused")
except SystemExit as e: assert "--engine derma_jepa" in str(e)

# %% [markdown]
# ## Each notebook once per change
#
# `plan_updates` lists the notebooks to execute and why, in waves: first the numbered notebooks
# that read no product (in parallel, `workers` at a time), then the papermill
# notebooks one after another (`run`, then `paper`, which reads the runs, then `exp009`), then the
# notebooks that read products (18_docs). A papermill notebook is executed by the command of
# `PIPELINES` and adopted from where that command leaves it. `change_cost` answers the question
# before a change is made: which notebooks would an edit to each module stale, from the stamps
# (the notebook that defines the module is stale too: its code changed).

# %%
#| export
PIPELINES = {   # papermill notebook -> (the command that executes it through the traced engine, where it leaves it)
    "run": (["papermill", "--engine", "derma_jepa", "--log-level", "WARNING", "nbs/run.ipynb", "{runs}/notebooks/run.ipynb",
             "-f", "nbs/experiments/exp004.yaml", "-p", "protocol", "symmetric", "-p", "backbone", "color_texture",
             "-p", "run_dir", "{runs}/notebooks/exp004-symmetric"], "{runs}/notebooks/run.ipynb"),
    "paper": (["make", "--no-print-directory", "paper", "BACKBONES=color_texture", "RUNS_DIR={runs}"], "{runs}/paper.ipynb"),
    "exp009": (["make", "--no-print-directory", "exp009", "RUNS_DIR={runs}", "EXP009_ARGS=-p compare color_texture"],
               "{runs}/exp009/exp009.ipynb"),
}


def defining_notebooks(nbs: Path) -> dict[str, Path]:
    "Module name -> the notebook that exports it (`#| default_exp`)."
    out = {}
    for p in sorted(Path(nbs).glob("*.ipynb")):
        for c in nbformat.read(p, as_version=4).cells:
            m = re.search(r"^#\|\s*default_exp\s+(\S+)", c.source, re.M) if c.cell_type == "code" else None
            if m: out[m.group(1)] = p; break
    return out


def plan_updates(paths, root: Path = None, lib: str = "derma_jepa", everything: bool = False) -> list[tuple[int, Path, list[str]]]:
    "(wave, notebook, reasons) for every notebook among `paths` that must be executed, in the order to execute them."
    root = Path(root or ROOT); out = []
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        why = ["ALL=1"] if everything else needs_execution(nb, root, lib)
        if not why: continue
        reads = (nb.metadata.get(STAMP_KEY) or {}).get("products", [])
        wave = 1 if Path(p).stem in PIPELINES else 2 if reads else 0
        out.append((wave, Path(p), why))
    order = {n: i for i, n in enumerate(PIPELINES)}
    return sorted(out, key=lambda t: (t[0], order.get(t[1].stem, 0), t[1].name))


def change_cost(paths, root: Path = None, lib: str = "derma_jepa") -> dict[str, list[str]]:
    "Module -> the notebooks an edit to it would stale, from their stamps and the notebook that defines it."
    root = Path(root or ROOT)
    stamps = {Path(p).stem: (nbformat.read(p, as_version=4).metadata.get(STAMP_KEY) or {}) for p in paths}
    owner = {m: p.stem for m, p in defining_notebooks(root / "nbs").items()}
    mods = sorted(p.stem for p in (root / lib).glob("*.py") if not p.stem.startswith("_"))
    return {m: sorted({n for n, s in stamps.items() if m in s.get("modules", {})} | ({owner[m]} if m in owner else set()))
            for m in mods}


# %% [markdown]
# The plan on toy notebooks: a current notebook is left alone, a stale one is executed with its
# reason, one that reads products comes last.

# %%
(_root / "toypkg" / "a.py").write_text("x = 1\n"); _fresh = _write([_ok], out=_root / "nbs" / "fresh.ipynb")
for _name, _reads in [("fresh", []), ("reader", ["nbs"])]:
    _x = nbformat.read(_fresh, as_version=4); _x.metadata[STAMP_KEY]["products"] = _reads; nbformat.write(_x, _root / "nbs" / f"{_name}.ipynb")
_stale = nbformat.read(_fresh, as_version=4); _stale.cells[0].source += "  # edited"; nbformat.write(_stale, _root / "nbs" / "stale.ipynb")
_plan = plan_updates([_root / "nbs" / f"{n}.ipynb" for n in ("reader", "fresh", "stale")], _root, "toypkg")
assert [(w, p.stem, r) for w, p, r in _plan] == [(0, "stale", ["its code changed"])], _plan
(_root / "toypkg" / "a.py").write_text("x = 3\n")
assert [(w, p.stem) for w, p, _ in plan_updates([_root / "nbs" / f"{n}.ipynb" for n in ("reader", "fresh")], _root, "toypkg")] == \
    [(0, "fresh"), (2, "reader")]
assert change_cost([_root / "nbs" / "fresh.ipynb"], _root, "toypkg")["a"] == ["fresh"]


# %%
#| export
def _run_logged(cmd, env, label) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env)
    if r.returncode: raise SystemExit(f"make notebooks: {label} failed (exit {r.returncode}): {' '.join(map(str, cmd))}")
    return time.monotonic() - t0


def update(paths, everything: bool = False, workers: int = 2, runs: str = "runs") -> list[Path]:
    "Execute the notebooks among `paths` that `plan_updates` lists, wave by wave; return them."
    from concurrent.futures import ThreadPoolExecutor
    plan = plan_updates(paths, ROOT, everything=everything)
    print(f"make notebooks: {len(plan)} of {len(paths)} notebooks to execute" + (":" if plan else " (all current)"), flush=True)
    for _, p, why in plan: print(f"  {p.name}: {'; '.join(why)}", flush=True)
    env = execution_env()
    def one(p):
        dt = _run_logged([sys.executable, "-c", "from derma_jepa.notebooks import main; main()", "execute", str(p)], env, p.name)
        print(f"executed {p.name} ({dt:.0f} s)", flush=True)
    for wave in (0, 1, 2):
        todo = [p for w, p, _ in plan if w == wave]
        if wave == 1:
            for p in todo:
                cmd, out = PIPELINES[p.stem]
                cmd, out = [c.replace("{runs}", runs) for c in cmd], out.replace("{runs}", runs)
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                print(f"running {p.name}: {' '.join(cmd)}", flush=True)
                penv = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
                for k in ("HAM10000_DIR", "ISIC_NONHAM_DIR"):      # they run in the checkout: no machine path in outputs
                    if penv.get(k) and Path(penv[k]).is_absolute(): penv[k] = os.path.relpath(penv[k], ROOT)
                dt = _run_logged(cmd, penv, p.name)
                adopt(ROOT / out, p); print(f"adopted {out} as {p.name} ({dt:.0f} s)", flush=True)
        elif todo:
            with ThreadPoolExecutor(workers) as ex: list(ex.map(one, todo))
    return [p for _, p, _ in plan]


# %% [markdown]
# ## The command
#
# `main` is what `make notebooks`, `make test` and `benchmarks/bench_change.py` call:
# `update [--all]` (the stale notebooks, or all), `execute PATH…`, `adopt EXECUTED DEST`,
# `check [PATH…]` (every notebook in `nbs/` by default) and `cost` (JSON: module -> the notebooks an
# edit to it stales).

# %%
#| export
def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="derma_jepa.notebooks", description="Execute, adopt and check committed notebooks.")
    ap.add_argument("command", choices=["update", "execute", "adopt", "check", "cost"])
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--all", action="store_true", help="update: execute every notebook, stale or not")
    ap.add_argument("--workers", type=int, default=2, help="update: numbered notebooks executed at once")
    ap.add_argument("--runs", default="runs", help="update: the runs folder of the papermill notebooks")
    a = ap.parse_intermixed_args(argv)       # options before or after the paths
    paths = a.paths or sorted((ROOT / "nbs").glob("*.ipynb"))
    if a.command == "check":
        check_notebooks(paths, ROOT)
        print(f"{len(paths)} notebooks: outputs present, stamped and current")
    elif a.command == "update":
        update(paths, a.all, a.workers, a.runs)
    elif a.command == "cost":
        print(json.dumps(change_cost(paths, ROOT), indent=1))
    elif a.command == "execute":
        for p in a.paths:
            print(f"executing {p}", flush=True); execute(p)
    else:
        if len(a.paths) != 2: ap.error("adopt takes EXECUTED DEST")
        adopt(*a.paths); print(f"adopted {a.paths[0]} as {a.paths[1]}")

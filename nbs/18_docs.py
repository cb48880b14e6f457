# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp docs

# %% [markdown]
# # Docs: the executed notebooks as a site, built offline
#
# > One page per notebook in reading order, the EXP-004 run under each protocol, the paper's tables and figures, and the API, built with Sphinx and myst-nb without a network.

# %% [markdown]
# nbdev publishes notebooks with Quarto, which cannot be installed without a download. The Jupyter
# Book 1 stack builds the same kind of site from pip packages alone: **Sphinx** with **myst-nb**
# (which renders committed outputs, `nb_execution_mode = "off"`: the site shows exactly what
# `make notebooks` executed, and building it runs nothing), **sphinx-book-theme**, autodoc for the
# API, and **sphinx-mathjax-offline**, a copy of MathJax served from the site itself, so a page with
# a formula loads nothing from elsewhere. All are pinned in settings.ini.
#
# `site_sources` is a pure function from the checkout to the files of the Sphinx source folder
# (name → bytes); `build_docs` writes them into a temporary folder, runs Sphinx, and files the HTML
# as `_docs/`, a marked folder (03_safety): a `_docs/` the project did not write is never replaced.
# Nothing is generated from the time or the machine, so the site's pages depend only on the checkout.

# %%
#| export
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import nbformat

from derma_jepa.notebooks import PIPELINES, ROOT          # the papermill notebooks, in the order make notebooks runs them

# %%
#| hide
from fastcore.test import test_eq, test_fail


# %% [markdown]
# ## The pages
#
# The specification (`nbs/protocol.md`, the project's own version of the protocol) comes first. The
# reading order is the numbering of the notebooks, then the three papermill notebooks (one
# EXP-004 run, the paper, EXP-009). The paper's own page is `paper/README.md` followed by its tables
# and figures, each figure with the caption `paper/README.md` gives it; the executed EXP-004
# notebooks of `paper/runs/` get a title that names their protocol (they all begin "One DermaJEPA
# run"). The API has one page per module, from the docstrings.

# %%
#| export
def reading_order(nbs: Path) -> list[Path]:
    "The notebooks of `nbs` in reading order: numbered ones by number, then the papermill notebooks."
    numbered = sorted(p for p in Path(nbs).glob("*.ipynb") if re.match(r"\d\d_", p.name))
    return numbered + [Path(nbs) / f"{n}.ipynb" for n in PIPELINES if (Path(nbs) / f"{n}.ipynb").exists()]


def notebook_title(nb) -> str:
    "The first markdown heading of a notebook."
    for c in nb.cells:
        m = re.search(r"^#\s+(.+)$", c.source, re.M) if c.cell_type == "markdown" else None
        if m: return m.group(1).strip()
    raise ValueError("a notebook without a markdown heading cannot be a page")


def retitled(nb, title: str):
    "`nb` with its first heading replaced by `title`."
    nb = nbformat.from_dict(nb)
    for c in nb.cells:
        if c.cell_type == "markdown" and re.search(r"^#\s+", c.source, re.M):
            c.source = re.sub(r"^#\s+.+$", f"# {title}", c.source, count=1, flags=re.M); break
    return nb


def figure_captions(readme: str) -> dict[str, str]:
    "`figures/x.png` -> caption, from a figure list (paper/README.md, paper/exp009/figures.md): lines ``- `x.png`: caption``."
    return dict(re.findall(r"^- `([\w./-]+\.png)`: (.+)$", readme, re.M))


# %% [markdown]
# The paper page inlines the tables (pandas' Markdown pipe tables, which MyST reads) and shows each
# figure with its caption; the EXP-009 page does the same for `paper/exp009/` and the overlap audit.

# %%
#| export
def _section(title: str, path: Path) -> str:
    return f"## {title}\n\n{path.read_text()}\n" if path.exists() else ""


def _figures(caps: dict[str, str], paper: Path) -> str:
    "Each figure of `caps` (paths under `paper`) that exists, as a MyST figure with its caption."
    return "".join(f"\n## Figure: {Path(f).stem.replace('_', ' ')}\n\n```{{figure}} {f}\n:width: 100%\n\n{c}\n```\n"
                   for f, c in caps.items() if (Path(paper) / f).exists())


def paper_page(paper: Path) -> str:
    "The paper's page: README, tables, figures with captions, runs."
    paper = Path(paper)
    readme = (paper / "README.md").read_text()
    body = re.sub(r"^# paper/\n", "# The paper\n", readme, count=1)
    body += "\n" + "".join(_section(t, paper / "tables" / f"{n}.md")
                           for t, n in [("Table: the arc", "arc"), ("Table: predictor and optimiser", "optimisers"),
                                        ("Table: the seed sweep", "sweep")])
    body += _figures(figure_captions(readme), paper)
    runs = sorted((paper / "runs").glob("*.ipynb"))
    if runs:
        body += "\n## The EXP-004 runs\n\n" + "".join(f"- [{p.stem}](runs/{p.stem})\n" for p in runs)
    return body + "\n" + re.sub(r"^# ", "## ", (paper / "runs.md").read_text(), count=1)


def exp009_page(paper: Path) -> str:
    "EXP-009's page: its tables and figures and the overlap audit."
    d = Path(paper) / "exp009"
    body = "# EXP-009: dermoscopy pretraining on a corpus audited against HAM10000 images\n\nRendered by `make exp009` (`nbs/exp009.ipynb`).\n\n"
    body += "".join(_section(t, d / f"{n}.md") for t, n in [
        ("Comparison", "exp009_table"), ("The EXP-004 recipe by encoder", "recipe_table"), ("Label efficiency", "label_table"),
        ("The budget curve", "budget_table"), ("Where the encoders look, and transfer", "featuremaps_table"),
        ("The EXP-004 recipe, run by run", "recipe_runs")])
    if (d / "figures.md").exists(): body += _figures(figure_captions((d / "figures.md").read_text()), paper)
    if (d / "runs.md").exists(): body += "\n" + re.sub(r"^# ", "## ", (d / "runs.md").read_text(), count=1)
    return body


# %% [markdown]
# ## The index and the API
#
# The index is the README, followed by the table of contents: a reader lands on the two
# commands and the protocols, then finds every notebook in order.

# %%
#| export
def api_modules(package: Path) -> list[str]:
    "The package's public modules (nbdev's index and __init__ left out)."
    return sorted(p.stem for p in Path(package).glob("*.py") if not p.stem.startswith("_"))


def _toc(caption: str, entries: list[str]) -> str:
    return f"```{{toctree}}\n:caption: {caption}\n:maxdepth: 1\n\n" + "\n".join(entries) + "\n```\n"


def index_page(readme: str, method: list[str], pipelines: list[str], paper: list[str], api: list[str]) -> str:
    "README followed by the site's table of contents."
    return (readme.rstrip() + "\n\n## Contents\n\n" + _toc("The method, notebook by notebook", method)
            + _toc("Run, paper, EXP-009", pipelines) + _toc("The paper's results", paper) + _toc("API", api))


def api_page(module: str) -> str:
    return f"# `derma_jepa.{module}`\n\n```{{eval-rst}}\n.. automodule:: derma_jepa.{module}\n   :members:\n```\n"


# %% [markdown]
# Sphinx's configuration is data too: the theme, myst-nb with execution off, offline MathJax, and
# warnings for links that point nowhere.

# %%
#| export
CONF_PY = '''# Written by derma_jepa.docs.site_sources: the documentation site's Sphinx configuration.
project = "derma-jepa"
author = "derma-jepa developers"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx-mathjax-offline"]   # the package installs under this (hyphenated) name
nb_execution_mode = "off"                 # show the committed outputs; building runs nothing
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
html_theme = "sphinx_book_theme"
html_title = "derma-jepa"
# sources are not copied; the page's contents join the site's in the left column, so the article has the rest of the window
html_theme_options = {"show_toc_level": 2, "use_download_button": False, "secondary_sidebar_items": []}
html_sidebars = {"**": ["navbar-logo.html", "icon-links.html", "sbt-sidebar-nav.html", "page-toc.html"]}   # one search: the header's
html_static_path = ["_static"]
html_css_files = ["derma_jepa.css"]       # the article as wide as the window allows (wide tables, figures)
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
exclude_patterns = ["_build"]
'''
SITE_CSS = """/* Written by derma_jepa.docs.site_sources: wide tables and figures get the window's width, not a 60em column. */
.bd-page-width { max-width: 100%; }
.bd-main .bd-content .bd-article-container { max-width: 100%; }
"""
DIRECTIVE = re.compile(r"^#\|\s*(\S+)")


def site_notebook(nb):
    """`nb` as a reader's page: nbdev's directive lines (`#| export`, `#| default_exp ...`) are build instructions, not
    content, so they are dropped, with the cells that hold nothing else and the cells marked `#| hide`."""
    nb = nbformat.from_dict(nb)
    keep = []
    for c in nb.cells:
        if c.cell_type == "code":
            lines = c.source.splitlines()
            if any((m := DIRECTIVE.match(l)) and m.group(1) == "hide" for l in lines): continue
            rest = [l for l in lines if not DIRECTIVE.match(l)]
            if not "".join(rest).strip() and not c.get("outputs"): continue
            c.source = "\n".join(rest).strip("\n")
        keep.append(c)
    nb.cells = keep
    return nb


def site_sources(root: Path = ROOT) -> dict[str, bytes]:
    "Every file of the Sphinx source folder, from the checkout at `root`: relative name -> bytes."
    root = Path(root)
    files, method, pipelines = {"conf.py": CONF_PY.encode(), "_static/derma_jepa.css": SITE_CSS.encode()}, [], []
    if (root / "nbs" / "protocol.md").exists():             # the specification, first: the notebooks cite it
        files["nbs/protocol.md"] = (root / "nbs" / "protocol.md").read_bytes(); method.append("nbs/protocol")
    for p in reading_order(root / "nbs"):
        files[f"nbs/{p.name}"] = nbformat.writes(site_notebook(nbformat.read(p, as_version=4))).encode()
        (pipelines if p.stem in PIPELINES else method).append(f"nbs/{p.stem}")
    paper, paper_toc = root / "paper", []
    if (paper / "README.md").exists():
        files["paper/index.md"] = paper_page(paper).encode()
        for f in sorted(paper.glob("figures/*.png")) + sorted(paper.glob("exp009/*.png")) + sorted(paper.glob("audit/*.png")):
            files[f"paper/{f.relative_to(paper)}"] = f.read_bytes()
        paper_toc.append("paper/index")
        for p in sorted((paper / "runs").glob("*.ipynb")):
            exp, prot, bb = re.fullmatch(r"(EXP-\w+)-(reference|symmetric)-(.+)", p.stem).groups()   # render.run_notebooks' names
            nb = retitled(nbformat.read(p, as_version=4), f"{exp} under the {prot} protocol ({bb}), as the arc ran it")
            files[f"paper/runs/{p.name}"] = nbformat.writes(nb).encode()
            paper_toc.append(f"paper/runs/{p.stem}")
        if (paper / "exp009").is_dir():
            files["paper/exp009.md"] = exp009_page(paper).encode(); paper_toc.append("paper/exp009")
    api = api_modules(root / "derma_jepa")
    files["api/index.md"] = ("# API\n\nEvery module of `derma_jepa`, generated from the notebooks of `nbs/` by `nbdev_export`.\n\n"
                             + _toc("Modules", api)).encode()
    files.update({f"api/{m}.md": api_page(m).encode() for m in api})
    readme = (root / "README.md").read_text()
    files["index.md"] = index_page(readme, method, pipelines, paper_toc, ["api/index"]).encode()
    return files


# %% [markdown]
# The sources of this checkout: every notebook is a page in order, each figure of the paper has its
# caption, and every module has an API page.

# %%
_src = site_sources()
_nbs = [k for k in _src if k.startswith("nbs/") and k.endswith(".ipynb")]
test_eq(_nbs[:2], ["nbs/00_data.ipynb", "nbs/01_fixture.ipynb"])
assert "\nnbs/protocol\n" in _src["index.md"].decode() and _src["nbs/protocol.md"].startswith(b"# The protocol")
test_eq(_nbs[-3:], ["nbs/run.ipynb", "nbs/paper.ipynb", "nbs/exp009.ipynb"])
test_eq(len(_nbs), len(list((ROOT / "nbs").glob("*.ipynb"))))
_index = _src["index.md"].decode()
assert all(f"\n{k[:-6]}\n" in _index for k in _nbs), "every notebook is in the table of contents"
_paper = _src["paper/index.md"].decode()
test_eq(_paper.count("```{figure}"), len(figure_captions((ROOT / "paper" / "README.md").read_text())))
assert {f"api/{m}.md" for m in ("data", "metrics", "notebooks", "docs")} <= set(_src)
test_eq(notebook_title(nbformat.read(ROOT / "nbs" / "10_metrics.ipynb", as_version=4)).split(":")[0], "Metrics")
# nbdev's directives are not content: no `#|` line on a page, and the title is the page's first cell
_page = nbformat.reads(_src["nbs/00_data.ipynb"].decode(), as_version=4)
assert not any(DIRECTIVE.match(l) for c in _page.cells for l in c.source.splitlines()) and _page.cells[0].cell_type == "markdown"
_demo = site_notebook(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("#| default_exp data"), nbformat.v4.new_markdown_cell("# T"),
                                                      nbformat.v4.new_code_cell("#| export\ndef f(): pass"),
                                                      nbformat.v4.new_code_cell("#| hide\nsecret = 1")]))
test_eq([c.source for c in _demo.cells], ["# T", "def f(): pass"])
test_eq(notebook_title(retitled(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# One run\n\ntext")]), "EXP-004")), "EXP-004")
sorted(_src)[:8], len(_src)


# %% [markdown]
# ## Building
#
# `build_docs` runs Sphinx in a temporary folder and files the HTML as a marked `_docs/`.
# Warnings are collected, not hidden: a broken cross-reference or an unknown document comes back
# in the result (and `make docs` prints them), so a reader never meets a link to nowhere.

# %%
#| export
def build_docs(root: Path = ROOT, dest=None, jobs: int = 1) -> dict:
    """Build the site from the checkout at `root` into `dest` (default `_docs/`): pages, size and Sphinx's warnings.
    Sphinx runs in a process of its own: its autodoc imports every module of the package, which the caller (a
    notebook kernel, whose stamp names the modules it imported) should not."""
    import subprocess, sys
    from derma_jepa.safety import check_destination, write_marked_dir
    root = Path(root); dest = Path(dest or root / "_docs")
    check_destination(dest, "docs", what="docs folder")            # before the build: refuse a folder that is not ours
    with tempfile.TemporaryDirectory(prefix="derma-jepa-docs-") as tmp:
        src, out, log = Path(tmp) / "src", Path(tmp) / "html", Path(tmp) / "warnings.txt"
        for name, data in site_sources(root).items():
            (src / name).parent.mkdir(parents=True, exist_ok=True); (src / name).write_bytes(data)
        r = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", str(jobs), "-w", str(log),
                            "-d", str(Path(tmp) / "doctrees"), str(src), str(out)], capture_output=True, text=True)
        warnings = [w for w in log.read_text().splitlines() if w.strip()] if log.exists() else []
        if r.returncode != 0: raise RuntimeError("sphinx failed:\n" + "\n".join(warnings[-20:] or r.stderr.splitlines()[-20:]))
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    write_marked_dir(dest, files, kind="docs", what="docs folder")
    pages = sorted(k for k in files if k.endswith(".html") and not k.startswith("_static/"))
    return {"dest": dest, "pages": pages, "bytes": sum(map(len, files.values())), "warnings": warnings}


# %% [markdown]
# The whole site, built here (about half a minute): every notebook has a page, and Sphinx has
# nothing to warn about.

# %%
_site = build_docs(dest=Path(tempfile.mkdtemp()) / "docs")
test_eq(_site["warnings"], [])
assert all(f"nbs/{p.stem}.html" in _site["pages"] for p in reading_order(ROOT / "nbs"))
f"{len(_site['pages'])} pages"

# %% [markdown]
# A `_docs/` that the project did not write (no marker) is never replaced.

# %%
_foreign = Path(tempfile.mkdtemp()) / "docs"; _foreign.mkdir(); (_foreign / "notes.txt").write_text("mine")
test_fail(lambda: build_docs(dest=_foreign), contains="did not write")
test_eq((_foreign / "notes.txt").read_text(), "mine")


# %% [markdown]
# ## The command
#
# `make docs` calls `main`, which prints the page count, the size and any warning.

# %%
#| export
def main(argv=None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="derma_jepa.docs", description="Build the documentation site offline into _docs/.")
    ap.add_argument("--dest", type=Path, default=None)
    a = ap.parse_args(argv)
    r = build_docs(dest=a.dest)
    for w in r["warnings"]: print("warning:", w)
    print(f"site: {len(r['pages'])} pages, {r['bytes'] / 2**20:.1f} MB in {r['dest']}/ (open {r['dest']}/index.html)")

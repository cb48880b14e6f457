# ---
# skip_exec: true
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The paper, rendered from run directories
#
# This notebook turns a plan of runs (written by `make paper`, i.e. `derma_jepa_paper`) into
# `paper/`: the cross-run table with both protocols side by side, predictor × optimiser, the seed
# sweep, and the figures, as LaTeX and Markdown, with a `main.tex` that inputs them. It reads
# only what the runs wrote (`metrics.json`, `timings.json`, `scores.parquet`); every row names its
# run directory in `runs.md`, where the executed `run.ipynb` behind it lies.
#
# ```
# make paper BACKBONES=offline                 # runs the arc, then executes this notebook
# papermill nbs/paper.ipynb out.ipynb -p plan_file runs/plan-offline.json -p paper_dir paper
# ```

# %%
from pathlib import Path

import pandas as pd

from derma_jepa.render import FIGURES, plan_rows, render_paper
from derma_jepa.report import sweep_summary
from derma_jepa.safety import exit_with_parent

exit_with_parent()          # a killed papermill takes this kernel with it (03_safety)

# %% tags=["parameters"]
plan_file = "runs/plan-hub.json"
paper_dir = "paper"
backbones = "hub"

# %% tags=["injected-parameters"]
# Parameters
plan_file = "runs/plan-color_texture.json"
paper_dir = "paper"
backbones = "color_texture"

# %% [markdown]
# ## The plan
#
# Every row the arc asked for, including those that could not run here and why.

# %%
plan = plan_rows(plan_file)
plan[["experiment", "protocol", "seed", "sweep", "backbone", "stand_in", "status"]].drop_duplicates()

# %%
paper = render_paper(plan, paper_dir, backbones)
print("\n".join(f"{paper_dir}/{f}" for f in paper["files"]))

# %% [markdown]
# ## The words
#
# `numbers.tex` (every number the prose states, from the same runs), `prose.tex` (abstract,
# introduction, methods, results, limitations, reproduction: 23_text), the experiments' table and
# the three sentences README opens with (`finding.md`; README's copy is rewritten when this is the
# repository's own `paper/`).

# %%
from derma_jepa.text import write_text
_readme = Path("README.md") if Path(paper_dir).resolve() == Path("paper").resolve() and Path("README.md").exists() else None
text = write_text(paper["long"], paper_dir, readme=_readme)
print((Path(paper_dir) / "finding.md").read_text())

# %% [markdown]
# ## The arc
#
# Per protocol: test AUROC of the predictor with its 95% bootstrap CI, the strongest baseline
# (chosen on test under `reference`, on val and oriented under `symmetric`), Δ with its paired
# interval, the verdict (the release's rule under `reference`, Δ's interval under `symmetric`),
# the target-only and context-only probes (the leak detectors: 0.5 when one side alone carries
# no label) and the predictor's AUROC on the real re-photography pairs.

# %%
paper["tables"]["arc"]

# %% [markdown]
# ## Predictor × optimiser
#
# The EXP-004 data with the linear predictor (SGD), the residual MLP with SGD and with Adam. The
# bias-only control is the predictor reduced to the mean training displacement: when it matches
# the predictor, the fit learned a translation.

# %%
paper["tables"]["optimisers"]

# %% [markdown]
# ## Seed sweep
#
# Mean ± SD over seeds [Student-t 95% CI of the mean], for the predictor and, unlike the release,
# for the controls and baselines at each seed: the seed changes the split and the pairs, so a
# baseline moves with it. The release's 1.96 interval is in its own column.

# %%
paper["tables"]["sweep"]

# %%
_s = sweep_summary(paper["long"])
if not _s.empty:
    display(_s.round(4))

# %% [markdown]
# ## Figures

# %%
for _name, _fig in paper["figures"].items():
    print(f"{_name}: {FIGURES[_name][0]}"); display(_fig)

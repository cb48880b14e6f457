# ---
# skip_exec: true
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # EXP-009: dermoscopy pretraining on a corpus audited against HAM10000 images
#
# The experiment end to end, as papermill runs it (`make exp009`):
#
# ```
# HAM10000_DIR=../shared/data/ham10000-200x150 ISIC_NONHAM_DIR=../shared/data/isic-nonham make exp009
# papermill nbs/exp009.ipynb runs/exp009/exp009.ipynb -p objectives mae,ijepa -p protocols symmetric
# ```
#
# 1. audit HAM10000 against the pretraining corpus and leave out every flagged corpus image;
# 2. pretrain each objective and variant, once per seed, with snapshots at the budgets, on what is
#    left (resumes from checkpoints; finished ones are reused);
# 3. probe the seven diagnoses on frozen embeddings at every label fraction (several subsamples
#    each), against each seed's random-init control; the snapshots at all labels;
# 4. run the EXP-004 recipe (`nbs/experiments/exp009.yaml`) under each protocol through
#    `nbs/run.ipynb`, each executed notebook filed in its run directory; the re-photo endpoint of
#    the raw cosine at every budget;
# 5. feature maps and the ISIC 2017 transfer; render `paper/exp009/` (the section `paper/main.tex`
#    inputs).
#
# The settings are `nbs/experiments/exp009_pretrain.yaml`; the parameters below override them
# (empty = the file's value). `pretrain_set`, `recipe_set` and `audit_set` take YAML mappings,
# `seeds` and `budgets` YAML lists (`-p seeds '[0, 1, 2]' -p budgets '[0.25, 0.5, 1.0]'`), `variants`
# a mapping (`-p variants '{}'`: none).
# `executor=slurm` (`make exp009 EXECUTOR=slurm`) trains each objective as a SLURM job, all at
# once, and runs the embedding and the runs as jobs too, with the settings file's `resources`.

# %%
import json
from pathlib import Path

import pandas as pd
from derma_jepa.safety import exit_with_parent, load_yaml

from derma_jepa.data import atomic_write_bytes
from derma_jepa.audit import audit_figure, image_paths, run_overlap_audit
from derma_jepa.exp009 import audited_corpus, load_exp009, plan_exp009, pretrain_all, probe_all, rephoto_all
from derma_jepa.exp009_report import budget_table, exp009_table, fig_pretraining, label_table, render_exp009
from derma_jepa.experiment import Config, resolve_data
from derma_jepa.executors import make_executor
from derma_jepa.plan import run_plan
from derma_jepa.render import palette_problems, small_text

exit_with_parent()          # a killed papermill takes this kernel with it (03_safety)

# %% tags=["parameters"]
settings_file = ""
corpus = ""
objectives = ""
protocols = ""
compare = ""
steps = ""
seeds = ""
budgets = ""
variants = ""
pretrain_set = ""
recipe_set = ""
audit_set = ""
runs_dir = "runs"
paper_dir = "paper"
executor = "local"

# %% tags=["injected-parameters"]
# Parameters
runs_dir = "runs"
executor = "local"
compare = "color_texture"

# %%
_split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None
_yaml = lambda v: load_yaml(text=v, source=repr(v), mapping=False) if v else None
settings = load_exp009(settings_file or None, corpus=corpus or None, objectives=_split(objectives),
                       protocols=_split(protocols), steps=_yaml(steps), pretrain=_yaml(pretrain_set), seeds=_yaml(seeds),
                       budgets=_yaml(budgets), variants=_yaml(variants),
                       audit=_yaml(audit_set), **({"compare": [] if compare == "none" else _split(compare)} if compare else {}))
recipe_overrides = {**settings["recipe_set"], **(_yaml(recipe_set) or {})}      # the settings file's, then this notebook's
recipe = Config.from_yaml(settings["recipe"], **recipe_overrides)
ham_dir = resolve_data(recipe)
out = Path(runs_dir) / "exp009"
import os
_shown = lambda k, v: ({o: c.steps for o, c in v.items()} if k == "pretrain" else
                       os.path.relpath(v) if k in ("file", "recipe") else v)          # paths relative to the checkout
{k: _shown(k, v) for k, v in settings.items()}

# %% [markdown]
# ## 1. The overlap audit, and the audited corpus
#
# Calibrated on HAM10000 itself (synthetic near-duplicates vs distinct lesions), then every
# HAM10000 image against every corpus image. The record goes to `paper/audit/`.

# %%
audit = run_overlap_audit(ham_dir, settings["corpus"], Path(paper_dir) / "audit", **settings["audit"])
print(audit["verdict"])
print(json.dumps({k: audit["calibration"][k] for k in ("thresholds", "votes", "recall_two_stage", "fpr_two_stage_held_out",
                                                       "fpr_two_stage_held_out_upper_95", "n_neg_held_out")}))
pd.DataFrame(audit.get("adjudication", []))
audit_figure(audit["report"]);

# %%
corpus_paths = image_paths(settings["corpus"])
kept, excluded = audited_corpus(corpus_paths, audit["report"], settings["holdout"], settings["corpus"])
print(f"corpus: {len(corpus_paths)} images, {len(excluded)} left out, {len(kept)} kept for pretraining")
excluded

# %% [markdown]
# ## 2. Pretraining
#
# One folder per objective under `runs/exp009/pretrain/`; an interrupted run resumes from its last
# checkpoint when this notebook is run again.

# %%
ex = make_executor(executor, out / "jobs", settings["resources"])       # local, or SLURM jobs (19_executors)
encoders = pretrain_all(settings, kept, runs_dir, progress=False, executor=None if executor == "local" else ex)
encoders[["label", "budget", "images_seen", "gflops", "seconds", "dtype"]]    # throughput: each run's train.json

# %%
fig_pretraining(encoders);

# %% [markdown]
# ## 3 and 4. The plan: the diagnosis probe and the EXP-004 recipe for every encoder

# %%
plan = plan_exp009(settings, encoders, runs_dir, recipe_overrides)
plan[["label", "protocol", "backbone", "run_dir"]]

# %%
probes = probe_all(plan, settings, resolve_data(recipe), recipe.seed, encoders)
atomic_write_bytes(out / "probes.csv", probes.to_csv(index=False).encode())
exp009_table(probes, encoders)

# %%
plan = run_plan(plan, out / "plan.json", executor=ex)
plan[["label", "protocol", "status"]]

# %%
rephoto = rephoto_all(plan, encoders, ham_dir, settings["probe"]["n_boot"], recipe.seed)
atomic_write_bytes(out / "rephoto.csv", rephoto.to_csv(index=False).encode())
label_table(probes)

# %%
budget_table(probes, rephoto)

# %% [markdown]
# ## 5. Where the encoders look, and transfer to ISIC 2017
#
# 24_featuremaps for every ViT of the plan: the lesion-attention lift over 120 HAM10000 test images
# with masks, and the maps of one image per diagnosis; 16_probe's melanoma transfer to the 150
# ISIC 2017 validation images for every backbone. The table counts, per encoder, the transfer
# images its pretraining corpus held (unlabelled); the settings' `holdout` keeps them out of it.

# %%
from derma_jepa.featuremaps import encoder_maps, fig_anchors, fig_maps
from derma_jepa.render import paper_style
isic2017 = Path(settings["corpus"]) / "isic2017"
_val = {Path(p).resolve() for p in image_paths(isic2017 / "val")}
_seen = sum(Path(p).resolve() in _val for p in kept)
_trained = {f"ssl:{p}" for p, st in zip(encoders.path, encoders.steps) if st > 0}
_labels = dict(zip(plan.label, plan.backbone))
_first = set(plan[plan.pretrain_seed.isna() | plan.pretrain_seed.eq(settings["seeds"][0])].label)   # the figures: the first seed
maps_table, shown = encoder_maps(_labels, ham_dir, isic2017, recipe.seed,
                                 in_corpus={l: _seen for l, b in _labels.items() if b in _trained}, show=_first)
print(f"ISIC 2017 validation images in the pretraining corpus: {_seen} of {len(_val)}")
maps_table

# %%
with paper_style():
    _m, _l = list(shown["maps"].values()), list(shown["maps"])
    map_figs = {"attention": fig_maps(_m, _l, "attention", shown["titles"]), "pca": fig_maps(_m, _l, "pca", shown["titles"]),
                "anchors": fig_anchors(_m, _l, image=shown["titles"].index("mel"))}     # shown below, as drawn

# %% [markdown]
# ## 6. The result, rendered into `paper/exp009/`

# %%
paper = render_exp009(plan, probes, encoders, audit, excluded, len(kept), paper_dir,
                      maps={"table": maps_table, "figures": map_figs, "n": shown["n"]}, rephoto=rephoto,
                      left_out=settings["compare_left_out"])
for _k, _f in paper["figures"].items():          # the real figures, as printed: the paper's palette, no text under 8 pt
    assert not palette_problems(_f) and not small_text(_f), (_k, palette_problems(_f), small_text(_f))
print("\n".join(f"{paper_dir}/exp009/{f}" for f in paper["files"]))
paper["tables"]["exp009_table"]

# %%
paper["tables"]["recipe_table"]

# %%
paper["figures"]["by_encoder"]

# %%
paper["figures"].get("budget")

# %%
paper["figures"]["label_efficiency"]

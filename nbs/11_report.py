# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp report

# %% [markdown]
# # Report: the arc, the seed sweep and the paper's tables
#
# > Plan the experiment arc, run it through the papermill notebook, and turn run directories into tables and figures.

# %% [markdown]
# The published arc (PROTOCOL B4) is nine runs and a seed sweep. Here an arc is *data*: a YAML
# naming the experiment files, the protocols and the sweep (`nbs/experiments/arc.yaml`). Three
# steps turn it into a paper:
#
# 1. **plan** (`plan_arc`): every (experiment, protocol, seed, backbone) becomes one `Config`,
#    validated before anything runs, with its run directory and whether it can run here. A hub
#    backbone without weights becomes a row that says so ("not run: weights for … not found"); it
#    is never replaced silently. Offline backbones can be asked for *beside* the paper's
#    backbone, and are then labelled as stand-ins everywhere.
# 2. **execute** (`execute_run`): each runnable config goes through `nbs/run.ipynb` with papermill;
#    the executed notebook is filed in its run directory as `run.ipynb`, so every number in the
#    paper leads back to an executed notebook. A run whose directory is complete is not re-run,
#    and every embedding and pixel score comes from the shared cache.
# 3. **aggregate** (`collect`, the `*_table` functions): run directories → one long table of
#    metrics → the cross-run table (both protocols side by side, with the leak probes and the
#    re-photography pairs), predictor × optimiser, and the seed sweep (mean ± SD and the
#    Student-t interval of the mean, with the per-seed baselines the release left out).
#
# 17_render draws the figures and writes `paper/`; `nbs/paper.ipynb` runs it, and `make paper`
# (the `derma_jepa_paper` command) does all three steps.

# %%
#| export
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from derma_jepa.backbones import OFFLINE_BACKBONES, WeightsNotFound, backbone_spec, resolve_weights
from derma_jepa.data import DataError, atomic_write_bytes
from derma_jepa.experiment import Config, ConfigError, resolve_data, run_id

# %%
from fastcore.test import test_eq, test_fail, test_close


# %% [markdown]
# ## Where things are
#
# The arc files and `run.ipynb` live in the repository, found by walking up from the working
# directory to `settings.ini` (so notebooks, tests and `make` agree).

# %%
#| export
def repo_root(start=None) -> Path:
    "The folder holding settings.ini, searched upwards from `start` (default: the working directory)."
    p = Path(start or Path.cwd()).resolve()
    for q in [p, *p.parents]:
        if (q / "settings.ini").exists() and (q / "nbs").is_dir(): return q
    raise DataError(f"no derma-jepa checkout (settings.ini + nbs/) above {p}")


def experiments_dir() -> Path: return repo_root() / "nbs" / "experiments"


# %%
assert (experiments_dir() / "arc.yaml").exists()

# %% [markdown]
# ## The arc as data
#
# `arc.yaml` lists experiment files (their stems), the protocols and the sweep. Any other key is
# an error that names the file, as is an experiment whose YAML is missing.

# %%
#| export
ARC_KEYS = {"experiments", "protocols", "sweep"}
SWEEP_KEYS = {"experiments", "seeds"}

# The paper's names for the hub backbones; offline ones keep their registry names.
BACKBONE_LABELS = {"dinov2_vitb14": "DINOv2 ViT-B/14", "dinov2_vits14": "DINOv2 ViT-S/14",
                   "clip_vitb16": "OpenAI CLIP ViT-B/16", "dermlip_vitb16": "DermLIP ViT-B/16",
                   "biomedclip_vitb16": "BiomedCLIP ViT-B/16"}


def load_arc(path) -> dict:
    "Read and check an arc file: {'experiments': [...], 'protocols': [...], 'sweep': {'experiments', 'seeds'}}."
    path = Path(path)
    if not path.exists(): raise ConfigError(f"arc file {path} not found")
    arc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(arc, dict): raise ConfigError(f"{path}: expected a mapping")
    if set(arc) - ARC_KEYS: raise ConfigError(f"{path}: unknown key {sorted(set(arc) - ARC_KEYS)[0]!r}; keys: {', '.join(sorted(ARC_KEYS))}")
    sweep = arc.get("sweep") or {}
    if set(sweep) - SWEEP_KEYS: raise ConfigError(f"{path}: unknown sweep key {sorted(set(sweep) - SWEEP_KEYS)[0]!r}")
    out = {"experiments": list(arc.get("experiments") or []), "protocols": list(arc.get("protocols") or ["symmetric"]),
           "sweep": {"experiments": list(sweep.get("experiments") or []), "seeds": [int(s) for s in sweep.get("seeds") or []]}}
    for e in out["experiments"] + out["sweep"]["experiments"]:
        if not (path.parent / f"{e}.yaml").exists(): raise ConfigError(f"{path}: experiment {e!r} has no file {path.parent / (e + '.yaml')}")
    return out


# %%
_arc = load_arc(experiments_dir() / "arc.yaml")
test_eq(_arc["experiments"], ["exp001", "exp002", "exp003", "exp004", "exp005", "exp006a", "exp006b", "exp007", "exp008"])
test_eq(_arc["sweep"], {"experiments": ["exp007", "exp008"], "seeds": [20260422, 1, 2, 3, 4]})
_tmp = Path(tempfile.mkdtemp())
(_tmp / "bad.yaml").write_text("experiments: [exp004]\nprotocol: [reference]\n")
test_fail(lambda: load_arc(_tmp / "bad.yaml"), contains="unknown key 'protocol'")
(_tmp / "gone.yaml").write_text("experiments: [exp404]\n")
test_fail(lambda: load_arc(_tmp / "gone.yaml"), contains="experiment 'exp404' has no file")


# %% [markdown]
# ## Can a backbone run here?
#
# Offline backbones always can. A hub backbone can when its weights are in the Hugging Face cache
# (or at the config's `weights` path); otherwise its rows carry the reason, in the words the
# tables print.

# %%
#| export
def weights_status(backbone: str, weights: str = "", hub_cache=None) -> str:
    "'' when the backbone's weights are available here, else 'not run: weights for <hub id> not found'."
    spec = backbone_spec(backbone)
    if not spec.hub_id and not weights: return ""
    try: resolve_weights(spec, weights or None, hub_cache)
    except WeightsNotFound: return f"not run: weights for {spec.hub_id or weights} not found"
    return ""


def parse_backbones(backbones: str) -> list[str]:
    "`hub` → no stand-ins; `offline` → every offline backbone of the arc; else a comma list of offline names."
    if backbones in ("", "hub"): return []
    names = list(STAND_INS) if backbones == "offline" else [b.strip() for b in backbones.split(",") if b.strip()]
    for b in names:
        if backbone_spec(b).hub_id: raise ConfigError(f"BACKBONES={backbones}: {b!r} is a hub backbone; stand-ins must be offline ({', '.join(OFFLINE_BACKBONES)})")
    return [backbone_spec(b).name for b in names]


STAND_INS = ("random_vitb16", "color_texture")

# %%
test_eq(weights_status("color_texture"), "")
test_eq(weights_status("dinov2", hub_cache=_tmp / "empty-hub"), "not run: weights for timm/vit_base_patch14_dinov2.lvd142m not found")
test_eq(parse_backbones("offline"), ["random_vitb16", "color_texture"])
test_eq(parse_backbones("hub"), [])
test_fail(lambda: parse_backbones("color_texture,clip"), contains="'clip' is a hub backbone")
test_fail(lambda: parse_backbones("resnet"), contains="unknown backbone 'resnet'")


# %% [markdown]
# ## The plan
#
# One row per run: the experiment's label, protocol, seed, whether it belongs to the sweep, the
# backbone the paper used and the one this row runs, `stand_in`, the run directory and its
# status (`run` or the reason it cannot). Configs are built (and so validated) here, before any
# work; `overrides` apply to every experiment (e.g. `data=fixture` for a dry run). The sweep's
# seed-20260422 runs are the arc's own, so they share run directories and run once. Likewise a
# run that differs from an earlier one *only in its experiment label* is that run: EXP-004,
# 006b, 007 and 008 differ only in the hub backbone, so on an offline stand-in they are one
# run, which is made once and shown once, naming every experiment it stands for.

# %%
#| export
def plan_arc(arc_file=None, backbones: str = "hub", overrides: dict | None = None, sweep: bool = True,
             runs_dir="runs") -> pd.DataFrame:
    "Every run of the arc (and sweep) as a validated config with its run directory and status."
    arc_file = Path(arc_file or experiments_dir() / "arc.yaml")
    arc, stand_ins, overrides = load_arc(arc_file), parse_backbones(backbones), dict(overrides or {})
    if "run_dir" in overrides: raise ConfigError("run_dir cannot be overridden for a whole arc: use the runs folder")
    jobs = [(e, None, False) for e in arc["experiments"]]
    if sweep: jobs += [(e, s, True) for e in arc["sweep"]["experiments"] for s in arc["sweep"]["seeds"]]
    rows = []
    for stem, seed, in_sweep in jobs:
        for protocol in arc["protocols"]:
            extra = {"protocol": protocol, **({"seed": seed} if seed is not None else {})}
            base = Config.from_yaml(arc_file.parent / f"{stem}.yaml", **{**overrides, **extra})
            for bb in [backbone_spec(base.backbone).name, *stand_ins]:
                cfg = dataclasses.replace(base, backbone=bb)
                stand_in = bb != backbone_spec(base.backbone).name
                cfg = dataclasses.replace(cfg, run_dir=str(Path(runs_dir) / run_id(cfg)))
                rows.append({"experiment": cfg.experiment or stem, "file": stem, "protocol": protocol, "seed": cfg.seed,
                             "sweep": in_sweep, "paper_backbone": base.backbone, "backbone": bb, "stand_in": stand_in,
                             "status": weights_status(bb, cfg.weights) or "run", "run_dir": cfg.run_dir, "config": cfg})
    plan = pd.DataFrame(rows)
    same = [json.dumps({k: v for k, v in c.to_dict().items() if k not in ("experiment", "run_dir")}, sort_keys=True)
            for c in plan.config]
    first = {}
    src = [first.setdefault(k, i) for i, k in enumerate(same)]       # the first row with this config runs it
    return plan.assign(run_dir=plan.run_dir.to_numpy()[src], config=plan.config.to_numpy()[src])


# %%
_plan = plan_arc(backbones="offline", overrides={"data": "fixture"}, runs_dir=_tmp / "runs")
test_eq(len(_plan), (9 + 2 * 5) * 2 * 3)
test_eq(_plan[~_plan.stand_in].status.str.startswith("not run: weights for").all(), True)
test_eq(set(_plan[_plan.stand_in].status), {"run"})
# seed 20260422 of the sweep = the arc's runs; EXP-004/006b/007/008 are one run per stand-in and protocol,
# and so are the sweep's EXP-007/008 at each seed
test_eq(_plan[_plan.stand_in].run_dir.nunique(), (9 - 3 + 4) * 2 * 2)
_shared = _plan[_plan.stand_in & ~_plan.sweep & _plan.protocol.eq("symmetric") & _plan.backbone.eq("color_texture")]
test_eq(_shared.groupby("run_dir").experiment.apply(list).tolist()[3], ["EXP-004", "EXP-006b", "EXP-007", "EXP-008"])
_plan[["experiment", "protocol", "seed", "sweep", "paper_backbone", "backbone", "stand_in", "status"]].head(6)

# %% [markdown]
# Bad input stops the plan, and so the arc, before anything runs: a typo in an override, an
# unknown backbone among the stand-ins, an unknown key in an experiment YAML.

# %%
test_fail(lambda: plan_arc(overrides={"pairs_per_splt": 3}), contains="did you mean 'pairs_per_split'")
test_fail(lambda: plan_arc(backbones="resnet"), contains="unknown backbone 'resnet'")
(_tmp / "exp404.yaml").write_text("experiment: EXP-404\nbackbone: color_texture\nlearning_rate: 3\n")
(_tmp / "arc404.yaml").write_text("experiments: [exp404]\n")
test_fail(lambda: plan_arc(_tmp / "arc404.yaml"), contains="exp404.yaml: 'learning_rate' is not a configuration field")


# %% [markdown]
# ## Executing one run
#
# papermill executes `nbs/run.ipynb` with the config's fields as parameters, into a temporary
# file that is moved into the run directory once the run has finished (`run()` itself wrote the
# directory atomically). A run is *complete* when its directory holds `run.ipynb`, `metrics.json`
# and the same `config.yaml`; complete runs are skipped. A failed notebook is kept beside the runs
# (`<runs>/failed/`) for inspection, and the error is returned, not raised, so one bad run does
# not lose the rest of an arc.

# %%
#| export
def is_complete(config: Config) -> bool:
    d = Path(config.run_dir)
    if not ((d / "run.ipynb").exists() and (d / "metrics.json").exists() and (d / "config.yaml").exists()): return False
    return yaml.safe_load((d / "config.yaml").read_text()) == config.to_dict()


def execute_run(config: Config, notebook=None, kernel: str = "python3") -> str:
    "Run `config` through run.ipynb with papermill; '' on success, else the error in one line."
    import papermill as pm
    notebook = Path(notebook or repo_root() / "nbs" / "run.ipynb")
    dest = Path(config.run_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".nb-") as tmp:
        out = Path(tmp) / "run.ipynb"
        try:
            pm.execute_notebook(str(notebook), str(out), parameters=config.to_dict(), kernel_name=kernel,
                                progress_bar=False, log_output=False, cwd=str(Path.cwd()))
        except pm.PapermillExecutionError as e:
            failed = dest.parent / "failed"; failed.mkdir(exist_ok=True)
            shutil.copyfile(out, failed / f"{dest.name}.ipynb")
            return f"{e.ename}: {e.evalue}".splitlines()[0]
        atomic_write_bytes(dest / "run.ipynb", out.read_bytes())
    return ""


# %% [markdown]
# ## Running a plan
#
# Rows that can run are executed in plan order (so EXP-004's embeddings are cached before
# EXP-005 needs them), each distinct run directory once; complete ones are skipped. One line per
# run reports what happened. The plan, without the config objects, is written as JSON beside the
# runs: it is what `paper.ipynb` reads.

# %%
#| export
def plan_records(plan: pd.DataFrame) -> list[dict]:
    "The plan as JSON-ready records (the config as its dict)."
    return [{**{k: v for k, v in r.items() if k != "config"}, "config": r["config"].to_dict()}
            for r in plan.to_dict("records")]


def run_plan(plan: pd.DataFrame, plan_file=None, log=print) -> pd.DataFrame:
    "Execute every runnable row of `plan`; returns the plan with `status` updated for failures."
    plan = plan.copy()
    todo = plan[plan.status == "run"].drop_duplicates("run_dir")
    for k, (_, row) in enumerate(todo.iterrows(), 1):
        what = f"[{k}/{len(todo)}] {row.experiment} {row.protocol} seed {row.seed} {row.backbone}"
        if is_complete(row.config):
            log(f"{what}: complete, skipped ({row.run_dir})"); continue
        err = execute_run(row.config)
        if err: plan.loc[plan.run_dir == row.run_dir, "status"] = f"failed: {err}"
        log(f"{what}: {'FAILED ' + err if err else 'done, seconds per stage in its timings.json'} ({row.run_dir})")
    if plan_file: atomic_write_bytes(Path(plan_file), json.dumps(plan_records(plan), indent=1).encode())
    return plan


def read_plan(path) -> pd.DataFrame:
    "A plan written by `run_plan`, with its configs rebuilt."
    rows = json.loads(Path(path).read_text())
    return pd.DataFrame([{**r, "config": Config.from_params(r["config"])} for r in rows])


# %% [markdown]
# ## From run directories to one table
#
# `collect` reads `metrics.json` and `timings.json` of every run row and returns one long table:
# a row per (run, split, scorer) with the four metrics and the AUROC's CI, the re-photography
# AUROC and CI where the run has those pairs, and the run's Δs (with CIs) and verdict. Rows that
# did not run keep one row carrying their status, so no table can forget them. `experiments`
# names every experiment a run stands for (one label when a run is its experiment's alone).

# %%
#| export
METRICS = ("auroc", "auprc", "eer", "fpr_at_tpr")
_RUN_COLS = ["strongest_baseline", "delta", "delta_lo", "delta_hi", "delta_identity", "delta_identity_lo", "delta_identity_hi",
             "verdict", "verdict_rule", "bootstrap_unit", "predictor", "optimizer", "seconds", "fit_seconds"]


def _run_fields(ev: dict, tim: dict) -> dict:
    best = ev["strongest_baseline"]
    d, di = ev["deltas"]["test"][f"predictor - {best}"], ev["deltas"]["test"].get("predictor - identity", {})
    return {"strongest_baseline": best, "delta": d["value"], "delta_lo": d["ci_low"], "delta_hi": d["ci_high"],
            "delta_identity": di.get("value", np.nan), "delta_identity_lo": di.get("ci_low", np.nan),
            "delta_identity_hi": di.get("ci_high", np.nan), "verdict": ev["verdict"], "verdict_rule": ev["verdict_rule"],
            "bootstrap_unit": ev["bootstrap"]["unit"], "predictor": ev["training"]["predictor"],
            "optimizer": ev["training"]["optimizer"], "seconds": tim.get("total", np.nan), "fit_seconds": tim.get("fit", np.nan)}


def experiments_label(plan: pd.DataFrame) -> pd.Series:
    "Per plan row: every experiment (of the same part, arc or sweep) whose run it is, joined with ' = '."
    return plan.groupby(["sweep", "run_dir"], sort=False).experiment.transform(lambda e: " = ".join(dict.fromkeys(e)))


def collect(plan: pd.DataFrame) -> pd.DataFrame:
    "One row per (plan row, split, scorer), metrics and CIs flattened; un-run rows keep their status."
    keys = ["experiment", "protocol", "seed", "sweep", "paper_backbone", "backbone", "stand_in", "status", "run_dir"]
    plan = plan.assign(experiments=experiments_label(plan))
    out = []
    for r in plan[keys + ["experiments"]].to_dict("records"):
        mfile = Path(r["run_dir"]) / "metrics.json"
        if r["status"] != "run" or not mfile.exists():
            out.append({**r, "status": r["status"] if r["status"] != "run" else "not run: no metrics.json"}); continue
        ev = json.loads(mfile.read_text())
        run = _run_fields(ev, json.loads((Path(r["run_dir"]) / "timings.json").read_text()))
        for split, scorers in ev["metrics"].items():
            reph = ev.get("rephoto", {}).get(split, {})
            for scorer, m in scorers.items():
                row = {**r, "split": split, "scorer": scorer, **run, **{name: m[name]["value"] for name in METRICS},
                       "auroc_lo": m["auroc"]["ci_low"], "auroc_hi": m["auroc"]["ci_high"]}
                if scorer in reph:
                    row.update(rephoto_auroc=reph[scorer]["auroc"]["value"], rephoto_lo=reph[scorer]["auroc"]["ci_low"],
                               rephoto_hi=reph[scorer]["auroc"]["ci_high"])
                out.append(row)
    cols = [*keys, "experiments", "split", "scorer", *_RUN_COLS, *METRICS, "auroc_lo", "auroc_hi",
            "rephoto_auroc", "rephoto_lo", "rephoto_hi"]
    return pd.DataFrame(out, columns=cols)         # the same columns when nothing ran


def backbone_label(backbone: str, stand_in: bool) -> str:
    "How a backbone is named in a table: the paper's name, or the offline name marked as a stand-in."
    if not stand_in: return BACKBONE_LABELS.get(backbone, backbone)
    return f"{backbone} (offline stand-in)"


# %% [markdown]
# ## Tables
#
# A cell reads `0.644 [0.620, 0.668]`: the test AUROC and its 95% bootstrap CI. Rows are the
# arc's experiments with the backbone each ran on; the two protocols sit side by side, so a
# result that exists only under `reference` is visible at a glance. Per protocol, the arc table
# shows the predictor, the strongest baseline, Δ = predictor − strongest baseline with its paired
# interval, the verdict (the release's rule under `reference`, labelled so; Δ's interval under
# `symmetric`), the two **single-side probes** (a logistic regression that sees only the target,
# or only the context, embedding: 0.5 when one side alone carries no label, so these are the leak
# detectors) and the predictor's AUROC on the **real re-photography pairs** against the changing
# pairs (symmetric runs only). Intervals are made as each protocol says (10_experiment):
# context-lesion clusters under `symmetric`, the release's pair-level resamples under `reference`.

# %%
#| export
def fmt_ci(v, lo, hi) -> str: return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _test(long: pd.DataFrame) -> pd.DataFrame:
    return long[long.split.eq("test")] if "split" in long else long.iloc[:0]


ARC_COLUMNS = ("predictor AUROC [95% CI]", "strongest baseline", "Δ [95% CI]", "verdict", "target-only probe",
               "context-only probe", "re-photo AUROC [95% CI]")


def _ci_cell(row, v="auroc", lo="auroc_lo", hi="auroc_hi") -> str:
    return "–" if pd.isna(row[v]) else fmt_ci(row[v], row[lo], row[hi])


def arc_cells(t: pd.DataFrame) -> dict:
    "The arc table's cells for one run's test rows."
    by = t.set_index("scorer")
    p, b = by.loc["predictor"], by.loc[by.loc["predictor"].strongest_baseline]
    rule = " (release rule)" if p.bootstrap_unit == "pair" else ""
    return dict(zip(ARC_COLUMNS, [_ci_cell(p), f"{p.strongest_baseline} {b.auroc:.3f}",
                                  "–" if pd.isna(p.delta_lo) else f"{p.delta:+.3f} [{p.delta_lo:+.3f}, {p.delta_hi:+.3f}]",
                                  p.verdict + rule, _ci_cell(by.loc["target_only_probe"]), _ci_cell(by.loc["context_only_probe"]),
                                  _ci_cell(p, "rephoto_auroc", "rephoto_lo", "rephoto_hi")]))


def arc_table(long: pd.DataFrame) -> pd.DataFrame:
    """Cross-run table (seed-20260422 arc runs), per protocol: predictor AUROC [CI], the strongest baseline, Δ [CI],
    verdict, the single-side probes and the re-photography AUROC. A run several experiments share is one row."""
    arc = long[~long.sweep].drop_duplicates(["run_dir", "split", "scorer"])
    rows = {}
    for (exp, bb, si, prot), g in arc.groupby(["experiments", "backbone", "stand_in", "protocol"], sort=False):
        t = _test(g)
        cells = (arc_cells(t) if not t.empty else
                 {c: (g.status.iloc[0] if c == ARC_COLUMNS[0] else "–") for c in ARC_COLUMNS})
        rows.setdefault((exp, backbone_label(bb, si)), {}).update({(prot, k): v for k, v in cells.items()})
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["experiment", "backbone"])
    df.columns = pd.MultiIndex.from_tuples(df.columns, names=["protocol", ""])
    return df.fillna("–")


def optimiser_table(long: pd.DataFrame, experiments=("EXP-004", "EXP-005", "EXP-006a")) -> pd.DataFrame:
    "Predictor × optimiser on the EXP-004 data: train and test AUROC and the bias-only control (fit times: timings.json)."
    t = long[~long.sweep & long.experiment.isin(experiments) & long.split.isin(["train", "test"])] if "split" in long else long.iloc[:0]
    rows = []
    for (exp, bb, si, prot), g in t.groupby(["experiment", "backbone", "stand_in", "protocol"], sort=False):
        p = g[g.scorer.eq("predictor")].set_index("split")
        bias = g[g.scorer.eq("bias_only") & g.split.eq("test")].auroc.iloc[0]
        rows.append({"experiment": exp, "backbone": backbone_label(bb, si), "predictor / optimiser":
                     f"{p.predictor.iloc[0]} / {p.optimizer.iloc[0]}", "protocol": prot,
                     "train AUROC": f"{p.loc['train', 'auroc']:.3f}",
                     "test AUROC [95% CI]": fmt_ci(p.loc["test", "auroc"], p.loc["test", "auroc_lo"], p.loc["test", "auroc_hi"]),
                     "bias-only test AUROC": f"{bias:.3f}"})          # no wall times: the paper is rewritten identically
    if not rows: return pd.DataFrame()
    return (pd.DataFrame(rows).set_index(["experiment", "backbone", "predictor / optimiser", "protocol"])
            .unstack("protocol").swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False))


# %% [markdown]
# ### The seed sweep
#
# Over the seeds of one (experiment, backbone, protocol): mean ± unbiased SD, and the 95% interval
# of the mean from Student's t with n − 1 degrees of freedom, mean ± t(0.975, n−1)·SD/√n
# (`scipy.stats.t`). The release used 1.96 in place of t (PROTOCOL A7, the normal
# approximation); with n = 5 seeds t = 2.776, so its interval is about 30% too narrow. It is
# kept in a column of its own that says so. The release reported the predictor only; here every
# scorer is aggregated per seed, because the seed changes the split and the pairs, so the
# baselines move with it too.

# %%
#| export
def mean_sd_ci(values, level: float = 0.95) -> dict:
    "n, mean, unbiased SD, the Student-t CI of the mean and, beside it, the release's normal one (1.96·SD/√n)."
    from scipy import stats
    v = np.asarray(values, float)
    n, m = len(v), float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    se = sd / math.sqrt(n) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se if n > 1 else float("nan")
    return {"n": n, "mean": m, "sd": sd, "ci_low": m - half, "ci_high": m + half,
            "release_ci_low": m - 1.96 * se, "release_ci_high": m + 1.96 * se}


SWEEP_SCORERS = ("predictor", "identity", "bias_only", "pixel_l2", "ssim")


def sweep_summary(long: pd.DataFrame, scorers=SWEEP_SCORERS) -> pd.DataFrame:
    "Per (experiments, backbone, protocol, scorer): the test AUROC over the sweep's seeds, each run counted once."
    t = _test(long[long.sweep]).drop_duplicates(["run_dir", "scorer"])
    t = t[t.scorer.isin(scorers)]
    rows = []
    for (exp, bb, si, prot, sc), g in t.groupby(["experiments", "backbone", "stand_in", "protocol", "scorer"], sort=False):
        rows.append({"experiment": exp, "backbone": backbone_label(bb, si), "protocol": prot, "scorer": sc,
                     "seeds": ",".join(map(str, sorted(g.seed))), **mean_sd_ci(g.auroc)})
    return pd.DataFrame(rows)


def sweep_table(long: pd.DataFrame) -> pd.DataFrame:
    """The sweep as printed: 'mean ± SD [t CI]' per scorer and the release's 1.96 interval of the predictor, a row per
    (experiments, backbone, protocol); un-run rows say why."""
    s = sweep_summary(long)
    release = "predictor: release's ±1.96·SD/√n"
    if not s.empty:
        s["cell"] = [f"{r.mean:.3f} ± {r.sd:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in s.itertuples()]
        pred = s[s.scorer.eq("predictor")]
        s = pd.concat([s, pred.assign(scorer=release, cell=[f"[{r.release_ci_low:.3f}, {r.release_ci_high:.3f}]"
                                                            for r in pred.itertuples()])], ignore_index=True)
    idle = long[long.sweep & ~long.status.eq("run")].drop_duplicates(["experiments", "backbone", "protocol"])
    s = pd.concat([s, pd.DataFrame({"experiment": idle.experiments, "protocol": idle.protocol, "n": 0, "scorer": "predictor",
                                    "backbone": [backbone_label(b, si) for b, si in zip(idle.backbone, idle.stand_in)],
                                    "cell": idle.status})], ignore_index=True)
    if s.empty: return s
    t = s.pivot_table(index=["experiment", "backbone", "protocol", "n"], columns="scorer", values="cell", aggfunc="first", sort=False)
    order = {e: k for k, e in enumerate(dict.fromkeys(long.experiments))}
    t = t.sort_index(key=lambda ix: ix.map(order) if ix.name == "experiment" else ix, sort_remaining=False)
    return t[[c for c in [*SWEEP_SCORERS, release] if c in t.columns]].fillna("–")


# %%
from scipy import stats
_v = [0.61, 0.66, 0.64, 0.70, 0.63]
_s = mean_sd_ci(_v)
test_close(_s["sd"], np.std(_v, ddof=1))
test_close(_s["ci_high"] - _s["mean"], stats.t.ppf(0.975, 4) * np.std(_v, ddof=1) / np.sqrt(5), eps=1e-12)   # t(0.975, 4) = 2.776
test_close(_s["release_ci_high"] - _s["mean"], 1.96 * np.std(_v, ddof=1) / np.sqrt(5), eps=1e-12)
test_close((_s["ci_high"] - _s["mean"]) / (_s["release_ci_high"] - _s["mean"]), 2.776 / 1.96, eps=1e-3)


# %% [markdown]
# A synthetic long table checks the shapes: two experiments, two protocols, one not run; the
# sweep over three seeds.

# %%
def _fake(exp, prot, seed, sweep, auroc, status="run", bb="color_texture", si=True):
    run_dir = f"runs/{exp}-{prot}-{seed}-{bb}"
    base = dict(experiment=exp, experiments=exp, protocol=prot, seed=seed, sweep=sweep, backbone=bb, stand_in=si, status=status,
                run_dir=run_dir)
    if status != "run": return [base]
    return [dict(base, split=sp, scorer=sc, auroc=auroc + d, auroc_lo=auroc + d - 0.02, auroc_hi=auroc + d + 0.02,
                 strongest_baseline="pixel_l2", delta=-0.05, delta_lo=-0.08, delta_hi=-0.01, verdict="worse",
                 bootstrap_unit="pair" if prot == "reference" else "context lesion", predictor="linear", optimizer="sgd",
                 fit_seconds=1.0, rephoto_auroc=np.nan if prot == "reference" else auroc + 0.1,
                 rephoto_lo=auroc + 0.05, rephoto_hi=auroc + 0.15)
            for sp in ("train", "test") for sc, d in (("predictor", 0.0), ("pixel_l2", 0.05), ("bias_only", -0.01),
                                                      ("identity", 0.0), ("ssim", 0.0), ("target_only_probe", -0.1),
                                                      ("context_only_probe", -0.2))]

_long = pd.DataFrame([r for a in [_fake("EXP-004", "reference", 20260422, False, 0.64), _fake("EXP-004", "symmetric", 20260422, False, 0.70),
                                  _fake("EXP-007", "reference", 20260422, False, 0, "not run: weights for x not found", "dermlip_vitb16", False),
                                  *[_fake("EXP-007", "symmetric", s, True, 0.6 + 0.01 * s) for s in (1, 2, 3)]] for r in a])
_at = arc_table(_long)
test_eq(_at.loc[("EXP-004", "color_texture (offline stand-in)"), ("symmetric", "predictor AUROC [95% CI]")], "0.700 [0.680, 0.720]")
test_eq(_at.loc[("EXP-007", "DermLIP ViT-B/16"), ("reference", "predictor AUROC [95% CI]")], "not run: weights for x not found")
_long = pd.concat([_long, pd.DataFrame(_fake("EXP-007", "symmetric", 1, True, 0, "not run: weights for x not found", "dermlip_vitb16", False))])
_st = sweep_table(_long)
test_eq(_st.loc[("EXP-007", "color_texture (offline stand-in)", "symmetric", 3), "predictor"], "0.620 ± 0.010 [0.595, 0.645]")
test_eq(_st.loc[("EXP-007", "color_texture (offline stand-in)", "symmetric", 3), "predictor: release's ±1.96·SD/√n"], "[0.609, 0.631]")
test_eq(_at.loc[("EXP-004", "color_texture (offline stand-in)"), ("symmetric", "Δ [95% CI]")], "-0.050 [-0.080, -0.010]")
test_eq(_at.loc[("EXP-004", "color_texture (offline stand-in)"), ("reference", "verdict")], "worse (release rule)")
test_eq(_at.loc[("EXP-004", "color_texture (offline stand-in)"), ("symmetric", "target-only probe")], "0.600 [0.580, 0.620]")
test_eq(_at.loc[("EXP-004", "color_texture (offline stand-in)"), ("reference", "re-photo AUROC [95% CI]")], "–")
test_eq(_st.loc[("EXP-007", "DermLIP ViT-B/16", "symmetric", 0), "predictor"], "not run: weights for x not found")
_at

# %% [markdown]
# Where nothing could run (the paper's hub backbones on a machine without their weights), every
# table still lists every row, with its reason.

# %%
_none = collect(plan_arc(overrides={"data": "fixture"}, runs_dir=_tmp / "runs"))
assert arc_table(_none).map(lambda v: v.startswith("not run") or v == "–").all().all()
test_eq(len(sweep_table(_none)), 2 * 2)                  # EXP-007 and EXP-008 x 2 protocols, each "not run"
test_eq(optimiser_table(_none).empty, True)


# %%
#| export
def to_markdown(df: pd.DataFrame) -> str:
    "A table as GitHub Markdown (multi-level headers joined with ' · ')."
    d = df.copy()
    if isinstance(d.columns, pd.MultiIndex): d.columns = [" · ".join(str(x) for x in c if str(x)) for c in d.columns]
    return (d.reset_index() if any(d.index.names) else d).to_markdown(index=False) + "\n"


def tex_text(text) -> str:
    "Plain text (a backbone name, a verdict, a registry note) made safe for LaTeX prose."
    return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&").replace("#", "\\#")


TEX_SYMBOLS = {"±": "$\\pm$", "Δ": "$\\Delta$", "√": "$\\surd$", "·": "$\\cdot$", "−": "$-$"}


def tex_symbols(tex: str) -> str:
    "The symbols tables and captions print (±, Δ, √, ·, −) as LaTeX math."
    for k, v in TEX_SYMBOLS.items(): tex = tex.replace(k, v)
    return tex


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    "A table as a booktabs LaTeX table, scaled to the text width."
    tex = df.to_latex(caption=caption, label=label, escape=True, multicolumn_format="c", position="htbp")
    tex = tex.replace("\\begin{tabular}", "\\resizebox{\\linewidth}{!}{\\begin{tabular}").replace("\\end{tabular}", "\\end{tabular}}")
    return tex_symbols(tex)


# %%
assert "| EXP-004" in to_markdown(_at) and "reference · verdict" in to_markdown(_at)
test_eq(tex_text("random_vitb16: 5% & #1 \\"), "random\\_vitb16: 5\\% \\& \\#1 \\textbackslash{}")
assert "\\toprule" in to_latex(_at, "x", "tab:x") and "color\\_texture" in to_latex(_at, "x", "tab:x")


# %% [markdown]
# Figures are saved as PNG without a timestamp (byte-identical when redrawn) and closed, for
# 17_render and the EXP-009 section.

# %%
#| export
def _fig_bytes(fig) -> bytes:
    import io
    import matplotlib.pyplot as plt
    buf = io.BytesIO(); fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# %% [markdown]
# ## The command: `derma_jepa_paper` (`make paper`)
#
# Plan (stopping on the first bad parameter with one line), execute, write the plan beside the
# runs, then render the paper through `nbs/paper.ipynb`, whose executed copy is kept as
# `<runs>/paper.ipynb`.

# %%
#| export
def paper_main(argv=None):
    "Run the arc (and sweep) whose backbones load here, then render paper/."
    ap = argparse.ArgumentParser(prog="derma_jepa_paper", description=paper_main.__doc__)
    ap.add_argument("--arc", default=None, help="arc file (default nbs/experiments/arc.yaml)")
    ap.add_argument("--backbones", default="hub", help="hub | offline | comma list of offline backbones run beside the paper's")
    ap.add_argument("--runs", default="runs", help="folder of run directories")
    ap.add_argument("--paper", default="paper", help="where the paper is rendered")
    ap.add_argument("--no-sweep", action="store_true", help="leave out the seed sweep")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter in every experiment")
    a = ap.parse_args(argv)
    try:
        overrides = {}
        for kv in a.set:
            if "=" not in kv: raise ConfigError(f"--set {kv!r}: expected KEY=VALUE")
            k, v = kv.split("=", 1); overrides[k] = yaml.safe_load(v)
        plan = plan_arc(a.arc, a.backbones, overrides, not a.no_sweep, a.runs)
        for cfg in plan[plan.status == "run"].drop_duplicates("run_dir").config:
            if cfg.data != "fixture": resolve_data(cfg)
    except (ConfigError, DataError) as e:
        print(f"derma_jepa_paper: {e}", file=sys.stderr); sys.exit(2)
    n_run = plan[plan.status == "run"].run_dir.nunique()
    print(f"plan: {len(plan)} rows, {n_run} runs to execute or reuse, {int((plan.status != 'run').sum())} not runnable here")
    plan_file = Path(a.runs) / f"plan-{a.backbones.replace(',', '+')}.json"
    plan = run_plan(plan, plan_file)
    import papermill as pm
    pm.execute_notebook(str(repo_root() / "nbs" / "paper.ipynb"), str(Path(a.runs) / "paper.ipynb"),
                        parameters={"plan_file": str(plan_file), "paper_dir": a.paper, "backbones": a.backbones},
                        kernel_name="python3", progress_bar=False, cwd=str(Path.cwd()))
    failed = plan[plan.status.str.startswith("failed")]
    print(f"paper rendered into {a.paper}/ (main.tex, tables/, figures/); executed notebook: {Path(a.runs) / 'paper.ipynb'}")
    if len(failed): print(f"{failed.run_dir.nunique()} run(s) failed: see {Path(a.runs) / 'failed'}", file=sys.stderr); sys.exit(1)

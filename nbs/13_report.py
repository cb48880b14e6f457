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
# > Turn run directories into one long table of metrics and the paper's tables.

# %% [markdown]
# The published arc (PROTOCOL B4) is nine runs and a seed sweep. 20_plan turns the arc file into
# a plan (one validated `Config` per experiment, protocol, seed and backbone) and runs it, here or
# on a SLURM cluster (19_executors). This notebook is the third step, **aggregate**: run
# directories → one long table of metrics (`collect`) → the cross-run table (both protocols side
# by side, with the leak probes and the re-photography pairs), predictor × optimiser, and the seed
# sweep (mean ± SD and the Student-t interval of the mean, with the per-seed baselines the release
# left out). It reads only what the runs wrote, so it does not care where they ran.
#
# 21_render draws the figures and writes `paper/`; `nbs/paper.ipynb` runs it, and `make paper`
# (the `derma_jepa_paper` command of 20_plan) does all three steps.

# %%
#| export
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from derma_jepa.metrics import METRICS          # one list of the four metrics (10_metrics)

# %%
import tempfile
from fastcore.test import test_eq, test_fail, test_close
_tmp = Path(tempfile.mkdtemp())

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
_RUN_COLS = ["strongest_baseline", "delta", "delta_lo", "delta_hi", "delta_identity", "delta_identity_lo", "delta_identity_hi",
             "verdict", "verdict_rule", "bootstrap_unit", "predictor", "optimizer", "seconds", "fit_seconds", "baselines",
             "rephoto_baseline", "rephoto_verdict", *(f"rephoto_delta_{c}{e}" for c in ("best", "identity", "bias_only")
                                                      for e in ("", "_lo", "_hi"))]


def _rephoto_fields(r: dict) -> dict:
    "The re-photo endpoint's comparator, verdict and test Δs (vs that comparator, the raw cosine, bias-only) of one run."
    if not r: return {}
    out = {"rephoto_baseline": r["strongest_baseline"], "rephoto_verdict": r["verdict"]}
    for c, name in (("best", r["strongest_baseline"]), ("identity", "identity"), ("bias_only", "bias_only")):
        d = r["deltas"]["test"].get(f"predictor - {name}")
        if d: out.update({f"rephoto_delta_{c}": d["value"], f"rephoto_delta_{c}_lo": d["ci_low"], f"rephoto_delta_{c}_hi": d["ci_high"]})
    return out


def _run_fields(ev: dict, tim: dict) -> dict:
    best = ev["strongest_baseline"]
    d, di = ev["deltas"]["test"][f"predictor - {best}"], ev["deltas"]["test"].get("predictor - identity", {})
    return {"strongest_baseline": best, "delta": d["value"], "delta_lo": d["ci_low"], "delta_hi": d["ci_high"],
            "delta_identity": di.get("value", np.nan), "delta_identity_lo": di.get("ci_low", np.nan),
            "delta_identity_hi": di.get("ci_high", np.nan), "verdict": ev["verdict"], "verdict_rule": ev["verdict_rule"],
            "bootstrap_unit": ev["bootstrap"]["unit"], "predictor": ev["training"]["predictor"],
            "optimizer": ev["training"]["optimizer"], "seconds": tim.get("total", np.nan), "fit_seconds": tim.get("fit", np.nan),
            "baselines": ",".join(ev["baselines"]["names"]), **_rephoto_fields(ev.get("rephoto", {}))}


def in_arc(df: pd.DataFrame) -> pd.Series:
    "Rows (of a plan or a long table) of the arc itself: not the sweep's other seeds, the LOFO folds, the ablation, the anchors."
    keep = ~df.sweep.astype(bool)
    for k in ("lofo", "ablation", "anchor"):
        if k in df: keep &= df[k].eq("")
    return keep


def experiments_label(plan: pd.DataFrame) -> pd.Series:
    "Per plan row: every experiment (of the same part, arc or sweep) whose run it is, joined with ' = '."
    return plan.groupby(["sweep", "run_dir"], sort=False).experiment.transform(lambda e: " = ".join(dict.fromkeys(e)))


def collect(plan: pd.DataFrame) -> pd.DataFrame:
    "One row per (plan row, split, scorer), metrics and CIs flattened; un-run rows keep their status."
    keys = ["experiment", "protocol", "seed", "sweep", "lofo", "ablation", "anchor", "paper_backbone", "backbone", "stand_in",
            "status", "run_dir"]
    plan = plan.assign(experiments=experiments_label(plan), **{k: "" for k in ("lofo", "ablation", "anchor") if k not in plan})
    out = []
    for r in plan[keys + ["experiments"]].to_dict("records"):
        mfile = Path(r["run_dir"]) / "metrics.json"
        if r["status"] != "run" or not mfile.exists():
            out.append({**r, "status": r["status"] if r["status"] != "run" else "not run: no metrics.json"}); continue
        ev = json.loads(mfile.read_text())
        run = _run_fields(ev, json.loads((Path(r["run_dir"]) / "timings.json").read_text()))
        for split, scorers in ev["metrics"].items():
            reph = ev.get("rephoto", {}).get("metrics", {}).get(split, {})
            for scorer, m in scorers.items():
                row = {**r, "split": split, "scorer": scorer, **run, **{name: m[name]["value"] for name in METRICS},
                       "auroc_lo": m["auroc"]["ci_low"], "auroc_hi": m["auroc"]["ci_high"]}
                if scorer in reph:
                    row.update(rephoto_auroc=reph[scorer]["auroc"]["value"], rephoto_lo=reph[scorer]["auroc"]["ci_low"],
                               rephoto_hi=reph[scorer]["auroc"]["ci_high"])
                for unit, key in (("pair", "pair_level_test"), ("two_way", "two_way_test")):   # other resampling units, test
                    if split == "test" and scorer in ev.get(key, {}):
                        row.update({f"{unit}_lo": ev[key][scorer]["ci_low"], f"{unit}_hi": ev[key][scorer]["ci_high"]})
                out.append(row)
    cols = [*keys, "experiments", "split", "scorer", *_RUN_COLS, *METRICS, "auroc_lo", "auroc_hi",
            "rephoto_auroc", "rephoto_lo", "rephoto_hi", "pair_lo", "pair_hi", "two_way_lo", "two_way_hi"]
    return pd.DataFrame(out, columns=cols)         # the same columns when nothing ran


# The paper's names for the hub backbones; offline ones keep their registry names.
BACKBONE_LABELS = {"dinov2_vitb14": "DINOv2 ViT-B/14", "dinov2_vits14": "DINOv2 ViT-S/14",
                   "clip_vitb16": "OpenAI CLIP ViT-B/16", "dermlip_vitb16": "DermLIP ViT-B/16",
                   "biomedclip_vitb16": "BiomedCLIP ViT-B/16"}


def backbone_label(backbone: str, stand_in: bool) -> str:
    "How a backbone is named in a table: the paper's name, or the offline name marked as a stand-in."
    if not stand_in: return BACKBONE_LABELS.get(backbone, backbone)
    return f"{backbone} (offline stand-in)"


# How a scorer is named in a table.
SCORER_LABELS = {"predictor": "predictor", "identity": "raw cosine", "bias_only": "bias-only control",
                 "pixel_l2": "pixel L2", "ssim": "SSIM", "flipped_cosine": "flipped cosine",
                 "target_only_probe": "target-only probe", "context_only_probe": "context-only probe"}


def scorer_label(scorer: str) -> str:
    "A scorer as a reader names it (`cosine_<backbone>` is that backbone's raw-embedding cosine baseline)."
    if not scorer.startswith("cosine_"): return SCORER_LABELS.get(scorer, scorer)
    bb = scorer[len("cosine_"):]                     # an `ssl:<dir>/encoder.safetensors` backbone: its folder names it
    return f"cosine of {Path(bb[4:]).parent.name if bb.startswith('ssl:') else bb}"


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
# pairs (symmetric runs only). Intervals are made as each protocol says (12_experiment):
# context-lesion clusters under `symmetric`, the release's pair-level resamples under `reference`.

# %%
#| export
def fmt_ci(v, lo, hi) -> str: return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _test(long: pd.DataFrame) -> pd.DataFrame:
    return long[long.split.eq("test")] if "split" in long else long.iloc[:0]


ARC_COLUMNS = ("predictor AUROC [95% CI]", "strongest baseline", "Δ [95% CI]", "verdict", "target-only probe",
               "context-only probe", "re-photo AUROC [95% CI]", "re-photo Δ [95% CI] vs val-chosen baseline: verdict")


def _ci_cell(row, v="auroc", lo="auroc_lo", hi="auroc_hi") -> str:
    return "–" if pd.isna(row[v]) else fmt_ci(row[v], row[lo], row[hi])


def arc_cells(t: pd.DataFrame) -> dict:
    "The arc table's cells for one run's test rows."
    by = t.set_index("scorer")
    p, b = by.loc["predictor"], by.loc[by.loc["predictor"].strongest_baseline]
    rule = " (release rule)" if p.bootstrap_unit == "pair" else ""
    return dict(zip(ARC_COLUMNS, [_ci_cell(p), f"{scorer_label(p.strongest_baseline)} {b.auroc:.3f}",
                                  "–" if pd.isna(p.delta_lo) else f"{p.delta:+.3f} [{p.delta_lo:+.3f}, {p.delta_hi:+.3f}]",
                                  p.verdict + rule, _ci_cell(by.loc["target_only_probe"]), _ci_cell(by.loc["context_only_probe"]),
                                  _ci_cell(p, "rephoto_auroc", "rephoto_lo", "rephoto_hi"), _rephoto_verdict_cell(p)]))


def _rephoto_verdict_cell(p) -> str:
    if pd.isna(p.get("rephoto_delta_best", np.nan)): return "–"
    return (f"{p.rephoto_delta_best:+.3f} [{p.rephoto_delta_best_lo:+.3f}, {p.rephoto_delta_best_hi:+.3f}] "
            f"vs {scorer_label(p.rephoto_baseline)}: {p.rephoto_verdict}")


def arc_table(long: pd.DataFrame) -> pd.DataFrame:
    """Cross-run table (seed-20260422 arc runs), per protocol: predictor AUROC [CI], the strongest baseline, Δ [CI],
    verdict, the single-side probes and the re-photography AUROC. A run several experiments share is one row."""
    arc = long[in_arc(long)].drop_duplicates(["run_dir", "split", "scorer"])
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


def arc_ran(long: pd.DataFrame) -> pd.DataFrame:
    "The arc table's rows that ran under at least one protocol: the paper's results table (`not_run` lists the rest)."
    t = arc_table(long)
    if t.empty: return t
    first = t.loc[:, [c for c in t.columns if c[1] == ARC_COLUMNS[0]]].astype(str)
    return t[(~first.apply(lambda c: c.str.startswith("not run") | c.eq("–"))).any(axis=1)]


def not_run(long: pd.DataFrame) -> pd.DataFrame:
    "What the arc asked for and could not run on this machine: one row per (reason, backbone), with its experiments."
    a = long[in_arc(long) & long.status.ne("run")] if len(long) else long
    if a.empty: return pd.DataFrame(columns=["reason", "backbone", "experiments"])
    g = a.drop_duplicates(["experiments", "backbone"]).groupby(["status", "backbone"], sort=False).experiments
    out = g.apply(lambda s: ", ".join(dict.fromkeys(s))).reset_index()
    return pd.DataFrame({"reason": out.status.str.replace(r"^not run: ", "", regex=True),
                         "backbone": [backbone_label(b, False) for b in out.backbone], "experiments": out.experiments})


def optimiser_table(long: pd.DataFrame, experiments=("EXP-004", "EXP-005", "EXP-006a")) -> pd.DataFrame:
    "Predictor × optimiser on the EXP-004 data: train and test AUROC and the bias-only control (fit times: timings.json)."
    t = long[in_arc(long) & long.experiment.isin(experiments) & long.split.isin(["train", "test"])] if "split" in long else long.iloc[:0]
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
                     "seeds": ", ".join(map(str, sorted(g.seed))), **mean_sd_ci(g.auroc)})
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
                run_dir=run_dir, lofo="", ablation="", anchor="")
    if status != "run": return [base]
    return [dict(base, split=sp, scorer=sc, auroc=auroc + d, auroc_lo=auroc + d - 0.02, auroc_hi=auroc + d + 0.02,
                 strongest_baseline="pixel_l2", delta=-0.05, delta_lo=-0.08, delta_hi=-0.01, verdict="worse",
                 bootstrap_unit="pair" if prot == "reference" else "context lesion", predictor="linear", optimizer="sgd",
                 fit_seconds=1.0, rephoto_auroc=auroc + 0.1, rephoto_lo=auroc + 0.05, rephoto_hi=auroc + 0.15, lofo="",
                 rephoto_baseline="ssim", rephoto_verdict="matched", rephoto_delta_best=-0.03, rephoto_delta_best_lo=-0.06,
                 rephoto_delta_best_hi=0.0, rephoto_delta_identity=0.01, rephoto_delta_identity_lo=-0.01,
                 rephoto_delta_identity_hi=0.03, rephoto_delta_bias_only=0.0, rephoto_delta_bias_only_lo=-0.02,
                 rephoto_delta_bias_only_hi=0.02)
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
test_eq(_at.loc[("EXP-004", "color_texture (offline stand-in)"), ("reference", "re-photo AUROC [95% CI]")], "0.740 [0.690, 0.790]")
test_eq(_at.loc[("EXP-004", "color_texture (offline stand-in)"), ("symmetric", ARC_COLUMNS[-1])], "-0.030 [-0.060, +0.000] vs SSIM: matched")
test_eq(_st.loc[("EXP-007", "DermLIP ViT-B/16", "symmetric", 0), "predictor"], "not run: weights for x not found")
# the paper's results table keeps the rows that ran; what did not run is one line per reason and backbone
test_eq(list(arc_ran(_long).index), [("EXP-004", "color_texture (offline stand-in)")])
test_eq(not_run(_long).to_dict("records"), [{"reason": "weights for x not found", "backbone": "DermLIP ViT-B/16", "experiments": "EXP-007"}])
test_eq(len(not_run(_long[_long.status.eq("run")])), 0)
_at

# %% [markdown]
# ### The re-photo endpoint, for every scorer
#
# Under `symmetric` a synthetic stable pair is two draws of nuisance on *the same photograph*, so a
# pixel metric separates it from a different lesion almost by construction; the real
# re-photographs (two photographs of one lesion against a changing pair with the same context
# photograph, 05_pairs) are the realistic stable pairs, and the same pairs under both protocols.
# The arc table shows that endpoint for the predictor only; this table puts both endpoints side
# by side for every scorer, so a reader sees where the ranking turns over. (The context-only
# probe is 0.5 on the re-photo endpoint by construction: a lesion's two pairs share their context.)

# %%
#| export
REPHOTO_SCORERS = ("predictor", "identity", "bias_only", "pixel_l2", "ssim", "target_only_probe", "context_only_probe")


def _by_scorer(t: pd.DataFrame, scorers, cosines: bool = False) -> pd.DataFrame:
    "Rows of `scorers` (and, with `cosines`, every `cosine_<backbone>` baseline), in `scorers`' order."
    t = t[t.scorer.isin(scorers) | (cosines & t.scorer.str.startswith("cosine_"))]
    rank = {s: k for k, s in enumerate(scorers)}
    return t.assign(_r=t.scorer.map(rank).fillna(len(rank))).sort_values("_r", kind="stable")


def endpoint_frame(t: pd.DataFrame, key, names) -> pd.DataFrame:
    "Rows `key(row)` (level names `names`), columns (protocol, endpoint): test AUROC [95% CI] on each endpoint."
    rows = {}
    for r in t.itertuples():
        cells = rows.setdefault(key(r), {})
        cells[(r.protocol, "synthetic")] = fmt_ci(r.auroc, r.auroc_lo, r.auroc_hi)
        cells[(r.protocol, "re-photo")] = "–" if pd.isna(r.rephoto_auroc) else fmt_ci(r.rephoto_auroc, r.rephoto_lo, r.rephoto_hi)
    if not rows: return pd.DataFrame()
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=names)
    df.columns = pd.MultiIndex.from_tuples(df.columns, names=["protocol", "endpoint"])
    return df.fillna("–")


def rephoto_table(long: pd.DataFrame) -> pd.DataFrame:
    """Arc runs, test split: each scorer's AUROC [95% CI] on the synthetic endpoint beside the re-photo endpoint, per
    protocol (rows: experiments, backbone, scorer); '–' where a run has no re-photo pairs."""
    t = _by_scorer(_test(long[in_arc(long)]).drop_duplicates(["run_dir", "scorer"]), REPHOTO_SCORERS, cosines=True)
    t = pd.concat([t[t.experiments.eq(e)] for e in dict.fromkeys(long.experiments)]) if len(t) else t   # the arc's order
    return endpoint_frame(t, lambda r: (r.experiments, backbone_label(r.backbone, r.stand_in), scorer_label(r.scorer)),
                          ["experiment", "backbone", "scorer"])


# %%
_rt = rephoto_table(_long)
test_eq(list(_rt.index.get_level_values("scorer")[:5]), ["predictor", "raw cosine", "bias-only control", "pixel L2", "SSIM"])
test_eq(_rt.loc[("EXP-004", "color_texture (offline stand-in)", "pixel L2"), ("symmetric", "synthetic")], "0.750 [0.730, 0.770]")
test_eq(_rt.loc[("EXP-004", "color_texture (offline stand-in)", "pixel L2"), ("symmetric", "re-photo")], "0.800 [0.750, 0.850]")
test_eq(_rt.loc[("EXP-004", "color_texture (offline stand-in)", "predictor"), ("reference", "re-photo")], "0.740 [0.690, 0.790]")
test_eq(scorer_label("cosine_color_texture"), "cosine of color_texture")
test_eq(scorer_label("cosine_ssl:runs/exp009/pretrain/mae-f773d8c8/encoder.safetensors"), "cosine of mae-f773d8c8")
assert "EXP-007" not in _rt.index.get_level_values(0)          # a sweep-only experiment is the sweep's business
_rt

# %% [markdown]
# What the re-photo endpoint says of the predictor, per arc run and protocol: Δ with its paired
# lesion-level interval (11_baselines' `evaluate_rephoto`) against the baseline that the
# endpoint's own val chose (one rule for both protocols), against the raw cosine and against the
# bias-only control. And the leave-one-family-out folds: every scorer on both endpoints with each
# family held out in turn, which shows which held-out family hands the pixel metrics their win.

# %%
#| export
REPHOTO_DELTAS = {"best": "predictor − val-chosen baseline", "identity": "predictor − raw cosine",
                  "bias_only": "predictor − bias-only control"}


def rephoto_delta_table(long: pd.DataFrame) -> pd.DataFrame:
    "Arc runs: the predictor's re-photo Δs [95% CI] per protocol (rows: experiments, backbone, comparison)."
    t = _test(long[in_arc(long) & long.scorer.eq("predictor")]).drop_duplicates("run_dir")
    rows = {}
    for r in t.itertuples():
        for c, label in REPHOTO_DELTAS.items():
            v = getattr(r, f"rephoto_delta_{c}")
            cell = "–" if pd.isna(v) else f"{v:+.3f} [{getattr(r, f'rephoto_delta_{c}_lo'):+.3f}, {getattr(r, f'rephoto_delta_{c}_hi'):+.3f}]"
            if c == "best" and not pd.isna(v): cell += f" ({scorer_label(r.rephoto_baseline)}; {r.rephoto_verdict})"
            rows.setdefault((r.experiments, backbone_label(r.backbone, r.stand_in), label), {})[r.protocol] = cell
    if not rows: return pd.DataFrame()
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["experiment", "backbone", "re-photo Δ"])
    return df.fillna("–")


LOFO_SCORERS = ("predictor", "identity", "bias_only", "pixel_l2", "ssim", "target_only_probe")


def lofo_table(long: pd.DataFrame) -> pd.DataFrame:
    "Leave-one-family-out runs, test split: AUROC [95% CI] per (held-out family, scorer) on both endpoints, per protocol."
    t = _by_scorer(_test(long[long.lofo.ne("")]).drop_duplicates(["run_dir", "scorer"]), LOFO_SCORERS)
    t = pd.concat([t[t.lofo.eq(f)] for f in dict.fromkeys(long.lofo[long.lofo.ne("")])]) if len(t) else t
    return endpoint_frame(t, lambda r: (f"{r.experiment} holding out {r.lofo}", backbone_label(r.backbone, r.stand_in),
                                        scorer_label(r.scorer)), ["fold", "backbone", "scorer"])


# %%
_lf = pd.DataFrame([dict(r, lofo=fam, run_dir=f"{r['run_dir']}-{fam}", auroc=r["auroc"] + k / 100)
                    for k, fam in enumerate(("strong", "strong_held_out", "strong_held_out_2"))
                    for r in _fake("EXP-004", "symmetric", 20260422, False, 0.70)])
_lt = lofo_table(pd.concat([_long, _lf], ignore_index=True))
test_eq(list(_lt.index.get_level_values("fold").unique()), [f"EXP-004 holding out {f}" for f in ("strong", "strong_held_out", "strong_held_out_2")])
test_eq(_lt.loc[("EXP-004 holding out strong_held_out", "color_texture (offline stand-in)", "pixel L2"), ("symmetric", "synthetic")],
        "0.760 [0.730, 0.770]")
test_eq(len(_lt), 3 * len(LOFO_SCORERS))
test_eq(arc_table(pd.concat([_long, _lf], ignore_index=True)).equals(arc_table(_long)), True)   # folds are not arc rows
_rd = rephoto_delta_table(_long)
test_eq(_rd.loc[("EXP-004", "color_texture (offline stand-in)", "predictor − val-chosen baseline"), "symmetric"],
        "-0.030 [-0.060, +0.000] (SSIM; matched)")
test_eq(_rd.loc[("EXP-004", "color_texture (offline stand-in)", "predictor − raw cosine"), "reference"], "+0.010 [-0.010, +0.030]")
_rd

# %% [markdown]
# How wide an interval is depends on what is resampled. For the arc's symmetric runs (which
# record all three on test), the width of each scorer's 95% interval when pairs are resampled
# (the release's unit), when context lesions are (the runs' unit), and when context and target
# lesions both are (two-way, pigeonhole), and the ratios to the pair-level width: how much the
# release's unit understates the uncertainty, measured rather than asserted.

# %%
#| export
INTERVAL_SCORERS = ("predictor", "identity", "pixel_l2", "ssim")


def interval_table(long: pd.DataFrame) -> pd.DataFrame:
    "Arc runs with all three units on test: 95% CI widths (pair, context lesion, two-way) and the ratios to the pair width."
    if "two_way_lo" not in long: return pd.DataFrame()
    t = _test(long[in_arc(long)]).drop_duplicates(["run_dir", "scorer"])
    t = t[t.scorer.isin(INTERVAL_SCORERS) & t.pair_lo.notna() & t.two_way_lo.notna()]
    if t.empty: return pd.DataFrame()
    w = lambda lo, hi: t[hi] - t[lo]
    out = pd.DataFrame({"experiment": t.experiments, "backbone": [backbone_label(b, s) for b, s in zip(t.backbone, t.stand_in)],
                        "protocol": t.protocol, "scorer": t.scorer.map(scorer_label), "pair": w("pair_lo", "pair_hi"),
                        "context lesion": w("auroc_lo", "auroc_hi"), "two-way": w("two_way_lo", "two_way_hi")})
    out["context lesion / pair"] = out["context lesion"] / out.pair
    out["two-way / pair"] = out["two-way"] / out.pair
    return out.set_index(["experiment", "backbone", "protocol", "scorer"]).round(3)


# %%
_iv = _fake("EXP-004", "symmetric", 20260422, False, 0.70)
_iv = pd.DataFrame([dict(r, pair_lo=r["auroc"] - 0.01, pair_hi=r["auroc"] + 0.01, two_way_lo=r["auroc"] - 0.03,
                         two_way_hi=r["auroc"] + 0.03) for r in _iv])
_ivt = interval_table(_iv)
test_eq(_ivt.loc[("EXP-004", "color_texture (offline stand-in)", "symmetric", "predictor"), ["context lesion / pair", "two-way / pair"]].tolist(),
        [2.0, 3.0])
test_eq(interval_table(_long).empty, True)            # runs without the other units: nothing to compare
_ivt

# %% [markdown]
# ### Anchors to what the release published
#
# The reading "the leak inverted the published ranking" needs the release's own numbers beside
# ours wherever a like-for-like number exists (EXP-004, test AUROC, the release's protocol):
# pixel L2 (a scorer that needs no weights, so the same computation here); the published DINOv2
# and CLIP predictors, beside a random-init ViT-B/16 run here (the nearest like-for-like without
# hub weights: what a ViT's architecture alone gives under each protocol) with its target-only
# probe, the leak's measure; and DermLIP, whose weights are not here.

# %%
#| export
# (what, the release's published EXP-004 test AUROC, which of our rows, scorer): the published numbers are data
ANCHORS = (("pixel L2", "0.580", "baseline", "pixel_l2"),
           ("predictor of a ViT (release: DINOv2 ViT-B/14, OpenAI CLIP ViT-B/16; here: random-init ViT-B/16)", "0.25–0.29",
            "anchor", "predictor"),
           ("target-only probe of that ViT (the release had none)", "–", "anchor", "target_only_probe"),
           ("predictor of DermLIP ViT-B/16 (EXP-007: the EXP-004 data on DermLIP)", "0.944", "dermlip_vitb16", "predictor"))


def anchor_table(long: pd.DataFrame, experiment: str = "EXP-004") -> pd.DataFrame:
    """The release's published numbers beside ours under each protocol (test AUROC [95% CI]; an un-run row says why):
    `experiment`'s runs, and for a named backbone its own arc run, whichever experiment that is."""
    e = long[~long.sweep.astype(bool) & long.lofo.eq("") & long.ablation.eq("")]
    e = e[e.experiment.eq(experiment) | e.backbone.isin([w for _, _, w, _ in ANCHORS if w not in ("baseline", "anchor")])]
    pick = {"baseline": lambda g: g[g.anchor.eq("")], "anchor": lambda g: g[g.anchor.ne("")]}
    rows = []
    for what, published, which, scorer in ANCHORS:
        row = {"anchor": what, "published (reference)": published}
        for prot in ("reference", "symmetric"):
            g = e[e.protocol.eq(prot)]
            g = pick[which](g[g.experiment.eq(experiment)]) if which in pick else g[g.backbone.eq(which) & g.anchor.eq("")]
            r = g[g.split.eq("test") & g.scorer.eq(scorer)] if "split" in g else g.iloc[:0]
            row[f"here, {prot}"] = (fmt_ci(*r[["auroc", "auroc_lo", "auroc_hi"]].iloc[0]) if len(r) else
                                    next(iter(g.status[g.status.ne("run")]), "not run: not in the plan"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("anchor")


# %%
_an = pd.concat([_long, pd.DataFrame([dict(r, anchor="random_vitb16", backbone="random_vitb16", stand_in=False,
                                           run_dir=r["run_dir"] + "-vit", auroc=r["auroc"] - 0.3, auroc_lo=r["auroc_lo"] - 0.3,
                                           auroc_hi=r["auroc_hi"] - 0.3)
                                      for r in _fake("EXP-004", "reference", 20260422, False, 0.70)])], ignore_index=True)
_at2 = anchor_table(_an)
test_eq(_at2.loc["pixel L2"].tolist(), ["0.580", "0.690 [0.670, 0.710]", "0.750 [0.730, 0.770]"])
test_eq(_at2.iloc[1]["here, reference"], "0.400 [0.380, 0.420]")
test_eq(_at2.iloc[1]["here, symmetric"], "not run: not in the plan")
test_eq(_at2.iloc[3]["published (reference)"], "0.944")
test_eq(_at2.iloc[3]["here, reference"], "not run: weights for x not found")      # DermLIP's own row (EXP-007), with why
test_eq(arc_table(_an).equals(arc_table(_long)), True)        # the anchor runs are not arc rows
_at2


# %% [markdown]
# The ablation (20_plan's `ABLATION_STEPS`): EXP-004 from `reference` to `symmetric`, one release
# difference closed at a time, each step's test numbers with their change from the step before,
# so the table says which step moves which number: the target-only probe (the leak's own
# measure), the predictor, the bias-only control, the strongest baseline (on test: the release's
# rule, descriptive here) and the predictor on the re-photo endpoint.

# %%
#| export
def ablation_table(long: pd.DataFrame) -> pd.DataFrame:
    "Ablation runs in step order: test AUROC of the leak probe, predictor, bias-only, strongest baseline, re-photo; Δ to the step before."
    t = _test(long[long.ablation.ne("")]) if "ablation" in long else long.iloc[:0]
    if t.empty: return pd.DataFrame()
    rows, prev = [], None
    for (exp, bb, si, step), g in t.groupby(["experiment", "backbone", "stand_in", "ablation"], sort=False):
        by = g.drop_duplicates("scorer").set_index("scorer")
        base = [n for n in by.index if n in ("pixel_l2", "ssim") or n.startswith("cosine_")]
        best = max(base, key=lambda n: by.auroc[n])
        vals = {"target-only probe": by.auroc["target_only_probe"], "predictor": by.auroc["predictor"],
                "bias-only control": by.auroc["bias_only"], "strongest baseline": by.auroc[best],
                "predictor, re-photo": by.rephoto_auroc["predictor"]}
        cells = {k: f"{v:.3f}" + ("" if prev is None or prev[0] != (exp, bb) else f" ({v - prev[1][k]:+.3f})") for k, v in vals.items()}
        cells["strongest baseline"] += f" {scorer_label(best)}"
        rows.append({"experiment": exp, "backbone": backbone_label(bb, si), "step": step, **cells})
        prev = ((exp, bb), vals)
    return pd.DataFrame(rows).set_index(["experiment", "backbone", "step"])


# %%
_steps = ["reference", "+ processing", "symmetric"]
_ab = pd.DataFrame([dict(r, ablation=st, run_dir=f"{r['run_dir']}-{k}", protocol="symmetric" if st == "symmetric" else "reference",
                         auroc=r["auroc"] - (0.3 if r["scorer"] == "target_only_probe" and k else 0) + 0.01 * k)
                    for k, st in enumerate(_steps) for r in _fake("EXP-004", "reference", 20260422, False, 0.70)])
_abt = ablation_table(pd.concat([_long, _ab], ignore_index=True))
test_eq(list(_abt.index.get_level_values("step")), _steps)
test_eq(_abt.loc[("EXP-004", "color_texture (offline stand-in)", "+ processing"), "target-only probe"], "0.310 (-0.290)")
test_eq(_abt.loc[("EXP-004", "color_texture (offline stand-in)", "symmetric"), "strongest baseline"], "0.770 (+0.010) pixel L2")
test_eq(_abt.loc[("EXP-004", "color_texture (offline stand-in)", "reference"), "predictor"], "0.700")
test_eq(arc_table(pd.concat([_long, _ab], ignore_index=True)).equals(arc_table(_long)), True)    # the steps are not arc rows
_abt


# %% [markdown]
# ### Comparisons that carry the verdicts: paired over seeds
#
# The sweep table gives each scorer's mean over seeds; a verdict is a *difference*, and two means
# with overlapping intervals say little about it, because the seed moves the split and the pairs
# for every scorer at once. So each difference is taken within a seed (the same split and pairs)
# and then summarised over seeds, mean ± SD with the Student-t 95% interval (`mean_sd_ci`):
# predictor − raw cosine, predictor − bias-only control, predictor − the strongest baseline, and
# `reference` − `symmetric` for the predictor on the same seed. The strongest baseline is chosen
# per run by **one rule for both protocols**: the baseline with the highest *validation* AUROC
# (the runs themselves choose on val under `symmetric` but, as the release did, on test under
# `reference`); the table names the choices. The swept target-only probe sits beside them: it is
# the leak's own measure. Each comparison is made on both endpoints: the synthetic pairs and the
# real re-photographs (where the runs chose the comparator on the endpoint's own val, by the same
# rule).

# %%
#| export
def val_chosen_baseline(run: pd.DataFrame) -> str:
    "One run's comparator, by one rule for every protocol: its baseline with the highest val AUROC (a tie: the first listed)."
    names = run.baselines.iloc[0].split(",")
    val = run[run.split.eq("val")].set_index("scorer").auroc
    return max(names, key=lambda n: val.get(n, -np.inf))


PAIRED = ("predictor − raw cosine", "predictor − bias-only control", "predictor − val-chosen baseline", "target-only probe")


ENDPOINT_COLUMNS = {"synthetic": "auroc", "re-photo": "rephoto_auroc"}


def sweep_deltas(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiments, backbone, endpoint, protocol, seed, comparison) of the sweep: the within-seed difference
    of test AUROCs. The comparator is chosen on val by one rule: on the synthetic endpoint `val_chosen_baseline`, on the
    re-photo endpoint the run's own val choice (the same rule, 11_baselines)."""
    sw = long[long.sweep & long.status.eq("run")].drop_duplicates(["run_dir", "split", "scorer"])
    out = []
    for (exp, bb, si, prot, seed), run in sw.groupby(["experiments", "backbone", "stand_in", "protocol", "seed"], sort=False):
        for endpoint, col in ENDPOINT_COLUMNS.items():
            test = run[run.split.eq("test")].set_index("scorer").get(col)
            if test is None or test.isna().all(): continue
            best = val_chosen_baseline(run) if endpoint == "synthetic" else run.rephoto_baseline.iloc[0]
            key = dict(experiment=exp, backbone=backbone_label(bb, si), endpoint=endpoint, protocol=prot, seed=seed, chosen="")
            out += [dict(key, comparison=PAIRED[0], value=test.predictor - test.identity),
                    dict(key, comparison=PAIRED[1], value=test.predictor - test.bias_only),
                    dict(key, comparison=PAIRED[2], value=test.predictor - test[best], chosen=best),
                    dict(key, comparison=PAIRED[3], value=test.target_only_probe),
                    dict(key, comparison="predictor", value=test.predictor)]
    d = pd.DataFrame(out, columns=["experiment", "backbone", "endpoint", "protocol", "seed", "chosen", "comparison", "value"])
    p = d[d.comparison.eq("predictor")].pivot_table(index=["experiment", "backbone", "endpoint", "seed"], columns="protocol",
                                                    values="value", sort=False)
    if {"reference", "symmetric"} <= set(p.columns):           # the same seed under both protocols
        p = p.dropna(subset=["reference", "symmetric"]).reset_index()
        d = pd.concat([d, p.assign(protocol="reference − symmetric", comparison="predictor", chosen="",
                                   value=p.reference - p.symmetric)[d.columns]], ignore_index=True)
    return d[~(d.comparison.eq("predictor") & d.protocol.isin(["reference", "symmetric"]))].reset_index(drop=True)


def sweep_delta_table(long: pd.DataFrame) -> pd.DataFrame:
    "The paired comparisons as printed: n, the seeds, 'mean ± SD [t CI]', and which baseline val chose in how many seeds."
    d = sweep_deltas(long)
    rows = []
    for (exp, bb, end, prot, comp), g in d.groupby(["experiment", "backbone", "endpoint", "protocol", "comparison"], sort=False):
        s = mean_sd_ci(g.value)
        chosen = g.chosen[g.chosen.ne("")].map(scorer_label).value_counts()
        f = "+.3f" if "−" in comp or "−" in prot else ".3f"              # a difference carries its sign, an AUROC does not
        rows.append({"experiment": exp, "backbone": bb, "endpoint": end, "protocol": prot, "comparison": comp, "n": s["n"],
                     "seeds": ", ".join(map(str, sorted(g.seed))),
                     "mean ± SD [95% t CI]": f"{s['mean']:{f}} ± {s['sd']:.3f} [{s['ci_low']:{f}}, {s['ci_high']:{f}}]",
                     "val-chosen baseline (seeds)": ", ".join(f"{k} ({v})" for k, v in chosen.items()) or "–"})
    if not rows: return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["experiment", "backbone", "endpoint", "protocol", "comparison"])


# %% [markdown]
# On hand-made sweeps of three seeds under both protocols: the val rule picks SSIM where it is
# best on val even though pixel L2 is best on test; the reference − symmetric difference pairs
# each seed with itself.

# %%
def _run(prot, seed, pred, val_best, test_shift=0.0):
    base = dict(experiment="EXP-007", experiments="EXP-007", protocol=prot, seed=seed, sweep=True, backbone="color_texture",
                stand_in=True, status="run", run_dir=f"runs/{prot}-{seed}", baselines="pixel_l2,ssim,cosine_color_texture")
    val = {"pixel_l2": 0.60, "ssim": 0.60, "cosine_color_texture": 0.55, val_best: 0.70}
    test = {"predictor": pred, "identity": pred - 0.02, "bias_only": pred - 0.01, "target_only_probe": 0.5 + test_shift,
            "pixel_l2": 0.80, "ssim": 0.75, "cosine_color_texture": 0.60}
    return ([dict(base, split="val", scorer=k, auroc=v) for k, v in val.items()] +
            [dict(base, split="test", scorer=k, auroc=v) for k, v in test.items()])

_sw = pd.DataFrame([r for s, (pr, ps) in zip((1, 2, 3), ((0.66, 0.70), (0.65, 0.71), (0.67, 0.69)))
                    for r in _run("reference", s, pr, "pixel_l2", 0.2) + _run("symmetric", s, ps, "ssim")])
_sd = sweep_delta_table(_sw).sort_index()          # sorted: the lookups below index a 5-level key
_k = ("EXP-007", "color_texture (offline stand-in)", "synthetic")
test_eq(_sd.loc[(*_k, "symmetric", "predictor − val-chosen baseline"), "val-chosen baseline (seeds)"], "SSIM (3)")
test_eq(_sd.loc[(*_k, "reference", "predictor − val-chosen baseline"), "val-chosen baseline (seeds)"], "pixel L2 (3)")
test_eq(_sd.loc[(*_k, "symmetric", "predictor − raw cosine"), "mean ± SD [95% t CI]"], "+0.020 ± 0.000 [+0.020, +0.020]")
_rs = mean_sd_ci([0.66 - 0.70, 0.65 - 0.71, 0.67 - 0.69])
test_eq(_sd.loc[(*_k, "reference − symmetric", "predictor"), "mean ± SD [95% t CI]"],
        f"{_rs['mean']:+.3f} ± {_rs['sd']:.3f} [{_rs['ci_low']:+.3f}, {_rs['ci_high']:+.3f}]")
test_eq(_sd.loc[(*_k, "reference", "target-only probe"), "seeds"], "1, 2, 3")
test_eq(_sd.loc[(*_k, "reference", "target-only probe"), "mean ± SD [95% t CI]"], "0.700 ± 0.000 [0.700, 0.700]")
test_eq(len(sweep_delta_table(_sw[_sw.protocol.eq("symmetric")]).sort_index().loc[_k]), 4)      # one protocol: no cross-protocol row
# with the re-photo endpoint: its comparator is the run's own val choice, and reference − symmetric pairs seeds there too
_swr = _sw.assign(rephoto_auroc=_sw.auroc - 0.1, rephoto_baseline="pixel_l2")
_sdr = sweep_delta_table(_swr).sort_index()
test_eq(_sdr.loc[("EXP-007", "color_texture (offline stand-in)", "re-photo", "symmetric", "predictor − val-chosen baseline"),
                 "val-chosen baseline (seeds)"], "pixel L2 (3)")
test_eq(_sdr.loc[("EXP-007", "color_texture (offline stand-in)", "re-photo", "reference − symmetric", "predictor"), "n"], 3)
test_eq(_sdr.loc[_k].equals(_sd.loc[_k]), True)
test_eq(sweep_delta_table(_sw.iloc[:0]).empty, True)
_sd


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


TABLE_FONT = "\\footnotesize"      # 9 pt in the paper's 11 pt class: over the 8 pt floor, and no table is ever scaled
MAX_COLUMNS = 10                   # a wider table is split by its first column level (one float per protocol)


def table_parts(df: pd.DataFrame, max_columns: int = MAX_COLUMNS) -> list[tuple[str, pd.DataFrame]]:
    "`df` whole, or (when wider than `max_columns` and its columns have levels) one part per first-level value."
    if df.shape[1] <= max_columns or not isinstance(df.columns, pd.MultiIndex): return [("", df)]
    return [(str(k), df.xs(k, axis=1, level=0, drop_level=True)) for k in dict.fromkeys(df.columns.get_level_values(0))]


def _tabular(df: pd.DataFrame) -> str:
    "A booktabs tabulary at the text width: every column wraps, each as wide as its text asks (tabulary's L)."
    n_index = 0 if isinstance(df.index, pd.RangeIndex) else df.index.nlevels
    tex = df.to_latex(escape=True, multicolumn_format="c", index=bool(n_index), multirow=False,   # a label wraps like any cell
                      column_format="L" * (n_index + df.shape[1]))
    return tex.replace("\\begin{tabular}", "\\begin{tabulary}{\\linewidth}").replace("\\end{tabular}", "\\end{tabulary}")


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs LaTeX table at 9 pt (TABLE_FONT), never scaled: its text columns wrap within the page (tabulary), and a
    table too wide for that is one float per first column level (e.g. per protocol), captioned so (`table_parts`)."""
    parts = table_parts(df)
    out = []
    for k, (name, part) in enumerate(parts):
        cap = caption + (f" Part {k + 1} of {len(parts)}: \\emph{{{tex_text(name)}}}." if name else "")
        out.append(f"\\begin{{table}}[htbp]\n\\centering{TABLE_FONT}\n\\caption{{{cap}}}\n\\label{{{label}{'' if k == 0 else f'-{k + 1}'}}}\n"
                   f"{_tabular(part)}\\end{{table}}\n")
    return tex_symbols("".join(out))


# %%
assert "| EXP-004" in to_markdown(_at) and "reference · verdict" in to_markdown(_at)
test_eq(tex_text("random_vitb16: 5% & #1 \\"), "random\\_vitb16: 5\\% \\& \\#1 \\textbackslash{}")
assert "\\toprule" in to_latex(_at, "x", "tab:x") and "color\\_texture" in to_latex(_at, "x", "tab:x")
# never scaled, never below 9 pt; the arc (both protocols side by side, 16 columns) is one float per protocol
_tex = to_latex(_at, "x", "tab:x")
assert "resizebox" not in _tex and "scalebox" not in _tex and _tex.count("\\footnotesize") == _tex.count("\\begin{table}")
test_eq([n for n, _ in table_parts(_at)], ["reference", "symmetric"] if _at.shape[1] > MAX_COLUMNS else [""])
test_eq(_tex.count("\\begin{tabulary}"), len(table_parts(_at)))
test_eq([n for n, _ in table_parts(pd.DataFrame({("a", "x"): [1], ("b", "x"): [2]}))], [""])     # narrow: whole


# %% [markdown]
# Figures are saved without a timestamp (byte-identical when redrawn) and closed, for 21_render
# and the EXP-009 section: PNG for the site, and with `fig_files` also vector PDF for the paper,
# whose text and lines stay sharp at any print size.

# %%
#| export
def fig_files(fig) -> dict[str, bytes]:
    "A figure as vector PDF (for LaTeX) and PNG (for the site), neither with a date in it; the figure is closed."
    import io
    import matplotlib.pyplot as plt
    pdf, png = io.BytesIO(), io.BytesIO()
    with plt.rc_context({"pdf.fonttype": 42}):            # TrueType text: selectable and searchable, as journals ask
        fig.savefig(pdf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None})
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return {"pdf": pdf.getvalue(), "png": png.getvalue()}


# %%
def _demo_fig():
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([0, 1], [0, 1]); ax.set_xlabel("false positive rate")
    return fig

_f1, _f2 = fig_files(_demo_fig()), fig_files(_demo_fig())
test_eq(_f1, _f2)                                            # no date: a redraw is the same bytes, PDF and PNG
assert _f1["pdf"].startswith(b"%PDF") and _f1["png"].startswith(b"\x89PNG") and b"CreationDate" not in _f1["pdf"]

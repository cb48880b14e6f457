# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp exp009_report

# %% [markdown]
# # EXP-009's tables, figures and section
#
# > What EXP-009 measured, read from its frames (encoders, probes, re-photo endpoint, runs), into paper/exp009/: seed spread, budget curves, label-efficiency curves, gates in the words the intervals allow.

# %% [markdown]
# 22_exp009 runs the experiment; this notebook only reads what it produced. Everything here takes
# plain frames (one row per encoder and seed and budget; the probe summaries; the re-photo
# endpoint; the runs' long table from 13_report's `collect`), so it is defined and tested on
# hand-made rows, without pretraining anything, and a change to the pipeline does not make it
# stale.
#
# How a number over pretraining seeds is written (`seed_cell`): with one seed, the run's value
# and its own interval (over test lesions: what that run can tell); with several, **mean ± SD
# [95% Student-t interval of the mean over seeds] (n)**: the seed is the unit that varies when
# the experiment is repeated, and three seeds give a wide t interval on purpose. Gates and
# verdicts are per seed, counted, never averaged.

# %%
#| export
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from derma_jepa.probe import label_curve
from derma_jepa.render import PALETTE, figure_tex, paper_style
from derma_jepa.report import ARC_COLUMNS, arc_cells, collect, fig_files, fmt_ci, mean_sd_ci, scorer_label, tex_text, to_latex, to_markdown
from derma_jepa.safety import load_checkpoint, write_marked_dir

# %%
import tempfile
from fastcore.test import test_eq, test_fail


# %% [markdown]
# ## Numbers over seeds

# %%
#| export
def seed_cell(values, lows=None, highs=None, signed: bool = False) -> str:
    """One quantity over pretraining seeds: one run: its value [its own CI]; several: mean ± SD [95% t interval over seeds]
    (n); none: –."""
    lows = [np.nan] * len(values) if lows is None else list(lows)
    highs = [np.nan] * len(values) if highs is None else list(highs)
    v = [(x, l, h) for x, l, h in zip(values, lows, highs) if pd.notna(x)]
    f = (lambda x: f"{x:+.3f}") if signed else (lambda x: f"{x:.3f}")
    if not v: return "–"
    if len(v) == 1:
        x, l, h = v[0]
        return f(x) if pd.isna(l) else f"{f(x)} [{f(l)}, {f(h)}]"
    m = mean_sd_ci([x for x, _, _ in v])
    return f"{f(m['mean'])} ± {m['sd']:.3f} [{f(m['ci_low'])}, {f(m['ci_high'])}] (n={m['n']})"


def probe_gate(delta_lo: float, delta_hi: float) -> str:
    "The probe gate from one seed's paired interval of Δ balanced accuracy (encoder − its random-init control)."
    if delta_lo > 0: return "passed"
    return "below random init" if delta_hi < 0 else "did not beat random init on this probe at this budget"


def gate_cell(gates) -> str:
    "The gates of an encoder's seeds: one seed's gate, or how many seeds each gate had."
    gates = [g for g in gates if g]
    if not gates: return "–"
    if len(gates) == 1: return gates[0]
    return "; ".join(f"{g}: {n} of {len(gates)} seeds" for g, n in Counter(gates).items())


# %%
test_eq(seed_cell([0.7], [0.65], [0.75]), "0.700 [0.650, 0.750]")
test_eq(seed_cell([0.02], [-0.01], [0.05], signed=True), "+0.020 [-0.010, +0.050]")
test_eq(seed_cell([np.nan, np.nan]), "–"); test_eq(seed_cell([0.4]), "0.400")
_c = seed_cell([0.70, 0.72, 0.74])             # mean 0.72, SD 0.02, t(2) 4.303 × 0.02/√3 = 0.0497
test_eq(_c, "0.720 ± 0.020 [0.670, 0.770] (n=3)")
test_eq([probe_gate(0.01, 0.2), probe_gate(-0.2, -0.01), probe_gate(-0.01, 0.01)],
        ["passed", "below random init", "did not beat random init on this probe at this budget"])
test_eq(gate_cell(["passed", "passed", "did not beat random init on this probe at this budget"]),
        "passed: 2 of 3 seeds; did not beat random init on this probe at this budget: 1 of 3 seeds")
test_eq(gate_cell(["passed"]), "passed"); test_eq(gate_cell([]), "–")

# %% [markdown]
# ## Hand-made frames
#
# Two objectives (MAE, I-JEPA) with two seeds each and a snapshot at half the steps, their two
# random-init controls, and an offline comparison; probe summaries and re-photo numbers chosen so
# that each cell below can be checked by hand. This is the shape 22_exp009 produces.

# %%
_tmp = Path(tempfile.mkdtemp())
from derma_jepa.safety import save_checkpoint
import torch

def _enc_row(enc, obj, seed, budget, steps):
    p = _tmp / f"{enc}-{seed}-{steps}.safetensors"
    hist = [{"step": k, "loss": 2.0 - 0.1 * k - 0.05 * seed, "feature_std": 0.05 + 0.01 * k, "lr": 1e-3} for k in range(1, 9)]
    save_checkpoint(p, {"encoder.pos_embed": torch.zeros(1, 9, 16)}, {"history": hist if steps else []})
    label = f"ViT-Ti/16 @ 48 px, {enc if obj != 'none' else 'random init'}" + (f" ({steps} steps)" if steps else "") + f", seed {seed}"
    return {"encoder": enc, "objective": obj, "seed": seed, "arch": "vit_tiny_patch16_224", "image_size": 48, "budget": budget,
            "steps": steps, "images_seen": steps * 64, "gflops": 50.0 * steps, "seconds": 3.0 * steps, "path": str(p),
            "n_images": 4000 if steps else 0, "label": label}

_encs = pd.DataFrame([_enc_row(e, o, s, b, int(8 * b)) for s in (0, 1) for e, o in (("MAE", "mae"), ("I-JEPA", "ijepa"))
                      for b in (0.5, 1.0)] + [_enc_row("random init", "none", s, 0.0, 0) for s in (0, 1)])
_final = _encs[_encs.budget.eq(1.0) | _encs.objective.eq("none")]
_plan = pd.DataFrame([{"experiment": "EXP-009", "protocol": prot, "seed": 20260422, "sweep": False, "backbone": f"ssl:{r.path}",
                       "paper_backbone": f"ssl:{r.path}", "stand_in": False, "status": "run", "run_dir": str(_tmp / f"run-{k}-{prot}"),
                       "label": r.label, "encoder": r.encoder, "pretrain_seed": r.seed, "note": ""}
                      for prot in ("reference", "symmetric") for k, r in enumerate(_final.itertuples())]
                     + [{"experiment": "EXP-009", "protocol": prot, "seed": 20260422, "sweep": False, "backbone": "color_texture",
                         "paper_backbone": "color_texture", "stand_in": False, "status": "run", "run_dir": str(_tmp / f"run-ct-{prot}"),
                         "label": "color_texture (offline)", "encoder": "color_texture", "pretrain_seed": np.nan,
                         "note": "HSV colour histograms and texture statistics"} for prot in ("reference", "symmetric")])
_BA = {"MAE": 0.40, "I-JEPA": 0.31, "random init": 0.30, "color_texture": 0.35}

def _probe_rows(r, fractions=(0.01, 0.1, 1.0), draws=3):
    out = []
    for f in fractions:
        for d in range(draws if f < 1 else 1):
            ba = _BA[r["encoder"]] * (0.7 + 0.3 * f) + 0.02 * r.get("seed", 0) + 0.01 * d - (0.05 if r.get("budget") == 0.5 else 0)
            delta = None if r["encoder"] in ("random init", "color_texture") else ba - _BA["random init"] * (0.7 + 0.3 * f) - 0.02 * r.get("seed", 0)
            for clf in ("logistic", "knn"):
                out.append({"classifier": clf, "fraction": f, "draw": d, "balanced_accuracy": ba - (0.03 if clf == "knn" else 0),
                            "ba_ci_low": ba - 0.03 if d == 0 else np.nan, "ba_ci_high": ba + 0.03 if d == 0 else np.nan,
                            "macro_auroc": 0.8, "auroc_ci_low": 0.78, "auroc_ci_high": 0.82,
                            "delta_ba": np.nan if delta is None else delta,
                            "delta_ci_low": np.nan if delta is None or d else delta - 0.04,
                            "delta_ci_high": np.nan if delta is None or d else delta + 0.04})
    return out

_probes = pd.DataFrame([{**p, "label": r["label"], "encoder": r["encoder"], "objective": r["objective"], "pretrain_seed": r["seed"],
                         "budget": r["budget"], "steps": r["steps"], "images_seen": r["images_seen"], "gflops": r["gflops"],
                         "seconds": r["seconds"], "backbone": f"ssl:{r['path']}"}
                        for r in _encs.to_dict("records")
                        for p in _probe_rows(r, (1.0,) if 0 < r["budget"] < 1 else (0.01, 0.1, 1.0), 1 if 0 < r["budget"] < 1 else 3)]
                       + [{**p, "label": "color_texture (offline)", "encoder": "color_texture", "objective": np.nan, "pretrain_seed": np.nan,
                           "budget": np.nan, "steps": np.nan, "images_seen": np.nan, "gflops": np.nan, "seconds": np.nan,
                           "backbone": "color_texture"} for p in _probe_rows({"encoder": "color_texture"})])
_rephoto = _encs.assign(rephoto_auroc=lambda d: 0.55 + 0.1 * d.budget + 0.01 * d.seed + np.where(d.encoder.eq("MAE"), 0.05, 0),
                        rephoto_lo=lambda d: d.rephoto_auroc - 0.05, rephoto_hi=lambda d: d.rephoto_auroc + 0.05,
                        rephoto_pairs=305).rename(columns={"seed": "pretrain_seed"})
_encs[["label", "budget", "images_seen", "gflops"]]


# %% [markdown]
# ## The tables
#
# - **EXP-009**: a row per encoder (the objectives, the random-init control, the offline
#   comparisons): its budget (steps, images seen, passes over the corpus, training FLOPs and the
#   minutes it took here), the linear probe's balanced accuracy at 100% labels, the paired Δ
#   against **its own seed's** random-init control, and the **gate** per seed, read from that
#   seed's paired interval only: *passed* (the whole interval above 0), *below random init* (the
#   whole interval below 0), *did not beat random init on this probe at this budget* (the
#   interval holds 0: the encoder is not shown to differ from its untrained self, which is not
#   evidence that it learned nothing).
# - **EXP-004 recipe**: a row per (encoder, protocol), each over seeds: the predictor's synthetic
#   test AUROC (marked *below chance* when every seed's whole CI is under 0.5: under `reference`
#   that is the leak working against an encoder), Δ against the strongest baseline, **both
#   single-side probes** (target-only, context-only: the leak made visible, per encoder), the
#   **re-photo endpoint** (the predictor's AUROC, its Δ against the val-chosen baseline), and the
#   verdicts counted over seeds. `recipe_runs` is the same per run (13_report's `arc_cells`).
# - **label efficiency**: balanced accuracy at each fraction of training labels, the mean over
#   every (seed, label draw) and, in brackets, the lowest and highest of them.
# - **budget**: per encoder and budget (the snapshots), images seen, training FLOPs, minutes here,
#   the probe at 100% labels and the re-photo endpoint of the raw cosine, each over seeds.

# %%
#| export
def _final(probes: pd.DataFrame) -> pd.DataFrame:
    "Probe rows of finished encoders, controls and comparisons (not the snapshots)."
    b = probes.budget
    return probes[b.isna() | b.eq(1.0) | probes.objective.eq("none")]


def _at(p: pd.DataFrame, clf: str = "logistic", fraction: float = 1.0) -> pd.DataFrame:
    return p[p.classifier.eq(clf) & np.isclose(p.fraction, fraction) & p.draw.eq(0)]


def _pretraining_cell(g: pd.DataFrame) -> str:
    r = g.iloc[0]
    if pd.isna(r.steps): return "–"
    if r.objective == "none": return "random init"
    passes = f" ({r.images_seen / r.n_images:.1f} passes)" if r.get("n_images") else ""
    return (f"{int(r.steps)} steps, {int(r.images_seen):,} images seen{passes}, {r.gflops / 1e3:,.0f} TFLOPs, "
            f"{g.seconds.mean() / 60:.1f} min")


def exp009_table(probes: pd.DataFrame, encoders: pd.DataFrame) -> pd.DataFrame:
    "EXP-009 by encoder: pretraining, and the diagnosis probe against each seed's random-init control (paired, lesion-level)."
    p = _at(_final(probes))
    info = encoders[encoders.budget.eq(1.0) | encoders.objective.eq("none")]
    rows = {}
    for enc, g in p.groupby("encoder", sort=False):
        e = info[info.encoder.eq(enc)]
        trained = len(e) and e.objective.iloc[0] != "none"
        rows[enc] = {"pretraining": _pretraining_cell(e) if len(e) else "–", "seeds": len(g) if len(e) else "–",
                     "probe: balanced acc.": seed_cell(g.balanced_accuracy, g.ba_ci_low, g.ba_ci_high),
                     "Δ vs random init (paired, same seed)": seed_cell(g.delta_ba, g.delta_ci_low, g.delta_ci_high, signed=True)
                     if trained else "–",
                     "gate": gate_cell([probe_gate(lo, hi) for lo, hi in zip(g.delta_ci_low, g.delta_ci_high) if pd.notna(lo)])
                     if trained else "–"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("encoder")


def recipe_runs(long: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    "The EXP-004 recipe per run (label, protocol): 13_report's arc columns (synthetic, both single-side probes, re-photo)."
    by_bb = dict(zip(plan.backbone, plan.label))
    rows = {}
    for (bb, prot), g in long.groupby(["backbone", "protocol"], sort=False) if len(long) else []:
        t = g[g.split.eq("test")] if "split" in g else g.iloc[:0]
        if t.empty: rows[(by_bb[bb], prot)] = {ARC_COLUMNS[0]: g.status.iloc[0]}; continue
        cells = arc_cells(t)
        if t.set_index("scorer").loc["predictor"].auroc_hi < 0.5: cells[ARC_COLUMNS[0]] += " (below chance)"
        rows[(by_bb[bb], prot)] = cells
    df = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(ARC_COLUMNS)).astype(object).fillna("–")
    df.index.names = ["encoder", "protocol"]
    return df


RECIPE_COLUMNS = ("predictor AUROC", "Δ vs strongest baseline", "target-only probe", "context-only probe",
                  "re-photo AUROC (predictor)", "re-photo Δ vs val-chosen baseline", "verdicts: synthetic / re-photo")


def recipe_table(long: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    "The EXP-004 recipe per (encoder, protocol), each quantity over the encoder's seeds (`seed_cell`), verdicts counted."
    enc = dict(zip(plan.backbone, plan.encoder))
    t = long[long.split.eq("test")].assign(encoder=lambda d: d.backbone.map(enc)) if len(long) and "split" in long else long.iloc[:0]
    rows = {}
    for (e, prot), g in plan.groupby(["encoder", "protocol"], sort=False):
        s = t[t.encoder.eq(e) & t.protocol.eq(prot)]
        if s.empty:
            st = long[long.backbone.isin(g.backbone) & long.protocol.eq(prot)].status if len(long) else []
            rows[(e, prot)] = {RECIPE_COLUMNS[0]: st.iloc[0] if len(st) else "not run"}
            continue
        by = lambda sc: s[s.scorer.eq(sc)]
        p = by("predictor")
        cell = lambda q, v="auroc", lo="auroc_lo", hi="auroc_hi", signed=False: seed_cell(q[v], q[lo], q[hi], signed)
        first = cell(p) + (" (below chance)" if (p.auroc_hi < 0.5).all() else "")
        rows[(e, prot)] = dict(zip(RECIPE_COLUMNS, [
            first, cell(p, "delta", "delta_lo", "delta_hi", True) + f" vs {', '.join(sorted(set(map(scorer_label, p.strongest_baseline))))}",
            cell(by("target_only_probe")), cell(by("context_only_probe")),
            cell(p, "rephoto_auroc", "rephoto_lo", "rephoto_hi"),
            cell(p, "rephoto_delta_best", "rephoto_delta_best_lo", "rephoto_delta_best_hi", True),
            f"{gate_cell(list(p.verdict))}{' (release rule)' if prot == 'reference' else ''} / "
            f"{gate_cell([v for v in p.rephoto_verdict if isinstance(v, str)])}"]))
    df = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(RECIPE_COLUMNS)).astype(object).fillna("–")
    df.index.names = ["encoder", "protocol"]
    return df


def label_table(probes: pd.DataFrame) -> pd.DataFrame:
    "Balanced accuracy per encoder, classifier and label fraction: mean over every (seed, label draw) [lowest, highest] (n)."
    c = label_curve(_final(probes), by=["encoder"])
    c = c.assign(cell=[f"{m:.3f} [{lo:.3f}, {hi:.3f}] (n={n})" if n > 1 else f"{m:.3f} (n=1)"
                       for m, lo, hi, n in zip(c["mean"], c.low, c.high, c.n)],
                 fraction=[f"{f:.0%} labels" for f in c.fraction])
    t = c.pivot_table(index=["encoder", "classifier"], columns="fraction", values="cell", aggfunc="first", sort=False)
    t.columns.name = None
    return t


def budget_frame(probes: pd.DataFrame, rephoto: pd.DataFrame) -> pd.DataFrame:
    """Per (encoder, seed, budget): images seen, FLOPs, seconds, probe balanced accuracy (100% labels, logistic) and the
    re-photo cosine AUROC; each objective's seeds start from their random-init control (budget 0)."""
    p = _at(probes[probes.budget.notna()])[["encoder", "objective", "pretrain_seed", "budget", "steps", "images_seen", "gflops",
                                             "seconds", "balanced_accuracy"]]
    r = rephoto[["encoder", "pretrain_seed", "budget", "rephoto_auroc"]]
    f = p.merge(r, on=["encoder", "pretrain_seed", "budget"], how="left")
    ctrl = f[f.objective.eq("none")]
    out = [f[f.objective.ne("none")]]
    for e in f[f.objective.ne("none")].encoder.unique():           # the curve of each objective starts at the untrained encoder
        out.append(ctrl.assign(encoder=e))
    return pd.concat(out, ignore_index=True).sort_values(["encoder", "pretrain_seed", "budget"], kind="stable", ignore_index=True)


def budget_table(probes: pd.DataFrame, rephoto: pd.DataFrame) -> pd.DataFrame:
    "The budget curve as a table: per (encoder, steps), images seen, TFLOPs, minutes, probe and re-photo cosine over seeds."
    f = budget_frame(probes, rephoto)
    rows = {}
    for (e, k), g in f.groupby(["encoder", "steps"], sort=False):
        rows[(e, int(k))] = {"images seen": f"{int(g.images_seen.iloc[0]):,}", "TFLOPs": f"{g.gflops.iloc[0] / 1e3:,.1f}",
                             "minutes (mean)": f"{g.seconds.mean() / 60:.1f}",
                             "probe balanced acc. (100% labels)": seed_cell(g.balanced_accuracy),
                             "re-photo AUROC (raw cosine)": seed_cell(g.rephoto_auroc)}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.names = ["encoder", "steps"]
    return df


# %% [markdown]
# Checked by hand on the frames above. MAE: balanced accuracy 0.40 (seed 0) and 0.42 (seed 1),
# mean 0.41, SD 0.0141, t(1) interval 0.41 ± 12.706·0.01 = [0.283, 0.537]; Δ against each seed's
# own control is 0.10 for both (the controls carry the same seed offset), so its SD is 0 and both
# seeds pass. I-JEPA's Δ is 0.01 [−0.03, 0.05]: it did not beat random init in either seed.

# %%
_t = exp009_table(_probes, _encs)
test_eq(_t.loc["MAE", "probe: balanced acc."], "0.410 ± 0.014 [0.283, 0.537] (n=2)")
test_eq(_t.loc["MAE", "Δ vs random init (paired, same seed)"], "+0.100 ± 0.000 [+0.100, +0.100] (n=2)")
test_eq(_t.loc["MAE", "gate"], "passed: 2 of 2 seeds")
test_eq(_t.loc["I-JEPA", "gate"], "did not beat random init on this probe at this budget: 2 of 2 seeds")
test_eq(_t.loc["random init", "gate"], "–"); test_eq(_t.loc["random init", "pretraining"], "random init")
test_eq(_t.loc["color_texture", "probe: balanced acc."], "0.350 [0.320, 0.380]"); test_eq(_t.loc["color_texture", "pretraining"], "–")
test_eq(_t.loc["MAE", "pretraining"], "8 steps, 512 images seen (0.1 passes), 0 TFLOPs, 0.4 min")
_lt = label_table(_probes)
test_eq(_lt.loc[("MAE", "logistic"), "1% labels"], f"{np.mean([0.40 * 0.703 + 0.02 * s + 0.01 * d for s in (0, 1) for d in range(3)]):.3f} "
        f"[{0.40 * 0.703:.3f}, {0.40 * 0.703 + 0.04:.3f}] (n=6)")
test_eq(_lt.loc[("color_texture", "knn"), "100% labels"], "0.320 (n=1)")
_bt = budget_table(_probes, _rephoto)
test_eq(_bt.loc[("MAE", 0), "probe balanced acc. (100% labels)"], "0.310 ± 0.014 [0.183, 0.437] (n=2)")   # the controls
test_eq(_bt.loc[("MAE", 4), "re-photo AUROC (raw cosine)"], "0.655 ± 0.007 [0.591, 0.719] (n=2)")
test_eq(list(_bt.loc["I-JEPA"].index), [0, 4, 8])
_t

# %%
_lt


# %% [markdown]
# The recipe table over seeds, on a long table of the shape `collect` returns: the predictor's
# AUROC over two seeds, the single-side probes, the re-photo endpoint, and verdicts counted; a
# control whose every seed's interval lies below 0.5 is marked; an encoder that has not run yet
# keeps its status.

# %%
def _fake(bb, prot, auroc):
    run = dict(experiment="EXP-009", protocol=prot, seed=20260422, sweep=False, backbone=bb, stand_in=False, status="run",
               split="test", strongest_baseline="pixel_l2", delta=-0.05, delta_lo=-0.08, delta_hi=-0.02, verdict="worse",
               bootstrap_unit="pair" if prot == "reference" else "context lesion", rephoto_baseline="ssim",
               rephoto_verdict="did not beat", rephoto_delta_best=0.01, rephoto_delta_best_lo=-0.02, rephoto_delta_best_hi=0.04)
    return [dict(run, scorer=sc, auroc=auroc + d, auroc_lo=auroc + d - 0.02, auroc_hi=auroc + d + 0.02,
                 rephoto_auroc=0.6 + d, rephoto_lo=0.57 + d, rephoto_hi=0.63 + d)
            for sc, d in (("predictor", 0.0), ("pixel_l2", 0.05), ("target_only_probe", 0.2), ("context_only_probe", 0.0))]

_au = {"MAE": 0.7, "I-JEPA": 0.66, "random init": 0.45, "color_texture": 0.65}
_long = pd.DataFrame([r for bb, e, s in zip(_plan.backbone, _plan.encoder, _plan.pretrain_seed.fillna(0)) for prot in ("reference", "symmetric")
                      for r in _fake(bb, prot, _au[e] + 0.02 * s)]).drop_duplicates(["backbone", "protocol", "scorer"])
_rt = recipe_table(_long[~(_long.backbone.eq("color_texture") & _long.protocol.eq("symmetric"))], _plan)
test_eq(_rt.loc[("MAE", "symmetric"), "predictor AUROC"], "0.710 ± 0.014 [0.583, 0.837] (n=2)")
test_eq(_rt.loc[("random init", "symmetric"), "predictor AUROC"], "0.460 ± 0.014 [0.333, 0.587] (n=2) (below chance)")
test_eq(_rt.loc[("MAE", "reference"), "Δ vs strongest baseline"], "-0.050 ± 0.000 [-0.050, -0.050] (n=2) vs pixel L2")
test_eq(_rt.loc[("MAE", "symmetric"), "target-only probe"], "0.910 ± 0.014 [0.783, 1.037] (n=2)")
test_eq(_rt.loc[("MAE", "symmetric"), "verdicts: synthetic / re-photo"], "worse: 2 of 2 seeds / did not beat: 2 of 2 seeds")
test_eq(_rt.loc[("MAE", "reference"), "verdicts: synthetic / re-photo"], "worse: 2 of 2 seeds (release rule) / did not beat: 2 of 2 seeds")
test_eq(_rt.loc[("color_texture", "reference"), "re-photo AUROC (predictor)"], "0.600 [0.570, 0.630]")
test_eq(_rt.loc[("color_texture", "symmetric"), "predictor AUROC"], "not run")
test_eq(len(_rt), 8)
_none = recipe_table(collect(_plan), _plan)                # nothing ran yet: every row still listed, with its status
test_eq(_none.loc[("MAE", "symmetric"), "predictor AUROC"], "not run: no metrics.json")
test_eq(recipe_runs(_long, _plan).loc[("ViT-Ti/16 @ 48 px, MAE (8 steps), seed 1", "reference"), "verdict"], "worse (release rule)")
_rt


# %% [markdown]
# ## The figures
#
# - `fig_pretraining`: per objective, the training loss and the collapse monitor against steps, a
#   line per seed.
# - `fig_by_encoder`: per encoder, the probe at 100% labels and the EXP-004 recipe's test AUROC per
#   protocol (predictor, raw cosine, pixel L2): each seed a small dot, the mean over seeds a large one.
# - `fig_label_efficiency`: balanced accuracy against the fraction of labels (log scale), a line per
#   encoder (the mean over seeds and label draws) in a band from the lowest to the highest of them;
#   logistic and kNN probes side by side.
# - `fig_budget`: the probe (100% labels) and the re-photo endpoint of the raw cosine against images
#   seen and against training FLOPs, a line per objective (mean over seeds, band lowest to highest),
#   each starting at its random-init control.

# %%
#| export
def _colours(names) -> dict:
    "A palette colour per name in order, the untrained control grey."
    names = [n for n in dict.fromkeys(names) if n != "random init"]
    return {**{n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}, "random init": "grey"}


def fig_pretraining(encoders: pd.DataFrame):
    "Per objective (columns): the training loss and the collapse monitor against optimiser steps, a line per seed."
    import matplotlib.pyplot as plt
    trained = encoders[encoders.objective.ne("none") & encoders.budget.eq(1.0)]
    if trained.empty: return None
    names = list(dict.fromkeys(trained.encoder))
    fig, axes = plt.subplots(2, len(names), figsize=(min(11.5, 1.0 + 2.6 * len(names)), 5.2), squeeze=False)   # fits the page
    for k, name in enumerate(names):
        for j, r in enumerate(trained[trained.encoder.eq(name)].itertuples()):
            tensors, meta = load_checkpoint(r.path)
            h = pd.DataFrame(meta["history"])
            dim = tensors["head.weight"].shape[0] // 2 if "head.weight" in tensors else tensors["encoder.pos_embed"].shape[-1]
            axes[0][k].plot(h.step, h.loss, color=PALETTE[0], alpha=1 - 0.25 * j, lw=1)
            axes[1][k].plot(h.step, h.feature_std, color=PALETTE[1], alpha=1 - 0.25 * j, lw=1)
        axes[1][k].axhline(1 / np.sqrt(dim), color="grey", ls=":", lw=0.8, label=f"1/√{dim} (spread)")
        axes[1][k].set_ylim(0, None); axes[1][k].legend(fontsize=9.5, loc="lower right")
        axes[0][k].set_title(f"{name}: loss", fontsize=10); axes[1][k].set_title(f"{name}: collapse monitor", fontsize=10)
        axes[1][k].set_xlabel("optimiser step", fontsize=9.5)
        axes[0][k].set_ylabel("training loss (the objective's own scale)" if k == 0 else "", fontsize=9.5)
        axes[1][k].set_ylabel("batch std of normalised features" if k == 0 else "", fontsize=9.5)
        for ax in (axes[0][k], axes[1][k]): ax.tick_params(labelsize=9.5)
    fig.tight_layout()
    return fig


def fig_by_encoder(long: pd.DataFrame, probes: pd.DataFrame, plan: pd.DataFrame, scorers=("predictor", "identity", "pixel_l2")):
    "Per encoder (rows): the diagnosis probe (100% labels), then the EXP-004 recipe's test AUROC per protocol; dot per seed, mean large."
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(plan.encoder))
    prots = list(dict.fromkeys(plan.protocol))
    y = {n: i for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 1 + len(prots), figsize=(11, 2.2 + 0.42 * len(names)), squeeze=False, sharey=True)
    ax = axes[0][0]
    p = _at(_final(probes)) if len(probes) else probes
    for n, g in p.groupby("encoder", sort=False):
        ax.plot(g.balanced_accuracy, [y[n]] * len(g), "o", ms=3, color=PALETTE[0], alpha=0.6)
        ax.plot([g.balanced_accuracy.mean()], [y[n]], "D", ms=6, color=PALETTE[0])
    ax.axvline(1 / 7, color="k", ls=":", lw=0.8); ax.set_title("diagnosis probe\n(logistic, all labels)", fontsize=10.5)
    ax.set_xlabel("test balanced accuracy; dots: seeds,\ndiamond: mean; chance 1/7 dotted", fontsize=9.5)
    ax.set_yticks(range(len(names)), names, fontsize=9.5); ax.invert_yaxis()
    enc = dict(zip(plan.backbone, plan.encoder))
    t = long[long.split.eq("test") & long.scorer.isin(scorers)].assign(encoder=lambda d: d.backbone.map(enc)) if len(long) and "split" in long else None
    for ax, prot in zip(axes[0][1:], prots):
        for k, sc in enumerate(scorers):
            if t is None: break
            s = t[t.protocol.eq(prot) & t.scorer.eq(sc)]
            for n, g in s.groupby("encoder", sort=False):
                yy = y[n] + (k - 1) * 0.22
                ax.plot(g.auroc, [yy] * len(g), "o", ms=3, color=PALETTE[k], alpha=0.6)
                ax.plot([g.auroc.mean()], [yy], "D", ms=6, color=PALETTE[k], label=scorer_label(sc) if n == s.encoder.iloc[0] else None)
        ax.axvline(0.5, color="k", ls=":", lw=0.8); ax.set_title(f"the EXP-004 recipe,\n{prot} protocol", fontsize=10.5)
        ax.set_xlabel("test AUROC, stable vs changing;\nchance 0.5 dotted", fontsize=9.5)
        ax.set_xlim(0.2, 1.0); ax.set_xticks([0.25, 0.5, 0.75, 1.0])
    if len(prots) and axes[0][1].get_legend_handles_labels()[0]:          # nothing ran yet: no points, no legend
        axes[0][1].legend(fontsize=9.5, loc="upper center", bbox_to_anchor=(1.05, -0.3), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def fig_label_efficiency(probes: pd.DataFrame):
    "Balanced accuracy against the fraction of labels, a line per encoder (mean over seeds and draws), band lowest–highest."
    import matplotlib.pyplot as plt
    c = label_curve(_final(probes), by=["encoder"])
    if c.empty: return None
    col = _colours(c.encoder)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, clf in zip(axes, ("logistic", "knn")):
        for e, g in c[c.classifier.eq(clf)].groupby("encoder", sort=False):
            g = g.sort_values("fraction")
            ax.plot(g.fraction, g["mean"], "o-", ms=3.5, lw=1.3, color=col[e], label=e)
            ax.fill_between(g.fraction, g.low, g.high, color=col[e], alpha=0.18, lw=0)
        ax.set_xscale("log"); ax.axhline(1 / 7, color="k", ls=":", lw=0.8)
        ax.set_xticks(sorted(set(c.fraction)), [f"{f:.0%}" for f in sorted(set(c.fraction))], fontsize=9.5)
        ax.set_title(f"{'logistic regression' if clf == 'logistic' else 'k nearest neighbours'} probe", fontsize=10.5)
        ax.set_xlabel("training labels used (log scale)", fontsize=9.5); ax.tick_params(labelsize=9.5)
    axes[0].set_ylabel("test balanced accuracy (chance 1/7 dotted)", fontsize=9.5)
    axes[1].legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def fig_budget(probes: pd.DataFrame, rephoto: pd.DataFrame):
    "The probe and the re-photo endpoint against images seen and training FLOPs, a line per objective, band over seeds."
    import matplotlib.pyplot as plt
    f = budget_frame(probes, rephoto)
    if f.empty or f.budget.nunique() < 2: return None
    col = _colours(f.encoder)
    fig, axes = plt.subplots(2, 2, figsize=(10, 5.4), sharey="row")          # the page: 0.8 of its height at most
    for i, (v, what) in enumerate((("balanced_accuracy", "probe balanced accuracy\n(100% labels)"),
                                   ("rephoto_auroc", "re-photo AUROC\n(raw cosine)"))):
        for j, (x, xl) in enumerate((("images_seen", "images seen in pretraining"), ("gflops", "training GFLOPs (counted)"))):
            ax = axes[i][j]
            for e, g in f.groupby("encoder", sort=False):
                s = g.groupby("steps").agg(x=(x, "first"), m=(v, "mean"), lo=(v, "min"), hi=(v, "max")).reset_index()
                ax.plot(s.x, s.m, "o-", ms=3.5, lw=1.3, color=col[e], label=e)
                ax.fill_between(s.x, s.lo, s.hi, color=col[e], alpha=0.18, lw=0)
            ax.set_xlabel(xl, fontsize=9.5); ax.tick_params(labelsize=9.5)
            if j == 0: ax.set_ylabel(what, fontsize=9.5)
    h, l = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(h, l, loc="lower center", ncol=min(4, len(l)), fontsize=9.5, frameon=False)
    return fig


# %%
from derma_jepa.render import palette_problems, small_text
_figs = {"pretraining": fig_pretraining(_encs), "by_encoder": fig_by_encoder(_long, _probes, _plan),
         "label_efficiency": fig_label_efficiency(_probes), "budget": fig_budget(_probes, _rephoto)}
for _k, _f in _figs.items(): test_eq((_k, palette_problems(_f), small_text(_f)), (_k, [], []))   # palette; no text < 8 pt
test_eq(len(_figs["pretraining"].axes[0].lines), 2)                                  # MAE: a loss line per seed
_bl = [l for l in _figs["budget"].axes[0].lines if l.get_label() == "MAE"][0]        # MAE's curve: control, snapshot, finished
test_eq(list(_bl.get_xdata()), [0, 256, 512]); np.testing.assert_allclose(_bl.get_ydata(), [0.31, 0.36, 0.41])
_figs["label_efficiency"]

# %%
_figs["budget"]

# %% [markdown]
# ## Rendering into paper/
#
# `render_exp009` writes `paper/exp009/` in one move: `exp009.tex` (the section `main.tex` inputs
# when it exists), the tables as Markdown and LaTeX, the figures, the audit's verdict and the
# corpus images it excluded, and `runs.md` naming every run directory (each with its executed
# `run.ipynb`) and every encoder checkpoint. Nothing in it depends on the time of rendering.

# %%
#| export
EXP009_TEX = r"""\section{EXP-009: self-supervised dermoscopy pretraining on a corpus audited against HAM10000 images}
\noindent Corpus: %(n_corpus)d dermoscopy images that are not HAM10000 images (%(excluded)d left out by the overlap audit%(held)s). Audit: %(verdict)s. What the audit cannot see is named in its title: it compares images, so another photograph of a HAM10000 lesion is not excluded, and the ISIC 2018 test set comes from the same clinical sources as HAM10000; ``never saw HAM10000'' holds for images, not for lesions.
Each objective trains the same %(arch)s from its seed's initial weights for the same number of images seen (%(budget)s), %(seeds)s%(budgets)s. Wall time differs between objectives for the same images seen because their work per image differs (views per image, decoders, target encoders): the FLOPs each step costs are counted (PyTorch's FLOP counter, forward and backward) and reported beside the minutes it took here. Learning rate ($10^{-3}$), batch (64) and schedule are shared and untuned: a pilot, not a tuned comparison.%(variants)s
The diagnosis probe is a logistic regression (and a $k$-nearest-neighbour probe) on frozen embeddings of un-processed HAM10000 images (lesion-aware split), scored by balanced accuracy on the test split (chance $1/7$). With one seed a cell gives the run's value and its 95\%% percentile interval over test lesions (each lesion with all its images); with several, mean $\pm$ SD over seeds and the 95\%% Student-$t$ interval of the mean over seeds ($n$ seeds). The gate is read per seed from the paired interval of $\Delta$ balanced accuracy against that seed's own random-init control on the same lesion resamples: ``passed'' when the whole interval lies above 0, ``below random init'' when it lies below, and ``did not beat random init on this probe at this budget'' when it holds 0, which is not evidence that the encoder learned nothing. Label efficiency: %(fractions)s of the training labels, %(draws)s, each subsample stratified by diagnosis.
The EXP-004 recipe trains the predictor on two nuisance families and tests it on the third (second table: one row per encoder and protocol, over seeds). An AUROC whose every interval lies below 0.5 is marked ``below chance'': under the reference protocol that is the leak working against the encoder. Beside it, both single-side probes (a target-only probe far above 0.5 is the leak, per encoder) and the real re-photograph endpoint, with $\Delta$ against the baseline chosen on its validation split; verdicts are counted over seeds.%(compare)s%(left_out)s
\input{exp009/exp009_table.tex}
\input{exp009/recipe_table.tex}
\input{exp009/label_table.tex}
%(budget_table)s%(maps)s
%(figures)s
"""
MAPS_TEX = r"""Where each encoder looks, and whether what it learned carries to another collection (24\_featuremaps): the last block's attention over the patches of %(n)d HAM10000 test images with segmentation masks, as the share that falls on the lesion against the lesion's share of the image (the lift: 1 when attention ignores where the lesion is; interval over images); and a logistic probe for melanoma against the six other diagnoses, fitted on the HAM10000 train split and scored on the ISIC 2017 validation images by AUROC (interval over those images, which carry no lesion ids). The last column counts the transfer images the encoder's pretraining corpus held, unlabelled. What this scale cannot show: the maps say where attention goes, not what the features encode; and with %(n_mel)s melanomas among %(n_img)s transfer images the AUROC intervals are about %(width)s wide, so transfer differences smaller than that are not resolved here.
\input{exp009/featuremaps_table.tex}"""
VARIANTS_TEX = r" Variants train beside the objectives with one setting changed (%(names)s): SimCLR without its colour augmentation shows how much of SimCLR's numbers is invariance to colour, which the held-out nuisance family also varies."
EXP009_FIGURES = {
    "attention": "Where the encoders look: the last block's attention over the patches (bright: more), a row per HAM10000 test "
                 "image (one per diagnosis, lesion outlined in the first column), a column per encoder (first seed), each over "
                 "its own view of the image; below each map its lesion-attention lift (1: attention ignores the lesion). "
                 "Encoders without a class token show the attention each patch receives, averaged over all patch queries.",
    "pca": "What the encoders group together: the first three principal components of the patch features (fitted on all "
           "shown images together, per encoder) as colour; patches alike to the encoder share a colour. A lesion that "
           "stands out in its own colour is a lesion the encoder tells from skin.",
    "anchors": "Patch similarity (cosine of patch features, bright: alike) from three anchors chosen from the mask of one "
               "melanoma (white dot): the lesion's centre, its border and skin, a row per encoder.",
    "by_encoder": "EXP-009 by encoder (rows; random init is the untrained control). Left: the diagnosis probe's test balanced "
                  "accuracy with all training labels, a small dot per pretraining seed and a diamond for their mean, chance "
                  "1/7 dotted. Right: the EXP-004 recipe on each encoder, test AUROC of the predictor beside the raw cosine "
                  "and pixel L2, per protocol, dots per seed and the mean; chance 0.5 dotted.",
    "label_efficiency": "Label efficiency: the diagnosis probe's test balanced accuracy against the share of training labels "
                        "(log scale), a line per encoder at the mean over pretraining seeds and label subsamples, in a band "
                        "from the lowest to the highest of them; logistic and k-nearest-neighbour probes. Chance 1/7 dotted.",
    "budget": "The budget curve: the probe (all labels) and the re-photograph endpoint of the raw embedding cosine against "
              "images seen in pretraining (left) and training FLOPs (right), a line per objective at the mean over seeds, "
              "in a band from the lowest to the highest seed; each line starts at its seeds' random-init controls.",
    "pretraining": "Pretraining, per objective: the training loss (top, in the objective's own scale) and the collapse "
                   "monitor (bottom: batch standard deviation of the L2-normalised features against optimiser steps; near "
                   "1/sqrt(d), dotted, when the features spread, near 0 when they collapse to a point), a line per seed.",
    "audit": "The overlap audit's flagged pairs, a column each: a HAM10000 image (top; diagnosis, age, sex) and the "
             "pretraining-corpus image matched to it (bottom; the corpus's own record where it has one). Each title gives "
             "the decision: by aligned fine-structure correlation (corr.), overruled where the two records disagree (a pair whose "
             "diagnoses, ages or sexes differ is not a duplicate). Every flagged corpus image is left out of pretraining.",
}


def maps_table(maps: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    "24_featuremaps' `encoder_maps` numbers (a row per backbone label) per encoder, each over its seeds (`seed_cell`)."
    enc = dict(zip(plan.label, plan.encoder))
    m = maps.rename_axis("label").reset_index()
    m = m.assign(encoder=[enc.get(l, l) for l in m.label])
    rows = {}
    for e, g in m.groupby("encoder", sort=False):
        r = g.iloc[0]
        rows[e] = {"attention read": r.attention_read,
                   "lesion-attention lift": seed_cell(g.lift, g.lift_lo, g.lift_hi) if g.lift.notna().any() else "no patch tokens",
                   "lesion area": "–" if g.lesion_area.isna().all() else f"{g.lesion_area.mean():.3f}",
                   f"ISIC 2017 melanoma AUROC ({int(r.n_melanoma)}/{int(r.n_images)})": seed_cell(g.auroc, g.auroc_lo, g.auroc_hi),
                   "transfer images seen in pretraining": int(g.in_corpus.max())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("encoder")


def budget_text(encoders: pd.DataFrame) -> str:
    "How the pretraining budgets compare: equal images seen, or not."
    t = encoders[encoders.objective.ne("none") & encoders.budget.eq(1.0)]
    if t.empty: return "no objective trained"
    seen = sorted(set(t.images_seen))
    return (f"{seen[0]:,} images each" if len(seen) == 1 else
            "NOT equal: " + ", ".join(f"{o} {n:,}" for o, n in dict(zip(t.encoder, t.images_seen)).items()))


def _fractions_text(probes: pd.DataFrame) -> tuple[str, str]:
    p = _final(probes)
    fr = sorted(set(p.fraction)) if len(p) else []
    draws = int(p[p.fraction.lt(1)].groupby(["label", "classifier", "fraction"]).draw.nunique().max()) if (p.fraction < 1).any() else 1
    return ", ".join(f"{f:.0%}" for f in fr).replace("%", "\\%"), f"{draws} subsample{'s' if draws > 1 else ''} per fraction below 100\\%"


def render_exp009(plan: pd.DataFrame, probes: pd.DataFrame, encoders: pd.DataFrame, audit: dict, excluded: pd.DataFrame,
                  n_corpus: int, paper_dir="paper", maps: dict | None = None, rephoto: pd.DataFrame | None = None,
                  left_out=(), long: pd.DataFrame | None = None) -> dict:
    """Tables, figures and the LaTeX section of EXP-009, written atomically into `<paper_dir>/exp009/`. `maps`: 24_featuremaps'
    `encoder_maps` numbers and drawn figures, {"table", "figures": {name: Figure}, "n"}; `rephoto`: 22_exp009's
    `rephoto_all` (the budget curve's second axis); `left_out`: comparisons the settings name that this run left out;
    `long`: the runs' `collect(plan)` (read here when not given)."""
    long = collect(plan) if long is None else long[long.backbone.isin(plan.backbone)]    # the plan's runs only
    rephoto = pd.DataFrame(columns=["encoder", "pretrain_seed", "budget", "rephoto_auroc"]) if rephoto is None else rephoto
    tables = {"exp009_table": (exp009_table(probes, encoders), "EXP-009: pretraining and the diagnosis probe (logistic, 100\\% labels) against each seed's random-init control; one seed: [95\\% CI over test lesions], several: mean $\\pm$ SD [95\\% t interval over seeds]; $\\Delta$ paired, gates per seed."),
              "recipe_table": (recipe_table(long, plan), "EXP-009: the EXP-004 recipe by encoder and protocol, over seeds: synthetic test AUROC, single-side probes, the re-photograph endpoint, verdicts counted."),
              "label_table": (label_table(probes), "Diagnosis probe by label fraction: test balanced accuracy, mean over seeds and label subsamples [lowest, highest] (n).")}
    has_budget = encoders.budget.between(0, 1, inclusive="neither").any()
    if has_budget: tables["budget_table"] = (budget_table(probes, rephoto), "EXP-009: the budget curve: per encoder and steps, images seen, counted training TFLOPs, minutes here, the probe (100\\% labels) and the re-photo AUROC of the raw cosine, over seeds.")
    if maps: tables["featuremaps_table"] = (maps_table(maps["table"], plan), "EXP-009: lesion-attention lift and ISIC 2017 melanoma transfer per encoder, over seeds.")
    files = {}
    for name, (df, cap) in tables.items():
        files[f"{name}.md"] = to_markdown(df).encode()
        files[f"{name}.tex"] = to_latex(df, cap, f"tab:{name}").encode()
    files["recipe_runs.md"] = to_markdown(recipe_runs(long, plan)).encode()         # per run: on the site, not in the PDF
    with paper_style():                   # the paper's palette (21_render), not matplotlib's default cycle
        figs = {"by_encoder": fig_by_encoder(long, probes, plan), "label_efficiency": fig_label_efficiency(probes),
                "budget": fig_budget(probes, rephoto) if has_budget and len(rephoto) else None, "pretraining": fig_pretraining(encoders)}
    figs = {k: v for k, v in {**figs, **(maps or {}).get("figures", {})}.items() if v is not None}
    for k, f in figs.items(): files.update({f"{k}.{ext}": b for ext, b in fig_files(f).items()})
    shown = [*((k, f"exp009/{k}") for k in figs), *((("audit", f"audit/{Path(audit['figure']).stem}"),) if audit.get("figure") else ())]
    files["figures.md"] = "".join(f"- `{path}.png`: {EXP009_FIGURES[k]}\n" for k, path in shown).encode()   # the site's captions
    held = excluded.why.eq("holdout") if "why" in excluded else pd.Series(False, index=excluded.index)
    ctrl = encoders[encoders.objective.eq("none")]
    seeds = sorted(set(encoders.seed))
    variants = encoders[encoders.budget.eq(1.0) & encoders.encoder.str.contains(r"\(", regex=True)].encoder.unique()
    trained = encoders[encoders.objective.ne("none")]
    fractions, draws = _fractions_text(probes)
    aur = maps["table"] if maps else None
    files["exp009.tex"] = (EXP009_TEX % {
        "n_corpus": n_corpus, "excluded": int((~held).sum()), "verdict": tex_text(audit["verdict"].rstrip(".")),
        "held": f"; {int(held.sum())} held out of pretraining as the transfer probe's test images" if held.any() else "",
        "arch": tex_text(ctrl.label.iloc[0].split(", ")[0]) if len(ctrl) else "encoder",
        "budget": tex_text(budget_text(encoders)),
        "seeds": (f"once per pretraining seed ({len(seeds)} seeds: {', '.join(map(str, seeds))}; each seed's untrained initial "
                  "encoder is its random-init control)" if len(seeds) > 1 else
                  f"with one pretraining seed ({seeds[0]}; its untrained initial encoder is the random-init control; one seed "
                  "cannot say how much of a difference between objectives is the seed's)"),
        "budgets": (f"; snapshots at {', '.join(f'{b:g}' for b in sorted(set(trained.budget)))} of the steps give the budget curve"
                    if trained.budget.nunique() > 1 else ""),
        "variants": VARIANTS_TEX % {"names": tex_text(", ".join(variants))} if len(variants) else "",
        "fractions": fractions, "draws": draws,
        "budget_table": "\\input{exp009/budget_table.tex}\n" if has_budget else "",
        "maps": MAPS_TEX % {"n": maps["n"], "n_mel": int(aur.n_melanoma.iloc[0]), "n_img": int(aur.n_images.iloc[0]),
                            "width": f"{float((aur.auroc_hi - aur.auroc_lo).median()):.2f}"} if maps else "",
        "compare": "".join(f"\n\\texttt{{{tex_text(b)}}}: {tex_text(n)}." for b, n in
                           dict(zip(plan.backbone, plan.note)).items() if not b.startswith("ssl:")),
        "left_out": "".join(f"\n\\texttt{{{tex_text(b)}}} is named in the settings but was left out of this run by its parameters "
                            "(no row)." for b in left_out),
        "figures": "\n".join(figure_tex(f"{path}.pdf", EXP009_FIGURES[k], f"fig:exp009-{k}") for k, path in shown)}).encode()
    runs = plan[["label", "protocol", "backbone", "status", "run_dir"]].assign(notebook=lambda d: [f"{x}/run.ipynb" for x in d.run_dir])
    files["runs.md"] = ("# EXP-009: runs and encoders behind the tables\n\n" + runs.to_markdown(index=False) + "\n\n"
                        + encoders.to_markdown(index=False) + "\n\n" + "## Corpus images left out of pretraining\n\n"
                        + (excluded.assign(path=[Path(p).name for p in excluded.path]).to_markdown(index=False) if len(excluded) else "none")
                        + "\n").encode()
    write_marked_dir(Path(paper_dir) / "exp009", files, kind="paper", what="paper folder")
    return {"long": long, "tables": {k: v[0] for k, v in tables.items()}, "figures": figs, "files": sorted(files)}


# %% [markdown]
# Rendered from the hand-made frames: every table and figure, the section naming seeds, budgets,
# the comparisons (and the one the run left out), the audit's limit; rendering twice gives the same
# bytes; with the runs not yet made, every encoder still has its row saying why it has no AUROC.

# %%
_ex = pd.DataFrame({"path": ["/c/x.jpg", "/c/isic2017/val/v.jpg"], "reason": ["near-duplicate of ISIC_1.jpg (similarity 0.9)",
                    "held out of pretraining: transfer test images (isic2017/val)"], "why": ["audit", "holdout"]})
_audit = {"verdict": "no exact or near-duplicate image shared."}
_paper = _tmp / "paper"
_r1 = render_exp009(_plan, _probes, _encs, _audit, _ex, 4000, _paper, rephoto=_rephoto, left_out=["random_vits14"], long=_long)
for _k, _f in _r1["figures"].items(): test_eq((_k, palette_problems(_f), small_text(_f)), (_k, [], []))
_bytes = {f: (_paper / "exp009" / f).read_bytes() for f in _r1["files"]}
render_exp009(_plan, _probes, _encs, _audit, _ex, 4000, _paper, rephoto=_rephoto, left_out=["random_vits14"], long=_long)
test_eq({f: (_paper / "exp009" / f).read_bytes() for f in _r1["files"]}, _bytes)
_tex = _bytes["exp009.tex"].decode()
assert all(f"{{exp009/{k}.pdf}}" in _tex for k in _r1["figures"])                        # LaTeX takes the vector PDF
test_eq(sorted(_r1["files"]), sorted(["budget.pdf", "budget.png", "budget_table.md", "budget_table.tex", "by_encoder.pdf", "by_encoder.png",
                                      "exp009.tex", "exp009_table.md", "exp009_table.tex", "figures.md", "label_efficiency.pdf",
                                      "label_efficiency.png", "label_table.md", "label_table.tex", "pretraining.pdf", "pretraining.png",
                                      "recipe_runs.md", "recipe_table.md", "recipe_table.tex", "runs.md"]))
for _s in ("2 seeds: 0, 1", "snapshots at 0.5, 1 of the steps", "1 left out by the overlap audit; 1 held out of pretraining",
           "\\texttt{color\\_texture}: HSV colour histograms", "\\texttt{random\\_vits14} is named in the settings but was left out",
           "another photograph of a HAM10000 lesion is not excluded", "3 subsamples per fraction below 100\\%", "1\\%, 10\\%, 100\\%",
           "did not beat random init on this probe at this budget"):
    assert _s in _tex, _s
assert "Variants train beside" not in _tex                                                 # none here
_r0 = render_exp009(_plan, _probes, _encs, _audit, _ex, 4000, _tmp / "paper0")             # nothing ran yet: rows say so
assert "not run: no metrics.json" in (_tmp / "paper0" / "exp009" / "recipe_table.md").read_text()
_e1 = _encs[_encs.seed.eq(0) & _encs.budget.ne(0.5)]                                       # one seed, no snapshots
_r1s = render_exp009(_plan[_plan.pretrain_seed.ne(1)], _probes[_probes.pretrain_seed.ne(1) & _probes.budget.ne(0.5)], _e1, _audit, _ex,
                     4000, _tmp / "paper1", long=_long)
_tex1 = (_tmp / "paper1" / "exp009" / "exp009.tex").read_text()
assert "with one pretraining seed (0;" in _tex1 and "snapshots" not in _tex1 and "budget_table" not in _tex1
# with maps (24_featuremaps' encoder_maps numbers; here hand-made, with a drawn figure), they join the section; without, no trace
import matplotlib.pyplot as plt
_mf, _ax = plt.subplots(figsize=(4, 3)); _ax.imshow(np.zeros((4, 4)), cmap="magma"); _ax.set_title("attention", fontsize=9)
_mnum = pd.DataFrame([{"encoder": r.label, "attention_read": "received", "lesion_attention": 0.2, "lesion_attention_lo": 0.18,
                       "lesion_attention_hi": 0.22, "lesion_area": 0.2, "lift": 1.0 + 0.02 * r.pretrain_seed, "lift_lo": 0.98, "lift_hi": 1.05,
                       "auroc": 0.6, "auroc_lo": 0.47, "auroc_hi": 0.72, "n_melanoma": 30, "n_images": 150, "in_corpus": 0}
                      for r in _plan.drop_duplicates("label").itertuples() if r.encoder != "color_texture"]).set_index("encoder")
_r2 = render_exp009(_plan, _probes, _encs, _audit, _ex, 4000, _tmp / "paper2", {"table": _mnum, "figures": {"attention": _mf}, "n": 120},
                    rephoto=_rephoto, long=_long)
_tex2 = (_tmp / "paper2" / "exp009" / "exp009.tex").read_text()
assert "\\input{exp009/featuremaps_table.tex}" in _tex2 and "{exp009/attention.pdf}" in _tex2 and "patches of 120 HAM10000" in _tex2
assert "with 30 melanomas among 150 transfer images the AUROC intervals are about 0.25 wide" in _tex2
test_eq(_r2["tables"]["featuremaps_table"].loc["random init", "lesion-attention lift"], "1.010 ± 0.014 [0.883, 1.137] (n=2)")
assert "`exp009/attention.png`: Where the encoders look" in (_tmp / "paper2" / "exp009" / "figures.md").read_text()
assert "featuremaps" not in _tex and "attention.pdf" not in _r1["files"]
_r1["tables"]["recipe_table"]

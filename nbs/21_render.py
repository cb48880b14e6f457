# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp render

# %% [markdown]
# # Render: the paper's figures, their captions, and `paper/`
#
# > From the run directories of a plan (13_report) to the figures a reader wants, each with a caption that says what it shows.

# %% [markdown]
# The repository exists to show one finding: the release's reference protocol leaks the label,
# and once the leak is closed the picture changes. A table of AUROCs says it; these figures show
# it, each from the run directories alone (`metrics.json`, `scores.parquet`, `manifest.parquet`),
# so every mark leads back to an executed `run.ipynb`:
#
# 1. **the leak**: the single-side probes' test AUROC per experiment, `reference` beside
#    `symmetric`. A probe that sees one embedding only can score above 0.5 only if one side alone
#    carries the label;
# 2. **pairs, as the predictor sees them**: real stable and changing pairs (training families and
#    the held-out family), and under `symmetric` a real re-photographed lesion, both protocols
#    side by side;
# 3. **Δ forest**: Δ = predictor − strongest baseline with its 95% interval, per experiment and
#    protocol (paired, lesion-level under `symmetric`; pair-level under `reference`);
# 4. **EXP-004 ROC curves** per protocol (the predictor, the pixel baselines, the raw cosine and
#    the target-only probe; `identity` ≡ raw cosine and its mirror `flipped_cosine` left out);
# 5. **score histograms**, both classes on common bins;
# 6. **AUROC by backbone** and **train vs test AUROC** (arc runs only: the sweep's other seeds are
#    not mixed in).
#
# A run that several experiments share (an offline stand-in for EXP-004/006b/007/008, which
# differ only in the hub backbone) is drawn once, labelled with every experiment it stands for.

# %%
#| export
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from derma_jepa.data import DataError, Dataset, atomic_write_bytes, index_images, repo_root
from derma_jepa.nuisance import load_rgb, render as render_recipe
from derma_jepa.report import (fig_files, ablation_table, anchor_table, arc_ran, backbone_label, collect, in_arc, interval_table, lofo_table, not_run, optimiser_table, rephoto_delta_table,
                               rephoto_table, scorer_label, sweep_delta_table, sweep_table, tex_symbols, tex_text, to_latex,
                               to_markdown)
from derma_jepa.safety import write_marked_dir

# %%
import tempfile
from fastcore.test import test_eq, test_fail


# %% [markdown]
# ## Which runs a figure draws
#
# `arc_runs` keeps the arc's runs (not the sweep's other seeds), one row per run and scorer, with
# a label that names the experiments and the backbone.

# %%
#| export
def arc_runs(long: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    "Arc runs (no sweep seeds), one row per (run, scorer) of `split`, labelled 'experiments · backbone'."
    t = long[in_arc(long) & long.split.eq(split)] if "split" in long else long.iloc[:0]
    t = t.drop_duplicates(["run_dir", "scorer"])
    return t.assign(label=[f"{e} · {backbone_label(b, s)}" for e, b, s in zip(t.experiments, t.backbone, t.stand_in)])


def _rows_axis(ax, labels):
    ax.set_yticks(range(len(labels)), labels, fontsize=9); ax.invert_yaxis()


def _ci_points(ax, g, labels, x, lo, hi, offset, color=None, **kw):
    "Each row's point and, as a line from lo to hi, its interval (a bootstrap interval need not contain its point)."
    g = g.set_index("label").reindex(labels)
    y = np.arange(len(labels)) + offset
    ax.hlines(y, g[lo], g[hi], color=color, lw=1.2)
    ax.plot(g[x], y, "o", ms=4, color=color, **kw)


# %% [markdown]
# ## The leak, Δ, and AUROC by backbone

# %%
#| export
# Okabe & Ito's colour-blind-safe palette: every paper figure draws from it (paper_style), never matplotlib's default cycle
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442", "#000000")
PROTOCOL_COLOURS = {"reference": PALETTE[1], "symmetric": PALETTE[0]}


def paper_style():
    "A context in which figures take their colours from PALETTE (matplotlib's cycle and seaborn's default palette)."
    import matplotlib.pyplot as plt
    from cycler import cycler
    return plt.rc_context({"axes.prop_cycle": cycler(color=list(PALETTE))})


def palette_problems(fig) -> list[str]:
    "Colours a figure draws that are neither in PALETTE nor a grey (black and white included)."
    from matplotlib.colors import to_hex, to_rgba
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    seen = set()
    for a in fig.findobj(Line2D): seen.add(to_rgba(a.get_color(), 1))
    for a in fig.findobj(Collection):
        for c in list(a.get_facecolors()) + list(a.get_edgecolors()):
            if c[3] > 0: seen.add(tuple(c[:3]) + (1.0,))
    for a in fig.findobj(Patch):
        for c in (a.get_facecolor(), a.get_edgecolor()):
            if c[3] > 0: seen.add(tuple(c[:3]) + (1.0,))
    grey = lambda c: max(c[:3]) - min(c[:3]) < 0.02
    return sorted({to_hex(c) for c in seen if not grey(c) and to_hex(c) not in PALETTE})


def fig_leak(long: pd.DataFrame):
    "Single-side probe AUROC (target-only, context-only) per experiment, a panel per protocol."
    import matplotlib.pyplot as plt
    t = arc_runs(long)
    t = t[t.scorer.isin(["target_only_probe", "context_only_probe"])]
    labels, prots = list(dict.fromkeys(t.label)), list(dict.fromkeys(t.protocol))
    fig, axes = plt.subplots(1, len(prots), figsize=(5 * len(prots), 0.8 + 0.42 * len(labels)), squeeze=False, sharey=True)
    for ax, prot in zip(axes[0], prots):
        for k, (sc, colour) in enumerate([("target_only_probe", PALETTE[3]), ("context_only_probe", PALETTE[2])]):
            _ci_points(ax, t[t.protocol.eq(prot) & t.scorer.eq(sc)], labels, "auroc", "auroc_lo", "auroc_hi",
                       (k - 0.5) * 0.25, color=colour, label=sc.replace("_", " "))
        ax.axvline(0.5, color="k", ls=":", lw=0.8); ax.set_xlim(0, 1.02)
        ax.set_title(prot, fontsize=10); ax.set_xlabel("single-side probe, test AUROC (95% CI)", fontsize=9)
    _rows_axis(axes[0][0], labels); axes[0][0].legend(fontsize=8.5, loc="lower left")
    fig.tight_layout()
    return fig


def fig_delta_forest(long: pd.DataFrame):
    """Per experiment and protocol, with 95% intervals: the predictor's test AUROC beside its comparator's (the strongest
    baseline, as each protocol's rule chose it), then Δ = predictor − raw cosine (one comparator for both protocols) and
    Δ = predictor − strongest baseline (named), so a change of Δ between protocols can be read as a change of the
    predictor, of the comparator, or of which comparator was chosen."""
    import matplotlib.pyplot as plt
    runs = arc_runs(long)
    t = runs[runs.scorer.eq("predictor")]
    comp = runs.set_index(["run_dir", "scorer"])[["auroc", "auroc_lo", "auroc_hi"]]
    t = t.assign(**{f"comp_{c}": [comp[c].get((d, b), np.nan) for d, b in zip(t.run_dir, t.strongest_baseline)]
                    for c in ("auroc", "auroc_lo", "auroc_hi")})
    labels, prots = list(dict.fromkeys(t.label)), list(dict.fromkeys(t.protocol))
    height = 1.9 + 0.62 * len(labels)                       # the rows, the titles and axis labels, and the legend below
    fig, axes = plt.subplots(1, 3, figsize=(12, height), sharey=True, gridspec_kw={"width_ratios": [1.1, 1, 1.25]})
    for k, prot in enumerate(prots):
        off, c = (k - (len(prots) - 1) / 2) * 0.3, PROTOCOL_COLOURS.get(prot)
        g = t[t.protocol.eq(prot)]
        _ci_points(axes[0], g, labels, "auroc", "auroc_lo", "auroc_hi", off - 0.06, color=c, label=f"{prot}: predictor")
        _ci_points(axes[0], g, labels, "comp_auroc", "comp_auroc_lo", "comp_auroc_hi", off + 0.06, color=c, mfc="white",
                   label=f"{prot}: strongest baseline")
        for ax, col in zip(axes[1:], ("delta_identity", "delta")):
            _ci_points(ax, g, labels, col, f"{col}_lo", f"{col}_hi", off, color=c, label=prot)
        for r in g.itertuples():
            axes[2].annotate(scorer_label(r.strongest_baseline), (r.delta_hi, labels.index(r.label) + off),
                             xytext=(3, 0), textcoords="offset points", va="center", fontsize=9.5)
    titles = ["test AUROC: predictor (filled)\nand strongest baseline (open)", "Δ: predictor − raw cosine\n(one comparator for both protocols)",
              "Δ: predictor − strongest baseline\n(as each protocol chose it; named)"]
    for ax, title in zip(axes, titles):
        ax.axvline(0.5 if ax is axes[0] else 0, color="k", ls=":", lw=0.8); ax.set_title(title, fontsize=10)
        ax.set_xlabel("test AUROC (95% CI)" if ax is axes[0] else "Δ test AUROC (95% CI)", fontsize=9)
    axes[2].margins(x=0.35)                                  # room for the baselines' names right of their intervals
    axes[0].set_yticks(range(len(labels)), [l.replace(" · ", "\n") for l in labels], fontsize=9.5); axes[0].invert_yaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=9.5, frameon=False)
    fig.tight_layout(rect=(0, 0.62 / height, 1, 1))
    return fig


def fig_auroc_by_backbone(long: pd.DataFrame, experiments=("EXP-004", "EXP-006b", "EXP-007", "EXP-008"),
                          scorers=("predictor", "identity", "pixel_l2")):
    "Test AUROC (95% CI) of the predictor, the raw cosine and pixel L2 on the EXP-004 data, per backbone and protocol."
    import matplotlib.pyplot as plt
    import seaborn as sns
    t = arc_runs(long)
    t = t[t.experiment.isin(experiments) & t.scorer.isin(scorers)]
    labels, prots = list(dict.fromkeys(t.label)), list(dict.fromkeys(t.protocol))
    if t.backbone.nunique() < 2: return None              # one backbone: the arc table says it; a figure waits for several
    fig, axes = plt.subplots(1, len(prots), figsize=(5.5 * len(prots), 0.8 + 0.45 * max(1, len(labels)) * len(scorers)),
                             squeeze=False, sharex=True, sharey=True)
    colours = dict(zip(scorers, PALETTE))
    for ax, prot in zip(axes[0], prots):
        for k, sc in enumerate(scorers):
            _ci_points(ax, t[t.protocol.eq(prot) & t.scorer.eq(sc)], labels, "auroc", "auroc_lo", "auroc_hi",
                       (k - (len(scorers) - 1) / 2) * 0.22, color=colours[sc], label=scorer_label(sc))
        ax.axvline(0.5, color="k", ls=":", lw=0.8); ax.set_title(prot, fontsize=10); ax.set_xlabel("test AUROC (95% CI)", fontsize=9)
    _rows_axis(axes[0][0], labels); axes[0][0].legend(fontsize=8.5, loc="best")
    fig.tight_layout()
    return fig


def fig_train_vs_test(long: pd.DataFrame):
    "Every arc run's predictor: train AUROC against test AUROC, a panel per protocol."
    import seaborn as sns
    p = pd.concat([arc_runs(long, sp) for sp in ("train", "test")])
    p = p[p.scorer.eq("predictor")]
    w = p.pivot_table(index=["label", "protocol"], columns="split", values="auroc").reset_index()
    n = w.label.nunique()
    g = sns.relplot(data=w, x="train", y="test", hue="label", style="label" if n > len(PALETTE) else None, col="protocol",
                    palette=[PALETTE[k % len(PALETTE)] for k in range(n)], height=3.6, s=60,
                    facet_kws={"xlim": (0, 1), "ylim": (0, 1)})
    for ax in g.axes.flat: ax.plot([0, 1], [0, 1], "k:", lw=0.8); ax.axhline(0.5, color="grey", lw=0.5)
    g.set_axis_labels("predictor train AUROC", "predictor test AUROC")
    return g.figure


# %% [markdown]
# ## From the run directories of one experiment: ROC curves, histograms, pairs
#
# These read `scores.parquet` and `manifest.parquet` of the experiment's arc runs (one per
# protocol and backbone). The baselines' scores there are already oriented as the protocol says.

# %%
#| export
ROC_SCORERS = ("predictor", "pixel_l2", "ssim", "cosine", "target_only_probe")


def experiment_runs(plan: pd.DataFrame, experiment: str = "EXP-004") -> pd.DataFrame:
    "The arc rows of `experiment` that ran, one per run directory."
    rows = plan[(plan.experiment == experiment) & in_arc(plan) & (plan.status == "run")].drop_duplicates("run_dir")
    return rows[[(Path(d) / "metrics.json").exists() for d in rows.run_dir]]


def _test_scores(run_dir) -> pd.DataFrame:
    s = pd.read_parquet(Path(run_dir) / "scores.parquet")
    return s[s.split.eq("test") & s.kind.isin(["stable", "changing"])]


def fig_roc(plan: pd.DataFrame, experiment: str = "EXP-004"):
    "Test ROC curves of one experiment: a panel per (backbone, protocol)."
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve
    rows = experiment_runs(plan, experiment)
    if rows.empty: return None
    bbs, prots = list(dict.fromkeys(zip(rows.backbone, rows.stand_in))), list(dict.fromkeys(rows.protocol))
    fig, axes = plt.subplots(len(bbs), len(prots), figsize=(4.2 * len(prots), 4 * len(bbs)), squeeze=False)
    for r in rows.itertuples():
        ax = axes[bbs.index((r.backbone, r.stand_in))][prots.index(r.protocol)]
        s = _test_scores(r.run_dir)
        for sc in ROC_SCORERS:
            g = s[s.scorer.eq(sc) | (s.scorer.str.startswith("cosine_") if sc == "cosine" else False)]
            if g.empty: continue
            fpr, tpr, _ = roc_curve(g.label, g.score)
            ax.plot(fpr, tpr, lw=2 if sc == "predictor" else 1, label=f"{scorer_label(g.scorer.iloc[0])} ({roc_auc_score(g.label, g.score):.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate (share of stable pairs called changing)", fontsize=9)
        ax.set_ylabel("true positive rate (share of changing pairs)", fontsize=9)
        ax.set_title(f"{experiment} · {backbone_label(r.backbone, r.stand_in)} · {r.protocol}", fontsize=10)
        ax.legend(fontsize=8.5, loc="lower right", title="scorer (test AUROC)", title_fontsize=8.5)
    fig.tight_layout()
    return fig


def fig_score_histograms(plan: pd.DataFrame, experiment: str = "EXP-004"):
    "The predictor's test scores of stable and changing pairs, both classes on common bins, per backbone and protocol."
    import seaborn as sns
    rows = experiment_runs(plan, experiment)
    if rows.empty: return None
    parts = [_test_scores(r.run_dir).query("scorer == 'predictor'").assign(protocol=r.protocol,
             backbone=backbone_label(r.backbone, r.stand_in)) for r in rows.itertuples()]
    g = sns.displot(data=pd.concat(parts, ignore_index=True), x="score", hue="kind", row="backbone", col="protocol",
                    kind="hist", stat="density", common_norm=False, common_bins=True, element="step", height=2.4, aspect=1.5,
                    facet_kws={"sharex": False, "sharey": False})
    g.set_titles("{row_name} · {col_name}"); g.set_xlabels(f"{experiment} predictor score, test pairs (higher: more change)")
    g.set_ylabels("density (each class sums to 1)")
    return g.figure


# %% [markdown]
# The gallery renders real pairs from the data folder each run read (its `audit.json` names the
# metadata file; the manifest names each side as an image and a recipe), so it needs the run
# directory and nothing of the pipeline's configuration. Per protocol, the first pair of each kind:
# train pairs carry the training families, test pairs the held-out family; the reference
# protocol's changing pairs and contexts are untouched originals, which is the leak a reader can see.

# %%
#| export
GALLERY_ROWS = (("train", "stable"), ("train", "changing"), ("test", "stable"), ("test", "changing"), ("test", "rephoto"))


def run_images(run_dir) -> dict:
    "Image id -> file in the data folder a run read (the metadata file its `audit.json` names)."
    csv = Path(json.loads((Path(run_dir) / "audit.json").read_text())["metadata_csv"])
    if not csv.is_file():
        raise DataError(f"{Path(run_dir) / 'audit.json'}: the run read {csv}, which is not on this machine (re-run it here)")
    return index_images(Dataset.from_dir(csv.parent).image_roots)


def fig_pair_gallery(plan: pd.DataFrame, experiment: str = "EXP-004", size: int = 120):
    """Real pairs of one experiment: a column per pair kind (stable / changing / re-photographed, training and held-out
    families), a row per protocol and side; each image titled with its diagnosis and the nuisance family drawn on it."""
    import matplotlib.pyplot as plt
    rows = experiment_runs(plan, experiment).drop_duplicates("protocol")
    if rows.empty: return None
    fig, axes = plt.subplots(2 * len(rows), len(GALLERY_ROWS), figsize=(1.75 * len(GALLERY_ROWS), 1.55 * 2 * len(rows)),
                             squeeze=False)
    for j, r in enumerate(rows.itertuples()):
        files, m = run_images(r.run_dir), pd.read_parquet(Path(r.run_dir) / "manifest.parquet")
        for i, (split, kind) in enumerate(GALLERY_ROWS):
            pair = m[m.split.eq(split) & m.kind.eq(kind)].head(1)
            for k, side in enumerate(("context", "target")):
                ax = axes[2 * j + k][i]; ax.set_xticks([]); ax.set_yticks([])
                if i == 0: ax.set_ylabel(f"{r.protocol}\n{side}", fontsize=10)
                if j == 0 and k == 0: ax.set_title(f"{split} {kind if kind != 'rephoto' else 're-photo'}\n", fontsize=10,
                                                   fontweight="bold")
                if pair.empty:
                    ax.text(0.5, 0.5, "none under\n" + r.protocol, ha="center", va="center", fontsize=9); continue
                p = pair.iloc[0]
                recipe = p[f"{side}_recipe"]
                im = render_recipe(load_rgb(files[p[f"{side}_image_id"]]), recipe)
                ax.imshow(im.resize((size, round(size * im.height / im.width))))
                fam = json.loads(recipe)["family"]
                ax.set_xlabel(f"{p.dx} · {'original' if fam == 'none' else fam.replace('_', ' ')}", fontsize=9, labelpad=2)
    fig.tight_layout(h_pad=0.4, w_pad=0.3)
    return fig


# %% [markdown]
# ## Print size
#
# `main.tex` includes each figure at the text width, at most 0.8 of the text height (the rest is
# the caption), on a landscape A4 page with 1.5 cm margins. `print_scale` is the factor the page
# applies to a figure as it is saved (its tight bounding box); `small_text` lists the text that
# would print below the 8 pt floor, which every paper figure is checked against.

# %%
#| export
PAGE_CM, MARGIN_CM, FIG_MAX_HEIGHT = (29.7, 21.0), 1.5, 0.8      # landscape A4 (main.tex's geometry) and the figures' height cap
PRINT_FLOOR_PT = 8


def figure_tex(path: str, caption: str, label: str) -> str:
    "A LaTeX figure float: `path` at the text width, at most FIG_MAX_HEIGHT of the text height, with its caption (plain text)."
    return (f"\\begin{{figure}}[htbp]\\centering\\includegraphics[width=\\linewidth,height={FIG_MAX_HEIGHT}\\textheight,"
            f"keepaspectratio]{{{path}}}\\caption{{{tex_symbols(tex_text(caption))}}}\\label{{{label}}}\\end{{figure}}")


def _drawn(fig):
    "`fig` drawn (tick labels get their text only when drawn) on a canvas with a renderer; the renderer."
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)    # a closed inline figure has none
    canvas.draw()
    return canvas.get_renderer()


def print_scale(fig) -> float:
    "The factor by which main.tex scales `fig` (as saved, its tight bounding box) to fit the text width and height cap."
    bb = fig.get_tightbbox(_drawn(fig))
    w_in, h_in = ((c - 2 * MARGIN_CM) / 2.54 for c in PAGE_CM)
    return min(w_in / bb.width, FIG_MAX_HEIGHT * h_in / bb.height)


def small_text(fig, floor: float = PRINT_FLOOR_PT) -> list[str]:
    "The visible texts of `fig` that print below `floor` pt in the paper, each with its printed size."
    from matplotlib.text import Text
    s = print_scale(fig)
    return sorted({f"{t.get_text()[:30]!r}: {t.get_fontsize() * s:.1f} pt" for t in fig.findobj(Text)
                   if t.get_visible() and t.get_text().strip() and t.get_fontsize() * s < floor})


# %% [markdown]
# ## Captions
#
# One sentence of *what the figure shows* per figure, used verbatim in `main.tex` and
# `paper/README.md`.

# %%
#| export
FIGURES = {
    "leak": ("The leak. Test AUROC (95% CI) of the two single-side probes, logistic regressions that see only the target "
             "(or only the context) embedding of a pair, per experiment; left the release's reference protocol, right the "
             "symmetric one. One side alone should carry no label (AUROC 0.5); far from 0.5 it gives the label away.", fig_leak),
    "pair_gallery": ("Real pairs of EXP-004, rendered from the manifests of the runs: a stable and a changing pair from the "
                     "train split (training families) and from the test split (held-out family), and under the symmetric "
                     "protocol a real re-photographed lesion; reference on the left, symmetric on the right. Under reference "
                     "only stable targets are processed.", fig_pair_gallery),
    "delta_forest": ("What Δ is made of, per experiment and protocol, with 95% intervals. Left: the predictor's test AUROC "
                     "(filled) beside that of its comparator, the strongest baseline (open), which each protocol's rule "
                     "chooses differently (on test under reference, on val under symmetric). Middle: Δ = predictor minus "
                     "the raw embedding cosine, the same comparator under both protocols. Right: Δ = predictor minus the "
                     "strongest baseline, named beside each point (paired bootstrap intervals: lesion-level under "
                     "symmetric, the release's pair-level under reference). A move between protocols on the right can be "
                     "the predictor's change, the comparator's, or a change of comparator: the left panel says which. "
                     "Left of the dotted line in the middle and right the predictor is worse than a comparator that needs "
                     "no training.",
                     fig_delta_forest),
    "roc_exp004": ("EXP-004 test ROC curves per backbone and protocol: the predictor, pixel L2, SSIM, the raw embedding "
                   "cosine and the target-only probe (AUROC in the legend).", fig_roc),
    "score_histograms": ("EXP-004: the predictor's test scores of stable and changing pairs, both classes on the same bins "
                         "(density), per backbone and protocol.", fig_score_histograms),
    "auroc_by_backbone": ("Test AUROC (95% CI) of the predictor, the raw cosine (identity) and pixel L2 on the EXP-004 data, "
                          "per backbone and protocol.", fig_auroc_by_backbone),
    "train_vs_test": ("Every arc run's predictor, train AUROC against test AUROC (seed-sweep runs not included). Train and "
                      "test differ in the pairs and in the nuisance family, so a gap mixes memorisation with family shift.",
                      fig_train_vs_test),
}
PLAN_FIGURES = ("pair_gallery", "roc_exp004", "score_histograms")     # drawn from the plan (run files), not the long table


def make_paper_figures(plan: pd.DataFrame, long: pd.DataFrame) -> dict:
    "name -> Figure for every figure that has something to show."
    ran = long.scorer.notna().any()
    with paper_style():
        figs = {k: (fn(plan) if k in PLAN_FIGURES else fn(long) if ran else None) for k, (_, fn) in FIGURES.items()}
    return {k: v for k, v in figs.items() if v is not None}


# %% [markdown]
# ## `paper/`
#
# `render_paper` writes `tables/*.{tex,md}`, `figures/*.{pdf,png}` (the PDF for `main.tex`, the PNG for the site), `runs.md` (every row of the plan
# with its run directory, so each number can be traced to its executed notebook), `main.tex`,
# which inputs the tables and includes the figures with their captions, and `README.md`, which
# lists the same. `runs/` holds the executed EXP-004 notebook of each protocol (the first backbone
# that ran), cleaned by `nbdev_clean`'s rules (no execution counts, no papermill timestamps), so the
# documentation site can show the central run under both protocols from a fresh clone. Tables,
# figures and runs are written as marked folders (03_safety), and nothing in them depends on the
# time of rendering, so an unchanged set of runs renders byte-identical files.
#
# What `render_paper` reads is the plan's rows and the files the runs wrote: `plan_rows` reads a
# plan file without rebuilding its configs, the gallery finds its images through each run's
# `audit.json`, the interval count is each run's `config.yaml`. So `nbs/paper.ipynb` imports none of
# the pipeline (12_experiment, 20_plan, the backbones), and a change to the pipeline's code does not
# make it stale: the runs it reads are the plan's business (a run directory is keyed by its config).
# The text of `main.tex` and of `paper/README.md` is data, in `nbs/templates/` (`%`-style and
# `str.format` fields), so rewording it stales only this notebook and the paper.

# %%
#| export
TEMPLATES = "nbs/templates"       # main.tex and README.md of paper/, as files (the repository's, like nbs/experiments)


def template(name: str) -> str:
    "A template of paper/ (`nbs/templates/<name>`), read from the checkout."
    return (repo_root() / TEMPLATES / name).read_text(encoding="utf-8")


def run_notebooks(plan: pd.DataFrame, experiment: str = "EXP-004") -> dict[str, bytes]:
    """The executed run.ipynb of `experiment` per protocol (first backbone that ran, arc rows only), cleaned of timestamps,
    with the commit, versions, device and precision it ran with (its environment.json) in the notebook's metadata."""
    import nbformat
    from nbdev.clean import clean_nb
    ran = plan[(plan.status == "run") & in_arc(plan) & (plan.experiment == experiment)]
    out = {}
    for prot, rows in ran.groupby("protocol", sort=True):
        row = rows.iloc[0]
        if not (Path(row.run_dir) / "run.ipynb").exists(): continue      # a run made by experiment.run, not papermill
        nb = nbformat.read(Path(row.run_dir) / "run.ipynb", as_version=4)
        clean_nb(nb, allowed_cell_metadata_keys=["tags"])
        for c in nb.cells:                                    # papermill's empty `tags: []` on every cell
            if c.metadata.get("tags") == []: del c.metadata["tags"]
            if "injected-parameters" in c.metadata.get("tags", []): c.id = "injected-parameters"   # papermill's id is random
        env = Path(row.run_dir) / "environment.json"                # what it ran with, in the notebook itself
        if env.exists():
            e = json.loads(env.read_text())
            nb.metadata["derma_jepa"] = {k: e.get(k) for k in ("git_commit", "versions", "python", "device", "device_model", "dtype",
                                                                "backbone_fingerprint", "weights_sha256")}
        out[f"{experiment}-{prot}-{row.backbone}.ipynb"] = (nbformat.writes(nb) + "\n").encode()
    return out


def plan_rows(path) -> pd.DataFrame:
    "A plan file's rows as `run_plan` wrote them, each config a plain dict: the paper reads run directories, not configs."
    return pd.DataFrame(json.loads(Path(path).read_text()))


def run_n_boot(plan: pd.DataFrame) -> list[int]:
    "The bootstrap resamples of the runs that ran (each run's own `config.yaml`)."
    import yaml
    ran = [Path(d) / "config.yaml" for d in plan[plan.status.eq("run")].run_dir.unique()] if len(plan) else []
    return sorted({yaml.safe_load(f.read_text())["n_boot"] for f in ran if f.exists()})


def render_paper(plan: pd.DataFrame, paper_dir="paper", backbones: str = "hub") -> dict:
    "Tables, figures, runs.md, main.tex and README.md from the runs of `plan`, written into `paper_dir`."
    long = collect(plan)
    tables = {"arc": (arc_ran(long), "The arc: test AUROC [95\\% CI] of the predictor, the strongest baseline, $\\Delta$ "
                                       "[95\\% CI], verdict, single-side probes, re-photo AUROC and re-photo $\\Delta$ with its verdict."),
              "optimisers": (optimiser_table(long), "Predictor $\\times$ optimiser on the EXP-004 data."),
              "rephoto": (rephoto_table(long), "Every scorer's test AUROC [95\\% CI] on the synthetic endpoint and on the real "
                                               "re-photographs, per protocol (arc runs)."),
              "rephoto_deltas": (rephoto_delta_table(long), "The predictor's re-photo $\\Delta$ [95\\% CI, lesion-level paired "
                                                            "bootstrap] against the val-chosen baseline, the raw cosine and bias-only."),
              "anchors": (anchor_table(long), "The release's published EXP-004 test AUROC beside this re-run under each "
                                              "protocol [95\\% CI]."),
              "ablation": (ablation_table(long), "EXP-004 from the reference to the symmetric protocol, one difference "
                                                 "closed at a time: test AUROC (change from the step before)."),
              "intervals": (interval_table(long), "95\\% interval widths of test AUROC by resampling unit (pairs, context "
                                                  "lesions, context and target lesions two-way), and their ratios to the pair width."),
              "lofo": (lofo_table(long), "EXP-004 in each leave-one-family-out fold: test AUROC [95\\% CI] of every scorer on "
                                         "both endpoints, per protocol."),
              "sweep": (sweep_table(long), "Seed sweep: test AUROC, mean $\\pm$ SD [Student-$t$ 95\\% CI of the mean]."),
              "sweep_deltas": (sweep_delta_table(long), "Seed sweep, paired within each seed: differences of test AUROC, "
                                                        "mean $\\pm$ SD [Student-$t$ 95\\% CI of the mean].")}
    files = {}
    for name, (df, cap) in tables.items():
        if df.empty: df = pd.DataFrame({"status": ["none of these runs could be made on this machine"]})
        files[f"tables/{name}.md"] = to_markdown(df).encode()
        files[f"tables/{name}.tex"] = to_latex(df, cap, f"tab:{name}").encode()
    figs = make_paper_figures(plan, long)
    for k, f in figs.items(): files.update({f"figures/{k}.{ext}": b for ext, b in fig_files(f).items()})
    # where a run executed (job id, state, log) is the plan's business, not the paper's: the same runs give the same paper
    runs = (plan.drop(columns=["config", "job_id", "job_state", "job_log"], errors="ignore")
            .drop_duplicates(["experiment", "protocol", "seed", "backbone"]))
    runs["executed notebook"] = [f"{d}/run.ipynb" if st == "run" else "" for d, st in zip(runs.run_dir, runs.status)]
    runs = runs.drop(columns="run_dir")
    files["runs.md"] = ("# Runs behind the tables\n\n" + runs.to_markdown(index=False) + "\n").encode()
    fig_tex = "\n".join(figure_tex(f"figures/{k}.pdf", FIGURES[k][0], f"fig:{k}") for k in figs)
    label = {"hub": "the paper's hub backbones only",
             "offline": "the paper's hub backbones and the offline stand-ins random_vitb16 and color_texture"}
    bb = label.get(backbones, "the paper's hub backbones and the offline stand-ins " + backbones)
    n_boot = ", ".join(map(str, run_n_boot(plan))) or "–"
    nr = not_run(long)                    # the arc table holds the rows that ran; what did not, and why, is one paragraph
    nr_tex = ("\\begin{sloppypar}\\noindent\\textbf{Not run on this machine.} " + "; ".join(
        f"{tex_text(r.backbone)} ({tex_text(r.experiments)}): {tex_text(r.reason)}" for r in nr.itertuples())
        + ".\\end{sloppypar}") if len(nr) else ""           # sloppy: the hub ids are long unbreakable words
    files["main.tex"] = (template("paper_main.tex") % {"backbones": tex_text(bb), "figures": fig_tex, "n_boot": n_boot, "not_run": nr_tex}).encode()
    fig_md = "\n".join(f"- `figures/{k}.png`: {FIGURES[k][0]}" for k in figs) or "(none: nothing ran)"
    files["README.md"] = template("paper_README.md").format(backbones=bb, n_boot=n_boot, figures=fig_md).encode()
    out = Path(paper_dir); out.mkdir(parents=True, exist_ok=True)
    files.update({f"runs/{k}": v for k, v in run_notebooks(plan).items()})
    for sub in ("tables", "figures", "runs"):
        write_marked_dir(out / sub, {k.split("/", 1)[1]: v for k, v in files.items() if k.startswith(sub + "/")}, kind="paper",
                         what="paper folder")
    for k in ("runs.md", "main.tex", "README.md"): atomic_write_bytes(out / k, files[k])
    return {"long": long, "tables": {k: v[0] for k, v in tables.items()}, "figures": figs, "files": sorted(files)}


# %% [markdown]
# ## On a tiny fixture arc
#
# EXP-004 and EXP-006b on the offline `color_texture` stand-in, both protocols, straight through
# `experiment.run` (the papermill route is `tests/test_paper.py`): the two experiments are one
# run per protocol, shown once; every figure renders; a second render is byte-identical.

# %%
import dataclasses
from derma_jepa.experiment import run
from derma_jepa.data import experiments_dir
from derma_jepa.plan import plan_arc

_tmp = Path(tempfile.mkdtemp())
(_tmp / "arc.yaml").write_text("experiments: [exp004, exp006b]\nprotocols: [reference, symmetric]\n")
for _stem in ("exp004", "exp006b"): (_tmp / f"{_stem}.yaml").write_text((experiments_dir() / f"{_stem}.yaml").read_text())
_plan = plan_arc(_tmp / "arc.yaml", "color_texture", {"data": "fixture", "fixture_lesions": 250, "pairs_per_split": 20,
                                                      "epochs": 20, "n_boot": 100}, runs_dir=_tmp / "runs")
for _cfg in _plan[_plan.status.eq("run")].drop_duplicates("run_dir").config: run(_cfg)
test_eq(_plan[_plan.status.eq("run")].run_dir.nunique(), 2)
_paper = render_paper(_plan, _tmp / "paper", "color_texture")
test_eq(sorted(_paper["figures"]), sorted(set(FIGURES) - {"auroc_by_backbone"}))     # one backbone: that figure waits for several
_ax = _paper["figures"]["delta_forest"].axes          # AUROCs; Δ vs raw cosine; Δ vs the strongest baseline, each named
test_eq(len(_ax), 3)
assert _ax[2].texts and {x.get_text() for x in _ax[2].texts} <= set(_paper["long"].strongest_baseline.dropna().map(scorer_label))
_pr = arc_runs(_paper["long"]).query("scorer == 'predictor'")     # the open points are the comparators: predictor − Δ
_open = sorted(x for l in _ax[0].lines if l.get_markerfacecolor() == "white" for x in l.get_xdata() if np.isfinite(x))
np.testing.assert_allclose(_open, sorted(_pr.auroc - _pr.delta), atol=1e-9)
test_eq(list(_paper["tables"]["arc"].index.get_level_values(0)).count("EXP-004 = EXP-006b"), 1)
_before = {f: f.read_bytes() for f in (_tmp / "paper").rglob("*") if f.is_file()}
render_paper(_plan, _tmp / "paper", "color_texture")
test_eq({f: f.read_bytes() for f in (_tmp / "paper").rglob("*") if f.is_file()}, _before)
assert all(f"figures/{k}.png" in (_tmp / "paper" / "README.md").read_text() for k in _paper["figures"])
for _k in _paper["figures"]:                          # vector PDF for LaTeX (which includes it), PNG for the site
    assert (_tmp / "paper" / "figures" / f"{_k}.pdf").read_bytes().startswith(b"%PDF") and (_tmp / "paper" / "figures" / f"{_k}.png").exists()
    assert f"{{figures/{_k}.pdf}}" in (_tmp / "paper" / "main.tex").read_text()
test_eq(run_n_boot(_plan), [100])
_pf = _tmp / "plan.json"                 # the plan as a file, read back as plain rows: the same paper, byte for byte
_pf.write_text(json.dumps([{**r, "config": r["config"].to_dict()} for r in _plan.to_dict("records")]))
render_paper(plan_rows(_pf), _tmp / "paper", "color_texture")
test_eq({f: f.read_bytes() for f in (_tmp / "paper").rglob("*") if f.is_file()}, _before)
_moved = Path(tempfile.mkdtemp()) / "run"             # a run whose data folder is gone: one line naming its audit.json
_moved.mkdir(); (_moved / "audit.json").write_text(json.dumps({"metadata_csv": "/nowhere/HAM10000_metadata.csv"}))
test_fail(lambda: run_images(_moved), contains="audit.json: the run read /nowhere/HAM10000_metadata.csv, which is not on this machine")
_paper["tables"]["arc"]

# %% [markdown]
# `runs/` takes the executed notebook that papermill leaves in a run directory (these runs were made
# by `experiment.run`, so one is planted here): papermill's timestamps and execution counts are
# dropped, the `parameters` tag is kept.

# %%
import nbformat
_rd = Path(_plan[_plan.status.eq("run") & _plan.protocol.eq("reference")].run_dir.iloc[0])
nbformat.write(nbformat.v4.new_notebook(
    cells=[nbformat.v4.new_code_cell("x = 1", execution_count=3, metadata={"papermill": {"duration": 1.5}, "tags": ["parameters"]})],
    metadata={"papermill": {"start_time": "2026-11-23T10:00:00"}}), _rd / "run.ipynb")
_runs = run_notebooks(_plan)
test_eq(list(_runs), ["EXP-004-reference-color_texture.ipynb"])
_c = nbformat.reads(_runs["EXP-004-reference-color_texture.ipynb"].decode(), as_version=4)
assert "papermill" not in _c.metadata and _c.cells[0].metadata == {"tags": ["parameters"]} and _c.cells[0].execution_count is None
test_eq(_c.metadata["derma_jepa"]["git_commit"], json.loads((_rd / "environment.json").read_text())["git_commit"])
render_paper(_plan, _tmp / "paper", "color_texture")
test_eq((_tmp / "paper" / "runs" / "EXP-004-reference-color_texture.ipynb").read_bytes(), _runs["EXP-004-reference-color_texture.ipynb"])
(_rd / "run.ipynb").unlink()

# %% [markdown]
# Every figure's colours come from `PALETTE` (Okabe & Ito) or are greys, and none of its text prints
# below 8 pt on the paper's page: checked on the figures just rendered, and shown to fail on a
# figure drawn with matplotlib's default cycle and on one with 4 pt tick labels.

# %%
import matplotlib.pyplot as plt
for _k, _f in _paper["figures"].items(): test_eq((_k, palette_problems(_f), small_text(_f)), (_k, [], []))
_fd, _ax = plt.subplots(); _ax.plot([0, 1], [0, 1]); _ax.plot([0, 1], [1, 0])
test_eq(palette_problems(_fd), ["#1f77b4", "#ff7f0e"])
_ax.tick_params(labelsize=4); _ax.set_xlabel("false positive rate", fontsize=10)   # ×1.6 on the page: 6.6 pt and 16 pt
assert small_text(_fd) and all("pt" in t for t in small_text(_fd)) and not any("false positive" in t for t in small_text(_fd))
plt.close(_fd)

# %%
from IPython.display import display
for _k, _f in _paper["figures"].items():
    print(f"{_k}: {FIGURES[_k][0]}"); display(_f)

# ---
# skip_exec: true
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One DermaJEPA run
#
# This notebook is the experiment: papermill fills the `parameters` cell, and the executed
# notebook is the record of what ran. Every name in the parameters cell is a field of
# `derma_jepa.experiment.Config`; a parameter that is not a field stops the run before any work.
#
# ```
# papermill nbs/run.ipynb out.ipynb -f nbs/experiments/exp004.yaml -p protocol reference -p backbone color_texture
# papermill nbs/run.ipynb out.ipynb -p backbone dinov2      # short names: dinov2, clip, dermlip, biomedclip
# ```
#
# `make paper` runs the whole arc this way and files each executed notebook into its run
# directory as `run.ipynb`, beside `metrics.json`; `make demo` does the same for one run.
#
# The outputs committed here are EXP-004 under `symmetric` on the real HAM10000 copy with the
# offline `color_texture` backbone (`make notebooks`); papermill's `injected-parameters` cell below
# the defaults says so. A new papermill run replaces that cell with the parameters it is given.

# %%
import json

import pandas as pd

from derma_jepa.experiment import Config, pair_embeddings, run
from derma_jepa.pairs import pair_gallery
from derma_jepa.safety import exit_with_parent

exit_with_parent()          # a killed papermill takes this kernel with it (03_safety)

_names_before = set(globals())

# %% tags=["parameters"]
experiment = ""
data = "fixture"
fixture_lesions = 600
protocol = "symmetric"
ablate = ""
train_families = "strong,strong_held_out"
eval_family = "strong_held_out_2"
changing_policy = "strict"
preset = "auto"
pairs_per_split = 100
split_fractions = (0.70, 0.15, 0.15)
image_size = 224
rephoto = "auto"
lofo_fold = -1
seed = 20260422
backbone = "color_texture"
weights = ""
dtype = "auto"
batch_size = 32
predictor = "linear"
optimizer = "sgd"
trainer = "auto"
epochs = 200
stop_after = "all"
n_boot = 1000
missing_lesion = "auto"
dx_conflict = "error"
run_dir = ""

# %% tags=["injected-parameters"]
# Parameters
data = "$HAM10000_DIR"
experiment = "EXP-004"
train_families = "strong,strong_held_out"
eval_family = "strong_held_out_2"
changing_policy = "strict"
pairs_per_split = 1000
seed = 20260422
backbone = "color_texture"
predictor = "linear"
optimizer = "sgd"
protocol = "symmetric"
run_dir = "runs/notebooks/exp004-symmetric"

# %% [markdown]
# ## Configuration
#
# Every parameter above, and every one papermill injected, must be a configuration field.

# %%
config = Config.from_params({k: v for k, v in globals().items()
                             if k not in _names_before and not k.startswith("_") and k != "config"})
pd.Series(config.to_dict(), name="value").to_frame()

# %% [markdown]
# ## Data, split and pairs
#
# The audit checks every image before anything is built; the split keeps lesions (and, in the
# symmetric protocol, identical files) in one split; the manifest lists every pair's two sides as
# (image, recipe).

# %%
result = run(config)
audit = result.audit
pd.DataFrame({"lesions": audit["split_lesions"], "images": audit["split_images"],
              **{k: pd.Series(v) for k, v in pd.DataFrame(audit["pairs_by_split_and_kind"]).T.to_dict("series").items()}})

# %%
print(json.dumps({k: audit[k] for k in ["n_images", "n_lesions", "missing", "unreadable", "duplicate_checksums",
                                        "lesions_multi_image", "distinct_sides"]}, indent=1))

# %% [markdown]
# The diagnosis mix of stable and changing pairs in each split. Under the `reference` protocol
# the stable pairs are the first records of a dx-sorted list, so the two labels differ in
# diagnosis as well as in identity; under `symmetric` both follow the split's own mix.

# %%
import seaborn as sns
_mix = pd.DataFrame([{"split": s, "label": lab, "dx": dx, "share": v}
                     for s, d in audit["dx_mix"].items() for lab in ("stable", "changing") for dx, v in d[lab].items()])
sns.catplot(data=_mix, x="dx", y="share", hue="label", col="split", kind="bar", height=2.6, aspect=1.2);

# %% [markdown]
# ## What the pairs look like, under both protocols
#
# Rendered sides of a few stable and changing pairs of the test split, for this run's protocol
# and, beside it, for the other protocol on the same data and seed (its manifest is built here for
# the picture only, from this run's audited records, read by this run's rule for blank lesion
# ids, so the picture never asks for an opt-in the run did not need). In `reference` the contexts and both sides of changing pairs are untouched
# originals and only stable targets are processed: whether the target *looks processed* gives the
# label away, before any lesion identity is involved. In `symmetric` every side of both labels
# carries an independent draw of the family, so the only difference left between the labels is
# whether the two sides show the same lesion.

# %%
import dataclasses
import matplotlib.pyplot as plt
from derma_jepa.experiment import manifest_for
_other = "symmetric" if config.protocol == "reference" else "reference"
_ocfg = dataclasses.replace(config, protocol=_other, preset="auto", rephoto="auto", ablate="",
                            missing_lesion=config.resolved_missing_lesion)
_other_manifest = manifest_for(_ocfg, result.records)[1]
for _prot, _m in [(config.protocol, result.manifest), (_other, _other_manifest)]:
    _fig = pair_gallery(_m[_m.split.eq("test") & _m.kind.isin(["stable", "changing"])], result.records, n=2)
    _fig.suptitle(f"{_prot} protocol" + (" (this run)" if _prot == config.protocol else ""), y=1.01); plt.show()

# %% [markdown]
# ## Embeddings
#
# Every distinct side through the frozen backbone (from the shared cache where it was embedded
# before). Below, what the backbone sees before any predictor: the raw cosine distance between
# the two sides of each pair, by label. Under `reference` the processed-target cue separates
# the labels by itself; under `symmetric` only identity can.

# %%
if result.embeddings is not None:     # wall-clock times per stage are in the run directory's timings.json
    print(f"{len(result.embeddings['sides'])} distinct sides embedded by {config.backbone}, {result.embeddings['z'].shape[1]}-d")
    _zc, _zt = pair_embeddings(result.manifest, result.embeddings["sides"], result.embeddings["z"])
    _dist = result.manifest[["split", "kind"]].assign(cosine_distance=1 - (_zc * _zt).sum(1))
    sns.displot(data=_dist, x="cosine_distance", hue="kind", col="split", kind="hist", stat="density",
                common_norm=False, element="step", height=2.6, aspect=1.2)

# %% [markdown]
# ## The fit
#
# The training loss of the predictor on the train stable pairs at the logged epochs (the quantity
# the trainer logs: per element for the `reference` trainer, per pair for `autograd`), and the
# final per-pair squared error on train and val stable pairs, which selects nothing (PROTOCOL A6).
# A curve that drops in a few epochs and then stays flat is the signature of a learned
# translation (compare the `bias_only` control below).

# %%
if result.predictor is not None:
    import matplotlib.pyplot as plt
    _h = pd.Series(result.predictor.history_, name="loss").rename_axis("epoch")
    _ax = _h.plot(marker="o", figsize=(5, 3), logy=True, ylabel="training loss")
    _ax.set_title(f"{config.predictor} predictor, {result.predictor.trainer} trainer, {config.optimizer}"); plt.show()
    _zc, _zt = pair_embeddings(result.manifest, result.embeddings["sides"], result.embeddings["z"])
    _stable = result.manifest.kind.eq("stable").to_numpy()
    print("final per-pair squared error on stable pairs:",
          {sp: round(float(((result.predictor.predict(_zc[m]) - _zt[m]) ** 2).sum(1).mean()), 5)
           for sp in ("train", "val") for m in [_stable & result.manifest.split.eq(sp).to_numpy()]})

# %% [markdown]
# ## Fit, scores and metrics
#
# The predictor was fitted on the train split's stable pairs only; every pair of every split was
# scored by it, by the controls and by the baselines. The table: test-split metrics with 95%
# bootstrap intervals, made as the protocol says (printed below the table). How to read the
# controls: `identity` (the raw cosine) and `flipped_cosine` (its mirror) are *meant* to be far
# from 0.5 whenever the backbone tells lesions apart; `bias_only` close to the predictor means
# the predictor learned a translation, not a map. Only the two **single-side probes** are leak
# detectors: a classifier that sees one embedding of the pair cannot know whether the two sides
# show the same lesion, so anything it scores above 0.5 comes from a difference in how the labels'
# sides were made.

# %%
if result.evaluation is not None:
    ev = result.evaluation
    _rows = [{"scorer": n, **{f"{m}": f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                               for m, v in ev["metrics"]["test"][n].items() if m != "n_boot_valid"}}
             for n in ev["metrics"]["test"]]
    display(pd.DataFrame(_rows).set_index("scorer"))
    display(pd.DataFrame({sp: {n: round(ev["metrics"][sp][n]["auroc"]["value"], 3) for n in ev["metrics"][sp]}
                          for sp in ("train", "val", "test")}).rename_axis("AUROC"))
    print("intervals:", json.dumps(ev["bootstrap"]))

# %% [markdown]
# Δ between the predictor and the strongest baseline, and between the predictor and `identity`
# (the raw cosine the predictor starts from), with intervals from the same resamples. Under
# `symmetric` the table also shows, for the test split, each scorer's interval under the
# release's pair-level resampling and under a two-way resampling that clusters target lesions
# too, beside the lesion-level one: the ratios of widths measure how much each unit widens the
# interval, and so how far the release's pair-level intervals understate the uncertainty.

# %%
if result.evaluation is not None:
    display(pd.DataFrame([{"split": sp, "Δ": k, "value": round(d["value"], 4), "ci_low": round(d["ci_low"], 4),
                           "ci_high": round(d["ci_high"], 4)} for sp, ds in ev["deltas"].items() for k, d in ds.items()]))
    if "pair_level_test" in ev:
        _width = lambda a: a["ci_high"] - a["ci_low"]
        _w = pd.DataFrame({n: {"lesion-level CI": f"[{m['auroc']['ci_low']:.3f}, {m['auroc']['ci_high']:.3f}]",
                               "pair-level CI": f"[{ev['pair_level_test'][n]['ci_low']:.3f}, {ev['pair_level_test'][n]['ci_high']:.3f}]",
                               "two-way CI": f"[{ev['two_way_test'][n]['ci_low']:.3f}, {ev['two_way_test'][n]['ci_high']:.3f}]",
                               "width ratio, lesion / pair": round(_width(m["auroc"]) / _width(ev["pair_level_test"][n]), 2),
                               "width ratio, two-way / pair": round(_width(ev["two_way_test"][n]) / _width(ev["pair_level_test"][n]), 2)}
                           for n, m in ev["metrics"]["test"].items()}).T
        display(_w)
        print("two-way:", ev["bootstrap"]["two_way"])

# %% [markdown]
# ## The real re-photograph endpoint
#
# Beside the protocol's own pairs, val and test hold the same evaluation set under both
# protocols: for each lesion photographed more than once, a stable pair of two *different*
# photographs of it (a real re-acquisition, not a synthetic recipe) and a changing pair that
# keeps that context photograph and takes another lesion with the same diagnosis and site. Every
# scorer is read on it with lesion-level paired resamples (a lesion's two pairs drawn together),
# the baseline is chosen on its val by one rule for both protocols, and its verdict stands beside
# the synthetic one.

# %%
if result.evaluation is not None and "rephoto" in ev:
    _r = ev["rephoto"]
    display(pd.DataFrame({sp: {n: f"{m['auroc']['value']:.3f} [{m['auroc']['ci_low']:.3f}, {m['auroc']['ci_high']:.3f}]"
                               for n, m in _r["metrics"][sp].items()} for sp in _r["metrics"]})
            .rename_axis("AUROC, re-photo vs matched changing"))
    display(pd.DataFrame([{"split": sp, "Δ": k, "value": round(d["value"], 4), "ci_low": round(d["ci_low"], 4),
                           "ci_high": round(d["ci_high"], 4)} for sp, ds in _r["deltas"].items() for k, d in ds.items()]))
    print(f"verdict, synthetic endpoint: {ev['verdict']}; re-photo endpoint: {_r['verdict']} "
          f"(strongest baseline {_r['strongest_baseline']}, chosen on {_r['baselines']['chosen_on']})")
    print("pairs:", _r["pairs"], "\ndiagnosis / site mix after matching:", result.audit["rephoto_mix"])
elif result.evaluation is not None:
    print("no re-photo endpoint in this run (rephoto off, or no lesion photographed twice on val or test)")

# %%
if result.figures is not None:
    display(result.figures["score_histograms"])

# %%
if result.figures is not None:
    display(result.figures["roc_test"], result.figures["train_vs_test_auroc"])    # closed after saving: shown once each

# %% [markdown]
# ## Verdict

# %%
if result.evaluation is not None:
    _p = ev["metrics"]["test"]["predictor"]["auroc"]
    _b = ev["metrics"]["test"][ev["strongest_baseline"]]["auroc"]
    _d = ev["delta"]
    print(f"Protocol {config.protocol}, backbone {config.backbone}: the {config.predictor} predictor scores test AUROC "
          f"{_p['value']:.3f} [{_p['ci_low']:.3f}, {_p['ci_high']:.3f}] against the strongest baseline, "
          f"{ev['strongest_baseline']} (chosen on {ev['baselines']['chosen_on']}), at {_b['value']:.3f}: "
          f"delta {_d['value']:+.3f} [{_d['ci_low']:+.3f}, {_d['ci_high']:+.3f}], verdict '{ev['verdict']}' ({ev['verdict_rule']}).")
    _tp = ev["metrics"]["test"]["target_only_probe"]["auroc"]
    _cp = ev["metrics"]["test"]["context_only_probe"]["auroc"]
    _leaks = [n for n, a in (("target-only", _tp), ("context-only", _cp)) if a["ci_low"] > 0.5]
    print(f"Leak check (single-side probes, test AUROC): target-only {_tp['value']:.3f} [{_tp['ci_low']:.3f}, {_tp['ci_high']:.3f}], "
          f"context-only {_cp['value']:.3f} [{_cp['ci_low']:.3f}, {_cp['ci_high']:.3f}] -- "
          + (f"the {' and '.join(_leaks)} probe's interval lies above 0.5: one side alone gives the label away." if _leaks else
             "both intervals reach 0.5: no single side carries the label that this test can detect."))
    print(f"Representation health (un-normalised predictions): {ev['health']['unnormalised']}; collapsed: {ev['health']['collapsed']}")

# %%
import os
print(f"run directory: {os.path.relpath(result.run_dir)}")      # relative to where the run was started

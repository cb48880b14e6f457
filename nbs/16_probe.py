# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp probe

# %% [markdown]
# # Diagnosis probe: did a backbone learn anything about skin lesions?
#
# > A linear probe and a kNN classifier for the seven HAM10000 diagnoses on frozen embeddings, with 1%, 10% and 100% of the training labels.

# %% [markdown]
# Before a pretrained backbone's stable-vs-changing result is interpreted, it should be shown to
# carry *some* information about lesions. The MedMNIST self-supervised benchmark's protocol does
# that cheaply: freeze the backbone, embed un-processed images, and fit
#
# - a **linear probe**: multinomial logistic regression on standardised embeddings, classes
#   weighted by inverse frequency (HAM10000 is 67% `nv`), and
# - a **kNN classifier**: cosine distance, k = 20, distance-weighted votes,
#
# on 1%, 10% and 100% of the train split's labels (a stratified subsample, at least one image per
# diagnosis, drawn from the run's seed), then score the test split of the same lesion-aware split
# (PROTOCOL A2; `symmetric` keeps identical files together) with **balanced accuracy** (the mean
# per-class recall, chance = 1/7) and **macro one-vs-rest AUROC** (chance = 0.5), each with a
# percentile bootstrap CI over test images.

# %%
#| export
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from derma_jepa.nuisance import NONE_RECIPE, recipe_json

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## Label fractions
#
# Per diagnosis, `ceil(fraction · n)` training images, so the rare classes (`df`, `vasc`) keep at
# least one example at 1%.

# %%
#| export
FRACTIONS = (0.01, 0.1, 1.0)


def label_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    "Sorted indices of a stratified subsample: ceil(fraction · n_c) of each class c (at least 1)."
    if not 0 < fraction <= 1: raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    rng = np.random.default_rng([seed, round(fraction * 1e6)])
    y = np.asarray(y)
    keep = [rng.choice(np.flatnonzero(y == c), max(1, int(np.ceil(fraction * (y == c).sum()))), replace=False)
            for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


# %%
_y = np.repeat(np.arange(7), [670, 110, 110, 50, 30, 10, 10])
test_eq(len(label_subset(_y, 1.0, 0)), len(_y))
test_eq(np.bincount(_y[label_subset(_y, 0.01, 0)]).tolist(), [7, 2, 2, 1, 1, 1, 1])
test_eq(label_subset(_y, 0.1, 3).tolist(), label_subset(_y, 0.1, 3).tolist())
test_fail(lambda: label_subset(_y, 0, 0), contains="must be in (0, 1]")


# %% [markdown]
# ## The probe
#
# `probe(z_train, y_train, z_test, y_test)` returns one row per (classifier, fraction) with both
# metrics and their CIs. The bootstrap resamples test images (`n_boot` times, seeded); a resample
# that misses a class is skipped for the AUROC, as sklearn cannot score it.

# %%
#| export
def _classifiers(n_train: int, seed: int) -> dict:
    return {"logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced",
                                                                           random_state=seed)),
            "knn": KNeighborsClassifier(n_neighbors=min(20, n_train), metric="cosine", weights="distance")}


def _macro_auroc(y, proba, classes) -> float:
    present = np.isin(classes, np.unique(y))
    if present.sum() < 2: return float("nan")
    p = proba[:, present]
    return float(roc_auc_score(y, p / p.sum(1, keepdims=True), multi_class="ovr", average="macro", labels=classes[present]))


def probe(z_train, y_train, z_test, y_test, fractions=FRACTIONS, seed: int = 20260422, n_boot: int = 200) -> pd.DataFrame:
    "Balanced accuracy and macro AUROC (with bootstrap CIs) of a linear probe and a kNN at each label fraction."
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    classes = np.unique(y_train)
    idx = np.random.default_rng(seed + 1).integers(0, len(y_test), (n_boot, len(y_test)))
    rows = []
    for frac in fractions:
        sub = label_subset(y_train, frac, seed)
        for name, clf in _classifiers(len(sub), seed).items():
            clf.fit(z_train[sub], y_train[sub])
            proba = np.zeros((len(y_test), len(classes)))
            proba[:, np.searchsorted(classes, clf.classes_)] = clf.predict_proba(z_test)
            pred = classes[proba.argmax(1)]
            with warnings.catch_warnings():        # a resample may miss a class that was predicted
                warnings.simplefilter("ignore", UserWarning)
                ba = [balanced_accuracy_score(y_test[i], pred[i]) for i in idx]
            au = [_macro_auroc(y_test[i], proba[i], classes) for i in idx]
            rows.append({"classifier": name, "fraction": frac, "n_train": len(sub),
                         "balanced_accuracy": balanced_accuracy_score(y_test, pred),
                         "ba_ci_low": np.quantile(ba, 0.025), "ba_ci_high": np.quantile(ba, 0.975),
                         "macro_auroc": _macro_auroc(y_test, proba, classes),
                         "auroc_ci_low": np.nanquantile(au, 0.025), "auroc_ci_high": np.nanquantile(au, 0.975)})
    return pd.DataFrame(rows)


# %% [markdown]
# Two synthetic checks that can fail: embeddings whose class means differ are classified well
# above chance, with more labels doing better; embeddings independent of the labels sit at chance.

# %%
_rng = np.random.default_rng(0)
_ytr, _yte = np.repeat(np.arange(7), 60), np.repeat(np.arange(7), 30)
_means = _rng.normal(size=(7, 32))
_sig = lambda y: _means[y] + _rng.normal(scale=1.5, size=(len(y), 32))
_good = probe(_sig(_ytr), _ytr, _sig(_yte), _yte, n_boot=50)
assert (_good[_good.fraction == 1.0].balanced_accuracy > 0.6).all(), _good
assert _good.set_index(["classifier", "fraction"]).loc[("logistic", 1.0), "balanced_accuracy"] > \
       _good.set_index(["classifier", "fraction"]).loc[("logistic", 0.01), "balanced_accuracy"]
_null = probe(_rng.normal(size=(len(_ytr), 32)), _ytr, _rng.normal(size=(len(_yte), 32)), _yte, n_boot=50)
assert (_null.balanced_accuracy < 0.3).all() and (abs(_null.macro_auroc - 0.5) < 0.1).all(), _null
_good.round(3)


# %% [markdown]
# ## A backbone on a dataset
#
# `probe_backbone` embeds every readable image of a HAM10000-style folder once, un-processed (through
# the same cache as the runs, so a probe after a run costs only the images the run did not see),
# splits by lesion with the run's seed and probes train → test. It takes the folder itself: the
# caller resolves a run's `data` (12_experiment's `resolve_data`), so probing needs none of the
# run's machinery.

# %%
#| export
def probe_backbone(backbone: str, folder, seed: int = 20260422, weights=None, fractions=FRACTIONS, n_boot: int = 200,
                   progress: bool = False) -> pd.DataFrame:
    "The diagnosis probe of a registry backbone on a HAM10000-style `folder` (metadata CSV + images)."
    from derma_jepa.backbones import get_backbone
    from derma_jepa.data import load_records, require_readable
    from derma_jepa.embed import embed_sides
    from derma_jepa.split import split_records
    records = load_records(folder)
    require_readable(records)
    split = split_records(records, seed, (0.70, 0.15, 0.15), "symmetric")
    bb = get_backbone(backbone, weights)
    sides = pd.DataFrame({"path": split.path, "sha256": split.sha256, "recipe": recipe_json(NONE_RECIPE)})
    z, _ = embed_sides(bb, sides, progress=progress)
    tr, te = split.split.eq("train").to_numpy(), split.split.eq("test").to_numpy()
    out = probe(z[tr], split.dx.to_numpy()[tr], z[te], split.dx.to_numpy()[te], fractions, seed, n_boot)
    return out.assign(backbone=bb.name, fingerprint=bb.fingerprint)


# %%
from derma_jepa.fixture import fixture_dir
_fx = probe_backbone("color_texture", fixture_dir(n_lesions=600, seed=0), n_boot=50)
test_eq(set(_fx.classifier), {"logistic", "knn"}); test_eq(sorted(set(_fx.fraction)), [0.01, 0.1, 1.0])
test_eq(_fx.balanced_accuracy.between(0, 1).all(), True)
_fx.round(3)

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
# percentile bootstrap CI over test lesions (a lesion with all its images).

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

from derma_jepa.metrics import cluster_counts, resample_metrics
from derma_jepa.nuisance import NONE_RECIPE, recipe_json

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## Label fractions
#
# Per diagnosis, `ceil(fraction · n)` training images, so the rare classes (`df`, `vasc`) keep at
# least one example at 1%. A subsample is one draw among many: at 1% which 70 images are labelled
# moves the probe as much as the backbone does, so a label-efficiency curve draws each fraction
# several times (`draw`; draw 0 is the subsample a single-draw probe uses) and reports the spread.

# %%
#| export
FRACTIONS = (0.01, 0.1, 1.0)


def label_subset(y: np.ndarray, fraction: float, seed: int, draw: int = 0) -> np.ndarray:
    "Sorted indices of a stratified subsample (draw `draw` of `seed`): ceil(fraction · n_c) of each class c (at least 1)."
    if not 0 < fraction <= 1: raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    rng = np.random.default_rng([seed, round(fraction * 1e6), *([draw] if draw else [])])
    y = np.asarray(y)
    keep = [rng.choice(np.flatnonzero(y == c), max(1, int(np.ceil(fraction * (y == c).sum()))), replace=False)
            for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


# %%
_y = np.repeat(np.arange(7), [670, 110, 110, 50, 30, 10, 10])
test_eq(len(label_subset(_y, 1.0, 0)), len(_y))
test_eq(np.bincount(_y[label_subset(_y, 0.01, 0)]).tolist(), [7, 2, 2, 1, 1, 1, 1])
test_eq(label_subset(_y, 0.1, 3).tolist(), label_subset(_y, 0.1, 3).tolist())
test_eq(label_subset(_y, 0.1, 3, draw=0).tolist(), label_subset(_y, 0.1, 3).tolist())
assert label_subset(_y, 0.1, 3, draw=1).tolist() != label_subset(_y, 0.1, 3).tolist()      # another draw, other images
test_eq(np.bincount(_y[label_subset(_y, 0.01, 0, draw=4)]).tolist(), [7, 2, 2, 1, 1, 1, 1])   # the same per-class counts
test_fail(lambda: label_subset(_y, 0, 0), contains="must be in (0, 1]")


# %% [markdown]
# ## The probe
#
# Two steps, so that two backbones can be compared on the same resamples:
#
# - `probe_predictions(z_train, y_train, z_test, y_test, groups)` fits both classifiers at each
#   label fraction (`draws` subsamples of each fraction below 1) and returns one row per
#   (classifier, fraction, draw, test image): the true and the
#   predicted diagnosis, the class probabilities (`p:<class>`) and the image's resampling unit
#   (`group`: its lesion; each image is its own unit when no groups are given);
# - `probe_summary(predictions)` scores each (classifier, fraction): balanced accuracy and macro
#   AUROC with percentile bootstrap CIs. The bootstrap draws **lesions** with replacement (10_metrics'
#   `cluster_counts`: as many draws as test lesions, each lesion with all its images), because the
#   images of one lesion are not independent evidence. Given a `control` (the predictions of
#   another backbone on the same test images), it adds the paired difference in balanced accuracy,
#   Δ = this − control, computed on the *same* resamples, with its percentile interval: the gate of
#   EXP-009 (22_exp009) reads that interval, not one backbone's interval against the other's point.
#
# `probe(...)` is both steps at once. A resample that misses a class is skipped for the AUROC, as
# sklearn cannot score it. Draws after the first get point values only (their spread is the
# label-efficiency band, `label_curve`); the lesion bootstrap runs on draw 0, the subsample every
# single-draw table uses.

# %%
#| export
def _classifiers(n_train: int, seed: int) -> dict:
    return {"logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced",
                                                                           random_state=seed)),
            "knn": KNeighborsClassifier(n_neighbors=min(20, n_train), metric="cosine", weights="distance")}


def _macro_auroc(y, proba, classes) -> float:
    "Macro one-vs-rest AUROC over the training classes present; test items of a class training never saw are left out."
    seen = np.isin(y, classes)
    y, proba = np.asarray(y)[seen], proba[seen]
    present = np.isin(classes, np.unique(y))
    if present.sum() < 2: return float("nan")
    p = proba[:, present]
    p = p / p.sum(1, keepdims=True)
    if present.sum() == 2: return float(roc_auc_score(y == classes[present][1], p[:, 1]))     # two classes: one AUROC
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=classes[present]))


def probe_predictions(z_train, y_train, z_test, y_test, groups=None, fractions=FRACTIONS, seed: int = 20260422,
                      draws: int = 1) -> pd.DataFrame:
    """One row per (classifier, label fraction, draw, test item): `y`, `pred`, `p:<class>` probabilities and the resampling
    `group` (classes as text, so that the class columns name them); `draws` subsamples of each fraction below 1."""
    if draws < 1: raise ValueError(f"draws={draws}: at least one subsample per label fraction")
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    groups = np.arange(len(y_test)) if groups is None else np.asarray(groups)
    if len(groups) != len(y_test): raise ValueError(f"groups has {len(groups)} entries for {len(y_test)} test items")
    classes = np.unique(y_train)
    out = []
    for frac in fractions:
        for draw in range(draws if frac < 1 else 1):
            sub = label_subset(y_train, frac, seed, draw)
            for name, clf in _classifiers(len(sub), seed).items():
                clf.fit(z_train[sub], y_train[sub])
                proba = np.zeros((len(y_test), len(classes)))
                proba[:, np.searchsorted(classes, clf.classes_)] = clf.predict_proba(z_test)
                out.append(pd.DataFrame({"classifier": name, "fraction": frac, "draw": draw, "n_train": len(sub),
                                         "item": np.arange(len(y_test)), "group": groups, "y": y_test.astype(str),
                                         "pred": classes[proba.argmax(1)].astype(str),
                                         **{f"p:{c}": proba[:, k] for k, c in enumerate(classes)}}))
    return pd.concat(out, ignore_index=True)


def _resample_one(y, pred, proba, classes, c) -> tuple[float, float]:
    "Balanced accuracy and macro AUROC of one resample (`c`: multiplicity per item), the items repeated (sklearn's path)."
    i = np.repeat(np.arange(len(y)), c)
    with warnings.catch_warnings():                # a resample may miss a class that was predicted
        warnings.simplefilter("ignore", UserWarning)
        return balanced_accuracy_score(y[i], pred[i]), _macro_auroc(y[i], proba[i], classes)


def _resampled(g: pd.DataFrame, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Balanced accuracy and macro AUROC of one (classifier, fraction) on each resample (`counts`: multiplicity per item),
    all resamples at once: per-class recall from weighted counts, each class's one-vs-rest AUROC from `resample_metrics`
    (10_metrics, the weighted form of repeating items); a resample whose diagnoses differ from the test set's (a rare
    class drawn out) goes through `_resample_one`."""
    classes = np.array([c[2:] for c in g.columns if c.startswith("p:")])
    y, pred, proba = g.y.to_numpy(), g.pred.to_numpy(), g[[f"p:{c}" for c in classes]].to_numpy()
    labels = np.unique(y)
    Y = (y[:, None] == labels).astype(counts.dtype)
    n, tp = counts @ Y, counts @ (Y * (pred == y)[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        ba = np.nansum(tp / n, 1) / (n > 0).sum(1)              # mean recall over the diagnoses each resample holds
    seen = np.isin(y, classes)
    w = counts * seen                                           # a diagnosis training never saw is out of the AUROC
    held = (w @ (y[:, None] == classes)) > 0
    present = np.isin(classes, y[seen])
    fast = (held == present).all(1) & (present.sum() > 2)
    p = proba[:, present] / proba[:, present].sum(1, keepdims=True)
    au = np.full(len(counts), np.nan)
    if fast.any():
        au[fast] = np.mean([resample_metrics(y == c, p[:, k], w[fast])["auroc"] for k, c in enumerate(classes[present])], 0)
    for b in np.flatnonzero(~fast): ba[b], au[b] = _resample_one(y, pred, proba, classes, counts[b])
    return ba, au


PROBE_BOOTSTRAP = "percentile, 95%: test lesions drawn with replacement (a lesion with all its images); Δ paired on the same draws"


def _draws(p: pd.DataFrame) -> pd.DataFrame: return p if "draw" in p else p.assign(draw=0)   # predictions from before draws


def probe_summary(predictions: pd.DataFrame, n_boot: int = 200, seed: int = 20260422, control: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (classifier, fraction, draw): balanced accuracy and macro AUROC, with lesion-level bootstrap CIs for draw 0; with
    a `control` (predictions of another backbone on the same test items), Δ balanced accuracy (this − control), on the
    same resamples for draw 0 (a paired interval), as a point value for the other draws."""
    predictions, control = _draws(predictions), None if control is None else _draws(control)
    key = tuple(predictions[["classifier", "fraction", "draw"]].iloc[0])   # the test items, from one (classifier, fraction, draw)
    by = ["classifier", "fraction", "draw"]
    items = predictions.groupby(by).get_group(key).sort_values("item")
    if control is not None:
        c_items = control.groupby(by).get_group(key).sort_values("item")
        if not (np.array_equal(items.item, c_items.item) and np.array_equal(items.y, c_items.y)
                and np.array_equal(items.group, c_items.group)):
            raise ValueError("the control's predictions are not on the same test items (item, y and group must agree)")
    counts = cluster_counts(items.group.to_numpy(), np.zeros(len(items)), n_boot, seed + 1)
    rows = []
    nan = float("nan")
    for (name, frac, draw), g in predictions.groupby(by, sort=False):
        g = g.sort_values("item")
        ba, au = _resampled(g, counts) if draw == 0 else (np.full(1, nan), np.full(1, nan))
        classes = np.array([c[2:] for c in g.columns if c.startswith("p:")])
        point = balanced_accuracy_score(g.y, g.pred)
        row = {"classifier": name, "fraction": frac, "draw": draw, "n_train": g.n_train.iloc[0], "n_test": len(g),
               "n_lesions": g.group.nunique(), "balanced_accuracy": point,
               "ba_ci_low": np.quantile(ba, 0.025), "ba_ci_high": np.quantile(ba, 0.975),
               "macro_auroc": _macro_auroc(g.y.to_numpy(), g[[f"p:{c}" for c in classes]].to_numpy(), classes),
               "auroc_ci_low": np.nanquantile(au, 0.025) if draw == 0 else nan,
               "auroc_ci_high": np.nanquantile(au, 0.975) if draw == 0 else nan}
        if control is not None:
            cg = control[control.classifier.eq(name) & np.isclose(control.fraction, frac) & control.draw.eq(draw)].sort_values("item")
            d = ba - _resampled(cg, counts)[0] if draw == 0 else np.full(1, nan)
            row.update(delta_ba=point - balanced_accuracy_score(cg.y, cg.pred),
                       delta_ci_low=np.quantile(d, 0.025), delta_ci_high=np.quantile(d, 0.975))
        rows.append(row)
    return pd.DataFrame(rows)


def label_curve(summary: pd.DataFrame, by=(), metric: str = "balanced_accuracy") -> pd.DataFrame:
    """The label-efficiency curve of probe summaries (one or several, e.g. one per pretraining seed, told apart by the
    columns `by`): per (`by`..., classifier, fraction), the mean of `metric` over every draw (and seed) and its band, the
    lowest and highest of them, with how many there were."""
    keys = [*by, "classifier", "fraction"]
    g = summary.groupby(keys, sort=False)[metric]
    return g.agg(mean="mean", low="min", high="max", n="count").reset_index()


def probe(z_train, y_train, z_test, y_test, fractions=FRACTIONS, seed: int = 20260422, n_boot: int = 200, groups=None,
          draws: int = 1) -> pd.DataFrame:
    "Balanced accuracy and macro AUROC (with bootstrap CIs over `groups`, else items) of a linear probe and a kNN at each fraction."
    return probe_summary(probe_predictions(z_train, y_train, z_test, y_test, groups, fractions, seed, draws), n_boot, seed)


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
# Several draws per fraction: draw 0 is the single-draw probe, bootstrap and all; the other draws
# are point values on other subsamples, and `label_curve` gives their mean and range per fraction
# (one draw at 100%: every label is every label). The curve rises with labels on signal.

# %%
_zs, _zq = _sig(_ytr), _sig(_yte)
_one = probe(_zs, _ytr, _zq, _yte, fractions=(0.05, 1.0), n_boot=50)
_five = probe(_zs, _ytr, _zq, _yte, fractions=(0.05, 1.0), n_boot=50, draws=5)
test_eq(_five.groupby(["classifier", "fraction"]).draw.nunique().tolist(), [5, 1, 5, 1])
pd.testing.assert_frame_equal(_five[_five.draw.eq(0)].reset_index(drop=True), _one)     # draw 0 is the single-draw probe
assert _five[_five.draw.gt(0)].ba_ci_low.isna().all() and _five[_five.draw.eq(0)].ba_ci_low.notna().all()
assert _five[_five.fraction.eq(0.05)].balanced_accuracy.nunique() > 1                   # the subsample matters
_curve = label_curve(_five)
test_eq(_curve.n.tolist(), [5, 5, 1, 1])
_lg = _curve[_curve.classifier.eq("logistic")].set_index("fraction")
assert _lg.loc[0.05, "low"] <= _lg.loc[0.05, "mean"] <= _lg.loc[0.05, "high"] and _lg.loc[1.0, "mean"] > _lg.loc[0.05, "mean"]
_two = label_curve(pd.concat([_five.assign(seed=0), _five.assign(seed=1)]), by=["seed"])   # one curve per seed
test_eq(len(_two), 8)
test_fail(lambda: probe(_zs, _ytr, _zq, _yte, draws=0), contains="draws=0")
_p3 = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])                  # a test class training never saw is left out of the AUROC
test_eq(_macro_auroc(np.array(["a", "b", "c"]), _p3, np.array(["a", "b"])), 1.0)
np.testing.assert_allclose(_macro_auroc(np.array(["a", "b", "c", "a"]), np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7],
                                        [0.15, 0.55, 0.3]]), np.array(["a", "b", "c"])), np.mean([0.75, 1.0, 1.0]))   # by hand
_curve.round(3)

# %% [markdown]
# The resampling unit matters when a lesion has several images: the same embeddings, each test image
# copied three times under one lesion id, give the same point value, but an image-level bootstrap
# counts the copies as independent evidence and its interval is about √3 narrower than the
# lesion-level one. The paired Δ against a control sits at zero against itself, and against a
# control that only guesses it is positive with an interval that excludes zero; a control on other
# test items is refused.
# The resamples are scored all at once (weighted recalls, and each class's AUROC through 10_metrics'
# `resample_metrics`); the check after these runs them one at a time through sklearn, items repeated, and
# must agree to rounding, a resample that draws a whole diagnosis out included.

# %%
_z3, _y3 = np.repeat(_sig(_yte), 3, 0), np.repeat(_yte, 3)
_zt = _sig(_ytr)
_les = probe(_zt, _ytr, _z3, _y3, fractions=(1.0,), n_boot=200, groups=np.repeat(np.arange(len(_yte)), 3))
_img = probe(_zt, _ytr, _z3, _y3, fractions=(1.0,), n_boot=200)
test_eq(_les.balanced_accuracy.tolist(), _img.balanced_accuracy.tolist())
_w = lambda t: (t.ba_ci_high - t.ba_ci_low).to_numpy()
assert (_w(_les) > 1.4 * _w(_img)).all(), (_w(_les), _w(_img))
test_eq(_les.n_lesions.tolist(), [len(_yte)] * 2)
_pa = probe_predictions(_zt, _ytr, _sig(_yte), _yte, fractions=(1.0,))
_pc = probe_predictions(_rng.normal(size=(len(_ytr), 32)), _ytr, _rng.normal(size=(len(_yte), 32)), _yte, fractions=(1.0,))
_self = probe_summary(_pa, 100, control=_pa)
test_eq(_self.delta_ba.tolist(), [0.0, 0.0]); test_eq((_self.delta_ci_high - _self.delta_ci_low).tolist(), [0.0, 0.0])
_vs = probe_summary(_pa, 200, control=_pc)
assert (_vs.delta_ci_low > 0.2).all() and np.allclose(_vs.delta_ba, _vs.balanced_accuracy - probe_summary(_pc, 10).balanced_accuracy), _vs
test_fail(lambda: probe_summary(_pa, 10, control=_pc.assign(group=_pc.group + 1)), contains="not on the same test items")
# all resamples at once equals one resample at a time through sklearn, a resample that draws a diagnosis out included
_g = _pc[_pc.classifier.eq("logistic")].sort_values("item")
_cnt = cluster_counts(_g.group.to_numpy(), np.zeros(len(_g)), 30, 7)
_cnt[0, _g.y.to_numpy() == _g.y.iloc[0]] = 0
_cls = np.array([c[2:] for c in _g.columns if c.startswith("p:")])
_one = np.array([_resample_one(_g.y.to_numpy(), _g.pred.to_numpy(), _g[[f"p:{c}" for c in _cls]].to_numpy(), _cls, c) for c in _cnt])
np.testing.assert_allclose(np.c_[_resampled(_g, _cnt)], _one, rtol=1e-12)
_vs.round(3)


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
def _sides(rows: pd.DataFrame) -> pd.DataFrame:
    "Un-processed images as embedding sides (08_embed)."
    return pd.DataFrame({"path": rows.path, "sha256": rows.sha256, "recipe": recipe_json(NONE_RECIPE)})


def _embedded_split(backbone, folder, seed: int, weights=None, progress: bool = False):
    "(records with the lesion-aware split, their embeddings, the backbone) of a HAM10000-style `folder`; `backbone`: a name or a loaded Backbone."
    from derma_jepa.backbones import get_backbone
    from derma_jepa.data import load_records, require_readable
    from derma_jepa.embed import embed_sides
    from derma_jepa.split import split_records
    records = load_records(folder)
    require_readable(records)
    split = split_records(records, seed, (0.70, 0.15, 0.15), "symmetric")
    bb = get_backbone(backbone, weights) if isinstance(backbone, str) else backbone
    return split, embed_sides(bb, _sides(split), progress=progress)[0], bb


def probe_backbone(backbone: str, folder, seed: int = 20260422, weights=None, fractions=FRACTIONS,
                   progress: bool = False, draws: int = 1) -> pd.DataFrame:
    """The diagnosis probe's predictions (`probe_predictions`, grouped by lesion) of a registry backbone on a
    HAM10000-style `folder` (metadata CSV + images), with each test image's `image_id`; `probe_summary` scores them."""
    split, z, bb = _embedded_split(backbone, folder, seed, weights, progress)
    tr, te = split.split.eq("train").to_numpy(), split.split.eq("test").to_numpy()
    dx, test = split.dx.to_numpy(), split[te].reset_index(drop=True)
    out = probe_predictions(z[tr], dx[tr], z[te], dx[te], test.lesion_id.to_numpy(), fractions, seed, draws)
    return out.assign(image_id=test.image_id.to_numpy()[out["item"]], backbone=bb.name, fingerprint=bb.fingerprint)


# %%
from derma_jepa.fixture import fixture_dir
_fxp = probe_backbone("color_texture", fixture_dir(n_lesions=600, seed=0))
_fx = probe_summary(_fxp, 50)
assert _fx.n_lesions.lt(_fx.n_test).all(), _fx                      # the fixture's lesions have several images
test_eq(_fxp.groupby("image_id").group.nunique().max(), 1)
test_eq(set(_fx.classifier), {"logistic", "knn"}); test_eq(sorted(set(_fx.fraction)), [0.01, 0.1, 1.0])
test_eq(_fx.balanced_accuracy.between(0, 1).all(), True)
_fx.round(3)

# %% [markdown]
# ## Across datasets: melanoma on ISIC 2017
#
# A feature that learned something about lesions should carry to another collection. The MedMNIST
# self-supervised benchmark's cross-dataset protocol, for melanoma: a logistic probe (as above)
# for melanoma against the six other diagnoses, fitted on the HAM10000 train split's embeddings
# (the same split and cache as the diagnosis probe), scored on the 150 ISIC 2017 validation images
# (another challenge, another label file, 256×256) by AUROC with a percentile bootstrap over those
# images: ISIC 2017 gives no lesion ids, so an image is the resampling unit, which is stated beside
# the interval. EXP-009's pretraining corpus leaves these 150 images out (22_exp009), so an
# EXP-009 encoder meets them here for the first time.

# %%
#| export
ISIC2017_SPLITS = {"train": ("train", "ISIC-2017_Training_Classes.csv"), "val": ("val", "ISIC-2017_Validation_Classes.csv")}
TRANSFER_BOOTSTRAP = "percentile, 95%: ISIC 2017 images drawn with replacement (no lesion ids are given)"


def isic2017_records(root, split: str = "val") -> pd.DataFrame:
    "The ISIC 2017 images of one split (`root/<split>/<image_id>.jpg`) with their melanoma label (0/1) and SHA-256."
    from pathlib import Path
    from derma_jepa.data import DataError, audit_files
    if split not in ISIC2017_SPLITS: raise ValueError(f"ISIC 2017 split {split!r}: choose one of {', '.join(ISIC2017_SPLITS)}")
    folder, classes = ISIC2017_SPLITS[split]
    csv = Path(root) / classes
    if not csv.is_file(): raise DataError(f"{csv}: the ISIC 2017 {split} classes file is not there")
    df = pd.read_csv(csv, dtype={"image_id": str})
    if not {"image_id", "melanoma"} <= set(df.columns):
        raise DataError(f"{csv}: needs the columns image_id and melanoma, has {', '.join(map(str, df.columns))}")
    bad = np.flatnonzero(~df.melanoma.isin([0, 1]).to_numpy())
    if len(bad): raise DataError(f"{csv} row {bad[0] + 2}: melanoma is {df.melanoma.astype(str).iloc[bad[0]]}, not 0 or 1")
    paths = [Path(root) / folder / f"{i}.jpg" for i in df.image_id]
    audit = audit_files(paths)
    bad = np.flatnonzero(audit.status.ne("found").to_numpy())
    if len(bad): raise DataError(f"{paths[bad[0]]} ({csv.name} row {bad[0] + 2}) is {audit.status.iloc[bad[0]]}; "
                                 f"{len(bad)} bad image(s) in all")
    return pd.DataFrame({"image_id": df.image_id, "path": list(map(str, paths)), "sha256": audit.sha256.to_numpy(),
                         "melanoma": df.melanoma.astype(int).to_numpy()})


def transfer_predictions(backbone, folder, isic_root, split: str = "val", seed: int = 20260422, weights=None,
                         progress: bool = False) -> pd.DataFrame:
    """Melanoma scores of ISIC 2017 `split` images from a logistic probe fitted on the HAM10000 train split (melanoma vs
    rest); `backbone`: a registry name or a Backbone already loaded."""
    from derma_jepa.embed import embed_sides
    isic = isic2017_records(isic_root, split)
    ham, z, bb = _embedded_split(backbone, folder, seed, weights, progress)
    tr = ham.split.eq("train").to_numpy()
    clf = _classifiers(int(tr.sum()), seed)["logistic"].fit(z[tr], ham.dx.to_numpy()[tr] == "mel")
    zi, _ = embed_sides(bb, _sides(isic), progress=progress)
    return isic[["image_id", "melanoma"]].assign(score=clf.predict_proba(zi)[:, 1], backbone=bb.name, fingerprint=bb.fingerprint)


def transfer_summary(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 20260422) -> dict:
    "Melanoma AUROC on the transfer images with its bootstrap CI (images resampled), and the counts behind it."
    from derma_jepa.metrics import bootstrap_metrics
    m = bootstrap_metrics(predictions.melanoma.to_numpy(), predictions.score.to_numpy(), n_boot, seed)["auroc"]
    return {"n_images": len(predictions), "n_melanoma": int(predictions.melanoma.sum()), "auroc": m["value"],
            "auroc_ci_low": m["ci_low"], "auroc_ci_high": m["ci_high"], "bootstrap": f"{TRANSFER_BOOTSTRAP}, {n_boot} resamples"}


# %% [markdown]
# On a hand-made "ISIC 2017" folder: fixture images of other lesions than the probe's (a second
# fixture, another seed), labelled melanoma where their diagnosis is `mel`. A bad label, a missing
# file and a missing classes file each end in one line naming where.

# %%
import shutil, tempfile
from pathlib import Path
from derma_jepa.data import load_records
_isic = Path(tempfile.mkdtemp()) / "isic2017"; (_isic / "val").mkdir(parents=True)
_other = load_records(fixture_dir(n_lesions=200, seed=5)).drop_duplicates("lesion_id").head(60)
for _r in _other.itertuples(): shutil.copy(_r.path, _isic / "val" / f"{_r.image_id}.jpg")
pd.DataFrame({"image_id": _other.image_id, "melanoma": _other.dx.eq("mel").astype(float)}).to_csv(
    _isic / "ISIC-2017_Validation_Classes.csv", index=False)
_tp = transfer_predictions("color_texture", fixture_dir(n_lesions=600, seed=0), _isic)
_ts = transfer_summary(_tp, 200)
test_eq((_ts["n_images"], _ts["n_melanoma"]), (60, int(_other.dx.eq("mel").sum())))
assert 0.5 < _ts["auroc"] and _ts["auroc_ci_low"] <= _ts["auroc"] <= _ts["auroc_ci_high"] <= 1, _ts   # the fixture's mel is visible
test_eq(transfer_summary(_tp, 200), _ts)                                          # seeded
test_fail(lambda: isic2017_records(_isic, "test"), contains="ISIC 2017 split 'test'")
test_fail(lambda: isic2017_records(_isic, "train"), contains="ISIC-2017_Training_Classes.csv: the ISIC 2017 train classes file is not there")
_bad = _isic.parent / "bad"; shutil.copytree(_isic, _bad)
(_bad / "ISIC-2017_Validation_Classes.csv").write_text("image_id,melanoma\n" + f"{_other.image_id.iloc[0]},0.0\n{_other.image_id.iloc[1]},0.5\n")
test_fail(lambda: isic2017_records(_bad), contains="ISIC-2017_Validation_Classes.csv row 3: melanoma is 0.5, not 0 or 1")
(_bad / "val" / f"{_other.image_id.iloc[0]}.jpg").unlink()
(_bad / "ISIC-2017_Validation_Classes.csv").write_text("image_id,melanoma\n" + f"{_other.image_id.iloc[0]},0.0\n")
test_fail(lambda: isic2017_records(_bad), contains=f"{_other.image_id.iloc[0]}.jpg (ISIC-2017_Validation_Classes.csv row 2) is missing")
_ts

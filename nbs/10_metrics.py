# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp metrics

# %% [markdown]
# # Metrics: AUROC, AUPRC, EER, FPR@TPR with paired, clustered bootstrap intervals, and representation health
#
# > Every score is a distance with *changing* (label 1) as the positive class. Point estimates come
# > from `sklearn.metrics`; the bootstrap is vectorised and equals a per-resample sklearn loop.
#
# PROTOCOL A7: AUROC is `roc_auc_score`, AUPRC `average_precision_score`; EER and FPR@TPR=0.8 are
# read off `roc_curve` (with its default `drop_intermediate=True`): EER at the point minimising
# |FPR − FNR|, (FPR + FNR)/2 there; FPR@TPR the lowest FPR among points with TPR ≥ 0.8 (1.0 if
# none). The release bootstrapped AUROC only, resampling *pairs* independently for every scorer;
# here **all four** metrics get percentile intervals, and how the resamples are drawn is a choice
# this notebook makes explicit (next cell).

# %% [markdown]
# The two ways of drawing resamples:
#
# - **pair-level** (`bootstrap_counts`): the release's rule, kept by the `reference` protocol so its
#   published intervals reproduce. Pairs are treated as independent, which they are not: one lesion
#   is the context of several pairs, so the interval comes out too narrow.
# - **cluster, stratified, paired** (`cluster_counts` + `paired_bootstrap`): the `symmetric`
#   protocol's rule. The unit drawn is the *context lesion*: every pair whose context lesion is
#   drawn comes along (as often as it is drawn), separately within each stratum (the pair kind,
#   so each resample keeps its stable/changing balance). One set of resamples per split is shared
#   by *every* scorer, so two scorers' difference Δ gets its own interval from the same resamples
#   (a paired bootstrap), and two scorers with identical scores get identical intervals.

# %% [markdown]
# A naive bootstrap calls sklearn 4,000 times per scorer and split. Instead, every resample is a
# vector of multiplicities over the original pairs (a cluster draw is just a different way of
# making that vector); pairs with equal scores form tie groups, and each metric is a function of
# per-group positive and negative weights, computed for all resamples at once. Ties and
# `roc_curve`'s dropping of collinear points are reproduced exactly.

# %%
#| export
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

# %%
from fastcore.test import test_eq, test_close

# %% [markdown]
# ## Point estimates

# %%
#| export
METRICS = ("auroc", "auprc", "eer", "fpr_at_tpr")


def eer(y, s) -> float:
    "Equal error rate from `roc_curve` (intermediate points dropped): (FPR + FNR)/2 at the point where FPR and FNR are closest."
    fpr, tpr, _ = roc_curve(y, s)
    i = int(np.argmin(np.abs(fpr - (1 - tpr))))
    return float((fpr[i] + 1 - tpr[i]) / 2)


def fpr_at_tpr(y, s, tpr_min: float = 0.8) -> float:
    "Lowest FPR among ROC points with TPR ≥ `tpr_min`; 1.0 if there is none."
    fpr, tpr, _ = roc_curve(y, s)
    ok = tpr >= tpr_min
    return float(fpr[ok].min()) if ok.any() else 1.0


def point_metrics(y, s) -> dict:
    "The four metrics of one scorer on one split."
    return {"auroc": float(roc_auc_score(y, s)), "auprc": float(average_precision_score(y, s)),
            "eer": eer(y, s), "fpr_at_tpr": fpr_at_tpr(y, s)}


# %%
_y = np.array([0, 0, 1, 1]); _s = np.array([0.1, 0.4, 0.35, 0.8])
test_eq(point_metrics(_y, _s)["auroc"], 0.75)
test_eq(point_metrics(_y, -_s)["auroc"], 0.25)           # never flipped: below 0.5 stays below
test_eq(point_metrics(np.array([0, 1]), np.array([0.0, 1.0]))["eer"], 0.0)


# %% [markdown]
# ## All resamples at once
#
# For multiplicities `C` (resamples × pairs), tie groups of the sorted scores give per-group
# positive and negative weights `P`, `N` (resamples × groups), highest score first. Then, per row:
#
# - AUROC = Σ_g P_g (N below g + N_g / 2) / (ΣP ΣN) (Mann–Whitney with ties, as `roc_auc_score`);
# - AUPRC = Σ_g (P_g / ΣP) · precision_g over groups present (`average_precision_score`);
# - the ROC points are the cumulative (N, P) after each *present* group; `roc_curve` keeps a point
#   only where the step into it differs from the step out of it (plus the ends and (0, 0)), and EER
#   and FPR@TPR are read off exactly those points.

# %%
#| export
def _groups(s):
    "Order (descending score) and tie-group boundaries of the original scores."
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]
    return order, starts


def _next_present(present: np.ndarray) -> np.ndarray:
    "For each column, the index of the next present column to its right (G if none), per row."
    B, G = present.shape
    idx = np.where(present, np.arange(G), G)
    nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]          # first present at or after g
    return np.concatenate([nxt[:, 1:], np.full((B, 1), G)], axis=1)     # strictly after g


def resample_metrics(y, s, counts: np.ndarray, tpr_min: float = 0.8) -> dict[str, np.ndarray]:
    "The four metrics for every row of `counts` (multiplicities of the pairs); NaN where a class is absent."
    y, s = np.asarray(y), np.asarray(s, float)
    order, starts = _groups(s)
    C = counts[:, order]
    P = np.add.reduceat(C * (y[order] == 1).astype(C.dtype), starts, axis=1)
    T = np.add.reduceat(C, starts, axis=1)
    N = T - P
    tp, fp = P.sum(1), N.sum(1)
    valid = (tp > 0) & (fp > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ctp, cfp = np.cumsum(P, axis=1), np.cumsum(N, axis=1)
        auroc = (P * (fp[:, None] - cfp + N / 2)).sum(1) / (tp * fp)      # negatives below + half the tied ones
        present = T > 0
        auprc = (P * (ctp / np.maximum(ctp + cfp, 1))).sum(1) / tp
        fpr, tpr = cfp / fp[:, None], ctp / tp[:, None]
        # roc_curve's drop_intermediate: keep a present point unless its in-step equals its out-step
        B, G = P.shape
        nxt = _next_present(present)
        first = np.where(present.any(1), present.argmax(1), G)
        last = G - 1 - present[:, ::-1].argmax(1)
        rows = np.arange(B)[:, None]
        nxt_c = np.minimum(nxt, G - 1)
        same = (P[rows, nxt_c] == P) & (N[rows, nxt_c] == N)
        cols = np.arange(G)[None, :]
        keep = present & ((cols == first[:, None]) | (cols == last[:, None]) | ~same | (nxt >= G))
        gap = np.where(keep, np.abs(fpr - (1 - tpr)), np.inf)
        i = gap.argmin(1)
        g_min = gap[np.arange(B), i]
        eer_v = np.where(g_min < 1, (fpr[np.arange(B), i] + 1 - tpr[np.arange(B), i]) / 2, 0.5)   # (0,0) point: |0-1| = 1
        ok = keep & (tpr >= tpr_min)                                    # fpr never decreases along a row:
        fpr_tpr = np.where(ok.any(1), fpr[np.arange(B), ok.argmax(1)], 1.0)  # the first such point has the lowest
    out = {"auroc": auroc, "auprc": auprc, "eer": eer_v, "fpr_at_tpr": fpr_tpr}
    return {k: np.where(valid, v, np.nan) for k, v in out.items()}


# %% [markdown]
# The (0, 0) point that `roc_curve` prepends has |FPR − FNR| = 1, the largest possible value; it
# is chosen only when every other point ties with it, i.e. never for a valid resample except the
# degenerate case where the first kept point also has |FPR − FNR| = 1 (all positives scored last);
# there sklearn's `argmin` picks (0, 0) and EER = 0.5, which is what the code returns.

# %%
#| export
def bootstrap_counts(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    "Multiplicities of `n_boot` resamples of `n` items with replacement, from `default_rng(seed)`."
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    flat = (idx + np.arange(n_boot)[:, None] * n).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.int32)


def bootstrap_many(tasks, n_boot: int = 1000, workers: int = 2) -> list[dict]:
    "`bootstrap_metrics` for many (y, s, counts) tasks on a thread pool (numpy releases the GIL in the heavy steps)."
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda t: bootstrap_metrics(t[0], t[1], n_boot, counts=t[2]), tasks))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    "Percentile interval of the valid (non-NaN) resample values."
    v = values[~np.isnan(values)]
    a = (1 - level) / 2
    return tuple(float(x) for x in np.quantile(v, [a, 1 - a])) if len(v) else (float("nan"), float("nan"))


def _summary(point: dict, res: dict, level: float) -> dict:
    out = {m: dict(zip(("value", "ci_low", "ci_high"), (point[m], *_interval(res[m], level)))) for m in METRICS}
    out["n_boot_valid"] = int((~np.isnan(res["auroc"])).sum())
    return out


def bootstrap_metrics(y, s, n_boot: int = 1000, seed: int = 0, level: float = 0.95, counts=None) -> dict:
    "Point value and percentile CI of the four metrics: {metric: {'value', 'ci_low', 'ci_high'}}, plus 'n_boot_valid'."
    y, s = np.asarray(y), np.asarray(s, float)
    counts = bootstrap_counts(len(y), n_boot, seed) if counts is None else counts
    return _summary(point_metrics(y, s), resample_metrics(y, s, counts), level)


# %% [markdown]
# ## The vectorised bootstrap equals the naive loop
#
# On data with heavy ties (scores rounded to one decimal, so `roc_curve` drops many collinear
# points) and on continuous scores, every resample's four metrics must equal sklearn on the
# materialised resample to 1e-12, and resamples with a single class must be skipped.

# %%
def _naive(y, s, counts):
    rows = []
    for c in counts:
        idx = np.repeat(np.arange(len(y)), c)
        yy, ss = y[idx], s[idx]
        rows.append(point_metrics(yy, ss) if 0 < yy.sum() < len(yy) else dict.fromkeys(METRICS, np.nan))
    return {m: np.array([r[m] for r in rows]) for m in METRICS}

_rng = np.random.default_rng(0)
for _n, _round in [(60, 1), (200, None), (9, 1)]:
    _yy = _rng.integers(0, 2, _n)
    _ss = _rng.normal(_yy * 0.7, 1)
    if _round is not None: _ss = np.round(_ss, _round)
    _cnt = bootstrap_counts(_n, 300, seed=_n)
    _v, _nv = resample_metrics(_yy, _ss, _cnt), _naive(_yy, _ss, _cnt)
    for _m in METRICS:
        np.testing.assert_allclose(_v[_m], _nv[_m], rtol=0, atol=1e-12, equal_nan=True, err_msg=f"{_m} n={_n}")
test_eq(bool(np.isnan(_v["auroc"]).any()), True)      # n = 9: some resamples hold one class and are skipped

# %%
_b = bootstrap_metrics(_yy, _ss, 200, seed=1)
assert _b["auroc"]["ci_low"] <= _b["auroc"]["value"] <= _b["auroc"]["ci_high"] or _b["n_boot_valid"] < 200


# %% [markdown]
# ## Clustered, stratified, paired resamples
#
# `cluster_counts` draws, within each stratum, as many clusters as the stratum has, with
# replacement, from one generator seeded by the caller (strata in sorted order, clusters sorted
# within a stratum, so the draws do not depend on the manifest's row order). A pair's multiplicity
# is its cluster's. `paired_bootstrap` then evaluates every scorer on the *same* multiplicities;
# a Δ between two scorers is the per-resample difference of their AUROCs, and its interval is the
# percentile interval of those differences.

# %%
#| export
def cluster_counts(clusters, strata, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    "Multiplicities of items when each stratum's distinct clusters are drawn with replacement (as many draws as clusters)."
    clusters, strata = np.asarray(clusters), np.asarray(strata)
    if clusters.shape != strata.shape: raise ValueError(f"clusters {clusters.shape} and strata {strata.shape} differ in length")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(clusters)), np.int32)
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        ids, inv = np.unique(clusters[rows], return_inverse=True)
        k = len(ids)
        draws = rng.integers(0, k, size=(n_boot, k)) + np.arange(n_boot)[:, None] * k
        counts[:, rows] = np.bincount(draws.ravel(), minlength=n_boot * k).reshape(n_boot, k)[:, inv]
    return counts


def paired_bootstrap(y, scores: dict, counts: np.ndarray, deltas=(), level: float = 0.95, workers: int = 2) -> dict:
    """Every scorer's four metrics with percentile CIs from the same resamples `counts`, and for each
    (a, b) in `deltas` the AUROC difference a − b with its CI: {'metrics': {name: ...}, 'deltas': {'a - b': ...}}."""
    from concurrent.futures import ThreadPoolExecutor
    y = np.asarray(y)
    names = list(scores)
    with ThreadPoolExecutor(workers) as ex:
        res = dict(zip(names, ex.map(lambda n: resample_metrics(y, np.asarray(scores[n], float), counts), names)))
    points = {n: point_metrics(y, np.asarray(scores[n], float)) for n in names}
    out = {"metrics": {n: _summary(points[n], res[n], level) for n in names}, "deltas": {}}
    for a, b in deltas:
        lo, hi = _interval(res[a]["auroc"] - res[b]["auroc"], level)
        out["deltas"][f"{a} - {b}"] = {"a": a, "b": b, "value": points[a]["auroc"] - points[b]["auroc"],
                                       "ci_low": lo, "ci_high": hi}
    return out


# %% [markdown]
# The cluster draw equals a naive loop that draws lesions, materialises every resample (all pairs
# of each drawn lesion, once per draw) and calls sklearn on it: same generator, same order.

# %%
def _naive_cluster(y, s, clusters, strata, n_boot, seed):
    rng, per_stratum = np.random.default_rng(seed), []
    for st in np.unique(strata):
        ids = np.unique(clusters[strata == st])
        per_stratum.append((ids, rng.integers(0, len(ids), size=(n_boot, len(ids)))))
    rows = []
    for b in range(n_boot):
        idx = np.concatenate([np.flatnonzero((clusters == c) & (strata == st)) for st, (ids, draws) in
                              zip(np.unique(strata), per_stratum) for c in ids[draws[b]]])
        rows.append(point_metrics(y[idx], s[idx]))
    return {m: np.array([r[m] for r in rows]) for m in METRICS}

_n = 120
_les = np.array([f"L{i:03d}" for i in _rng.integers(0, 45, _n)])            # lesions recur across pairs
_yy = _rng.integers(0, 2, _n)
_ss = np.round(_rng.normal(_yy * 0.8, 1), 1)
_cc = cluster_counts(_les, _yy, 200, seed=5)
_v, _nv = resample_metrics(_yy, _ss, _cc), _naive_cluster(_yy, _ss, _les, _yy, 200, 5)
for _m in METRICS:
    np.testing.assert_allclose(_v[_m], _nv[_m], rtol=0, atol=1e-12, err_msg=f"cluster {_m}")
test_eq((_cc[:, _yy == 0].sum(1) > 0).all() and (_cc[:, _yy == 1].sum(1) > 0).all(), True)   # stratified: both classes always
test_eq(cluster_counts(_les[::-1], _yy[::-1], 50, 5)[:, ::-1], cluster_counts(_les, _yy, 50, 5))   # row order does not matter

# %% [markdown]
# Pairing: two scorers with identical scores get identical intervals, a scorer's Δ with itself is
# exactly 0, and Δ's interval comes from the same resamples as each scorer's own.

# %%
_pb = paired_bootstrap(_yy, {"a": _ss, "a_again": _ss.copy(), "b": _ss + _rng.normal(0, 1, _n)}, _cc,
                       deltas=[("a", "a_again"), ("a", "b")])
test_eq(_pb["metrics"]["a"], _pb["metrics"]["a_again"])
test_eq((_pb["deltas"]["a - a_again"]["ci_low"], _pb["deltas"]["a - a_again"]["ci_high"]), (0.0, 0.0))
test_close(_pb["deltas"]["a - b"]["value"], _pb["metrics"]["a"]["auroc"]["value"] - _pb["metrics"]["b"]["auroc"]["value"], 1e-12)

# %% [markdown]
# Why the unit matters: when pairs of one lesion share most of their score (here each lesion
# carries a random offset shared by its pairs, as a lesion's appearance is shared by every pair it
# anchors), the pair-level interval is narrower than the lesion-level one, and only the latter
# covers the lesion-to-lesion variation a new sample of lesions would bring.

# %%
_L = 60
_lesion = np.repeat(np.arange(_L), 8)
_lab = np.tile([0, 1], _L * 4)
_shift = _rng.normal(0, 1.5, _L)[_lesion]
_score = _shift + 0.6 * _lab + _rng.normal(0, 0.3, len(_lab))
_w_pair = np.diff([bootstrap_metrics(_lab, _score, 400, seed=1)["auroc"][k] for k in ("ci_low", "ci_high")])[0]
_w_lesion = np.diff([paired_bootstrap(_lab, {"s": _score}, cluster_counts(_lesion, _lab, 400, 1))["metrics"]["s"]["auroc"][k]
                     for k in ("ci_low", "ci_high")])[0]
print(f"95% CI width of AUROC: pair-level {_w_pair:.3f}, lesion-level {_w_lesion:.3f}")
assert _w_lesion > 1.3 * _w_pair


# %% [markdown]
# ## Representation health
#
# Computed over the predictions for the contexts of every test pair (duplicates included), on the
# **un-normalised** predictions, as the paper's Appendix E says: norm mean and min, per-dimension
# (population) variance mean and min. The release computed them after L2 normalisation, where the
# norm is 1 by construction; that variant is reported beside it. `collapsed` is the release's rule
# (norm mean or variance mean ≤ 1e-8) applied to the un-normalised predictions.

# %%
#| export
def _health(p: np.ndarray) -> dict:
    n, v = np.linalg.norm(p, axis=1), p.var(axis=0)
    return {"norm_mean": float(n.mean()), "norm_min": float(n.min()), "var_mean": float(v.mean()), "var_min": float(v.min())}


def representation_health(predictions: np.ndarray, eps: float = 1e-8) -> dict:
    "Norm and per-dimension variance of predictions, un-normalised and normalised, and a collapse flag."
    p = np.asarray(predictions, np.float64)
    raw = _health(p)
    normed = _health(p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12))
    return {"unnormalised": raw, "normalised": normed,
            "collapsed": bool(raw["norm_mean"] <= eps or raw["var_mean"] <= eps)}


# %%
test_eq(representation_health(np.ones((5, 3)))["collapsed"], True)
test_eq(representation_health(_rng.normal(size=(50, 4)))["collapsed"], False)
test_close(representation_health(_rng.normal(size=(50, 4)))["normalised"]["norm_mean"], 1.0)

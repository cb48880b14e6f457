# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp predictors

# %% [markdown]
# # Predictors: the latent predictor, its two trainers, and the controls that expose a leak
#
# > `g(z_c)` predicts the target embedding from the context embedding; a pair's score is
# > `1 − cos(normalise(g(z_c)), z_t)`, high for a *changing* pair. Trained on train stable pairs only.

# %% [markdown]
# **JEPA** (joint-embedding predictive architecture, LeCun 2022; I-JEPA, Assran et al. 2023)
# means predicting the *embedding* of one view from the embedding of another, instead of
# reconstructing pixels. Here the two views are the two sides of a pair, the encoder is a frozen
# backbone, and only the predictor `g` learns: trained on stable pairs (same lesion, two
# acquisitions), it should map a lesion's embedding under one nuisance to its embedding under
# another, so that a pair it cannot predict is a lesion that changed.

# %% [markdown]
# Two predictors (PROTOCOL A6): **linear** `g(z) = zW + b`, W = I + N(0, 0.005²), b = 0; and the
# **residual MLP** `g(z) = z + ReLU(zW1 + b1)W2 + b2`, hidden 512, W1 Kaiming-uniform × 0.1 (fan-in
# 512, as the release's layout gives), W2 = 0, so both start at (nearly) the identity.
#
# Two trainers:
#
# - `reference` is the release's update rule exactly. For the linear predictor: numpy, float64,
#   `default_rng(seed+307)` for the init and the epoch permutations, weight gradient
#   (2/(B·D))·Xᵀerr + 2λ(W − I), bias gradient 2·mean(err), SGD at LR 0.03, λ = 0.001. The bias
#   step is D times too large relative to the loss it claims to differentiate, so b runs to the
#   mean train displacement within a few epochs while W barely moves: the "linear predictor" is in
#   effect `normalise((I + E)z_c + b̄)`, where E = W − I is the small deviation of the weight
#   from the identity (its N(0, 0.005²) initialisation plus the little SGD adds) and b̄ the mean
#   train displacement z_t − z_c of the stable pairs. For the MLP: torch, init on the CPU under
#   `manual_seed(seed+401)`, permutations from `default_rng(seed+409)`, loss = mean over B·D,
#   SGD (LR 0.03, weight decay 0.001) or `torch.optim.Adam` with *coupled* L2 (LR 1e-3, 1e-4),
#   decay on all four tensors.
# - `autograd` (the symmetric protocol's default) minimises the loss the paper writes: per-pair
#   squared error summed over dimensions, mean over pairs, + λ‖W − I‖²_F for the linear predictor;
#   SGD or AdamW (decoupled decay). 200 epochs, batch 128, constant LR, seeded.
#
# Estimator style: hyperparameters in the constructor, `fit(Zc, Zt)`, `predict(Zc)` (the
# un-normalised prediction), `score(Zc, Zt)`.

# %%
#| export
from __future__ import annotations

import numpy as np
import torch

# %%
from fastcore.test import test_eq, test_close, test_fail


# %% [markdown]
# ## Shared pieces

# %%
#| export
def normalise(x: np.ndarray) -> np.ndarray:
    "Rows scaled to unit L2 norm (clamped at 1e-12)."
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    "1 − clip(⟨normalise(a), normalise(b)⟩, −1, 1), row by row."
    return 1 - np.clip((normalise(a) * normalise(b)).sum(1), -1, 1)


DEFAULTS = {  # (predictor, optimizer) -> (learning rate, weight decay or λ)
    ("linear", "sgd"): (0.03, 0.001), ("linear", "adam"): (1e-3, 1e-4),
    ("mlp", "sgd"): (0.03, 0.001), ("mlp", "adam"): (1e-3, 1e-4)}
LOG_EPOCHS = lambda epochs: sorted({1, *range(20, epochs + 1, 20), epochs})


# %% [markdown]
# ## The predictor

# %%
#| export
class Predictor:
    "A JEPA-style latent predictor: `kind` linear or mlp, trained by the `reference` or `autograd` trainer."
    def __init__(self, kind="linear", trainer="autograd", optimizer="sgd", epochs=200, batch_size=128,
                 lr=None, weight_decay=None, hidden=512, seed=20260422):
        if kind not in ("linear", "mlp"): raise ValueError(f"unknown predictor {kind!r}: choose linear or mlp")
        if trainer not in ("reference", "autograd"): raise ValueError(f"unknown trainer {trainer!r}: choose reference or autograd")
        if optimizer not in ("sgd", "adam"): raise ValueError(f"unknown optimizer {optimizer!r}: choose sgd or adam")
        if kind == "linear" and trainer == "reference" and optimizer != "sgd":
            raise ValueError("the reference linear trainer is the release's hand-written SGD: optimizer must be sgd")
        d_lr, d_wd = DEFAULTS[(kind, optimizer)]
        self.kind, self.trainer, self.optimizer, self.epochs, self.batch_size = kind, trainer, optimizer, epochs, batch_size
        self.lr, self.weight_decay, self.hidden, self.seed = lr or d_lr, d_wd if weight_decay is None else weight_decay, hidden, seed

    # ----- prediction -----
    def predict(self, Zc) -> np.ndarray:
        "The un-normalised prediction g(z_c)."
        Z = np.asarray(Zc, np.float64)
        if self.kind == "linear": return Z @ self.W_ + self.b_
        h = np.maximum(Z @ self.W1_ + self.b1_, 0)
        return Z + h @ self.W2_ + self.b2_

    def score(self, Zc, Zt) -> np.ndarray:
        "1 − cos(normalise(g(z_c)), z_t): high means changing."
        return cosine_distance(self.predict(Zc), Zt)

    def params(self) -> dict[str, np.ndarray]:
        names = ("W_", "b_") if self.kind == "linear" else ("W1_", "b1_", "W2_", "b2_")
        return {n.rstrip("_"): getattr(self, n) for n in names}

    # ----- training -----
    def fit(self, Zc, Zt):
        "Train on context/target embeddings of train stable pairs."
        Zc, Zt = np.asarray(Zc, np.float64), np.asarray(Zt, np.float64)
        if Zc.shape != Zt.shape or Zc.ndim != 2: raise ValueError(f"Zc {Zc.shape} and Zt {Zt.shape} must be equal 2-D shapes")
        if self.kind == "linear" and self.trainer == "reference": self._fit_linear_reference(Zc, Zt)
        else: self._fit_torch(Zc, Zt)
        return self

    def _fit_linear_reference(self, X, Y):
        N, D = X.shape
        rng = np.random.default_rng(self.seed + 307)
        W, b, I, lam = np.eye(D) + rng.normal(0.0, 0.005, (D, D)), np.zeros(D), np.eye(D), self.weight_decay
        self.history_ = {}
        for epoch in range(1, self.epochs + 1):
            perm = rng.permutation(N)
            for s in range(0, N, self.batch_size):
                i = perm[s:s + self.batch_size]
                x, err = X[i], X[i] @ W + b - Y[i]
                gW = (2.0 / (len(i) * D)) * (x.T @ err) + 2 * lam * (W - I)
                gb = 2.0 * err.mean(axis=0)
                W, b = W - self.lr * gW, b - self.lr * gb
            if epoch in LOG_EPOCHS(self.epochs):      # the quantity the release logged (not the one it optimised)
                self.history_[epoch] = float(((X @ W + b - Y) ** 2).mean() + lam * ((W - I) ** 2).mean())
        self.W_, self.b_ = W, b

    def _fit_torch(self, X, Y):
        N, D = X.shape
        ref = self.trainer == "reference"
        x, y = torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)
        if self.kind == "linear":
            rng = np.random.default_rng(self.seed + 307)
            W = torch.tensor(np.eye(D) + rng.normal(0.0, 0.005, (D, D)), dtype=torch.float32, requires_grad=True)
            b = torch.zeros(D, requires_grad=True)
            params = [W, b]
            fwd = lambda z: z @ W + b
            reg = lambda: self.weight_decay * ((W - torch.eye(D)) ** 2).sum()
        else:
            torch.manual_seed(self.seed + 401)
            W1 = torch.empty(D, self.hidden); torch.nn.init.kaiming_uniform_(W1, a=0); W1 = (W1 * 0.1).requires_grad_()
            b1, W2, b2 = torch.zeros(self.hidden, requires_grad=True), torch.zeros(self.hidden, D, requires_grad=True), torch.zeros(D, requires_grad=True)
            params = [W1, b1, W2, b2]
            fwd = lambda z: z + torch.relu(z @ W1 + b1) @ W2 + b2
            reg = lambda: 0.0
        wd = self.weight_decay if self.kind == "mlp" else 0.0      # the linear predictor's λ is in the loss
        if self.optimizer == "sgd": opt = torch.optim.SGD(params, lr=self.lr, weight_decay=wd)
        elif ref: opt = torch.optim.Adam(params, lr=self.lr, weight_decay=wd)         # the release: coupled L2
        else: opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=wd)            # the paper: decoupled
        perm_rng = np.random.default_rng(self.seed + (409 if self.kind == "mlp" else 311))
        self.history_ = {}
        for epoch in range(1, self.epochs + 1):
            perm = torch.from_numpy(perm_rng.permutation(N))
            for s in range(0, N, self.batch_size):
                i = perm[s:s + self.batch_size]
                err = fwd(x[i]) - y[i]
                loss = (err ** 2).mean() if ref else (err ** 2).sum(1).mean() + reg()
                opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            if epoch in LOG_EPOCHS(self.epochs):
                with torch.no_grad():
                    e = fwd(x) - y
                    self.history_[epoch] = float((e ** 2).mean() if ref else (e ** 2).sum(1).mean() + reg())
        with torch.no_grad():
            if self.kind == "linear": self.W_, self.b_ = W.double().numpy(), b.double().numpy()
            else: self.W1_, self.b1_, self.W2_, self.b2_ = (t.double().numpy() for t in (W1, b1, W2, b2))


# %% [markdown]
# ## Synthetic check of the release's dynamics
#
# Unit-norm contexts, targets = normalise(context + a fixed displacement + noise). Under the
# reference trainer the bias reaches the mean displacement within 20 epochs while W stays at its
# init (its noise shrunk by the decay term, (1 − 2·0.03·0.001)^1600 ≈ 0.908, and a little by the data); run twice it is
# bit-identical. The autograd trainer, on the paper's loss, moves W.

# %%
def _synthetic(n=1000, d=64, seed=0):
    rng = np.random.default_rng(seed)
    zc = normalise(rng.normal(size=(n, d)))
    shift = rng.normal(size=d) * 0.3 / np.sqrt(d)
    zt = normalise(zc + shift + rng.normal(size=(n, d)) * 0.01)
    return zc, zt

_zc, _zt = _synthetic()
_disp = (_zt - _zc).mean(0)
_p20 = Predictor("linear", "reference", epochs=20).fit(_zc, _zt)
assert np.linalg.norm(_p20.b_ - _disp) < 0.05 * np.linalg.norm(_disp), np.linalg.norm(_p20.b_ - _disp) / np.linalg.norm(_disp)
_p = Predictor("linear", "reference").fit(_zc, _zt)
_p2 = Predictor("linear", "reference").fit(_zc, _zt)
test_eq((_p.W_.tobytes() == _p2.W_.tobytes(), _p.b_.tobytes() == _p2.b_.tobytes()), (True, True))
_E0 = np.random.default_rng(20260422 + 307).normal(0.0, 0.005, (64, 64))
_shrink = np.linalg.norm(_p.W_ - np.eye(64)) / np.linalg.norm(_E0)      # W - I after training vs at init
assert 0.85 < _shrink < (1 - 2 * 0.03 * 0.001) ** 1600 + 0.01, _shrink            # decay (0.908) and a little data
print({e: round(v, 6) for e, v in _p.history_.items()})

# %%
_pa = Predictor("linear", "autograd").fit(_zc, _zt)
_pm = Predictor("mlp", "autograd", optimizer="adam").fit(_zc, _zt)
_pr = Predictor("mlp", "reference").fit(_zc, _zt)
for _q in (_p, _pa, _pm, _pr):
    assert _q.score(_zc, _zt).mean() < cosine_distance(_zc, _zt).mean(), _q.kind   # better than the identity
test_eq(Predictor("mlp", "reference").fit(_zc[:10], _zt[:10]).W2_.shape, (512, 64))
test_fail(lambda: Predictor("linear", "reference", optimizer="adam"), contains="must be sgd")


# %% [markdown]
# ## Controls
#
# Scorers that need no predictor, reported beside it (PROTOCOL B2.8). They answer different
# questions, and only the last two detect a leak:
#
# - `identity`: g = identity, i.e. the raw cosine distance: what the predictor must improve on.
#   It is *legitimately* far from 0.5 whenever the backbone tells lesions apart;
# - `bias_only`: normalise(z_c + mean train displacement), the release's linear predictor with W = I:
#   when it matches the predictor, the fit learned a translation, not a map;
# - `flipped_cosine`: the raw cosine distance with its sign flipped (AUROC = 1 − identity's), a
#   check of orientation (far from 0.5 exactly when `identity` is, by construction);
# - `target_only_probe` / `context_only_probe`: a logistic regression fitted on all train pairs to
#   predict the label from *one side alone*. The label is a property of the pair; if one side
#   alone predicts it (as "the target was processed" does in `reference`), the protocol leaks.
#   These two are the leak detectors: under a protocol that does not leak they sit at 0.5.

# %%
#| export
def single_side_probe(Z_train: np.ndarray, y_train: np.ndarray, seed: int = 0):
    "A standardised logistic regression predicting the pair label from one side's embedding."
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)).fit(Z_train, y_train)


def control_scores(Zc, Zt, train_stable_c, train_stable_t, train_c, train_t, train_y, seed=0) -> dict[str, np.ndarray]:
    "Scores of every control for pairs (Zc, Zt), fitted on the train split where they need fitting."
    raw = cosine_distance(Zc, Zt)
    disp = (np.asarray(train_stable_t, np.float64) - np.asarray(train_stable_c, np.float64)).mean(0)
    tp, cp = single_side_probe(train_t, train_y, seed), single_side_probe(train_c, train_y, seed)
    return {"identity": raw, "bias_only": cosine_distance(np.asarray(Zc, np.float64) + disp, Zt), "flipped_cosine": -raw,
            "target_only_probe": tp.predict_proba(Zt)[:, 1], "context_only_probe": cp.predict_proba(Zc)[:, 1]}


# %% [markdown]
# A deliberately leaky toy: changing pairs' targets carry a "processed" direction that stable
# targets lack. The target-only probe finds it; the context-only probe cannot.

# %%
from sklearn.metrics import roc_auc_score
_rng = np.random.default_rng(1)
_n, _d = 400, 16
_y = np.r_[np.zeros(_n), np.ones(_n)].astype(int)
_c = normalise(_rng.normal(size=(2 * _n, _d)))
_t = normalise(_c + _rng.normal(size=(2 * _n, _d)) * np.r_[np.full(_n, 0.1), np.full(_n, 0.3)][:, None]
               + np.outer(_y, np.eye(_d)[0]) * 2.0)
_tr = _rng.random(2 * _n) < 0.5
_cs = control_scores(_c[~_tr], _t[~_tr], _c[_tr & (_y == 0)], _t[_tr & (_y == 0)], _c[_tr], _t[_tr], _y[_tr])
assert roc_auc_score(_y[~_tr], _cs["target_only_probe"]) > 0.8
assert abs(roc_auc_score(_y[~_tr], _cs["context_only_probe"]) - 0.5) < 0.1
test_close(roc_auc_score(_y[~_tr], _cs["flipped_cosine"]), 1 - roc_auc_score(_y[~_tr], _cs["identity"]))

# %% [markdown]
# These predictors on real EXP-004 pairs, under both protocols, are shown in 12_experiment, where
# the experiment that builds those pairs is defined.

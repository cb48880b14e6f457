# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp pretrain

# %% [markdown]
# # Self-supervised pretraining of a small ViT on a folder of images
#
# > MAE, a VAE, SimCLR and I-JEPA on the same ViT-Tiny, seeded, resumable, with a collapse monitor; the checkpoint loads as the backbone `ssl:<path>`.

# %% [markdown]
# EXP-009 needs a backbone that has seen dermoscopy but never HAM10000. At the scale of a 2-core
# CPU that is a ViT-Tiny (timm `vit_tiny_patch16_224`, 5.5 M parameters, width 192) at 112 px
# (7 × 7 = 49 patches, no class token, features = the mean of the normed patch tokens), trained
# for minutes on the ~4,300 images of `isic-nonham`. The question the seed studies ask is whether
# the *pretext* matters, so the same encoder is trained five ways:
#
# | objective | family | what is learned | building blocks |
# |---|---|---|---|
# | `mae` | reconstruction | predict the pixels of 75% masked patches (normalised per patch) from the rest | lightly `MaskedVisionTransformerTIMM`, `MaskedVisionTransformerDecoderTIMM`, `random_token_mask`, `patchify` |
# | `vae` | reconstruction (generative) | encode to a Gaussian (μ, log σ²), decode the image; feature = μ | the ViT encoder, a small transposed-conv decoder, MSE + β·KL |
# | `simclr` | joint embedding (contrastive) | two augmented views of an image agree, others disagree | lightly `NTXentLoss` |
# | `ijepa` | joint-embedding predictive | predict the EMA target encoder's representation of 4 masked blocks from a context block | lightly `IJEPAMaskCollator`, `IJEPAPredictorTIMM`, `update_momentum` |
# | `gravis` | joint embedding (grouping) | 4 dermoscopy views of an image form a group pulled together against the other images' views, group mates weighted by similarity | `grouping_loss`, `hardness_weights` (below) |
#
# Every random draw (data order, augmentation, masks) derives from `(seed, step)`, so a run
# interrupted after a checkpoint and resumed gives the same weights as one that was not.
# Pretraining runs on **CUDA when one is present**, else on the CPU (`pretrain(..., device=)`
# overrides): the model, every batch and every tensor an objective builds (MAE's masks and
# canvas, I-JEPA's blocks, GraVIS's group masks) live on that device, while the augmentations and
# the masks' random draws stay on the CPU, drawn from the step's generator, so a CPU run draws and
# computes exactly what it did before the GPU path existed. Checkpoints are written from CPU
# copies. bf16 autocast is available (`dtype="bf16"`); `auto` takes 08_embed's measured decision
# for this encoder on this device (`resolve_precision`: model-only rate of fp32 and bf16 on a
# batch of the training images, bf16 only if it is faster and its features agree with fp32's).
# fp16 is not a candidate for training: without a loss scaler its gradients underflow, and bf16,
# which needs none, is what current GPUs run fast. The CUDA path has not run on a GPU here (none
# was lent to this work); on the CPU it is tested below. The *collapse monitor* logs the standard deviation, across the batch,
# of the L2-normalised features (averaged over dimensions): about 1/√192 ≈ 0.072 for spread-out
# features, towards 0 when every image maps to the same point.

# %%
#| export
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from derma_jepa.data import DataError, atomic_write_bytes, open_rgb
from derma_jepa.embed import autocast, resolve_precision
from derma_jepa.registry import OBJECTIVES, register_family, register_objective
from derma_jepa.safety import CheckpointError, coerce_fields, load_checkpoint, save_checkpoint, tensors_under

# %%
from fastcore.test import test_eq, test_fail, test_close
import tempfile

# %% [markdown]
# ## Configuration and data
#
# Images are decoded once, squashed to `image_size`², and kept in memory as uint8 (4,262 images
# at 112 px are 160 MB). Augmentations run on tensors, drawn from the step's generator.

# %%
#| export
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainConfig:
    objective: str = "mae"
    arch: str = "vit_tiny_patch16_224"
    image_size: int = 112
    patch_size: int = 16
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 20
    seed: int = 0
    dtype: str = "auto"
    ckpt_every: int = 50
    log_every: int = 10
    colour: bool = True                 # colour jitter and grey-scale on the strong views; False: crops and flips only

    def __post_init__(self):
        coerce_fields(self)             # 1.5 steps or a seed of "x" are refused with the field's name
        if self.seed < 0: raise DataError(f"pretraining parameter seed={self.seed} must be at least 0")
        if self.objective not in OBJECTIVES: raise DataError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if self.image_size % self.patch_size: raise DataError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for k in ("steps", "batch_size", "ckpt_every", "log_every"):
            if getattr(self, k) < 1: raise DataError(f"pretraining parameter {k}={getattr(self, k)} must be at least 1")


LATER_DEFAULTS = {"colour": True}       # fields added after encoders were trained, at the value those encoders had


def config_dict(cfg: PretrainConfig) -> dict:
    """`cfg` as it is recorded (checkpoints, training state, EXP-009's folder hash): a field added later is left out at the
    value every earlier encoder had, so an encoder trained before the field existed keeps its record, folder and bytes."""
    return {k: v for k, v in asdict(cfg).items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def load_images(paths, size: int, workers: int = 4) -> torch.Tensor:
    "uint8 tensor (n, 3, size, size) of the images squashed to size²."
    from concurrent.futures import ThreadPoolExecutor
    def one(p):
        return np.asarray(open_rgb(p).resize((size, size), Image.BICUBIC))
    paths = list(paths)
    if not paths: raise DataError("no images to pretrain on")
    with ThreadPoolExecutor(workers) as ex: arr = np.stack(list(ex.map(one, paths)))
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# %% [markdown]
# Augmentation: a random resized crop (scale 0.35–1 for the contrastive views, 0.6–1 otherwise),
# a horizontal and vertical flip (dermoscopy has no up), and for the contrastive views colour
# jitter and grey-scale, as SimCLR needs them (`colour=False` leaves them out, with the same draws:
# the SimCLR variant that shows how much of its advantage is invariance to colour, which the
# held-out nuisance family also varies). `dermoscopy=True` adds what GraVIS's views have
# besides: a rotation by a multiple of 90° and, half the time, a Gaussian blur; its draws come
# after the others', so the views of the other objectives are the same bytes with or without it.
# Everything is drawn from the step's generator.

# %%
#| export
def augment(x: torch.Tensor, g: torch.Generator, strong: bool, dermoscopy: bool = False, colour: bool = True) -> torch.Tensor:
    "A batch of uint8 images → augmented, normalised float images of the same size."
    import torchvision.transforms.v2.functional as TF
    n, _, h, w = x.shape
    out = torch.empty(n, 3, h, w)
    lo = 0.35 if strong else 0.6
    u = torch.rand(n, 9, generator=g)
    v = torch.rand(n, 3, generator=g) if dermoscopy else None
    for k in range(n):
        s, r = lo + (1 - lo) * u[k, 0].item(), math.exp(math.log(3 / 4) + math.log(16 / 9) * u[k, 1].item())
        ch, cw = min(h, round(h * math.sqrt(s / r))), min(w, round(w * math.sqrt(s * r)))
        top, left = int(u[k, 2] * (h - ch + 1)), int(u[k, 3] * (w - cw + 1))
        im = TF.resized_crop(x[k], top, left, ch, cw, [h, w], antialias=True).float() / 255
        if u[k, 4] < 0.5: im = im.flip(-1)
        if u[k, 5] < 0.5: im = im.flip(-2)
        if strong and colour:
            im = TF.adjust_brightness(im, 0.6 + 0.8 * u[k, 6].item())
            im = TF.adjust_saturation(TF.adjust_contrast(im, 0.6 + 0.8 * u[k, 7].item()), 0.6 + 0.8 * u[k, 8].item())
            if u[k, 8] < 0.2: im = TF.rgb_to_grayscale(im, 3)
        if dermoscopy:
            if h == w: im = torch.rot90(im, int(v[k, 0] * 4), dims=(-2, -1))
            if v[k, 1] < 0.5: im = TF.gaussian_blur(im, [5, 5], [0.1 + 1.9 * v[k, 2].item()] * 2)
        out[k] = im.clamp(0, 1)
    return TF.normalize(out, MEAN, STD)


# %%
_x = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
test_eq(augment(_x, torch.Generator().manual_seed(1), True).shape, (4, 3, 32, 32))
test_eq(augment(_x, torch.Generator().manual_seed(1), True), augment(_x, torch.Generator().manual_seed(1), True))
_g1, _g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
assert not torch.equal(augment(_x, _g1, True, dermoscopy=True), augment(_x, _g2, True))    # rotated / blurred
assert not torch.equal(augment(_x, torch.Generator().manual_seed(1), True, colour=False),
                       augment(_x, torch.Generator().manual_seed(1), True))                 # no jitter, no grey
_g, _h = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)                # the same draws either way
augment(_x, _g, True, colour=False); augment(_x, _h, True)
test_eq(torch.rand(1, generator=_g), torch.rand(1, generator=_h))
_xc = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8); _xc[:, 0] = 200                 # a flat reddish image keeps its colour
for _k in range(3):
    test_close(augment(_xc, torch.Generator().manual_seed(2), True, colour=False)[:, _k].mean().item(),
               (_xc[0, _k, 0, 0].item() / 255 - MEAN[_k]) / STD[_k], eps=1e-3)


# %% [markdown]
# ## The encoder and the five objectives
#
# One timm ViT, wrapped by lightly's `MaskedVisionTransformerTIMM` so that masked objectives can
# encode only the patches they keep. Each objective is a module with `loss(images, g)` and
# `features(images)` (what the collapse monitor watches and what the exported backbone returns).

# %%
#| export
def make_vit(cfg: PretrainConfig):
    import timm
    return timm.create_model(cfg.arch, pretrained=False, num_classes=0, img_size=cfg.image_size, patch_size=cfg.patch_size,
                             class_token=False, global_pool="avg", fc_norm=False)


def pooled(enc, images, idx_keep=None) -> torch.Tensor:
    "Mean of the normed patch tokens."
    return enc.encode(images, idx_keep=idx_keep).mean(1)


@register_objective("mae")
class MAE(nn.Module):
    def __init__(self, cfg: PretrainConfig, mask_ratio: float = 0.75):
        from lightly.models.modules import MaskedVisionTransformerTIMM, MaskedVisionTransformerDecoderTIMM
        super().__init__()
        self.encoder = MaskedVisionTransformerTIMM(make_vit(cfg))
        d, self.patch, self.ratio = self.encoder.vit.embed_dim, cfg.patch_size, mask_ratio
        self.n = (cfg.image_size // cfg.patch_size) ** 2
        self.dec_embed = nn.Linear(d, 128)
        self.decoder = MaskedVisionTransformerDecoderTIMM(num_patches=self.n, embed_dim=128, depth=2, num_heads=4, num_prefix_tokens=0)
        self.pred = nn.Linear(128, cfg.patch_size ** 2 * 3)

    def loss(self, x, g):
        from lightly.models import utils
        idx_keep, idx_mask = utils.random_token_mask((len(x), self.n), self.ratio, mask_class_token=True, device=x.device)
        z = self.encoder.encode(x, idx_keep=idx_keep)
        e = self.dec_embed(z)                          # bf16 under autocast, while the encoder's norm gives fp32
        full = utils.set_at_index(torch.zeros(len(x), self.n, 128, dtype=e.dtype, device=e.device), idx_keep, e)
        out = self.pred(utils.get_at_index(self.decoder(full, idx_mask=idx_mask), idx_mask))
        target = utils.get_at_index(utils.patchify(x, self.patch), idx_mask)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return F.mse_loss(out.float(), target.float())

    def features(self, x): return pooled(self.encoder, x)


@register_objective("vae")
class VAE(nn.Module):
    def __init__(self, cfg: PretrainConfig, latent: int = 64, beta: float = 1e-3):
        from lightly.models.modules import MaskedVisionTransformerTIMM
        super().__init__()
        self.encoder = MaskedVisionTransformerTIMM(make_vit(cfg))
        d, self.beta, self.size = self.encoder.vit.embed_dim, beta, cfg.image_size
        self.head = nn.Linear(d, 2 * latent)
        self.g0 = cfg.image_size // 16
        self.fc = nn.Linear(latent, 128 * self.g0 * self.g0)
        ups = []
        for cin, cout in [(128, 96), (96, 64), (64, 32), (32, 16)]:
            ups += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.GELU()]
        self.dec = nn.Sequential(*ups, nn.Conv2d(16, 3, 3, padding=1))

    def loss(self, x, g):
        mu, logvar = self.head(pooled(self.encoder, x)).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = self.dec(self.fc(z).view(len(x), 128, self.g0, self.g0))
        kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1).mean()
        return F.mse_loss(rec.float(), x.float()) + self.beta * kl.float()

    def features(self, x): return self.head(pooled(self.encoder, x)).chunk(2, -1)[0]


@register_objective("simclr")
class SimCLR(nn.Module):
    def __init__(self, cfg: PretrainConfig, temperature: float = 0.2):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MaskedVisionTransformerTIMM
        super().__init__()
        self.encoder = MaskedVisionTransformerTIMM(make_vit(cfg))
        d = self.encoder.vit.embed_dim
        self.proj = nn.Sequential(nn.Linear(d, 512), nn.GELU(), nn.Linear(512, 128))
        self.criterion = NTXentLoss(temperature=temperature)
        self.views = 2                     # the loop hands `loss` this many strong views of each image

    def loss(self, views, g):
        a, b = views
        return self.criterion(self.proj(pooled(self.encoder, a)).float(), self.proj(pooled(self.encoder, b)).float())

    def features(self, x): return pooled(self.encoder, x)


@register_objective("ijepa")
class IJEPA(nn.Module):
    def __init__(self, cfg: PretrainConfig, momentum: float = 0.996):
        from lightly.data.ijepa_collate import IJEPAMaskCollator
        from lightly.models.modules import MaskedVisionTransformerTIMM
        from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
        super().__init__()
        self.encoder = MaskedVisionTransformerTIMM(make_vit(cfg))
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)
        d, self.n = self.encoder.vit.embed_dim, (cfg.image_size // cfg.patch_size) ** 2
        self.predictor = IJEPAPredictorTIMM(num_patches=self.n, depth=2, mlp_dim=d, predictor_embed_dim=96, num_heads=4)
        self.masks = IJEPAMaskCollator(input_size=cfg.image_size, patch_size=cfg.patch_size, enc_mask_scale=(0.85, 1.0),
                                       pred_mask_scale=(0.15, 0.2), npred=4, min_keep=4)
        self.m0, self.steps = momentum, cfg.steps

    def loss(self, x, g):
        from lightly.models import utils
        with self.masks._itr_counter.get_lock(): self.masks._itr_counter.value = int(torch.randint(0, 2**30, (1,), generator=g))
        _, m_enc, m_pred = self.masks([torch.zeros(1)] * len(x))
        m_enc, m_pred = [m.to(x.device) for m in m_enc], [m.to(x.device) for m in m_pred]     # the collator builds them on the CPU
        with torch.no_grad():
            h = F.layer_norm(self.target.encode(x), (self.target.vit.embed_dim,))
            h = utils.repeat_interleave_batch(utils.apply_masks(h, m_pred), len(x), repeat=len(m_enc))
        z = self.encoder.encode(x, idx_keep=m_enc[0])
        return F.smooth_l1_loss(self.predictor(z, m_enc, m_pred).float(), h.float())

    def after_step(self, step: int):
        from lightly.models import utils
        m = 1 - (1 - self.m0) * (math.cos(math.pi * step / self.steps) + 1) / 2      # 0.996 → 1
        utils.update_momentum(self.encoder, self.target, m)

    def features(self, x): return pooled(self.encoder, x)


# %% [markdown]
# ### GraVIS: grouping K views of one image
#
# GraVIS (Zhou, Lu, Wang & Yu, *GraVIS: Grouping Augmented Views from Independent Sources for
# Dermatology Analysis*, IEEE TMI 2023) argues that one positive pair per image, as in SimCLR, is
# too little for dermatology: K > 2 views of one image form a homogeneous group, pulled together
# against every view of the other images. Its hardness-aware attention weights the homogeneous
# views, and the paper's abstract says in which direction: it stresses "homogeneous image views
# with similar appearance instead of those dissimilar homogeneous ones". So the weights here rise
# with similarity: for an anchor view, its K − 1 group mates get `softmax(similarity / τ_w)`
# (treated as constants, as attention weights in a loss are), which is the opposite of hard-
# positive mining; a row made by hand below shows the order. The loss is then, per anchor, the
# attention-weighted mean over its group mates of the contrastive term −log(e^{s⁺} / (e^{s⁺} +
# Σ e^{s⁻})) against the views of the other images (s = cosine / τ). The exact equations of the
# paper were not available offline; this is our reading of its grouping loss, with the attention
# direction it states. Views: K = 4 strong views with the dermoscopy additions (rotation by
# multiples of 90°, blur).

# %%
#| export
def hardness_weights(sim: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    "Attention over an anchor's group mates (last dim): the more similar a mate, the larger its weight (GraVIS)."
    return torch.softmax(sim / tau, dim=-1)


def grouping_loss(z: torch.Tensor, tau: float = 0.2, tau_w: float = 0.1) -> torch.Tensor:
    "GraVIS-style grouping loss of projections z (B images × K views × d)."
    b, k, _ = z.shape
    z = F.normalize(z.float(), dim=-1).reshape(b * k, -1)
    cos = z @ z.T
    img = torch.arange(b, device=z.device).repeat_interleave(k)
    same, eye = img[:, None] == img[None, :], torch.eye(b * k, dtype=torch.bool, device=z.device)
    mates = cos[same & ~eye].view(b * k, k - 1)                              # each anchor's K − 1 group mates
    w = hardness_weights(mates.detach(), tau_w)
    neg = torch.logsumexp((cos / tau).masked_fill(same, float("-inf")), dim=-1, keepdim=True)   # the other images' views
    pos = mates / tau
    return -(w * (pos - torch.logaddexp(pos, neg))).sum(-1).mean()


@register_objective("gravis")
class GraVIS(nn.Module):
    def __init__(self, cfg: PretrainConfig, views: int = 4, temperature: float = 0.2, tau_w: float = 0.1):
        from lightly.models.modules import MaskedVisionTransformerTIMM
        super().__init__()
        self.encoder = MaskedVisionTransformerTIMM(make_vit(cfg))
        d = self.encoder.vit.embed_dim
        self.proj = nn.Sequential(nn.Linear(d, 512), nn.GELU(), nn.Linear(512, 128))
        self.views, self.dermoscopy, self.tau, self.tau_w = views, True, temperature, tau_w

    def loss(self, views, g):
        z = torch.stack([self.proj(pooled(self.encoder, v)) for v in views], 1)
        return grouping_loss(z, self.tau, self.tau_w)

    def features(self, x): return pooled(self.encoder, x)


# %% [markdown]
# On a hand-made row, an anchor whose three group mates sit at cosine 0.9, 0.1 and 0.5: the most
# similar mate weighs most, the least similar least. And the loss is what it should be at its
# extremes: views of one image on one point and the images far apart give a loss near 0; every
# view on one point (collapse) gives log(1 + (B − 1)K) per anchor, as for any contrastive loss.

# %%
_w = hardness_weights(torch.tensor([0.9, 0.1, 0.5]))
assert _w[0] > _w[2] > _w[1] and abs(float(_w.sum()) - 1) < 1e-6
_apart = torch.eye(4)[:, None, :].repeat(1, 4, 1)                        # 4 images, their 4 views on one axis each
assert float(grouping_loss(_apart, tau=0.05)) < 1e-3
test_close(float(grouping_loss(torch.ones(4, 4, 8))), math.log(1 + 3 * 4), eps=1e-4)

# %% [markdown]
# The record of a configuration (`config_dict`): `colour`, added after the EXP-009 encoders were
# trained, stays out of it at its default, so those encoders keep their folders and bytes.

# %%
_c = PretrainConfig(objective="simclr")
assert "colour" not in config_dict(_c) and config_dict(PretrainConfig(objective="simclr", colour=False))["colour"] is False
test_eq(PretrainConfig(**config_dict(_c)), _c); test_eq(PretrainConfig(**config_dict(replace(_c, colour=False))).colour, False)
test_fail(lambda: PretrainConfig(colour="maybe"), contains="colour='maybe' is not a valid bool")


# %% [markdown]
# ## The loop
#
# `pretrain(cfg, images, out_dir)`: AdamW with linear warm-up and cosine decay; step `s` draws
# its batch from the epoch's seeded permutation and seeds torch's generator with (seed, s) for
# augmentations, masks and the VAE's noise. Every `ckpt_every` steps the whole state (model,
# optimiser, step, history) is written atomically to `state.safetensors`; a later call with the same
# config resumes from it. At the end the encoder alone is exported to `encoder.safetensors`, which
# `ssl:<path>` loads.
#
# Both files are safetensors (03_safety): the tensors (model, optimiser moments) as tensors, and
# everything else (configuration, step, history, the optimiser's hyper-parameters) as JSON in
# the file's metadata. Reading one never unpickles anything, so a checkpoint from elsewhere cannot
# run code.

# %%
#| export
def _lr(cfg, step):
    if step < cfg.warmup: return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


def _batch_index(cfg, n, step):
    per_epoch = max(1, n // cfg.batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    return torch.from_numpy(perm[k * cfg.batch_size:(k + 1) * cfg.batch_size] if n >= cfg.batch_size else perm)


def save_state(path, cfg: PretrainConfig, model: nn.Module, opt, step: int, history: list) -> None:
    "The whole training state as one safetensors file: model and optimiser tensors, the rest as JSON."
    sd = opt.state_dict()
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    scalars = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor): tensors[f"opt.{pid}.{k}"] = v.detach().cpu()
            else: scalars[f"{pid}.{k}"] = v
    save_checkpoint(path, tensors, {"config": config_dict(cfg), "step": step, "history": history,
                                    "opt_param_groups": sd["param_groups"], "opt_scalars": scalars})


def load_state(path, cfg: PretrainConfig, model: nn.Module, opt) -> tuple[int, list]:
    "Restore a `save_state` file of the same configuration into `model` and `opt`; returns (step, history)."
    tensors, meta = load_checkpoint(path)
    if meta.get("config") != config_dict(cfg):
        raise DataError(f"{path}: a checkpoint of another configuration; remove it or use another folder")
    model.load_state_dict(tensors_under(tensors, "model"))
    state: dict = {}
    for k, v in [*tensors_under(tensors, "opt").items(), *meta.get("opt_scalars", {}).items()]:
        pid, name = k.split(".", 1); state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["opt_param_groups"]})
    return meta["step"], meta["history"]


def collapse_std(f: torch.Tensor) -> float:
    "Mean over dimensions of the batch std of L2-normalised features (≈ 1/√d when spread, → 0 when collapsed)."
    return float(F.normalize(f.float(), dim=-1).std(0).mean())


def _batch(model, x, g, colour: bool = True):
    "What an objective trains on: k strong views of each image (the contrastive ones: `views`), else one weak view."
    k = getattr(model, "views", 1)
    return (tuple(augment(x, g, True, dermoscopy=getattr(model, "dermoscopy", False), colour=colour) for _ in range(k)) if k > 1
            else augment(x, g, False))


def step_cost(cfg: PretrainConfig, images: torch.Tensor) -> dict:
    """What one training step of `cfg` costs, counted rather than timed: the FLOPs of its forward and backward passes
    (torch.utils.flop_counter: matrix products and convolutions), the images it draws and the views it encodes."""
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(cfg.seed)
    model = OBJECTIVES[cfg.objective](cfg).train()
    g = torch.Generator().manual_seed(cfg.seed)
    x = images[:cfg.batch_size]
    batch = _batch(model, x, g, cfg.colour)
    with FlopCounterMode(display=False) as fc: model.loss(batch, g).backward()
    return {"objective": cfg.objective, "images per step": len(x), "views per step": len(x) * getattr(model, "views", 1),
            "GFLOPs per step": round(fc.get_total_flops() / 1e9, 1)}


def _train_seconds(out_dir: Path) -> float:
    f = out_dir / "train_seconds.json"
    return json.loads(f.read_text())["train_seconds"] if f.exists() else 0.0


def _snapshot(model, cfg: PretrainConfig, out_dir: Path, history, step: int, seconds: float) -> None:
    "The encoder at `step`, as `ssl:` loads it, and beside it how much training it had: images, views, seconds."
    snap = out_dir / "snapshots" / f"step{step:06d}.safetensors"
    export_encoder(model, cfg, snap, history, step)
    k = getattr(model, "views", 1)
    atomic_write_bytes(snap.with_suffix(".json"), (json.dumps({"step": step, "images_seen": step * cfg.batch_size,
                       "views_seen": step * cfg.batch_size * k, "train_seconds": round(seconds, 1)}, indent=1) + "\n").encode())


def pretrain(cfg: PretrainConfig, images: torch.Tensor, out_dir, progress: bool = False, stop_at: int | None = None,
             snapshot_every: int | None = None, device: str | None = None) -> dict:
    """Train `cfg.objective` on `images` (uint8 n×3×s×s); checkpoints in `out_dir`; returns the history. With
    `snapshot_every`, the encoder is also exported every that many steps to `out_dir/snapshots/` (a budget curve from
    one run); the training seconds so far, kept across resumes in `train_seconds.json`, go beside each snapshot.
    `device`: CUDA when one is present, else the CPU (where every draw and every result is what it was before GPUs were
    supported: augmentations stay on the CPU, drawn from the step's generator, and only then move)."""
    out_dir = Path(out_dir); out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    model = OBJECTIVES[cfg.objective](cfg).to(dev)
    ident = f"pretrain-{cfg.arch}-{cfg.image_size}-{cfg.patch_size}-{cfg.batch_size}"
    precision = resolve_precision(cfg.dtype, model.encoder.vit, str(dev), ident,     # 08_embed's measured rule
                                  lambda: augment(images[:cfg.batch_size], torch.Generator().manual_seed(cfg.seed), False).to(dev),
                                  candidates=("fp32", "bf16"))
    dtype = precision["dtype"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history, last = 0, [], out_dir / "state.safetensors"
    if last.exists(): step, history = load_state(last, cfg, model, opt)
    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.objective, disable=not progress)
    t0, n0, s0 = time.perf_counter(), step, _train_seconds(out_dir)
    while step < (stop_at or cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        x = images[_batch_index(cfg, len(images), step)]
        batch = _batch(model, x, g, cfg.colour)
        batch = tuple(v.to(dev) for v in batch) if isinstance(batch, tuple) else batch.to(dev)
        for pg in opt.param_groups: pg["lr"] = _lr(cfg, step)
        model.train()
        with autocast(dev.type, dtype):
            loss = model.loss(batch, g)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if hasattr(model, "after_step"): model.after_step(step)
        step += 1; bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            with torch.no_grad(), autocast(dev.type, dtype):
                model.eval(); f = model.features(batch[0] if isinstance(batch, tuple) else batch)
            history.append({"step": step, "loss": float(loss.detach()), "feature_std": collapse_std(f), "lr": _lr(cfg, step - 1)})
        if snapshot_every and step % snapshot_every == 0:
            _snapshot(model, cfg, out_dir, history, step, s0 + time.perf_counter() - t0)
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_state(last, cfg, model, opt, step, history)
            atomic_write_bytes(out_dir / "train_seconds.json",      # wall time stays out of the state: that is seeded bytes
                               (json.dumps({"step": step, "train_seconds": round(s0 + time.perf_counter() - t0, 1)}) + "\n").encode())
    bar.close()
    if step >= cfg.steps: export_encoder(model, cfg, out_dir / "encoder.safetensors", history, step)
    return {"history": history, "step": step, "images_per_s": (step - n0) * cfg.batch_size * getattr(model, "views", 1)
            / max(1e-9, time.perf_counter() - t0), "dtype": dtype, "precision": precision}


def export_encoder(model: nn.Module, cfg: PretrainConfig, path, history=None, steps_trained: int | None = None):
    "The encoder (and the VAE's μ head) alone, with what `ssl:<path>` needs to rebuild it, as safetensors + JSON."
    tensors = {f"encoder.{k}": v.detach().cpu() for k, v in model.encoder.vit.state_dict().items()}
    if cfg.objective == "vae": tensors.update({f"head.{k}": v.detach().cpu() for k, v in model.head.state_dict().items()})
    save_checkpoint(path, tensors, {"config": config_dict(cfg), "steps_trained": cfg.steps if steps_trained is None else steps_trained,
                                    "mean": list(MEAN), "std": list(STD), "history": history or []})


# %% [markdown]
# ## A few steps of each objective on fixture images
#
# The loss is finite, the collapse monitor is logged, and the same config and seed give the same
# weights twice.

# %%
from derma_jepa.fixture import fixture_dir
from derma_jepa.data import load_records
_imgs = load_images(load_records(fixture_dir(n_lesions=300, seed=0)).path.head(24), 48)
_runs = {}
_tiny = dict(image_size=48, patch_size=8, batch_size=8, warmup=1, ckpt_every=1, log_every=1)
for _obj in OBJECTIVES:
    _cfg = PretrainConfig(objective=_obj, steps=2, **_tiny)
    _runs[_obj] = pretrain(_cfg, _imgs, tempfile.mkdtemp())
    assert all(np.isfinite(h["loss"]) and h["feature_std"] > 0 for h in _runs[_obj]["history"]), _runs[_obj]
{k: {m: round(x, 4) for m, x in v["history"][-1].items()} for k, v in _runs.items()}

# %% [markdown]
# Snapshots: with `snapshot_every=1`, a 2-step run leaves the encoder after each step, each with
# the images it had seen; the last snapshot is the exported encoder, and a second run writes the
# same snapshot bytes (the seconds beside them are wall time, kept apart).

# %%
_sd = Path(tempfile.mkdtemp())
pretrain(PretrainConfig(objective="mae", steps=2, **_tiny), _imgs, _sd, snapshot_every=1)
test_eq(sorted(p.name for p in (_sd / "snapshots").iterdir()),
        ["step000001.json", "step000001.safetensors", "step000002.json", "step000002.safetensors"])
test_eq(json.loads((_sd / "snapshots" / "step000002.json").read_text())["images_seen"], 2 * _tiny["batch_size"])
_snap, _enc = load_checkpoint(_sd / "snapshots" / "step000002.safetensors")[0], load_checkpoint(_sd / "encoder.safetensors")[0]
assert _snap.keys() == _enc.keys() and all(torch.equal(_snap[k], _enc[k]) for k in _enc)
_sd2 = Path(tempfile.mkdtemp())
pretrain(PretrainConfig(objective="mae", steps=2, **_tiny), _imgs, _sd2, snapshot_every=1)
assert (_sd2 / "snapshots" / "step000001.safetensors").read_bytes() == (_sd / "snapshots" / "step000001.safetensors").read_bytes()
# (`==`, not fastcore's test_eq, whose `equals` walks a bytes object element by element: 100 s on these 22 MB)

# %% [markdown]
# GraVIS learns on fixture images: over 40 steps (16 images, batches of 8, 4 views each), the mean
# loss of the last ten steps is below that of the first ten.

# %%
_gh = pretrain(PretrainConfig(objective="gravis", steps=40, lr=3e-4, **{**_tiny, "ckpt_every": 40}), _imgs[:16], tempfile.mkdtemp())["history"]
_gl = [h["loss"] for h in _gh]
assert np.mean(_gl[-10:]) < np.mean(_gl[:10]), _gl
round(float(np.mean(_gl[:10])), 3), round(float(np.mean(_gl[-10:])), 3)

# %% [markdown]
# What a step costs, per objective, at EXP-009's configuration (ViT-Ti/16 at 112 px, batches of
# 64): counted FLOPs of one forward and backward pass, so budgets compare without a clock. The
# contrastive objectives encode every view whole; MAE encodes a quarter of the patches; I-JEPA
# adds a target encoder's forward pass without gradient. (A `slow` cell: `make notebooks` runs it,
# `make test` does not; the stamp keeps its output current.)

# %%
#| slow
import pandas as pd
_big = load_images(load_records(fixture_dir(n_lesions=300, seed=0)).path.head(64), 112)
pd.DataFrame([step_cost(PretrainConfig(objective=_o, image_size=112, patch_size=16, batch_size=64), _big) for _o in OBJECTIVES])

# %% [markdown]
# ## What each pretext is shown, on real images
#
# Four real HAM10000 images (the fixture when `HAM10000_DIR` is unset; pretraining itself reads
# only the non-HAM10000 corpus, 14_audit), at the 112 px of EXP-009 and through the code above:
# the weak view that MAE, the VAE and I-JEPA train on (crop 0.6–1, flips), two strong SimCLR views
# of the same image (crop 0.35–1, colour jitter, sometimes grey), the 75% of 16 px patches MAE
# hides, and I-JEPA's context (dimmed outside) with its four target blocks (outlined). What a
# pretext can learn is bounded by what these views keep: the colour jitter removes exactly the
# colour cue that the nuisance families perturb.

# %%
import os
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

_src = load_records(os.environ["HAM10000_DIR"]) if os.environ.get("HAM10000_DIR") else load_records(fixture_dir(n_lesions=300, seed=0))
_src = _src.sort_values("image_id").groupby("dx").head(1).head(4)
_x = load_images(_src.path, 112)
_cfg112 = PretrainConfig(objective="ijepa", image_size=112, patch_size=16, batch_size=4, steps=1)
_g = torch.Generator().manual_seed(_cfg112.seed)
_views = {"image": _x.float() / 255, "weak view": augment(_x, _g, False), "SimCLR view 1": augment(_x, _g, True),
          "SimCLR view 2": augment(_x, _g, True)}
_mean, _std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
_shown = {k: (v if k == "image" else v * _std + _mean).clamp(0, 1) for k, v in _views.items()}
_n = (112 // 16) ** 2
torch.manual_seed(_cfg112.seed)
from lightly.models import utils as _lu
_keep, _ = _lu.random_token_mask((len(_x), _n + 1), 0.75, mask_class_token=False)
_ij = IJEPA(_cfg112)
with _ij.masks._itr_counter.get_lock(): _ij.masks._itr_counter.value = 0
_, _m_enc, _m_pred = _ij.masks([torch.zeros(1)] * len(_x))
_fig, _axes = plt.subplots(len(_x), 6, figsize=(9.6, 1.75 * len(_x)))
for _i, _row in enumerate(_axes):
    for _j, (_k, _v) in enumerate(_shown.items()):
        _row[_j].imshow(_v[_i].permute(1, 2, 0).numpy())
    _mae = _shown["image"][_i].clone()
    _vis = torch.zeros(_n, dtype=bool); _vis[(_keep[_i][_keep[_i] > 0] - 1)] = True        # token 0 is the class token
    for _p in range(_n):
        if not _vis[_p]: _mae[:, (_p // 7) * 16:(_p // 7 + 1) * 16, (_p % 7) * 16:(_p % 7 + 1) * 16] = 0.5
    _row[4].imshow(_mae.permute(1, 2, 0).numpy())
    _ctx = torch.zeros(_n, dtype=bool); _ctx[_m_enc[0][_i]] = True
    _img = _shown["image"][_i].clone()
    for _p in range(_n):
        if not _ctx[_p]: _img[:, (_p // 7) * 16:(_p // 7 + 1) * 16, (_p % 7) * 16:(_p % 7 + 1) * 16] *= 0.35
    _row[5].imshow(_img.permute(1, 2, 0).numpy())
    for _blk, _col in zip(_m_pred, ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00"]):
        for _p in _blk[_i].tolist():
            _row[5].add_patch(Rectangle(((_p % 7) * 16 - 0.5, (_p // 7) * 16 - 0.5), 16, 16, fill=False, ec=_col, lw=0.8))
    _row[0].set_ylabel(_src.dx.iloc[_i], fontsize=8)
for _ax, _t in zip(_axes[0], list(_shown) + ["MAE: 75% hidden", "I-JEPA: context + targets"]): _ax.set_title(_t, fontsize=8)
for _ax in _axes.ravel(): _ax.set(xticks=[], yticks=[])
_fig.tight_layout(); plt.show()

# %% [markdown]
# The same steps under bf16 autocast (what `auto` picks on a CPU with AMX), where modules return
# bf16 while layer norms return fp32:

# %%
for _obj in OBJECTIVES:
    _h = pretrain(PretrainConfig(objective=_obj, steps=1, dtype="bf16", **_tiny), _imgs, tempfile.mkdtemp())
    assert _h["dtype"] == "bf16" and np.isfinite(_h["history"][-1]["loss"]), (_obj, _h)


# %% [markdown]
# Resume: a run stopped after its checkpoint at step 1 and resumed gives the same encoder as an
# uninterrupted one (MAE, and I-JEPA whose EMA target encoder is part of the state).

# %%
#| export
def encoder_digest(path) -> str:
    "SHA-256 of an exported encoder's tensors (07_backbones' `tensor_digest`)."
    from derma_jepa.backbones import tensor_digest
    return tensor_digest(tensors_under(load_checkpoint(path)[0], "encoder"))


# %%
for _obj in ("mae", "ijepa"):
    _cfg = PretrainConfig(objective=_obj, steps=2, **_tiny)
    _a, _b = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    pretrain(_cfg, _imgs, _a)
    pretrain(_cfg, _imgs, _b, stop_at=1)              # "killed" after the step-1 checkpoint, before step 2
    assert not (_b / "encoder.safetensors").exists() and load_checkpoint(_b / "state.safetensors")[1]["step"] == 1
    pretrain(_cfg, _imgs, _b)                         # resumes from step 1
    test_eq(encoder_digest(_a / "encoder.safetensors"), encoder_digest(_b / "encoder.safetensors"))
test_fail(lambda: pretrain(PretrainConfig(objective="ijepa", steps=3, **_tiny), _imgs, _b),
          contains="a checkpoint of another configuration")
test_fail(lambda: PretrainConfig(objective="byol"), contains="unknown objective 'byol'")


# %% [markdown]
# ## The random-init control
#
# "Did pretraining learn anything?" is asked against the same architecture untrained. Every
# objective seeds torch and builds its ViT first, so all four start from *one* encoder;
# `random_encoder` exports that starting point (0 steps trained) as a checkpoint of its own.

# %%
#| export
def random_encoder(cfg: PretrainConfig, path):
    "Export the encoder a run of `cfg` starts from, untrained (the random-init control of the same architecture)."
    torch.manual_seed(cfg.seed)
    export_encoder(OBJECTIVES[cfg.objective](cfg), cfg, path, history=[], steps_trained=0)
    return Path(path)


# %%
_r0 = Path(tempfile.mkdtemp())
test_eq(encoder_digest(random_encoder(PretrainConfig(objective="mae", **_tiny), _r0 / "mae.safetensors")),
        encoder_digest(random_encoder(PretrainConfig(objective="ijepa", **_tiny), _r0 / "ijepa.safetensors")))
assert encoder_digest(_r0 / "mae.safetensors") != encoder_digest(_a / "encoder.safetensors")      # training moved the weights


# %% [markdown]
# ## The checkpoint as a backbone: `ssl:<path>`
#
# `load_ssl` rebuilds the ViT from the checkpoint's config, with its feature (mean of the normed
# patch tokens; the VAE's μ) and its preprocessing (squash to the training size, ImageNet
# mean/std). This module registers it as the backbone family `ssl` (`derma_jepa.registry`, which
# imports it the first time an `ssl:` name is asked for; `backbones` never imports it), so
# `get_backbone("ssl:runs/pretrain/mae/encoder.safetensors")`, the embedding engine and
# `papermill nbs/run.ipynb -p backbone ssl:...` all accept it. The objectives register the same way.
# Below, the backbone encodes fixture images directly; that the embedding engine (08_embed) takes it
# like any other backbone, cache included, is `tests/test_embed.py::test_ssl_backbone_through_the_engine`
# (kept out of this notebook, which then needs none of the rendering code).

# %%
#| export
class SSLFeature(nn.Module):
    "A pretrained ViT's feature: mean of the normed patch tokens (then the VAE's μ head)."
    def __init__(self, vit: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.vit, self.head = vit, head

    def forward(self, x):
        f = self.vit.forward_features(x).mean(1)
        return f if self.head is None else self.head(f).chunk(2, -1)[0]


def load_ssl(path):
    "(model, transform, preprocess dict) of an encoder exported by `pretrain` (safetensors; or an older tensors-only .pt)."
    import torchvision.transforms as T
    path = Path(path)
    if not path.is_file(): raise DataError(f"ssl backbone: checkpoint {path} not found (train one with 15_pretrain)")
    tensors, st = load_checkpoint(path)
    enc, head_sd = tensors_under(tensors, "encoder"), tensors_under(tensors, "head")
    try:
        cfg = PretrainConfig(**st["config"])
        vit = make_vit(cfg); vit.load_state_dict(enc)
        head = None
        if head_sd:
            head = nn.Linear(vit.embed_dim, head_sd["weight"].shape[0]); head.load_state_dict(head_sd)
    except (KeyError, TypeError, RuntimeError, DataError) as e:
        raise CheckpointError(f"{path}: not an encoder exported by 15_pretrain ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})") from None
    tf = T.Compose([T.Resize((cfg.image_size, cfg.image_size), interpolation=T.InterpolationMode.BICUBIC),
                    T.ToTensor(), T.Normalize(st["mean"], st["std"])])
    trained = st.get("steps_trained", cfg.steps)
    pre = {"image_size": cfg.image_size, "resize": "squash", "mean": list(st["mean"]), "std": list(st["std"]),
           "objective": cfg.objective if trained else "none (random init)", "steps_trained": trained, "arch": cfg.arch, "feature": "vae_mu" if head is not None else "mean_patch_tokens"}
    return SSLFeature(vit, head), tf, pre


@register_family("ssl")
def _ssl_family(spec, weights, hub_cache):
    "`ssl:<path>` for `get_backbone`: the path is the checkpoint (no hub); the backbone's size is the training size."
    model, tf, pre = load_ssl(spec.arch)
    return replace(spec, image_size=pre["image_size"]), model, tf, pre, {"weights": Path(spec.arch)}


# %%
from derma_jepa.backbones import get_backbone
_bb = get_backbone(f"ssl:{_a / 'encoder.safetensors'}")
test_eq((_bb.dim, _bb.preprocess["objective"]), (192, "ijepa"))
test_eq(get_backbone(f"ssl:{_r0 / 'mae.safetensors'}").preprocess["objective"], "none (random init)")
_fxr = load_records(fixture_dir(n_lesions=300, seed=0)).head(6)
with torch.inference_mode(): _z = _bb.model(torch.stack([_bb.transform(open_rgb(p)) for p in _fxr.path]))
test_eq(tuple(_z.shape), (6, 192)); assert torch.isfinite(_z).all()
test_fail(lambda: get_backbone("ssl:/nowhere/encoder.pt"), contains="checkpoint /nowhere/encoder.pt not found")

# %% [markdown]
# In a fresh process, loading a backbone imports no pretraining code until an `ssl:` name asks for
# it; then the registry imports this module, and the same checkpoint loads to the same fingerprint.

# %%
import subprocess, sys
_probe = (f"import sys; from derma_jepa.backbones import get_backbone; get_backbone('color_texture'); "
          f"print('derma_jepa.pretrain' in sys.modules, end=' '); "
          f"print(get_backbone({'ssl:' + str(_a / 'encoder.safetensors')!r}).fingerprint, 'derma_jepa.pretrain' in sys.modules)")
_out = subprocess.run([sys.executable, "-c", _probe], capture_output=True, text=True, check=True).stdout.split()
test_eq(_out, ["False", _bb.fingerprint, "True"])

# %% [markdown]
# An encoder from an older version of this project (a tensors-only `torch.save` file) still
# loads, to the same weights; a crafted pickle under the same name is refused in one line, and
# its payload (here: write a marker file) never runs.

# %%
_leg = _r0 / "legacy.pt"
_t, _meta = load_checkpoint(_a / "encoder.safetensors")
torch.save({**_meta, "encoder": tensors_under(_t, "encoder"), "head": None}, _leg)
test_eq(encoder_digest(_leg), encoder_digest(_a / "encoder.safetensors"))
test_eq(get_backbone(f"ssl:{_leg}").dim, 192)
class _Evil:
    def __reduce__(self): return (Path.write_text, (_r0 / "MARKER", "pwned"))
torch.save({**_meta, "encoder": tensors_under(_t, "encoder"), "head": _Evil()}, _r0 / "evil.pt")
test_fail(lambda: get_backbone(f"ssl:{_r0 / 'evil.pt'}"), contains="evil.pt: refused")
assert not (_r0 / "MARKER").exists()

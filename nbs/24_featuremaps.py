# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp featuremaps

# %% [markdown]
# # Feature maps: what an encoder's patches attend to, and how much of it is the lesion
#
# > Last-layer attention, PCA of patch features and patch-similarity maps for any ViT backbone, with one number per encoder: the lift of attention on the lesion over the lesion's share of the image.

# %% [markdown]
# A diagnosis probe (16_probe) says whether an encoder's pooled feature separates diagnoses; it
# does not say *where* the encoder looks. *Pretext Matters* reads that off the features
# themselves, and so does this notebook, for every encoder with patch tokens (the EXP-009
# encoders, their random-init controls, a hub ViT whose weights are on the machine):
#
# - **attention**: the last block's attention, heads averaged. Where the ViT has a class token,
#   its row (what the CLS token reads; register tokens excluded); where it has none (the EXP-009
#   encoders pool patch tokens), the attention each patch *receives*, averaged over all patch
#   queries. Which of the two a number uses is named beside it (`mode`);
# - **PCA-RGB**: the first three principal components of the patch tokens, fitted on all patches
#   of all shown images together, as colour: patches that look alike to the encoder get alike
#   colours;
# - **patch similarity**: the cosine between one patch token and every other, from three anchors
#   chosen from the lesion's segmentation mask: the lesion's **centre** (the patch deepest inside
#   it), its **border** (an inside patch next to skin, the one nearest the skin anchor) and
#   **skin** (the patch nearest the middle of the image among those clear of the lesion, so the
#   skin around it rather than a dermoscope's dark frame in a corner).
#
# The number: with `a` the attention on each patch (summing to 1) and `m` the lesion's share of
# each patch, the **lesion-attention share** is Σ a·m, the lesion's **area share** is the mean of m,
# and their ratio is the **lift**: 1 when attention ignores where the lesion is, above 1 when it
# gathers on the lesion. Per image, then its mean over images with a percentile bootstrap CI that
# resamples images.
#
# The masks (HAM10000's `masks/<image_id>_segmentation.png`, soft 0–255 edges) go through the
# *image's own* preprocessing: the backbone's transform minus its normalisation (the same resize,
# squash or centre crop), so a mask patch is the image patch the encoder saw.

# %%
#| export
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from derma_jepa.data import DataError

# %%
import tempfile
from fastcore.test import test_eq, test_fail, test_close

# %% [markdown]
# ## Masks, through the image's own preprocessing

# %%
#| export
MASK_DIR, MASK_SUFFIX = "masks", "_segmentation.png"      # HAM10000's layout: masks/ISIC_0024306_segmentation.png


def mask_path(data_dir, image_id: str) -> Path:
    return Path(data_dir) / MASK_DIR / f"{image_id}{MASK_SUFFIX}"


def read_mask(data_dir, image_id: str, image: Image.Image | None = None) -> Image.Image:
    "The lesion's segmentation mask (8 bit, 255 = lesion), checked against its image's size when `image` is given."
    p = mask_path(data_dir, image_id)
    if not p.is_file(): raise DataError(f"{p}: no segmentation mask for {image_id} (expected in {MASK_DIR}/ of the data folder)")
    try:
        with Image.open(p) as m: m = m.convert("L")
    except OSError as e: raise DataError(f"{p}: not a readable image ({e})") from None
    if image is not None and m.size != image.size:
        raise DataError(f"{p}: the mask is {m.size[0]}x{m.size[1]}, its image {image_id} is {image.size[0]}x{image.size[1]}")
    return m


def geometry(transform):
    "A backbone's preprocessing without its normalisation: the resize, squash or crop it applies, then [0, 1]."
    from torchvision.transforms import Compose, Normalize
    steps = getattr(transform, "transforms", None)
    if steps is None: raise DataError(f"feature maps: the backbone's transform {transform!r} is not a Compose of steps")
    return Compose([t for t in steps if not isinstance(t, Normalize)])


def mask_view(transform, mask: Image.Image) -> torch.Tensor:
    "The mask as the encoder sees its image: (H, W), each pixel's lesion share in [0, 1]."
    return geometry(transform)(mask.convert("RGB"))[0]


def patch_lesion(mask: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    "The lesion's share of each patch (row-major over the patch grid): the seen mask averaged over each patch."
    return F.adaptive_avg_pool2d(mask[None, None].float(), tuple(grid))[0, 0].flatten().numpy()


# %% [markdown]
# A mask goes through the same squash or crop as its image: on a 200×150 image whose right half is
# lesion, a squash keeps half of the pixels lesion, a shorter-side resize and centre crop keeps
# the crop's share (the crop takes the middle 150×150, of which the right 75 columns are lesion).

# %%
import torchvision.transforms as T
_img = Image.new("RGB", (200, 150), (200, 150, 130))
_m = Image.new("L", (200, 150), 0); _m.paste(255, (100, 0, 200, 150))
_squash = T.Compose([T.Resize((112, 112)), T.ToTensor(), T.Normalize([0.5] * 3, [0.2] * 3)])
_crop = T.Compose([T.Resize(112), T.CenterCrop(112), T.ToTensor(), T.Normalize([0.5] * 3, [0.2] * 3)])
test_close(float(mask_view(_squash, _m).mean()), 0.5, eps=0.01)
test_close(float(mask_view(_crop, _m).mean()), 0.5, eps=0.01)
test_eq(patch_lesion(mask_view(_squash, _m), (2, 2)).round(2).tolist(), [0.0, 1.0, 0.0, 1.0])
_m2 = Image.new("L", (200, 150), 0); _m2.paste(255, (150, 0, 200, 150))          # the right quarter
test_close(float(mask_view(_squash, _m2).mean()), 0.25, eps=0.01)
test_close(float(mask_view(_crop, _m2).mean()), 25 / 150, eps=0.02)            # the crop keeps 25 of its 150 columns
_d = Path(tempfile.mkdtemp())
test_fail(lambda: read_mask(_d, "ISIC_0000001"), contains="masks/ISIC_0000001_segmentation.png: no segmentation mask for ISIC_0000001")
(_d / "masks").mkdir(); _m.resize((100, 75)).save(mask_path(_d, "ISIC_0000001"))
test_fail(lambda: read_mask(_d, "ISIC_0000001", _img), contains="the mask is 100x75, its image ISIC_0000001 is 200x150")
mask_path(_d, "ISIC_0000002").write_bytes(b"not a png")
test_fail(lambda: read_mask(_d, "ISIC_0000002"), contains="ISIC_0000002_segmentation.png: not a readable image")


# %% [markdown]
# ## Patch tokens and attention of a ViT backbone
#
# timm's ViTs compute attention in one fused kernel that never forms the matrix; for the last
# block only, the unfused path runs (the same arithmetic, as timm writes it) and a hook on its
# attention dropout (the identity at eval time) keeps the matrix. An EXP-009 encoder is a timm ViT
# without a class token inside `SSLFeature`; a CLIP-style model with a timm trunk is reached
# through `trunk`. Anything else ends in one line saying what it is.

# %%
#| export
def vit_of(backbone):
    "The timm ViT inside a backbone (an `ssl:` encoder's `vit`, an open_clip tower's `trunk`, or the model itself)."
    m = backbone.model
    for attr in ("vit", "trunk"): m = getattr(m, attr, m)
    if not (hasattr(m, "blocks") and hasattr(m, "patch_embed") and hasattr(getattr(m.blocks[-1], "attn", None), "attn_drop")):
        raise DataError(f"backbone {backbone.name}: feature maps need a timm ViT (patch tokens and attention); "
                        f"its model is a {type(m).__name__}")
    return m


@torch.no_grad()
def patch_maps(backbone, images) -> dict:
    """For PIL `images`: the last layer's normed patch tokens (n, patches, dim), the attention on the patches (n, patches;
    each row sums to 1), the patch grid and which attention it is (`mode`)."""
    vit = vit_of(backbone)
    x = torch.stack([backbone.transform(im) for im in images]).to(backbone.device)
    attn, got = vit.blocks[-1].attn, {}
    hook = attn.attn_drop.register_forward_hook(lambda mod, inp, out: got.__setitem__("a", out.detach()))
    fused, attn.fused_attn = attn.fused_attn, False
    try: tokens = vit.forward_features(x)
    finally: attn.fused_attn = fused; hook.remove()
    npre = int(getattr(vit, "num_prefix_tokens", 0))
    a = got["a"].float().mean(1)                                            # heads averaged: (n, tokens, tokens)
    if getattr(vit, "cls_token", None) is not None: att, mode = a[:, 0, npre:], "CLS row"
    else: att, mode = a[:, npre:, npre:].mean(1), "received, mean over patch queries"
    return {"tokens": tokens[:, npre:].float().cpu().numpy(), "attention": (att / att.sum(1, keepdim=True)).cpu().numpy(),
            "grid": tuple(int(g) for g in vit.patch_embed.grid_size), "mode": mode}


# %% [markdown]
# On a tiny timm ViT with a class token and the same ViT without one (as EXP-009 builds them): the
# tokens are the patches only, the attention is a distribution over them, and a class token
# changes which attention is read. A model that is not a timm ViT is refused with its type.

# %%
import timm
from types import SimpleNamespace
_tf = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
torch.manual_seed(0)
_cls = SimpleNamespace(name="tiny-cls", device="cpu", transform=_tf, model=timm.create_model(
    "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8).eval())
_nocls = SimpleNamespace(name="tiny", device="cpu", transform=_tf, model=SimpleNamespace(vit=timm.create_model(
    "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, class_token=False, global_pool="avg").eval()))
_ims = [_img, _img.transpose(Image.FLIP_LEFT_RIGHT)]
for _bb, _mode in ((_cls, "CLS row"), (_nocls, "received, mean over patch queries")):
    _pm = patch_maps(_bb, _ims)
    test_eq((_pm["tokens"].shape, _pm["attention"].shape, _pm["grid"], _pm["mode"]), ((2, 16, 192), (2, 16), (4, 4), _mode))
    np.testing.assert_allclose(_pm["attention"].sum(1), 1, rtol=1e-5)
    assert (_pm["attention"] >= 0).all()
assert _cls.model.blocks[-1].attn.fused_attn == timm.layers.use_fused_attn()          # the fused path is back as it was
test_fail(lambda: patch_maps(SimpleNamespace(name="clip", model=torch.nn.Linear(2, 2)), _ims),
          contains="backbone clip: feature maps need a timm ViT (patch tokens and attention); its model is a Linear")

# %% [markdown]
# ## The lesion-attention lift, and the anchors

# %%
#| export
ATTENTION_BOOTSTRAP = "percentile, 95%: images drawn with replacement (scipy.stats.bootstrap)"


def lesion_attention(attention: np.ndarray, lesion: np.ndarray) -> pd.DataFrame:
    """Per image: the attention on the lesion (Σ attention × lesion share of each patch), the lesion's area share (mean
    lesion share) and their ratio, the lift (NaN where the mask is empty)."""
    share, area = (attention * lesion).sum(1), lesion.mean(1)
    with np.errstate(invalid="ignore", divide="ignore"): lift = np.where(area > 0, share / area, np.nan)
    return pd.DataFrame({"lesion_attention": share, "lesion_area": area, "lift": lift})


def attention_summary(per_image: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    "Mean lesion attention, area and lift over the images with a lesion, each with its bootstrap CI over images."
    from scipy.stats import bootstrap
    ok = per_image.dropna(subset=["lift"])
    out = {"n_images": len(ok), "n_without_lesion": len(per_image) - len(ok), "bootstrap": f"{ATTENTION_BOOTSTRAP}, {n_boot} resamples"}
    for col in ("lesion_attention", "lesion_area", "lift"):
        v = ok[col].to_numpy()
        ci = bootstrap((v,), np.mean, n_resamples=n_boot, method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
        out.update({col: float(v.mean()), f"{col}_ci_low": float(ci.low), f"{col}_ci_high": float(ci.high)})
    return out


def anchors(lesion: np.ndarray, grid: tuple[int, int], threshold: float = 0.5) -> dict:
    """Three patches (row-major indices) chosen from the mask: `centre`, the lesion patch deepest inside it; `skin`, the
    patch nearest the image's middle among those clear of the lesion (at least 1/8 of the grid away), so it is the skin
    around the lesion, not a dermoscope's dark frame in a corner; `border`, a lesion patch next to skin (the one nearest
    `skin`). None where there is none."""
    from scipy.ndimage import binary_dilation, distance_transform_edt
    inside = lesion.reshape(grid) >= threshold
    if not inside.any() or inside.all(): return {"centre": None, "border": None, "skin": None}
    d_in = distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]       # the image's edge bounds the lesion too
    clear = ~inside & (distance_transform_edt(~inside) >= max(1.0, min(grid) / 8))     # skin clear of the lesion's edge
    if not clear.any(): clear = ~inside
    rr, cc = np.indices(grid)
    to_middle = np.where(clear, (rr - (grid[0] - 1) / 2) ** 2 + (cc - (grid[1] - 1) / 2) ** 2, np.inf)
    centre, skin = int(np.argmax(d_in)), int(np.argmin(to_middle))
    rim = np.flatnonzero(inside & binary_dilation(~inside))             # lesion patches with skin beside them
    rows, cols = np.divmod(rim, grid[1])
    border = int(rim[np.argmin((rows - skin // grid[1]) ** 2 + (cols - skin % grid[1]) ** 2)])
    return {"centre": centre, "border": border, "skin": skin}


def cosine_map(tokens: np.ndarray, index: int) -> np.ndarray:
    "Cosine similarity of every patch token of one image (patches, dim) to the token at `index`."
    t = tokens / np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)
    return t @ t[index]


def pca_rgb(tokens: np.ndarray, seed: int = 0) -> np.ndarray:
    """The first three principal components of the patch tokens of all images together (n, patches, dim), as colours in
    [0, 1] (each component scaled between its 1st and 99th percentile over the set)."""
    from sklearn.decomposition import PCA
    n, p, d = tokens.shape
    c = PCA(3, random_state=seed).fit_transform(tokens.reshape(n * p, d))
    lo, hi = np.percentile(c, 1, axis=0), np.percentile(c, 99, axis=0)
    return np.clip((c - lo) / np.maximum(hi - lo, 1e-12), 0, 1).reshape(n, p, 3)


# %% [markdown]
# On hand-made rows: attention spread evenly has lift 1 whatever the lesion's size; attention all on
# the lesion has lift 1 / area; attention all on skin has lift 0; an image without a lesion is left
# out of the mean and counted. The anchors of a 6×6 grid with a 4×4 lesion in one corner: the centre
# is inside, the skin patch is the one nearest the middle, the border is the lesion patch beside it.

# %%
_les = np.array([[1, 1, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]], float)          # areas 0.5, 0.125 (a soft edge), 0
_att = np.array([[0.25] * 4, [1, 0, 0, 0], [0.25] * 4])
_li = lesion_attention(_att, _les)
test_close(_li.lift.iloc[0], 1.0); test_close(_li.lift.iloc[1], 0.5 / 0.125); assert np.isnan(_li.lift.iloc[2])
test_close(lesion_attention(np.array([[0, 0, 0.5, 0.5]]), _les[:1]).lift.iloc[0], 0.0)
_s = attention_summary(_li, n_boot=200)
test_eq((_s["n_images"], _s["n_without_lesion"]), (2, 1))
test_close(_s["lift"], (1 + 4) / 2); assert _s["lift_ci_low"] <= _s["lift"] <= _s["lift_ci_high"]
test_eq(attention_summary(_li, n_boot=200), _s)                                  # seeded
_g = np.zeros((6, 6)); _g[:4, :4] = 1
_an = anchors(_g.ravel(), (6, 6))
test_eq(_an, {"centre": 7, "border": 15, "skin": 16})     # centre (1, 1): deepest (ties: first); skin (2, 4); border (2, 3)
assert _g.ravel()[_an["centre"]] == 1 and _g.ravel()[_an["border"]] == 1 and _g.ravel()[_an["skin"]] == 0
test_eq(anchors(np.ones(36), (6, 6)), {"centre": None, "border": None, "skin": None})
_tok = np.random.default_rng(0).normal(size=(3, 16, 8))
test_close(cosine_map(_tok[0], 5)[5], 1.0)
_rgb = pca_rgb(_tok); test_eq(_rgb.shape, (3, 16, 3)); assert 0 <= _rgb.min() and _rgb.max() <= 1


# %% [markdown]
# ## One entry point: `feature_maps`
#
# For a backbone and a list of images with their masks: every map and every per-image number, in
# one dictionary; `attention_summary` turns its `per_image` table into the encoder's lift [CI].

# %%
#| export
def feature_maps(backbone, images, masks, batch_size: int = 32) -> dict:
    """Attention, patch tokens, lesion share per patch, anchors, the seen images and masks, and the per-image lesion
    attention table, for PIL `images` and their `masks` (as `read_mask` returns them)."""
    if len(images) != len(masks): raise ValueError(f"{len(images)} images but {len(masks)} masks")
    parts = [patch_maps(backbone, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    grid, mode = parts[0]["grid"], parts[0]["mode"]
    attention, tokens = np.concatenate([p["attention"] for p in parts]), np.concatenate([p["tokens"] for p in parts])
    seen = [mask_view(backbone.transform, m) for m in masks]
    lesion = np.stack([patch_lesion(m, grid) for m in seen])
    return {"backbone": backbone.name, "mode": mode, "grid": grid, "attention": attention, "tokens": tokens, "lesion": lesion,
            "anchors": [anchors(l, grid) for l in lesion], "views": [geometry(backbone.transform)(im) for im in images],
            "masks": seen, "per_image": lesion_attention(attention, lesion)}


# %%
_fm = feature_maps(_cls, _ims, [_m, _m.transpose(Image.FLIP_LEFT_RIGHT)])
test_eq((_fm["lesion"].shape, len(_fm["anchors"]), _fm["views"][0].shape), ((2, 16), 2, (3, 32, 32)))
assert _fm["lesion"][0].reshape(4, 4)[:, 2:].min() > 0.95 > 0.05 > _fm["lesion"][0].reshape(4, 4)[:, :2].max()   # right half
assert _fm["lesion"][1].reshape(4, 4)[:, :2].min() > 0.95 > 0.05 > _fm["lesion"][1].reshape(4, 4)[:, 2:].max()   # its mirror
test_fail(lambda: feature_maps(_cls, _ims, [_m]), contains="2 images but 1 masks")


# %% [markdown]
# ## Figures
#
# `fig_maps` draws one kind of map (attention or PCA-RGB) for several encoders: a column per image,
# the first row the image with its lesion outlined, then a row per encoder, each map over the
# encoder's own view of the image (a squash for the EXP-009 encoders, a centre crop for timm's),
# under it the image's lift. `fig_anchors` draws the three similarity maps of one image, a row per
# encoder. Both are sized for the paper's landscape page (no text under 8 pt there: 21_render).

# %%
#| export
def _label(text: str, width: int = 22) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width))


def _overlay(ax, view, values, grid, cmap=None, alpha=0.6):
    h, w = view.shape[1:]
    ax.imshow(view.permute(1, 2, 0).numpy(), extent=(0, w, h, 0))
    ax.imshow(values.reshape(*grid) if values.ndim == 1 else values.reshape(*grid, 3), cmap=cmap, alpha=alpha,
              extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xticks([]); ax.set_yticks([])


def fig_maps(results: list[dict], labels: list[str], kind: str = "attention", titles=None, cell: float | None = None):
    """Attention (`kind='attention'`) or PCA-RGB (`'pca'`) maps: a column per image, the image row first, then a row per
    encoder; panels of `cell` inches, by default as large as a figure 6 inches tall allows (0.82 at most)."""
    import matplotlib.pyplot as plt
    if kind not in ("attention", "pca"): raise ValueError(f"kind {kind!r}: choose attention or pca")
    n, k = len(results[0]["views"]), len(results)
    cell = cell or min(0.82, 5.8 / (k + 1) - 0.18)          # the page takes 0.8 of 18 cm: taller would print text under 8 pt
    fig, axes = plt.subplots(k + 1, n, figsize=(1.3 + cell * n, 0.2 + (cell + 0.18) * (k + 1)), squeeze=False)
    pcas = [pca_rgb(r["tokens"]) for r in results] if kind == "pca" else None       # once per encoder, over all its images
    for i in range(n):
        ax = axes[0][i]; v, m = results[0]["views"][i], results[0]["masks"][i]
        ax.imshow(v.permute(1, 2, 0).numpy()); ax.contour(m.numpy(), levels=[0.5], colors="white", linewidths=0.8)
        ax.set_xticks([]); ax.set_yticks([])
        if titles: ax.set_title(titles[i], fontsize=9.5)
        for j, r in enumerate(results, 1):
            vals = r["attention"][i] if kind == "attention" else pcas[j - 1][i]
            _overlay(axes[j][i], r["views"][i], vals, r["grid"], cmap="magma" if kind == "attention" else None,
                     alpha=0.65 if kind == "attention" else 0.85)
            if kind == "attention": axes[j][i].set_xlabel(f"lift {r['per_image'].lift.iloc[i]:.2f}", fontsize=9, labelpad=1)
    for j, lab in enumerate(["image, lesion outlined", *labels]): axes[j][0].set_ylabel(_label(lab), fontsize=9, rotation=0,
                                                                                         ha="right", va="center")
    fig.tight_layout(h_pad=0.2, w_pad=0.15)
    return fig


def fig_anchors(results: list[dict], labels: list[str], image: int = 0, cell: float | None = None):
    """Patch similarity from the lesion's centre, its border and skin (anchors marked), a row per encoder; panels of `cell`
    inches, by default as large as a figure 5.5 inches tall allows (0.95 at most)."""
    import matplotlib.pyplot as plt
    cell = cell or min(0.95, 5.2 / len(results))            # the page takes 0.8 of 18 cm: taller would print text under 8 pt
    fig, axes = plt.subplots(len(results), 3, figsize=(1.3 + 3 * cell, 0.3 + cell * len(results)), squeeze=False)
    for i, r in enumerate(results):
        v, an, (gh, gw) = r["views"][image], r["anchors"][image], r["grid"]
        for j, name in enumerate(("centre", "border", "skin")):
            ax = axes[i][j]
            if an[name] is None: ax.axis("off"); continue
            _overlay(ax, v, cosine_map(r["tokens"][image], an[name]), r["grid"], cmap="viridis", alpha=0.75)
            h, w = v.shape[1:]
            ax.plot((an[name] % gw + 0.5) * w / gw, (an[name] // gw + 0.5) * h / gh, "o", ms=5, mfc="white", mec="black")
            if i == 0: ax.set_title(name, fontsize=9.5)
        axes[i][0].set_ylabel(_label(labels[i]), fontsize=9, rotation=0, ha="right", va="center")
    fig.suptitle("cosine similarity to the anchor patch (white dot)", fontsize=9.5)
    fig.tight_layout(h_pad=0.2, w_pad=0.15)
    return fig


# %% [markdown]
# Drawn on the tiny ViT above, the figures have a panel per image and encoder, and their panels
# shrink with the number of encoders (seven in EXP-009's figures) to stay within 6 inches of height. That no text prints under 8 pt at the
# paper's size is checked where the real figures are drawn, `nbs/exp009.ipynb` (21_render's
# `small_text`; this notebook stays below the paper's code).

# %%
import matplotlib.pyplot as plt
_f = fig_maps([_fm, _fm], ["a ViT with a rather long name", "b"], "attention", ["akiec", "bcc"])
test_eq(len(_f.axes), 3 * 2); plt.close(_f)
_f = fig_maps([_fm] * 6, list("abcdef"), "pca", ["akiec", "bcc"])         # six encoders, as EXP-009 has
assert len(_f.axes) == 7 * 2 and _f.get_size_inches()[1] <= 6.0, _f.get_size_inches(); plt.close(_f)
_f = fig_anchors([_fm], ["a"]); test_eq(len(_f.axes), 3); plt.close(_f)
test_fail(lambda: fig_maps([_fm], ["a"], "pcaa"), contains="kind 'pcaa'")


# %% [markdown]
# ## On real images: a random-init control
#
# The HAM10000 test split (the probe's lesion-aware split, seed 20260422): one image per diagnosis
# for the figures, and 120 test images drawn with the same seed for the lift, each with its mask.
# Here the ViT-S/14 of the DINOv2 architecture at random init (`random_vits14`, 518 px, 37×37
# patches, a class token): an untrained ViT has no reason to look at the lesion, so its lift is
# what a trained encoder's lift is read against. The EXP-009 encoders, their own random-init
# ViT-Ti/16 and the ISIC 2017 transfer are mapped by `make exp009` (`encoder_maps` below, in
# `nbs/exp009.ipynb`; `paper/exp009/featuremaps_table.md`).

# %%
#| export
def featuremap_images(folder, seed: int = 20260422, n: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Test-split images of a HAM10000-style folder (the probe's lesion-aware split): one per diagnosis (the first in the
    split's order) for figures, and `n` drawn with `seed` for the lift; both with their masks' folder checked."""
    from derma_jepa.data import load_records
    from derma_jepa.split import split_records
    test = split_records(load_records(folder), seed, (0.70, 0.15, 0.15), "symmetric").query("split == 'test'")
    shown = test.groupby("dx", observed=True).head(1).sort_values("dx")
    drawn = test.sample(n=min(n, len(test)), random_state=seed).sort_values("image_id")
    return shown.reset_index(drop=True), drawn.reset_index(drop=True)


def load_with_masks(folder, rows: pd.DataFrame) -> tuple[list, list]:
    "The images of `rows` (RGB) and their masks (read through `read_mask`, sizes checked)."
    from derma_jepa.data import open_rgb
    ims = [open_rgb(p) for p in rows.path]
    return ims, [read_mask(folder, i, im) for i, im in zip(rows.image_id, ims)]


# %%
import os
from derma_jepa.backbones import get_backbone
_ham, _res = os.environ.get("HAM10000_DIR"), {}
if _ham:
    _shown, _drawn = featuremap_images(_ham)
    _seen = load_with_masks(_ham, _shown)                    # every shown image has its mask, of its own size
    test_eq((len(_seen[1]), sorted(_shown.dx)), (7, ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]))
else:
    print("HAM10000_DIR is not set: the real-image maps are skipped (the fixture has no masks)")

# %%
#| slow
if _ham:
    _vs = get_backbone("random_vits14")
    _res["ViT-S/14 (DINOv2 arch.) @ 518 px, random init"] = (feature_maps(_vs, *_seen, batch_size=8),
                                                             feature_maps(_vs, *load_with_masks(_ham, _drawn), batch_size=8))

# %% [markdown]
# Lift with its interval, per encoder (the attention each one reads is named):

# %%
if _res:
    from IPython.display import display
    display(pd.DataFrame([{"encoder": k, "attention": d["mode"], **{c: v for c, v in attention_summary(d["per_image"]).items()}}
                          for k, (_, d) in _res.items()]).round(3))

# %%
if _res:
    _labs, _sh = list(_res), [s for s, _ in _res.values()]
    fig_maps(_sh, _labs, "attention", list(_shown.dx))

# %%
if _res: fig_maps(_sh, _labs, "pca", list(_shown.dx))

# %%
if _res: fig_anchors(_sh, _labs, image=int(np.argmax(_shown.dx.eq("mel"))))

# %% [markdown]
# ## Per encoder: lift and transfer, one table
#
# `encoder_maps` is what `make exp009` runs for every encoder and offline backbone of its plan:
# the lesion-attention lift [CI] on the drawn test images (ViTs only; a backbone without patch
# tokens says so) and 16_probe's ISIC 2017 melanoma AUROC [CI], with the maps of the shown images
# for the figures. `in_corpus` says, per encoder, how many of the transfer images its pretraining
# corpus held (unlabelled): a reader weighs the transfer number by it.

# %%
#| export
MAP_COLUMNS = ("attention_read", "lesion_attention", "lesion_attention_lo", "lesion_attention_hi", "lesion_area", "lift", "lift_lo",
               "lift_hi", "auroc", "auroc_lo", "auroc_hi", "n_melanoma", "n_images", "in_corpus")


def encoder_maps(backbones: dict, folder, isic_root, seed: int = 20260422, n: int = 120, in_corpus: dict | None = None,
                 progress: bool = False, show=None) -> tuple[pd.DataFrame, dict]:
    """For `backbones` ({label: registry name}): a table (a row per label, numbers: `MAP_COLUMNS`) of lesion attention,
    lift and ISIC 2017 melanoma AUROC, each with its 95% interval, and {label: feature maps of the shown images} for the
    ViTs among `show` (labels; all by default). Each backbone is loaded once."""
    from derma_jepa.backbones import get_backbone
    from derma_jepa.probe import transfer_predictions, transfer_summary
    shown, drawn = featuremap_images(folder, seed, n)
    ims_shown, ims_drawn = load_with_masks(folder, shown), load_with_masks(folder, drawn)
    rows, maps = [], {}
    for label, name in backbones.items():
        bb = get_backbone(name)
        t = transfer_summary(transfer_predictions(bb, folder, isic_root, seed=seed, progress=progress), seed=seed)
        row = dict.fromkeys(MAP_COLUMNS, np.nan) | {"encoder": label, "attention_read": "–"}
        try: vit_of(bb)
        except DataError: pass
        else:
            fm = feature_maps(bb, *ims_drawn, batch_size=8)
            s = attention_summary(fm["per_image"], seed=seed)
            row.update({"attention_read": fm["mode"], "lesion_attention": s["lesion_attention"], "lesion_attention_lo": s["lesion_attention_ci_low"],
                        "lesion_attention_hi": s["lesion_attention_ci_high"], "lesion_area": s["lesion_area"],
                        "lift": s["lift"], "lift_lo": s["lift_ci_low"], "lift_hi": s["lift_ci_high"]})
            if show is None or label in show: maps[label] = feature_maps(bb, *ims_shown, batch_size=8)
        rows.append({**row, "auroc": t["auroc"], "auroc_lo": t["auroc_ci_low"], "auroc_hi": t["auroc_ci_high"],
                     "n_melanoma": t["n_melanoma"], "n_images": t["n_images"], "in_corpus": (in_corpus or {}).get(label, 0)})
    return pd.DataFrame(rows).set_index("encoder")[list(MAP_COLUMNS)], {"maps": maps, "titles": list(shown.dx), "n": len(drawn)}

# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp fixture

# %% [markdown]
# # Fixture: seeded HAM-like synthetic dermoscopy
#
# > A generator of synthetic dermoscopy in HAM10000's layout (metadata CSV + `images/`), so the
# > offline default and the tests exercise exactly the loader, split and pairing code real data does.
#
# The images are not meant to fool a dermatologist. They are meant to have the *structure* that
# matters to this study: several images of one lesion that differ by small changes of pose, zoom
# and light (the fixture's "re-photography"), different lesions of the same diagnosis and site
# (the changing pairs), a diagnosis-dependent look (so a diagnosis probe has something to find),
# and the nuisances of real dermoscopy that the nuisance families interact with: skin texture,
# hair and the dark ring of the dermatoscope. The diagnosis, site and images-per-lesion mixes are
# HAM10000's own (PROTOCOL A1).

# %%
#| export
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from derma_jepa.data import DataError, cache_dir, follow_umask

# %%
from fastcore.test import test_eq, test_fail

# %%
#| export
FIXTURE_VERSION = "1"
DX_COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
SITE_COUNTS = {"back": 2192, "lower extremity": 2077, "trunk": 1404, "upper extremity": 1118, "abdomen": 1022,
               "face": 745, "chest": 407, "foot": 319, "unknown": 234, "neck": 168, "scalp": 128, "hand": 90,
               "ear": 56, "genital": 48, "acral": 7}
IMAGES_PER_LESION = {1: 5514, 2: 1423, 3: 490, 4: 34, 5: 5, 6: 4}    # HAM10000: lesions with k images
# Diagnosis look: two colours mixed by a smooth field, border irregularity, and a texture kind.
DX_LOOK = {
    "nv":    dict(c1=(150, 95, 60), c2=(110, 65, 40), irregular=0.08, texture="network"),
    "mel":   dict(c1=(70, 40, 30), c2=(95, 100, 125), irregular=0.30, texture="blotch"),
    "bkl":   dict(c1=(185, 140, 95), c2=(150, 110, 70), irregular=0.15, texture="waxy"),
    "bcc":   dict(c1=(215, 150, 150), c2=(190, 110, 115), irregular=0.15, texture="vessels"),
    "akiec": dict(c1=(205, 120, 110), c2=(230, 200, 180), irregular=0.20, texture="scaly"),
    "vasc":  dict(c1=(160, 40, 70), c2=(110, 30, 80), irregular=0.10, texture="lobules"),
    "df":    dict(c1=(160, 110, 80), c2=(235, 220, 210), irregular=0.06, texture="central"),
}
SIZE = (200, 150)


# %% [markdown]
# ## Drawing one image
#
# A lesion is a parameter dictionary (colours, border harmonics, texture seed, skin tone, hair);
# an image is that lesion seen under a pose (rotation, zoom, shift) and a light level. The scene
# is drawn 1.25× larger than the output, posed by one affine resampling, cropped, lit, and only
# then given the dermatoscope ring, which belongs to the camera, not to the skin.

# %%
#| export
def _smooth(rng, shape, cells):
    "A smooth random field in [0, 1]: a coarse grid of uniforms, bicubically upsampled."
    g = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8), "L")
    return np.asarray(g.resize(shape[::-1], Image.BICUBIC), np.float64) / 255.0


def lesion_params(rng: np.random.Generator, dx: str) -> dict:
    "Everything that stays the same across the images of one lesion."
    look = DX_LOOK[dx]
    k = np.arange(2, 8)
    return dict(dx=dx, radius=float(rng.uniform(0.16, 0.30)),
                amps=(rng.uniform(0, look["irregular"], len(k)) / np.sqrt(k - 1)).tolist(),
                phases=rng.uniform(0, 2 * np.pi, len(k)).tolist(),
                tone=(np.array([228, 182, 160]) * rng.uniform(0.80, 1.05) + rng.normal(0, 6, 3)).tolist(),
                jitter=rng.normal(0, 12, 3).tolist(), texture_seed=int(rng.integers(2**31)),
                hair=int(rng.integers(1, 9)) if rng.random() < 0.3 else 0, hair_seed=int(rng.integers(2**31)),
                ring=float(rng.uniform(0.95, 1.15)))


def _scene(p: dict, W: int, H: int) -> np.ndarray:
    "Skin, lesion and hair, lesion centred, as a float RGB array."
    rng = np.random.default_rng(p["texture_seed"])
    look = DX_LOOK[p["dx"]]
    skin = np.array(p["tone"]) * (0.92 + 0.12 * _smooth(rng, (H, W), 6))[..., None]
    skin += rng.normal(0, 3, (H, W, 1))
    yy, xx = np.mgrid[0:H, 0:W]
    cx, cy = W / 2, H / 2
    theta, dist = np.arctan2(yy - cy, xx - cx), np.hypot(xx - cx, yy - cy) / min(W, H)
    border = p["radius"] * (1 + sum(a * np.cos((j + 2) * theta + ph) for j, (a, ph) in enumerate(zip(p["amps"], p["phases"]))))
    alpha = 1 / (1 + np.exp(-(border - dist) / 0.012))
    mix = _smooth(rng, (H, W), 5)
    t = look["texture"]
    if t == "network": mix = 0.5 * mix + 0.5 * (0.5 + 0.5 * np.sin(xx / 2.2) * np.sin(yy / 2.2))
    elif t == "blotch": mix = (mix > 0.55).astype(float) * 0.8 + 0.2 * _smooth(rng, (H, W), 12)
    elif t == "scaly": mix = np.clip(mix + rng.normal(0, 0.25, (H, W)), 0, 1)
    elif t == "lobules": mix = (_smooth(rng, (H, W), 9) > 0.5).astype(float)
    elif t == "central": mix = np.clip(1 - dist / (0.45 * p["radius"]), 0, 1) ** 0.7
    elif t == "waxy": mix = _smooth(rng, (H, W), 14)
    colour = np.array(look["c1"]) + np.array(p["jitter"])
    lesion = colour * (1 - mix[..., None]) + np.array(look["c2"]) * mix[..., None]
    if t == "vessels":
        vimg = Image.new("L", (W, H)); d = ImageDraw.Draw(vimg)
        for _ in range(6):
            pts = cx + rng.normal(0, 12, 4), cy + rng.normal(0, 12, 4)
            d.line(list(zip(*pts)), fill=255, width=1)
        v = np.asarray(vimg, float)[..., None] / 255
        lesion = lesion * (1 - 0.7 * v) + np.array([170, 30, 40]) * 0.7 * v
    img = skin * (1 - alpha[..., None]) + lesion * alpha[..., None]
    if p["hair"]:
        hrng = np.random.default_rng(p["hair_seed"])
        himg = Image.new("L", (W, H)); d = ImageDraw.Draw(himg)
        for _ in range(p["hair"]):
            x0, y0 = hrng.uniform(0, W), hrng.uniform(0, H)
            ang, length = hrng.uniform(0, np.pi), hrng.uniform(0.3, 0.9) * W
            bend = hrng.normal(0, 0.4)
            pts = [(x0 + s * length * math.cos(ang + bend * s), y0 + s * length * math.sin(ang + bend * s))
                   for s in np.linspace(-0.5, 0.5, 12)]
            d.line(pts, fill=255, width=int(hrng.integers(1, 3)))
        h = np.asarray(himg.filter(ImageFilter.GaussianBlur(0.6)), float)[..., None] / 255
        img = img * (1 - 0.85 * h) + np.array([45, 30, 25]) * 0.85 * h
    return img


def render_fixture_image(p: dict, pose: dict, size=SIZE) -> Image.Image:
    "One photograph of lesion `p` under `pose` (angle, zoom, dx, dy, light)."
    W, H = size
    big = (int(W * 1.25), int(H * 1.25))
    scene = Image.fromarray(np.clip(_scene(p, *big), 0, 255).astype(np.uint8), "RGB")
    a, z = math.radians(pose["angle"]), pose["zoom"]
    c, s = math.cos(a) / z, math.sin(a) / z
    bx, by = big[0] / 2, big[1] / 2
    # output pixel (u, v), centred, maps to scene pixel (bx, by) + R(a)/z · (u - W/2 - dx, v - H/2 - dy)
    ox, oy = -W / 2 - pose["dx"], -H / 2 - pose["dy"]
    coeffs = (c, -s, bx + c * ox - s * oy, s, c, by + s * ox + c * oy)
    posed = scene.transform((W, H), Image.AFFINE, coeffs, resample=Image.BICUBIC)
    arr = np.asarray(posed, np.float64) * pose["light"]
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot((xx - (W - 1) / 2) / (W / 2), (yy - (H - 1) / 2) / (W / 2)) / p["ring"]
    ring = np.clip(1 - (r - 0.85) / 0.12, 0, 1) ** 1.5
    return Image.fromarray(np.clip(arr * ring[..., None], 0, 255).astype(np.uint8), "RGB")


# %%
_p = lesion_params(np.random.default_rng(0), "mel")
_still = dict(angle=0.0, zoom=1.0, dx=0.0, dy=0.0, light=1.0)
_im = render_fixture_image(_p, _still)
test_eq(_im.size, (200, 150))
test_eq(np.asarray(_im).tobytes(), np.asarray(render_fixture_image(_p, _still)).tobytes())   # seeded
assert np.asarray(_im)[0, 0].max() < 30            # dermatoscope ring: dark corners


# %% [markdown]
# ## A dataset
#
# `make_fixture` draws lesions with HAM10000's diagnosis and site mixes and its images-per-lesion
# distribution (about a quarter of lesions photographed 2–6 times; the site is drawn once per
# lesion), and writes `HAM10000_metadata.csv` and `images/ISIC_*.jpg` (JPEG quality 90). It is
# written into a temporary folder and renamed into place, so an interrupted generation never
# leaves a half-written fixture, and two processes asking for the same fixture at once both end
# up with it. `fixture_dir` caches it by its parameters.

# %%
#| export
def _draw(rng, counts: dict, n: int | None = None):
    keys = list(counts); p = np.array(list(counts.values()), float); p /= p.sum()
    return [keys[i] for i in rng.choice(len(keys), size=n, p=p)]


def fixture_metadata(n_lesions: int, seed: int) -> pd.DataFrame:
    "The metadata table of a fixture: one row per image, HAM10000's columns."
    rng = np.random.default_rng([seed, 1])
    dx = _draw(rng, DX_COUNTS, n_lesions)
    site = _draw(rng, SITE_COUNTS, n_lesions)
    n_img = _draw(rng, IMAGES_PER_LESION, n_lesions)
    rows, k = [], 0
    for lesion in range(n_lesions):
        age, sex = float(5 * rng.integers(4, 18)), ("male", "female")[int(rng.integers(2))]
        dx_type = "histo" if dx[lesion] != "nv" or rng.random() < 0.3 else "follow_up"
        for _ in range(n_img[lesion]):
            rows.append(dict(lesion_id=f"HAM_{lesion:07d}", image_id=f"ISIC_{k:07d}", dx=dx[lesion],
                             dx_type=dx_type, age=age, sex=sex, localization=site[lesion]))
            k += 1
    return pd.DataFrame(rows)


def make_fixture(out_dir, n_lesions: int = 400, seed: int = 0, quality: int = 90) -> Path:
    "Write a synthetic HAM10000-style dataset into `out_dir` (created atomically); return it."
    out_dir = Path(out_dir)
    meta = fixture_metadata(n_lesions, seed)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        follow_umask(tmp, is_dir=True); (tmp / "images").mkdir()
        for lesion_id, rows in meta.groupby("lesion_id", sort=False):
            lrng = np.random.default_rng([seed, 2, int(lesion_id[4:])])
            p = lesion_params(lrng, rows.dx.iloc[0])
            for j, image_id in enumerate(rows.image_id):
                pose = dict(angle=0.0, zoom=1.0, dx=0.0, dy=0.0, light=1.0) if j == 0 else dict(
                    angle=float(lrng.uniform(-20, 20)), zoom=float(lrng.uniform(0.9, 1.1)),
                    dx=float(lrng.uniform(-8, 8)), dy=float(lrng.uniform(-6, 6)), light=float(lrng.uniform(0.9, 1.1)))
                render_fixture_image(p, pose).save(tmp / "images" / f"{image_id}.jpg", quality=quality)
        meta.to_csv(tmp / "HAM10000_metadata.csv", index=False)
        (tmp / "fixture.json").write_text(json.dumps(dict(version=FIXTURE_VERSION, n_lesions=n_lesions, seed=seed,
                                                          quality=quality, n_images=len(meta)), indent=1))
        try: os.replace(tmp, out_dir)
        except OSError:      # out_dir exists: fine if it is this very fixture (another process made it first)
            same = (out_dir / "fixture.json").exists() and (out_dir / "fixture.json").read_text() == (tmp / "fixture.json").read_text()
            if not same: raise DataError(f"{out_dir} exists and is not this fixture: remove it or choose another folder") from None
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def fixture_dir(n_lesions: int = 400, seed: int = 0) -> Path:
    "The cached fixture for these parameters, generated on first use."
    key = hashlib.sha256(f"{FIXTURE_VERSION}-{n_lesions}-{seed}".encode()).hexdigest()[:12]
    path = cache_dir("fixture") / f"ham-like-{n_lesions}-{seed}-{key}"
    return path if (path / "fixture.json").exists() else make_fixture(path, n_lesions, seed)


# %%
from derma_jepa.data import load_records, summarise_audit
_fx = make_fixture(Path(tempfile.mkdtemp()) / "fx", n_lesions=40, seed=3)
_rec = load_records(_fx, cache=_fx.parent / "audit.parquet")
_aud = summarise_audit(_rec)
test_eq((_aud["n_lesions"], _aud["missing"], _aud["unreadable"], _aud["image_sizes"]), (40, [], [], {"200x150": _aud["n_images"]}))
assert _aud["lesions_multi_image"] >= 4
# byte-identical on regeneration
_fx2 = make_fixture(Path(tempfile.mkdtemp()) / "fx", n_lesions=40, seed=3)
assert [f.read_bytes() for f in sorted((_fx / "images").iterdir())] == [f.read_bytes() for f in sorted((_fx2 / "images").iterdir())]
# making the same fixture again where it already exists keeps it; a different one is refused
test_eq(make_fixture(_fx, n_lesions=40, seed=3), _fx)
test_fail(lambda: make_fixture(_fx, n_lesions=41, seed=3), contains="is not this fixture")

# %% [markdown]
# The default fixture's mixes against HAM10000's, and one row per diagnosis: the lesion of that
# diagnosis with the most photographs, its photographs side by side (the fixture's re-photography:
# pose, zoom and light change, the lesion does not).

# %%
_meta = fixture_metadata(400, 0)
print(pd.DataFrame({"fixture": _meta.drop_duplicates("lesion_id").dx.value_counts(normalize=True).round(3),
                    "HAM10000 (images)": pd.Series(DX_COUNTS) / sum(DX_COUNTS.values())}).round(3))

# %%
import matplotlib.pyplot as plt
_fx_demo = fixture_dir(n_lesions=600, seed=0)            # the default fixture (cached)
_m = pd.read_csv(_fx_demo / "HAM10000_metadata.csv")
_m["n"] = _m.groupby("lesion_id").image_id.transform("size")
_rows = []
for _dx, _g in _m.sort_values(["n", "lesion_id"], ascending=[False, True], kind="stable").groupby("dx", sort=True):
    _rows.append((_dx, _g[_g.lesion_id == _g.lesion_id.iloc[0]].image_id.tolist()[:4]))  # the dx's most-photographed lesion
fig, axes = plt.subplots(len(_rows), 4, figsize=(8, 1.7 * len(_rows)), squeeze=False)
for r, (_dx, ids) in enumerate(_rows):
    for c in range(4):
        ax = axes[r, c]; ax.set_xticks([]); ax.set_yticks([])
        if c < len(ids): ax.imshow(Image.open(_fx_demo / "images" / f"{ids[c]}.jpg")); ax.set_title(ids[c], fontsize=7)
        else: ax.axis("off")
    axes[r, 0].set_ylabel(f"{_dx}\n({len(ids)} photo{'s' if len(ids) > 1 else ''})", fontsize=8)
test_eq(len(_rows), 7)
fig.tight_layout()

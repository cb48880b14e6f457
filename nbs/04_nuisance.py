# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp nuisance

# %% [markdown]
# # Nuisance families: operations, tables and `render`
#
# > Synthetic acquisition nuisance as data: small pure image operations, families as tables of
# > draws and steps, and a deterministic `render(image, recipe)`.
#
# A *recipe* is the fully resolved list of operations for one image side, every random value
# already drawn: `{"family": "strong", "preset": "reference", "ops": [["fit", {"size": 224}],
# ["brightness", {"factor": 1.13}], ...]}`. Drawing (random, stateful) and rendering (pure) are
# separate, so a manifest row carries everything needed to rebuild its image, byte for byte.
# Array-valued randomness (Gaussian noise, salt-and-pepper positions) is recorded as the state of
# the generator just before the array was drawn; rendering replays it. This is what lets the
# `reference` preset keep the release's single sequential stream (`default_rng(seed+1009)`, whose
# position after each pair depends on how many normals the noise consumed) and still render any
# side alone.
#
# The families of PROTOCOL A4/B3 are tables. Each is a list of **draws** (in the order the
# random stream is consumed) and a list of **steps** (in the order operations are applied); a step
# names its operation and where each parameter comes from (`"$name"` = a draw, anything else a
# constant). The `reference` preset is the release's code, quirks included (index-parity flip,
# wrap-around motion blur, corner-colour fills, hue quantised by 255); `paper` is its Appendix C.

# %%
#| export
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy.ndimage import uniform_filter1d

from derma_jepa.data import DataError, open_rgb

# %%
from fastcore.test import test_eq, test_fail, test_ne


# %% [markdown]
# ## Operations
#
# Each takes a PIL RGB image and plain parameters, and returns a new image. Float arithmetic is
# clipped to [0, 255] and truncated to uint8, as the release does. The release computes gamma,
# colour temperature and vignette in float32 (its arrays are float32 and every scalar joins them
# as float32); `reference` recipes say so with `dtype: float32`, so those three operations run in
# the same precision and truncate to the same integers. Without the parameter they compute in
# float64 (the `paper` preset).
#
# A recorded generator state is `[state, inc]`, plus a third entry when the generator holds a
# cached 32-bit half (numpy's PCG64 serves small-range integers 32 bits at a time and keeps the
# unused half of a 64-bit output for the next such draw). Salt-and-pepper positions are such
# draws: restored without that half, the release's stream is shifted by one 32-bit value.

# %%
#| export
def _arr(img, dtype="float64"): return np.asarray(img, dtype=dtype)
def _img(a): return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
def corner(img) -> tuple: return img.getpixel((0, 0))
def generator_from(state) -> np.random.Generator:
    "A PCG64 generator restored from a recorded `[state, inc]` or `[state, inc, cached 32-bit half]`."
    bg = np.random.PCG64()
    bg.state = {"bit_generator": "PCG64", "state": {"state": int(state[0]), "inc": int(state[1])},
                "has_uint32": int(len(state) > 2), "uinteger": int(state[2]) if len(state) > 2 else 0}
    return np.random.Generator(bg)
def noise_array(rng, sigma, shape): return rng.normal(0.0, sigma, size=shape)
def salt_pepper_arrays(rng, fraction, width, height):
    n = int(math.floor(width * height * fraction))
    return rng.integers(0, width, n), rng.integers(0, height, n), rng.integers(0, 2, n) * 255


def fit(img, size: int): return ImageOps.fit(img, (size, size), method=Image.BICUBIC)
def brightness(img, factor): return ImageEnhance.Brightness(img).enhance(factor)
def contrast(img, factor): return ImageEnhance.Contrast(img).enhance(factor)
def saturation(img, factor): return ImageEnhance.Color(img).enhance(factor)
def rotate(img, angle): return img.rotate(angle, resample=Image.BICUBIC, fillcolor=corner(img))
def hflip(img): return ImageOps.mirror(img)
def gaussian_blur(img, radius): return img.filter(ImageFilter.GaussianBlur(radius))
def posterize(img, bits): return ImageOps.posterize(img, bits)
def unsharp(img, radius, percent, threshold=3): return img.filter(ImageFilter.UnsharpMask(radius, percent, threshold))


def scale_translate(img, scale, tx, ty):
    "Bicubic downscale by `scale`, pasted on a canvas of the corner colour, offset by (tx, ty)·size."
    W, H = img.size
    w, h = int(math.floor(W * scale)), int(math.floor(H * scale))
    canvas = Image.new("RGB", (W, H), corner(img))
    canvas.paste(img.resize((w, h), Image.BICUBIC), (int((W - w) // 2 + tx * W), int((H - h) // 2 + ty * H)))
    return canvas


def gaussian_noise(img, sigma, rng):
    "Add N(0, sigma) noise drawn from the recorded generator state `rng`."
    a = noise_array(generator_from(rng), sigma, (img.height, img.width, 3))
    a += _arr(img)
    return _img(a)


def jpeg(img, quality):
    "JPEG round trip at `quality` (PIL defaults otherwise), reopened as RGB."
    buf = io.BytesIO(); img.save(buf, "JPEG", quality=int(quality)); buf.seek(0)
    return Image.open(buf).convert("RGB")


def hue_shift(img, steps):
    "Add `steps` (of 256 per turn) to the hue channel of PIL's HSV, modulo 256."
    h, s, v = img.convert("HSV").split()
    return Image.merge("HSV", (h.point([(x + steps) % 256 for x in range(256)]), s, v)).convert("RGB")


def motion_blur(img, length, vertical, wrap):
    """Average of shifted copies along one axis. `wrap=True` is the release: `np.roll` copies at
    offsets -L//2..L//2 (wrap-around edges; L+1 copies for even L, divided by L). `wrap=False`:
    exactly L taps, edges repeated."""
    a, axis = _arr(img), 0 if vertical else 1
    if wrap: out = sum(np.roll(a, o, axis=axis) for o in range(-(length // 2), length // 2 + 1)) / length
    else: out = uniform_filter1d(a, size=length, axis=axis, mode="nearest")
    return _img(out)


def erase(img, area, x, y, fill):
    "Fill a rectangle of round(W√area) × round(H√area) at (x, y) with a grey level or the corner colour."
    W, H = img.size
    w, h = round(W * math.sqrt(area)), round(H * math.sqrt(area))
    a = np.array(img)
    a[y:y + h, x:x + w] = corner(img) if fill == "corner" else (fill,) * 3
    return Image.fromarray(a, "RGB")


_LEVELS = np.arange(256)


def _lut(img, tables):
    "Apply one 256-entry table per channel: the same result as the float arithmetic on every pixel."
    return img.point([int(v) for t in tables for v in np.clip(t, 0, 255).astype(np.uint8)])


def gamma(img, gamma, dtype="float64"):
    f = np.dtype(dtype).type
    return _lut(img, [(_LEVELS.astype(dtype) / f(255.0)) ** f(gamma) * f(255.0)] * 3)


def temperature(img, factor, dtype="float64"):
    f, x = np.dtype(dtype).type, _LEVELS.astype(dtype)
    return _lut(img, [x * f(factor), x, x / f(factor)])


@lru_cache(maxsize=16)
def _falloff(W: int, H: int, falloff: str, dtype: str) -> np.ndarray:
    f = np.dtype(dtype).type
    cx, cy = (W - 1) / 2, (H - 1) / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(dtype)
    r = np.clip(np.hypot(xx - f(cx), yy - f(cy)) / f(math.hypot(cx, cy)), f(0), f(1))
    return r ** 2 if falloff == "quadratic" else np.sin(f(np.pi) * r / f(2)) ** 2


def vignette(img, strength, falloff, dtype="float64"):
    "Darken towards the corners: 1 - v·r² (`quadratic`, the release) or 1 - v·sin²(πr/2) (`cos2`)."
    f = np.dtype(dtype).type
    return _img(_arr(img, dtype) * (f(1) - f(strength) * _falloff(*img.size, falloff, dtype))[..., None])


def salt_pepper(img, fraction, rng):
    "Set ⌊W·H·fraction⌋ pixels (drawn with replacement from the recorded generator) to 0 or 255."
    xs, ys, vals = salt_pepper_arrays(generator_from(rng), fraction, img.width, img.height)
    a = np.array(img); a[ys, xs] = vals[:, None]
    return Image.fromarray(a, "RGB")


OPS: dict[str, Callable] = {f.__name__: f for f in [
    fit, brightness, contrast, saturation, rotate, hflip, scale_translate, gaussian_blur, gaussian_noise,
    jpeg, hue_shift, posterize, unsharp, motion_blur, erase, gamma, temperature, vignette, salt_pepper]}

# %% [markdown]
# A few checks on the operations themselves: the release's motion blur brightens by (L+1)/L for
# even L (a bug we keep in `reference`), the corrected one does not; a flip twice is the identity;
# noise replayed from a recorded state is identical.

# %%
_flat = Image.new("RGB", (32, 32), (100, 100, 100))
test_eq(np.asarray(motion_blur(_flat, 6, True, wrap=True))[0, 0, 0], int(100 * 7 / 6))
test_eq(np.asarray(motion_blur(_flat, 6, True, wrap=False))[0, 0, 0], 100)
_g = np.random.default_rng(5)
_photo = Image.fromarray(_g.integers(0, 255, (24, 32, 3), dtype=np.uint8))
test_eq(np.asarray(hflip(hflip(_photo))), np.asarray(_photo))
_st = _g.bit_generator.state["state"]
test_eq(np.asarray(gaussian_noise(_photo, 5, [_st["state"], _st["inc"]])),
        np.asarray(gaussian_noise(_photo, 5, [_st["state"], _st["inc"]])))
test_eq(np.asarray(hue_shift(_photo, 0)).shape, (24, 32, 3))


# %% [markdown]
# ## Families as tables
#
# A `Draw` consumes the random stream: `uniform(lo, hi) + shift`, `integers(lo, hi)` (upper bound
# excluded), `choice` of `values`, `bernoulli(p)`, or `state` (record the generator's state, then
# consume what the array operation will consume, so later draws see the same stream). `when` makes
# a draw or a step conditional: `("mod", k, r)` means "pair index i has i mod k = r", `"$flip"`
# means "the draw `flip` came out true". A bound can be a function of the draws so far and the
# image size (the erase corner depends on the erase area).

# %%
#| export
@dataclass(frozen=True)
class Draw:
    name: str
    dist: str                      # uniform | integers | choice | bernoulli | state
    lo: float | Callable | None = None
    hi: float | Callable | None = None
    shift: float = 0.0
    values: tuple = ()
    post: Callable | None = None   # maps the drawn value to the recorded parameter
    consume: Callable | None = None  # for `state`: (rng, draws, W, H) -> the arrays the op will draw
    when: tuple | str | None = None
    half: bool = False             # for `state`: the arrays are 32-bit draws, so a cached 32-bit half is state too


@dataclass(frozen=True)
class Step:
    op: str
    params: dict = field(default_factory=dict)
    when: tuple | str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    draws: tuple[Draw, ...]
    steps: tuple[Step, ...]

    def draw(self, name): return next(d for d in self.draws if d.name == name)


def _erase_hi(axis):
    def hi(p, W, H):
        n = W if axis == "x" else H
        return max(1, n - round(n * math.sqrt(p["area"])))
    return hi


_NOISE = lambda rng, p, W, H: noise_array(rng, p["sigma"], (H, W, 3))
_SP = lambda rng, p, W, H: salt_pepper_arrays(rng, p["sp_fraction"], W, H)

REFERENCE_FAMILIES = {f.name: f for f in [
    Family("mild",
           (Draw("brightness", "uniform", -0.08, 0.08, shift=1.0), Draw("contrast", "uniform", -0.06, 0.06, shift=1.0),
            Draw("angle", "uniform", -4.0, 4.0), Draw("noise", "state", consume=lambda rng, p, W, H:
                noise_array(rng, 1.5, (H, W, 3)), when=("mod", 3, 2))),
           (Step("brightness", {"factor": "$brightness"}), Step("contrast", {"factor": "$contrast"}),
            Step("rotate", {"angle": "$angle"}), Step("gaussian_blur", {"radius": 0.18}, when=("mod", 3, 1)),
            Step("gaussian_noise", {"sigma": 1.5, "rng": "$noise"}, when=("mod", 3, 2)))),
    Family("strong",
           (Draw("brightness", "uniform", -0.30, 0.30, shift=1.0), Draw("contrast", "uniform", -0.25, 0.25, shift=1.0),
            Draw("saturation", "uniform", -0.25, 0.25, shift=1.0), Draw("angle", "uniform", -15.0, 15.0),
            Draw("scale", "uniform", 0.82, 1.00), Draw("tx", "uniform", -0.05, 0.05), Draw("ty", "uniform", -0.05, 0.05),
            Draw("blur", "uniform", 0.3, 1.2), Draw("sigma", "uniform", 3.0, 7.0), Draw("quality", "integers", 45, 70),
            Draw("noise", "state", consume=_NOISE)),
           (Step("brightness", {"factor": "$brightness"}), Step("contrast", {"factor": "$contrast"}),
            Step("saturation", {"factor": "$saturation"}), Step("rotate", {"angle": "$angle"}),
            Step("hflip", when=("mod", 2, 0)), Step("scale_translate", {"scale": "$scale", "tx": "$tx", "ty": "$ty"}),
            Step("gaussian_blur", {"radius": "$blur"}), Step("gaussian_noise", {"sigma": "$sigma", "rng": "$noise"}),
            Step("jpeg", {"quality": "$quality"}))),
    Family("strong_held_out",
           (Draw("hue", "uniform", -12.0, 12.0, post=lambda d: round(d / 360 * 255)), Draw("bits", "integers", 4, 7),
            Draw("radius", "uniform", 1.0, 3.0), Draw("percent", "integers", 100, 220),
            Draw("length", "integers", 5, 16), Draw("vertical", "integers", 0, 2, post=bool),
            Draw("area", "uniform", 0.06, 0.18), Draw("x", "integers", 0, _erase_hi("x")),
            Draw("y", "integers", 0, _erase_hi("y")), Draw("quality", "integers", 20, 41)),
           (Step("hue_shift", {"steps": "$hue"}), Step("posterize", {"bits": "$bits"}),
            Step("unsharp", {"radius": "$radius", "percent": "$percent", "threshold": 3}),
            Step("motion_blur", {"length": "$length", "vertical": "$vertical", "wrap": True}),
            Step("erase", {"area": "$area", "x": "$x", "y": "$y", "fill": "corner"}),
            Step("jpeg", {"quality": "$quality"}))),
    Family("strong_held_out_2",
           (Draw("gamma", "uniform", 0.6, 1.6), Draw("temperature", "uniform", 0.85, 1.15),
            Draw("vignette", "uniform", 0.25, 0.55), Draw("sp_fraction", "uniform", 0.005, 0.025),
            Draw("sp", "state", consume=_SP, half=True), Draw("quality", "integers", 80, 96)),
           (Step("gamma", {"gamma": "$gamma", "dtype": "float32"}),
            Step("temperature", {"factor": "$temperature", "dtype": "float32"}),
            Step("vignette", {"strength": "$vignette", "falloff": "quadratic", "dtype": "float32"}),
            Step("salt_pepper", {"fraction": "$sp_fraction", "rng": "$sp"}), Step("jpeg", {"quality": "$quality"}))),
]}


# %% [markdown]
# The `paper` preset (Appendix C) differs from the code in a handful of bands and in three
# operations: the flip is a coin toss, motion blur has exactly L taps and no wrap-around, the
# erase fill is drawn from {0, 128, 255}, and the vignette falls off as cos². It is written as a
# list of edits to the reference tables, so the two presets can be compared line by line.

# %%
#| export
def _edit(fam: Family, draws=(), steps=None, add_draws=()) -> Family:
    "A copy of `fam` with some draws replaced (matched by name), draws added, or steps replaced."
    new = {d.name: d for d in draws}
    ds = [new.get(d.name, d) for d in fam.draws]
    at = next((k for k, d in enumerate(ds) if d.dist == "state"), len(ds))   # added draws go before array draws
    ds = tuple(ds[:at]) + tuple(add_draws) + tuple(ds[at:])
    return replace(fam, draws=ds, steps=tuple(steps) if steps is not None else fam.steps)


def _replace_step(fam, op, step): return tuple(step if s.op == op else s for s in fam.steps)


_R = REFERENCE_FAMILIES
PAPER_FAMILIES = {
    "mild": _R["mild"],
    "strong": _edit(
        _R["strong"],
        draws=[Draw("brightness", "uniform", 0.6, 1.4), Draw("contrast", "uniform", 0.6, 1.4),
               Draw("saturation", "uniform", 0.6, 1.4), Draw("blur", "uniform", 0.5, 1.5),
               Draw("sigma", "uniform", 0.0, 8.0), Draw("quality", "integers", 45, 71)],
        add_draws=[Draw("flip", "bernoulli", 0.5)],
        steps=_replace_step(_R["strong"], "hflip", Step("hflip", when="$flip"))),
    "strong_held_out": _edit(
        _R["strong_held_out"],
        draws=[Draw("hue", "uniform", -12.0, 12.0, post=lambda d: round(d / 360 * 256)),
               Draw("radius", "uniform", 2.0, 2.0), Draw("percent", "integers", 120, 201)],
        add_draws=[Draw("fill", "choice", values=(0, 128, 255))],
        steps=[Step("motion_blur", {"length": "$length", "vertical": "$vertical", "wrap": False}) if s.op == "motion_blur"
               else Step("erase", {"area": "$area", "x": "$x", "y": "$y", "fill": "$fill"}) if s.op == "erase" else s
               for s in _R["strong_held_out"].steps]),
    "strong_held_out_2": _edit(
        _R["strong_held_out_2"],
        steps=[Step("gamma", {"gamma": "$gamma"}), Step("temperature", {"factor": "$temperature"}),
               Step("vignette", {"strength": "$vignette", "falloff": "cos2"}), *_R["strong_held_out_2"].steps[3:]]),
}
PRESETS = {"reference": REFERENCE_FAMILIES, "paper": PAPER_FAMILIES}
HELD_OUT_FAMILIES = ("strong", "strong_held_out", "strong_held_out_2")


def get_family(name: str, preset: str = "reference") -> Family:
    "Look up a family table, with a clear error for an unknown family or preset."
    if preset not in PRESETS: raise DataError(f"unknown nuisance preset {preset!r}: choose one of {', '.join(PRESETS)}")
    fams = PRESETS[preset]
    if name not in fams: raise DataError(f"unknown nuisance family {name!r}: choose one of {', '.join(fams)}")
    return fams[name]


# %%
test_fail(lambda: get_family("strongest"), contains="unknown nuisance family 'strongest'")
test_fail(lambda: get_family("strong", "appendix"), contains="unknown nuisance preset 'appendix'")


# %% [markdown]
# ### The three held-out families share nothing but JPEG
#
# The study's claim of generalisation to an *unseen* nuisance rests on this, so it is checked
# from the tables themselves, not asserted in prose: for every pair of the three families, the
# operations they both use must be JPEG only, and their JPEG quality bands must not overlap.

# %%
#| export
def _band(fam: Family, draw_name: str) -> tuple:
    d = fam.draw(draw_name)
    return (d.lo, d.hi - 1) if d.dist == "integers" else (d.lo, d.hi)


def check_disjoint_families(preset: str = "reference", families=HELD_OUT_FAMILIES) -> dict:
    "Assert no operation is shared between held-out families except JPEG with disjoint quality bands."
    fams = [get_family(f, preset) for f in families]
    for i, a in enumerate(fams):
        for b in fams[i + 1:]:
            shared = {s.op for s in a.steps} & {s.op for s in b.steps}
            if shared - {"jpeg"}:
                raise AssertionError(f"{preset}: families {a.name} and {b.name} share {sorted(shared - {'jpeg'})}")
            (lo1, hi1), (lo2, hi2) = _band(a, "quality"), _band(b, "quality")
            if lo1 <= hi2 and lo2 <= hi1:
                raise AssertionError(f"{preset}: JPEG quality bands of {a.name} [{lo1},{hi1}] and {b.name} [{lo2},{hi2}] overlap")
    return {f.name: _band(f, "quality") for f in fams}


# %%
test_eq(check_disjoint_families("reference"), {"strong": (45, 69), "strong_held_out": (20, 40), "strong_held_out_2": (80, 95)})
test_eq(check_disjoint_families("paper"), {"strong": (45, 70), "strong_held_out": (20, 40), "strong_held_out_2": (80, 95)})
# the check can fail: mild shares brightness, contrast and rotation with strong
test_fail(lambda: check_disjoint_families("reference", ("mild", "strong")), contains="share")

# %% [markdown]
# ## Drawing a recipe
#
# `draw_recipe` walks a family's draws in order on the generator it is given, then resolves the
# steps. Steps switched off (by index or by a coin) are left out of the recipe. The first
# operation is always the fit to the working size (centre crop + bicubic, `ImageOps.fit`), as the
# release does before its nuisance. `recipe_json` is the canonical form (sorted keys, no spaces;
# Python floats round-trip through `repr`), used as the cache key and in manifests.

# %%
#| export
NONE_RECIPE = {"family": "none", "ops": []}


def _active(when, index, draws) -> bool:
    if when is None: return True
    if isinstance(when, str): return bool(draws.get(when[1:], False))
    kind, k, r = when
    if kind != "mod": raise ValueError(f"unknown condition {when!r}")
    return index % k == r


def _take(d: Draw, rng, draws, W, H, advance=True):
    bound = lambda v: v(draws, W, H) if callable(v) else v
    if d.dist == "uniform": v = float(rng.uniform(bound(d.lo), bound(d.hi))) + d.shift
    elif d.dist == "integers": v = int(rng.integers(bound(d.lo), bound(d.hi)))
    elif d.dist == "choice": v = d.values[int(rng.integers(len(d.values)))]
    elif d.dist == "bernoulli": v = bool(rng.random() < d.lo)
    elif d.dist == "state":
        full = rng.bit_generator.state
        v = [int(full["state"]["state"]), int(full["state"]["inc"])] + ([int(full["uinteger"])] if d.half and full["has_uint32"] else [])
        if advance: d.consume(rng, draws, W, H)     # advance the stream exactly as the operation will
    else: raise ValueError(f"unknown distribution {d.dist!r}")
    return d.post(v) if d.post else v


def draw_recipe(family: str, rng: np.random.Generator, index: int = 0, preset: str = "reference",
                size: int = 224, private: bool = False) -> dict:
    """Draw one side's recipe from `family` on `rng` (consumed in the release's order) for pair `index`.
    `private=True` says the generator serves this recipe only, so a trailing array draw need not be replayed."""
    if family == "none": return dict(NONE_RECIPE)
    fam = get_family(family, preset)
    draws: dict = {}
    for j, d in enumerate(fam.draws):
        last = j == len(fam.draws) - 1
        if _active(d.when, index, draws): draws[d.name] = _take(d, rng, draws, size, size, advance=not (private and last))
    ops = [["fit", {"size": size}]]
    for s in fam.steps:
        if not _active(s.when, index, draws): continue
        ops.append([s.op, {k: draws[v[1:]] if isinstance(v, str) and v.startswith("$") else v
                           for k, v in s.params.items()}])
    return {"family": family, "preset": preset, "ops": ops}


def recipe_json(recipe: dict) -> str:
    "Canonical JSON of a recipe."
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


# %%
_r0 = draw_recipe("strong", np.random.default_rng(1009), index=0)
_r1 = draw_recipe("strong", np.random.default_rng(1009), index=1)
test_eq([o for o, _ in _r0["ops"]], ["fit", "brightness", "contrast", "saturation", "rotate", "hflip",
                                     "scale_translate", "gaussian_blur", "gaussian_noise", "jpeg"])
assert "hflip" not in [o for o, _ in _r1["ops"]]                       # reference: flip on even pair index only
test_eq(json.loads(recipe_json(_r0)), _r0)
_pf = [any(o == "hflip" for o, _ in draw_recipe("strong", np.random.default_rng(s), preset="paper")["ops"]) for s in range(200)]
assert 70 < sum(_pf) < 130                                              # paper: a fair coin
# mild: blur only when i mod 3 = 1, noise only when i mod 3 = 2
test_eq([[o for o, _ in draw_recipe("mild", np.random.default_rng(0), i)["ops"]][4:] for i in range(3)],
        [[], ["gaussian_blur"], ["gaussian_noise"]])

# %% [markdown]
# The stream must advance as if the arrays had been drawn: a draw after a `state` draw must equal
# the same draw after really drawing the array.

# %%
_a = np.random.default_rng(3); draw_recipe("strong", _a); _after = _a.random()
_b = np.random.default_rng(3)
for _d in REFERENCE_FAMILIES["strong"].draws[:-1]: _take(_d, _b, {}, 224, 224)
_b.normal(0, 1, (224, 224, 3))
test_eq(_after, _b.random())
# a private stream skips that replay but records the same recipe
test_eq(draw_recipe("strong", np.random.default_rng(3), private=True), draw_recipe("strong", np.random.default_rng(3)))

# %% [markdown]
# In the release's single stream, a `strong_held_out_2` side starts right after the previous
# side's JPEG quality, a small-range integer that leaves a cached 32-bit half behind. The
# salt-and-pepper positions then begin with that half. The recorded state carries it, so the
# replayed positions equal the ones the live stream draws; dropped, every position moves.

# %%
_live, _c = np.random.default_rng(11), np.random.default_rng(11)
_live.integers(80, 96); _c.integers(80, 96)                  # the previous side's JPEG quality
_sp = dict(draw_recipe("strong_held_out_2", _c)["ops"])["salt_pepper"]
test_eq(len(_sp["rng"]), 3)                                    # state, inc and the cached half
_gamma, _temp, _vig, _frac = (_live.uniform(*b) for b in [(0.6, 1.6), (0.85, 1.15), (0.25, 0.55), (0.005, 0.025)])
test_eq(_frac, _sp["fraction"])
_want = salt_pepper_arrays(_live, _frac, 224, 224)
for _x, _y in zip(salt_pepper_arrays(generator_from(_sp["rng"]), _frac, 224, 224), _want): test_eq(_x, _y)
assert not np.array_equal(salt_pepper_arrays(generator_from(_sp["rng"][:2]), _frac, 224, 224)[0], _want[0])
# a 64-bit draw never reads the half, so the Gaussian-noise states of `strong` stay [state, inc]
_n = np.random.default_rng(2); _n.integers(0, 5)
test_eq(len(dict(draw_recipe("strong", _n, index=1)["ops"])["gaussian_noise"]["rng"]), 2)


# %% [markdown]
# ## Rendering
#
# `render` applies a recipe's operations in order to an RGB image; `load_rgb` opens a file as
# 8-bit RGB (any Pillow mode, 00_data). A `none` recipe returns the image untouched (the release's
# clean contexts and changing pairs are the original files). The same source and recipe always
# give the same bytes: there is no randomness left in a recipe.
#
# Whether a side is first turned by its EXIF orientation tag is the protocol's rule (00_data):
# always under `symmetric`; under `reference` only an untouched original read by a backbone, as
# the release's backbone path did and its variant renderer and pixel baselines did not.
# `side_key` is what caches key a side's pixels by: the recipe, plus the tag when it turns them.

# %%
#| export
def load_rgb(path, exif: bool = False) -> Image.Image:
    "Open an image file as 8-bit RGB; `exif=True` turns it by its EXIF orientation (see `exif_applies`)."
    return open_rgb(path, exif)


def exif_applies(protocol: str, recipe: dict | str, reader: str) -> bool:
    "Is this side turned by its EXIF tag? `reader` is `backbone` or `pixels` (the pixel baselines)."
    if protocol != "reference": return True
    family = (json.loads(recipe) if isinstance(recipe, str) else recipe).get("family")
    return reader == "backbone" and family == "none"


def side_key(recipe: str, exif: bool = False, orientation: int = 1) -> str:
    "A side's pixels as a cache sees them: the recipe, plus the EXIF tag when it turns the image."
    return recipe if not exif or int(orientation) in (0, 1) else f"{recipe}|exif{int(orientation)}"


def side_keys_of(table, prefix: str = "") -> list[str]:
    "`side_key` of every row of a table with `<prefix>recipe` (and, when present, `<prefix>exif`, `<prefix>orientation`)."
    n = len(table)
    exif = table[f"{prefix}exif"] if f"{prefix}exif" in table else [False] * n
    orient = table[f"{prefix}orientation"] if f"{prefix}orientation" in table else [1] * n
    return list(map(side_key, table[f"{prefix}recipe"], exif, orient))


def render(image: Image.Image, recipe: dict | str) -> Image.Image:
    "Apply a recipe's operations to an RGB image."
    if isinstance(recipe, str): recipe = json.loads(recipe)
    out = image
    for op, params in recipe["ops"]:
        if op not in OPS: raise DataError(f"recipe has unknown operation {op!r}")
        out = OPS[op](out, **params)
    return out


# %%
test_eq([exif_applies("symmetric", NONE_RECIPE, r) for r in ("backbone", "pixels")], [True, True])
test_eq([exif_applies("reference", NONE_RECIPE, r) for r in ("backbone", "pixels")], [True, False])
test_eq(exif_applies("reference", {"family": "strong", "ops": []}, "backbone"), False)
test_eq((side_key("r", True, 1), side_key("r", False, 6), side_key("r", True, 6)), ("r", "r", "r|exif6"))
test_eq(side_keys_of({"t_recipe": ["a", "b"], "t_exif": [True, True], "t_orientation": [1, 8]}, "t_"), ["a", "b|exif8"])
test_eq(side_keys_of({"recipe": ["a"]}), ["a"])

# %%
_src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
for _pre in PRESETS:
    for _fam in ["mild", *HELD_OUT_FAMILIES]:
        for _i in range(3):
            _rec = draw_recipe(_fam, np.random.default_rng([_i, 7]), _i, _pre)
            _x, _y = render(_src, _rec), render(_src, json.loads(recipe_json(_rec)))
            test_eq(_x.size, (224, 224))
            assert _x.tobytes() == _y.tobytes(), (_pre, _fam, _i)
test_eq(render(_src, NONE_RECIPE).tobytes(), _src.tobytes())
test_ne(render(_src, _r0).tobytes(), render(_src, _r1).tobytes())


# %% [markdown]
# ## Gallery
#
# Each family (both presets) on a few images: the real copy when `HAM10000_DIR` is set,
# otherwise the fixture. The first column is the clean fit-to-224 image.

# %%
#| export
def gallery(paths, families=("mild", *HELD_OUT_FAMILIES), presets=("reference", "paper"), seed=0, size=160):
    "A matplotlib figure: rows = images × presets, columns = clean + one draw of each family."
    import matplotlib.pyplot as plt
    rows = [(p, pre) for p in paths for pre in presets]
    fig, axes = plt.subplots(len(rows), len(families) + 1, figsize=(2 * (len(families) + 1), 2 * len(rows)), squeeze=False)
    for r, (path, pre) in enumerate(rows):
        img = load_rgb(path)
        shown = [("clean", render(img, {"ops": [["fit", {"size": 224}]]}))]
        shown += [(f, render(img, draw_recipe(f, np.random.default_rng([seed, r, c]), r + c, pre)))
                  for c, f in enumerate(families)]
        for c, (title, im) in enumerate(shown):
            ax = axes[r, c]; ax.imshow(im.resize((size, size))); ax.set_xticks([]); ax.set_yticks([])
            if r == 0 or c == 0: ax.set_title(title if r == 0 else "", fontsize=8)
            if c == 0: ax.set_ylabel(f"{Path(path).stem}\n{pre}", fontsize=7)
    fig.tight_layout()
    return fig


# %%
import os
from derma_jepa.data import load_records
if os.environ.get("HAM10000_DIR"):
    _recs = load_records(os.environ["HAM10000_DIR"])
else:
    from derma_jepa.fixture import fixture_dir
    _recs = load_records(fixture_dir(n_lesions=60, seed=0))
_pick = _recs.groupby("dx").head(1).path.head(3).tolist()
gallery(_pick);

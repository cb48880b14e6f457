# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp backbones

# %% [markdown]
# # Backbones: one registry, the libraries' own loaders and preprocessing, offline baselines
#
# > `get_backbone(name, weights=None)`: a frozen image encoder, its preprocessing, and a
# > fingerprint that identifies it in the embedding cache.

# %% [markdown]
# The backbone is the study's independent variable, so three things must be beyond doubt: which
# weights were used, which preprocessing, and that nothing else stands in for them. Hence:
#
# - weights come from the Hugging Face cache or an explicit local file, never from a silent
#   download and never replaced by something else; without them the error names the hub id, the
#   files expected and the one command that fetches them;
# - preprocessing comes from each library's own configuration (`timm.data.resolve_data_config`,
#   open_clip's `image_transform` with the model's preprocess config), never hand-copied constants;
# - checkpoints are read with `safetensors` or `torch.load(weights_only=True)`: no pickles;
# - the fingerprint hashes the name, every weight tensor and the preprocessing, so two different
#   checkpoints can never share cached embeddings.
#
# Offline backbones need no weights: `random_vits14` and `random_vitb16` (seeded random init of
# the same architectures, a legitimate "random init" baseline) and `color_texture`, a handcrafted
# colour-histogram + texture descriptor built with skimage.

# %%
#| export
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from derma_jepa.data import DataError
from derma_jepa.registry import family, register_family

# %%
from fastcore.test import test_close, test_eq, test_fail, test_ne


# %% [markdown]
# ## The registry
#
# One row per backbone. `hub_id` is the Hugging Face repository whose files the library's own
# loader reads; `weight_files` are the alternatives it accepts (first found wins);
# `config_file` is needed for `hf-hub:` open_clip models. The short aliases are the names the
# owner's commands use.

# %%
#| export
@dataclass(frozen=True)
class BackboneSpec:
    name: str
    library: str                  # timm | open_clip | handcrafted | ssl: a family of derma_jepa.registry
    arch: str                     # timm model name, open_clip model name or hf-hub: id
    hub_id: str = ""              # where the weights live ("" = none needed)
    weight_files: tuple = ()
    config_file: str = ""
    quick_gelu: bool = False
    random_seed: int | None = None
    image_size: int = 224
    note: str = ""
    reference_preprocess: dict | None = None   # PROTOCOL A's preprocessing, used under `reference`


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
OPENAI_CLIP = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
# PROTOCOL A1: the release ran DINOv2 through HF's image processor (shorter side -> 256, bicubic, centre crop 224,
# ImageNet mean/std) and OpenAI CLIP through CLIPImageProcessor (shorter side -> 224, bicubic, crop 224, CLIP mean/std).
_HF_DINOV2 = {"resize_shorter": 256, "crop": 224, **IMAGENET, "source": "PROTOCOL A: HF AutoImageProcessor (facebook/dinov2)"}
_HF_CLIP = {"resize_shorter": 224, "crop": 224, **OPENAI_CLIP, "source": "PROTOCOL A: HF CLIPImageProcessor"}

_OC_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in [
    BackboneSpec("dinov2_vits14", "timm", "vit_small_patch14_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
                 ("model.safetensors", "pytorch_model.bin"), note="DINOv2 ViT-S/14 (facebook/dinov2-small), normed CLS",
                 reference_preprocess=_HF_DINOV2),
    BackboneSpec("dinov2_vitb14", "timm", "vit_base_patch14_dinov2.lvd142m", "timm/vit_base_patch14_dinov2.lvd142m",
                 ("model.safetensors", "pytorch_model.bin"), note="DINOv2 ViT-B/14 (facebook/dinov2-base), normed CLS",
                 reference_preprocess=_HF_DINOV2),
    BackboneSpec("clip_vitb16", "open_clip", "ViT-B-16", "timm/vit_base_patch16_clip_224.openai", _OC_FILES,
                 quick_gelu=True, note="OpenAI CLIP ViT-B/16 (open_clip pretrained='openai'), encode_image",
                 reference_preprocess=_HF_CLIP),
    BackboneSpec("dermlip_vitb16", "open_clip", "hf-hub:redlessone/DermLIP_ViT-B-16", "redlessone/DermLIP_ViT-B-16",
                 _OC_FILES, "open_clip_config.json", note="DermLIP ViT-B/16, encode_image"),
    BackboneSpec("biomedclip_vitb16", "open_clip", "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                 "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", _OC_FILES, "open_clip_config.json",
                 note="BiomedCLIP ViT-B/16, encode_image"),
    BackboneSpec("random_vits14", "timm", "vit_small_patch14_dinov2", random_seed=0,
                 note="ViT-S/14 (DINOv2 architecture), seeded random init: no weights"),
    BackboneSpec("random_vitb16", "timm", "vit_base_patch16_224", random_seed=0,
                 note="ViT-B/16, seeded random init: no weights"),
    BackboneSpec("color_texture", "handcrafted", "color_texture", note="HSV colour histograms + LBP texture (skimage)"),
]}
ALIASES = {"dinov2": "dinov2_vitb14", "dinov2_small": "dinov2_vits14", "clip": "clip_vitb16",
           "dermlip": "dermlip_vitb16", "biomedclip": "biomedclip_vitb16"}
OFFLINE_BACKBONES = tuple(n for n, s in REGISTRY.items() if not s.hub_id)


_REPO = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
USER_BACKBONES = {   # prefix -> (what follows it, its grammar, the library that must know it, how the spec is built)
    "ssl:": ("a checkpoint path: ssl:<path to encoder.safetensors>", r"[^\x00-\x1f]+", "",
             lambda n, r: BackboneSpec(n, "ssl", r, note="self-supervised checkpoint (15_pretrain)")),
    "timm:": ("a timm model name: timm:<name>[.<pretrained tag>]", r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?", "timm",
              lambda n, r: BackboneSpec(n, "timm", r, f"timm/{r}", ("model.safetensors", "pytorch_model.bin"), image_size=0,
                                        note=f"timm {r}: pooled output, timm's data config")),
    "open_clip:": ("an open_clip architecture: open_clip:<arch> (with weights=<checkpoint>)", _REPO, "open_clip",
                   lambda n, r: BackboneSpec(n, "open_clip", r, "", _OC_FILES, note=f"open_clip {r}, encode_image")),
    "hf-hub:": ("a Hugging Face repo of an open_clip model: hf-hub:<org>/<name>", rf"(?!.*\.\.){_REPO}/{_REPO}", "",
                lambda n, r: BackboneSpec(n, "open_clip", n, r, _OC_FILES, "open_clip_config.json",
                                          note=f"open_clip hf-hub:{r}, encode_image")),
}


def _unknown_model(library: str, arch: str) -> list[str] | None:
    "None when `library` (timm or open_clip) has a model `arch`; else its closest names."
    if library == "timm":
        import timm
        if timm.is_model(arch): return None
        names = timm.list_models()
    else:
        import open_clip
        names = open_clip.list_models()
        if arch in names: return None
    return difflib.get_close_matches(arch.split(".")[0], names, n=3)


def backbone_spec(name: str) -> BackboneSpec:
    """The registry row for a backbone name or alias; or a backbone the user names: `ssl:<path>` (15_pretrain),
    `timm:<model>`, `open_clip:<arch>`, `hf-hub:<org>/<name>` (weights from `weights=` or the Hugging Face cache). A
    name off its grammar (a path where a model name belongs, `..` in a repo) or a model its library does not have is
    refused here, in one line, before anything is loaded."""
    for prefix, (what, grammar, library, make) in USER_BACKBONES.items():
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if not rest: raise DataError(f"backbone {prefix!r} needs {what}")
            if not re.fullmatch(grammar, rest): raise DataError(f"backbone {name!r}: {rest!r} is not {what}")
            if library and (near := _unknown_model(library, rest)) is not None:
                raise DataError(f"backbone {name!r}: {library} has no model {rest!r}"
                                + (f" (did you mean {', '.join(near)}?)" if near else ""))
            return make(name, rest)
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise DataError(f"unknown backbone {name!r}: choose one of {', '.join(list(REGISTRY) + list(ALIASES))}")
    return REGISTRY[key]


# %%
test_eq(backbone_spec("dinov2").name, "dinov2_vitb14")
test_fail(lambda: backbone_spec("resnet50"), contains="unknown backbone 'resnet50'")
test_eq(backbone_spec("timm:vit_small_patch14_dinov2.lvd142m").hub_id, "timm/vit_small_patch14_dinov2.lvd142m")
test_eq(backbone_spec("open_clip:ViT-B-16").arch, "ViT-B-16")
test_eq(backbone_spec("hf-hub:redlessone/DermLIP_ViT-B-16").hub_id, "redlessone/DermLIP_ViT-B-16")
for _bad, _msg in [("timm:../../x", "'../../x' is not a timm model name"), ("hf-hub:../..", "is not a Hugging Face repo"),
                   ("hf-hub:org/a..b", "is not a Hugging Face repo"), ("hf-hub:org/x/y", "is not a Hugging Face repo"),
                   ("ssl:enc\n.safetensors", "is not a checkpoint path"),
                   ("timm:vit_smal_patch14_dinov2", "timm has no model 'vit_smal_patch14_dinov2' (did you mean vit_small_patch14_dinov2"),
                   ("open_clip:ViT-B-61", "open_clip has no model 'ViT-B-61' (did you mean ViT-B-16"),
                   ("timm:", "backbone 'timm:' needs a timm model name")]:
    test_fail(lambda: backbone_spec(_bad), contains=_msg)
test_eq(OFFLINE_BACKBONES, ("random_vits14", "random_vitb16", "color_texture"))


# %% [markdown]
# ## Finding the weights
#
# An explicit `weights` path wins: a file, or a folder holding the hub's files. Otherwise the
# Hugging Face cache is asked (`try_to_load_from_cache`, no network). Nothing is downloaded here.

# %%
#| export
class WeightsNotFound(DataError):
    "A hub backbone whose weights are neither in the Hugging Face cache nor at the given path."


def hub_cache_dir(hub_cache=None) -> Path:
    "The Hugging Face hub cache consulted for weights (`HF_HUB_CACHE`, `HF_HOME`, or the default)."
    from huggingface_hub.constants import HF_HUB_CACHE
    return Path(hub_cache or HF_HUB_CACHE)


def _find(spec: BackboneSpec, folder: Path | None, name: str, hub_cache=None) -> Path | None:
    if folder is not None:
        return folder / name if (folder / name).is_file() else None
    from huggingface_hub import try_to_load_from_cache
    hit = try_to_load_from_cache(spec.hub_id, name, cache_dir=hub_cache_dir(hub_cache))
    return Path(hit) if isinstance(hit, str) else None


def resolve_weights(spec: BackboneSpec, weights=None, hub_cache=None) -> dict:
    "Local paths of a hub backbone's checkpoint (and config): {'weights': Path, 'config': Path | None}."
    folder = None
    if weights:
        p = Path(weights).expanduser()
        if p.is_file() and not spec.config_file: return {"weights": p, "config": None}
        if not p.exists(): raise WeightsNotFound(f"backbone {spec.name}: weights path {p} does not exist")
        folder = p if p.is_dir() else p.parent
        if p.is_file(): return {"weights": p, "config": _find(spec, folder, spec.config_file) if spec.config_file else None}
    ckpt = next((f for f in (_find(spec, folder, n, hub_cache) for n in spec.weight_files) if f), None)
    cfg = _find(spec, folder, spec.config_file, hub_cache) if spec.config_file else None
    if ckpt is None or (spec.config_file and cfg is None):
        files = ([spec.config_file] if spec.config_file else []) + [spec.weight_files[0]]
        where = f"in {folder}" if folder else f"in the Hugging Face cache ({hub_cache_dir(hub_cache)}) and no weights= path was given"
        raise WeightsNotFound(
            f"backbone {spec.name}: weights for {spec.hub_id} not found {where}; expected "
            f"{' + '.join(files)} (or {', '.join(spec.weight_files[1:])}); fetch them once with: "
            f"hf download {spec.hub_id} {' '.join(files)}")
    return {"weights": ckpt, "config": cfg}


# %% [markdown]
# ## Reading checkpoints safely
#
# `.safetensors` through safetensors; anything else through `torch.load(weights_only=True)`,
# which refuses arbitrary pickled objects. Either way a file that is empty, truncated, has a
# header that lies about its tensors, or holds something other than named tensors is a
# `CheckpointError` naming the file (03_safety). `check_weights` applies the same rules before a
# file is handed to timm (cheaply for safetensors: the header and its offsets), and a checkpoint
# whose tensors do not fit the named architecture is one line naming the file and the first
# mismatch, whichever library builds the model.

# %%
#| export
def load_state_dict(path) -> dict[str, torch.Tensor]:
    "A checkpoint's tensors, read without unpickling arbitrary objects."
    from derma_jepa.safety import CheckpointError, torch_load_tensors
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try: return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: damaged safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    sd = torch_load_tensors(path)            # weights_only=True; a refusal is one line naming the file
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict): sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a mapping of named tensors")
    return sd


def check_weights(path) -> None:
    "`load_state_dict`'s rules on a file about to be handed to a library; safetensors: the header only, offsets checked."
    from derma_jepa.safety import CheckpointError
    path = Path(path)
    if path.suffix != ".safetensors": load_state_dict(path); return
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f: keys = list(f.keys())
    except Exception as e:
        raise CheckpointError(f"{path}: damaged safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not keys: raise CheckpointError(f"{path}: a safetensors file with no tensors")


def tensor_digest(state: dict) -> str:
    "SHA-256 over every tensor's name, dtype, shape and bytes, in name order."
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# %% [markdown]
# ## The handcrafted baseline
#
# `color_texture` describes an image by HSV histograms (hue 16 bins, saturation and value 8
# each, over the central disc where the lesion usually is and over the whole image) and by
# rotation-invariant uniform LBP histograms of 8 neighbours at radius 1, on the grey image and on
# its half-size copy (a two-level pyramid: the second scale sees texture twice as coarse;
# `skimage.feature.local_binary_pattern`). It runs where the images are decoded (in the data loader's workers); its "forward" is the
# identity, so for this backbone the descriptor *is* the model and its cost is the run's cost.
# It works at 112 px: the image is centre-cropped and resized (bicubic) to 112 × 112, HSV and grey
# come from Pillow's own 8-bit conversions, and the histograms are integer bin counts. (Version 1
# worked at 224 px in float64 through skimage's colour conversions, with 16 neighbours at radius 2
# for the coarse scale: 19 ms per image against about 2 ms here, which made the descriptor, not the
# pipeline, most of a run's CPU time; issue 15.)

# %%
#| export
class ColorTexture(torch.nn.Module):
    "Handcrafted colour + texture descriptor: the transform computes the feature, forward passes it on."
    size = 112
    lbp = ((8, 1, 1), (8, 1, 2))          # (neighbours, radius, downscale of the grey image)
    hsv_bins = (16, 8, 8)
    version = "handcrafted-v2"

    def __init__(self):
        super().__init__()
        yy, xx = np.mgrid[:self.size, :self.size]
        self.centre = (np.hypot(yy - self.size / 2, xx - self.size / 2) < self.size * 0.3).ravel()

    def describe(self, img) -> np.ndarray:
        from PIL import ImageOps
        from skimage.feature import local_binary_pattern
        im = ImageOps.fit(img.convert("RGB"), (self.size, self.size), method=3)
        hsv = np.asarray(im.convert("HSV")).reshape(-1, 3).astype(np.int64)
        feats = []
        for px in (hsv[self.centre], hsv):
            for ch, bins in enumerate(self.hsv_bins):
                feats.append(np.bincount(px[:, ch] * bins >> 8, minlength=bins) / len(px))
        grey = im.convert("L")
        for p, r, k in self.lbp:
            codes = local_binary_pattern(np.asarray(grey.reduce(k) if k > 1 else grey), p, r, method="uniform")
            codes = codes.astype(np.int64).ravel()
            feats.append(np.bincount(codes, minlength=p + 2) / codes.size)
        return np.concatenate(feats).astype(np.float32)

    def transform(self, img): return torch.from_numpy(self.describe(img))
    def forward(self, x): return x
    @property
    def dim(self): return 2 * sum(self.hsv_bins) + sum(p + 2 for p, *_ in self.lbp)


# %% [markdown]
# Each block of the descriptor is a histogram that sums to 1; the same image gives the same
# vector; a grey copy (saturation 0, hue undefined) gives a different one.

# %%
from PIL import Image
_ct = ColorTexture()
_img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
_d = _ct.describe(_img)
test_eq(_d.shape, (_ct.dim,))
_blocks = np.split(_d, np.cumsum([*_ct.hsv_bins, *_ct.hsv_bins, *(p + 2 for p, *_ in _ct.lbp)])[:-1])
test_close([b.sum() for b in _blocks], [1.0] * len(_blocks), eps=1e-5)
test_eq(_d, _ct.describe(_img))
assert not np.allclose(_d, _ct.describe(_img.convert("L").convert("RGB")))


# %% [markdown]
# ## Building the models
#
# **timm** (DINOv2, random ViTs): `create_model(..., num_classes=0, img_size=224)`; the pooled
# output is the layer-normed CLS token (DINOv2's `pooler_output`). A checkpoint goes through
# timm's own pretrained loader (`pretrained_cfg_overlay=dict(file=...)`), which also resamples
# DINOv2's 518-px position embeddings to 224. Preprocessing: `resolve_data_config` at 224.
#
# **open_clip** (CLIP, DermLIP, BiomedCLIP): only the image tower is built (BiomedCLIP's text
# tower would need PubMedBERT from the hub), from the model config (`get_model_config`, or the
# hub's `open_clip_config.json`), and loaded with the checkpoint's `visual.*` tensors; its output
# is `encode_image` (projected, not normalised). Preprocessing: `open_clip.image_transform` with
# the model's preprocess config (OpenAI's for the `openai` tag).

# %%
#| export
def _check_coverage(model, path, arch: str) -> None:
    """timm drops the classifier of a checkpoint loaded with num_classes=0 and then loads *non-strictly*: a file that holds
    only some of the model's tensors leaves the rest at random init, silently. Every tensor must come from the file."""
    import sys
    from derma_jepa.safety import CheckpointError
    state = load_state_dict(path)
    filt = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)   # timm's own key mapping
    if filt is not None: state = filt(state, model)
    missing = [k for k in model.state_dict() if k not in state]
    if missing:
        raise CheckpointError(f"{path}: does not fit timm model {arch}: {len(missing)} of its {len(model.state_dict())} "
                              f"tensors are not in the file (first: {missing[0]})")


def _timm_model(spec: BackboneSpec, paths: dict | None):
    import timm
    kw = dict(num_classes=0, **({"img_size": spec.image_size} if spec.image_size else {}))   # 0: the model's own size
    if paths is None:
        torch.manual_seed(spec.random_seed or 0)
        model = timm.create_model(spec.arch, pretrained=False, **kw)
    else:
        model = timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(paths["weights"])), **kw)
        _check_coverage(model, paths["weights"], spec.arch)
    size = {"input_size": (3, spec.image_size, spec.image_size)} if spec.image_size else {}
    cfg = timm.data.resolve_data_config(size, model=model)
    return model, timm.data.create_transform(**cfg), {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _open_clip_model(spec: BackboneSpec, paths: dict):
    import open_clip
    from open_clip.model import _build_vision_tower
    if spec.config_file:
        hub = json.loads(Path(paths["config"]).read_text())
        model_cfg, pre = hub["model_cfg"], dict(hub.get("preprocess_cfg", {}))
    else:
        model_cfg = open_clip.get_model_config(spec.arch)
        pc = open_clip.get_pretrained_cfg(spec.arch, "openai")
        pre = {k: pc[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pc}
    quick_gelu = model_cfg.get("quick_gelu", False) or spec.quick_gelu
    visual = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=quick_gelu)
    state = {k[len("visual."):]: v for k, v in load_state_dict(paths["weights"]).items() if k.startswith("visual.")}
    if not state: raise DataError(f"{paths['weights']}: no 'visual.*' tensors: not an open_clip checkpoint")
    visual.load_state_dict(state, strict=True)
    size = model_cfg["vision_cfg"].get("image_size", spec.image_size)
    pre = {"image_size": size, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in pre.items() if k != "size"}}
    tf = open_clip.image_transform(size, is_train=False, mean=pre.get("mean"), std=pre.get("std"),
                                   resize_mode=pre.get("resize_mode"), interpolation=pre.get("interpolation"))
    return visual, tf, pre


def _library_family(build):
    def load(spec: BackboneSpec, weights, hub_cache):
        paths = resolve_weights(spec, weights, hub_cache) if spec.hub_id or weights else None
        if paths is None: model, tf, pre = build(spec, paths)
        else:
            from derma_jepa.safety import CheckpointError
            check_weights(paths["weights"])
            try: model, tf, pre = build(spec, paths)
            except (RuntimeError, KeyError, ValueError, AssertionError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise CheckpointError(f"{paths['weights']}: does not fit {spec.library} model {spec.arch} ({first})") from None
        if not spec.image_size: spec = dataclasses.replace(spec, image_size=int(pre["input_size"][-1]))
        return spec, model, tf, pre, paths
    return load


register_family("timm")(_library_family(_timm_model))
register_family("open_clip")(_library_family(_open_clip_model))


# %% [markdown]
# ## `get_backbone`
#
# The one entry point. `device="auto"` is CUDA when there is one; `dtype="auto"` is decided by
# the embedding engine (08_embed) from the hardware. The returned `Backbone` carries the model
# in eval mode with gradients off, its transform, its output width and its fingerprint.

# %%
#| export
@dataclass
class Backbone:
    name: str
    spec: BackboneSpec
    model: torch.nn.Module
    transform: Callable
    dim: int
    preprocess: dict
    weights: str
    weights_digest: str
    device: str = "cpu"
    fingerprint: str = field(init=False)

    def __post_init__(self):
        ident = {"name": self.name, "weights": self.weights_digest, "preprocess": self.preprocess}
        self.fingerprint = f"{self.name}-{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]}"


def resolve_device(device: str = "auto") -> str:
    if device == "auto": return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class FloorCenterCrop:
    "Centre crop with the top-left corner at ((W - size) // 2, (H - size) // 2), as HF's image processors place it."
    def __init__(self, size: int): self.size = size
    def __call__(self, img):
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))
    def __repr__(self): return f"FloorCenterCrop({self.size})"


def protocol_a_transform(p: dict):
    "PROTOCOL A's preprocessing: shorter side -> p['resize_shorter'] (bicubic), HF's centre crop, [0, 1], mean/std."
    from torchvision import transforms as T
    return T.Compose([T.Resize(p["resize_shorter"], interpolation=T.InterpolationMode.BICUBIC), FloorCenterCrop(p["crop"]),
                      T.ToTensor(), T.Normalize(p["mean"], p["std"])])


def get_backbone(name: str, weights=None, device: str = "auto", hub_cache=None, protocol: str = "symmetric") -> Backbone:
    """A frozen backbone by name (the registry above or a user prefix): weights from `weights` or the HF cache. Its
    preprocessing: under `reference` PROTOCOL A's where the release ran the model through HF's processor (DINOv2,
    CLIP), else the library's own (timm's data config, open_clip's eval transform from the model or hub config)."""
    spec = backbone_spec(name)
    device = resolve_device(device)
    if spec.library in ("timm", "open_clip") and not spec.hub_id and spec.random_seed is None and not weights:
        raise WeightsNotFound(f"backbone {name}: no hub repository to look in; give its checkpoint with weights=<path> "
                              f"(papermill: -p weights <path>)")
    if spec.library == "handcrafted":
        model = ColorTexture()
        return Backbone(spec.name, spec, model, model.transform, model.dim,
                        {"size": model.size, "lbp": [list(x) for x in model.lbp], "hsv_bins": list(model.hsv_bins)},
                        "none (handcrafted)", model.version, device)
    spec, model, tf, pre, paths = family(spec.library)(spec, weights, hub_cache)     # timm, open_clip, ssl (15_pretrain)
    if protocol == "reference" and spec.reference_preprocess:
        tf, pre = protocol_a_transform(spec.reference_preprocess), {**spec.reference_preprocess, "interpolation": "bicubic",
                                                                    "crop_corner": "floor ((W - crop) // 2), as HF"}
    model = model.eval().requires_grad_(False).to(device)
    digest = tensor_digest(model.state_dict())
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, spec.image_size, spec.image_size, device=device)).shape[-1])
    source = str(paths["weights"]) if paths else f"random init (torch seed {spec.random_seed})"
    return Backbone(spec.name, spec, model, tf, dim, pre, source, digest, device)


# %% [markdown]
# ## Tests
#
# Offline backbones load with no weights and are seeded (two loads, one fingerprint). A hub
# backbone with no weights stops with the error that says how to get them.

# %%
from PIL import Image
_img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
_ct = get_backbone("color_texture")
test_eq(_ct.transform(_img).shape, (_ct.dim,))
_rv = get_backbone("random_vits14")
test_eq((_rv.dim, _rv.preprocess["input_size"]), (384, [3, 224, 224]))
test_eq(_rv.fingerprint, get_backbone("random_vits14").fingerprint)
test_eq(tuple(_rv.transform(_img).shape), (3, 224, 224))

# %%
import tempfile
_empty_hub = tempfile.mkdtemp()
test_fail(lambda: get_backbone("dinov2_vitb14", hub_cache=_empty_hub),
          contains="weights for timm/vit_base_patch14_dinov2.lvd142m not found")
test_fail(lambda: get_backbone("dermlip", hub_cache=_empty_hub), contains="hf download redlessone/DermLIP_ViT-B-16 open_clip_config.json")


# %% [markdown]
# ### The real loading path, on checkpoints written here
#
# No hub weights can be fetched on this machine, so the loaders are exercised end to end on
# checkpoints this notebook writes itself: a randomly initialised model of the same architecture,
# saved in the hub's file format, in a Hugging Face cache laid out as `hf download` lays it out
# (`models--<org>--<name>/snapshots/<rev>/<file>`, `refs/main`), and as an explicit `weights` path.
# What a loaded backbone computes must equal what the saved model computes. Where the layout does
# not fix the size (a hub `open_clip_config.json` names its own architecture), the checkpoint is
# the smallest model with that layout (a 2-layer, 64-wide image tower; a ViT-Ti trunk for
# BiomedCLIP's timm layout): the test is of the files, key names and loading path, which a
# ViT-B/16 exercises no better, at a tenth of the bytes. OpenAI CLIP's row fixes its architecture
# (ViT-B/16), so its checkpoint is full size.

# %%
#| export
def write_hub_checkpoint(spec: BackboneSpec, state: dict, cache_root, config: dict | None = None,
                         revision: str = "0" * 40) -> Path:
    "Lay out `state` (and an open_clip config) in a Hugging Face cache as `hf download` would; return the snapshot."
    from safetensors.torch import save_file
    repo = Path(cache_root) / f"models--{spec.hub_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / spec.weight_files[0]))
    if spec.config_file: (snap / spec.config_file).write_text(json.dumps(config))
    return snap


# %%
import timm, open_clip
from open_clip.model import _build_vision_tower
_hub = tempfile.mkdtemp()
_x = _rv.transform(_img)[None]

# timm: a random ViT-S/14 with DINOv2's 518-px position embeddings, as the hub stores it
torch.manual_seed(1)
_src = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0).eval()
_spec = REGISTRY["dinov2_vits14"]
_snap = write_hub_checkpoint(_spec, _src.state_dict(), _hub)
_bb = get_backbone("dinov2_vits14", hub_cache=_hub)
test_eq(_bb.weights, str(_snap / "model.safetensors"))
_bb2 = get_backbone("dinov2_vits14", weights=_snap / "model.safetensors")
test_eq(_bb.fingerprint, _bb2.fingerprint)
test_ne(_bb.fingerprint, _rv.fingerprint)
_ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224).eval()
_ref.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(_src.state_dict(), _ref))
with torch.inference_mode(): torch.testing.assert_close(_bb.model(_x), _ref(_x))


# %%
# open_clip: a random CLIP image tower in a full-model checkpoint with the real files' key names and shapes (the
# image tower's `visual.*`; a few of the text tower's small tensors, included and ignored)
def _oc_state(model_cfg, quick_gelu, seed, text=None):
    torch.manual_seed(seed)
    v = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=quick_gelu).eval()
    text = text or {"text_projection": (512, 512), "positional_embedding": (77, 512), "ln_final.weight": (512,),
                    "ln_final.bias": (512,), "logit_scale": ()}
    return v, {**{f"visual.{k}": t for k, t in v.state_dict().items()}, **{k: torch.randn(s) for k, s in text.items()}}

_cfg = open_clip.get_model_config("ViT-B-16")
_v, _state = _oc_state(_cfg, True, 2)
_snap = write_hub_checkpoint(REGISTRY["clip_vitb16"], _state, _hub)
_clip = get_backbone("clip", weights=_snap)
test_eq((_clip.dim, _clip.preprocess["mean"][0]), (512, 0.48145466))
_xc = _clip.transform(_img)[None]
with torch.inference_mode(): torch.testing.assert_close(_clip.model(_xc), _v(_xc))

# DermLIP's layout: OpenAI's ViT-B/16 CLIP architecture, its config and OpenAI's mean/std (as its model card
# describes them; the file's exact text could not be fetched here), checkpoint open_clip_model.safetensors
_TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}
_derm_json = {"model_cfg": {"embed_dim": 512, "vision_cfg": _TINY_VISION,
                            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
              "preprocess_cfg": OPENAI_CLIP}
_v2, _state2 = _oc_state(_derm_json["model_cfg"], False, 3)
_snap2 = write_hub_checkpoint(REGISTRY["dermlip_vitb16"], _state2, _hub, _derm_json)
_derm = get_backbone("dermlip", hub_cache=_hub)
test_eq(_derm.preprocess["mean"], OPENAI_CLIP["mean"])
_xd = _derm.transform(_img)[None]
with torch.inference_mode(): torch.testing.assert_close(_derm.model(_xd), _v2(_xd))

# BiomedCLIP's layout: the hub's open_clip_config.json as published (a timm ViT-B/16 trunk with a linear
# projection; a PubMedBERT text tower with an MLP projection), text tensors under `text.*`
_bm_json = {"model_cfg": {"embed_dim": 512,
                          "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                         "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                          "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                       "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                       "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                       "context_length": 256}},
            "preprocess_cfg": OPENAI_CLIP}
_v3, _state3 = _oc_state(_bm_json["model_cfg"], False, 4, text={"text.proj.0.weight": (640, 768), "text.proj.2.weight": (512, 640),
                                                                   "logit_scale": ()})
test_eq(sorted(k for k in _state3 if k.startswith("visual.head"))[:1], ["visual.head.proj.weight"])
_snap3 = write_hub_checkpoint(REGISTRY["biomedclip_vitb16"], _state3, _hub, _bm_json)
_bio = get_backbone("biomedclip", hub_cache=_hub)
test_eq(_bio.dim, 512)
_xb = _bio.transform(_img)[None]
with torch.inference_mode(): torch.testing.assert_close(_bio.model(_xb), _v3(_xb))

# a pickle that is not just tensors is refused
class _Evil:
    def __reduce__(self): return (print, ("unpickled!",))
_bad = Path(_hub) / "evil.bin"
torch.save({"visual.x": _Evil()}, _bad)
test_fail(lambda: load_state_dict(_bad), contains="evil.bin: refused: not a safetensors file nor a tensors-only torch checkpoint")

# %% [markdown]
# ### Under `reference`, the release's preprocessing
#
# The release ran DINOv2 and OpenAI CLIP through Hugging Face's image processors (PROTOCOL A1), so
# under `reference` those two take that preprocessing: the shorter side to 256 (DINOv2) or 224
# (CLIP), bicubic, a centre crop whose corner is *floored* ((W − 224) // 2, where torchvision
# rounds half to even and lands one pixel over whenever the margin is odd), [0, 1], then the
# model's mean and std. The feature is the same either way (DINOv2's normed CLS, CLIP's projected
# `encode_image`). Under `symmetric` each keeps its library's own (timm's data config at 224,
# open_clip's eval transform); both are recorded in `preprocess`, so the fingerprints, and the
# caches, differ. DermLIP and BiomedCLIP ran through open_clip's eval transform from their hub
# config under both protocols. Checked below against an independent implementation of the
# recipe (PIL resize, crop, normalise in numpy), on images whose margins are odd and even, and on
# real images when `HAM10000_DIR` is set.

# %%
import os
def _recipe_a(img, short, crop, mean, std):
    w, h = img.size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    r = img.convert("RGB").resize((nw, nh), Image.BICUBIC)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    a = np.asarray(r.crop((left, top, left + crop, top + crop)), np.float32) / np.float32(255)
    return torch.from_numpy(((a - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1).copy())

_imgs = [Image.fromarray(np.random.default_rng(k).integers(0, 255, (h, w, 3), dtype=np.uint8))
         for k, (w, h) in enumerate([(200, 150), (600, 450), (203, 151), (150, 233)])]
if os.environ.get("HAM10000_DIR"):
    from derma_jepa.data import load_records
    _imgs += [Image.open(p).convert("RGB") for p in load_records(os.environ["HAM10000_DIR"]).path.head(8)]
_dref, _cref = (get_backbone(n, hub_cache=_hub, protocol="reference") for n in ("dinov2_vits14", "clip"))
for _b, _short, _norm in [(_dref, 256, IMAGENET), (_cref, 224, OPENAI_CLIP)]:
    for _im in _imgs:
        _d = (_b.transform(_im) - _recipe_a(_im, _short, 224, _norm["mean"], _norm["std"])).abs().max()
        assert _d <= 1e-6, (_b.name, _im.size, float(_d))
test_eq((_dref.preprocess["resize_shorter"], _cref.preprocess["resize_shorter"]), (256, 224))
test_ne(_dref.fingerprint, _bb.fingerprint)                          # the symmetric DINOv2 of the cell above
test_eq(_bb.preprocess["crop_pct"], 1.0)                               # timm's own: shorter side 224, no 256 step
test_eq(get_backbone("dermlip", hub_cache=_hub, protocol="reference").fingerprint, _derm.fingerprint)

# %% [markdown]
# ### Any backbone a user names
#
# Beyond the registry: `timm:<model name>` (weights from `weights=` or the cache's `timm/<name>`
# repository; timm's own data config at the model's size), `open_clip:<architecture>` with
# `weights=` (a checkpoint with `visual.*` tensors; open_clip's eval transform), and
# `hf-hub:<org>/<name>` for any open_clip model in the Hugging Face cache (its
# `open_clip_config.json` and checkpoint). Each is fingerprinted by its tensors and preprocessing
# like a registry backbone, so its embeddings are cached and recorded the same way. Below, on
# checkpoints written here: a timm ResNet (not a ViT), an open_clip ViT-S/32 and a user's hf-hub
# repository whose config asks for its own mean and std.

# %%
torch.manual_seed(5)
_rn = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
_rn_dir = Path(tempfile.mkdtemp())
from safetensors.torch import save_file
save_file(_rn.state_dict(), str(_rn_dir / "model.safetensors"))
_u1 = get_backbone("timm:resnet18", weights=_rn_dir / "model.safetensors")
test_eq((_u1.dim, _u1.spec.image_size, _u1.preprocess["input_size"]), (512, 224, [3, 224, 224]))
_xr = _u1.transform(_img)[None]
with torch.inference_mode(): torch.testing.assert_close(_u1.model(_xr), _rn(_xr))
test_fail(lambda: get_backbone("timm:resnet18", hub_cache=_hub), contains="timm/resnet18 not found")
# weights that are empty, lie in their header, or hold other tensors: one line naming the file
_bad = _rn_dir / "bad"; _bad.mkdir()
(_bad / "empty.safetensors").write_bytes(b"")
_good = (_rn_dir / "model.safetensors").read_bytes()
(_bad / "liar.safetensors").write_bytes(_good[:len(_good) // 2])                  # the header promises more bytes
save_file({"fc.weight": torch.zeros(3, 3)}, str(_bad / "other.safetensors"))
torch.save({"conv1.weight": torch.zeros(1)}, _bad / "small.pth")
for _f, _msg in [("empty.safetensors", "damaged safetensors file"), ("liar.safetensors", "damaged safetensors file"),
                 ("other.safetensors", "does not fit timm model resnet18"), ("small.pth", "does not fit timm model resnet18")]:
    test_fail(lambda: get_backbone("timm:resnet18", weights=_bad / _f), contains=f"{_bad / _f}: {_msg}")
test_fail(lambda: load_state_dict(_bad / "liar.safetensors"), contains="liar.safetensors: damaged safetensors file")

_b32 = open_clip.get_model_config("ViT-S-32")
_v4, _state4 = _oc_state(_b32, False, 6)
_oc_dir = Path(tempfile.mkdtemp())
save_file(_state4, str(_oc_dir / "open_clip_model.safetensors"))
_u2 = get_backbone("open_clip:ViT-S-32", weights=_oc_dir / "open_clip_model.safetensors")
_x2 = _u2.transform(_img)[None]
with torch.inference_mode(): torch.testing.assert_close(_u2.model(_x2), _v4(_x2))
test_fail(lambda: get_backbone("open_clip:ViT-S-32"), contains="give its checkpoint with weights=<path>")

_mine = backbone_spec("hf-hub:someone/skin-clip")
_tiny_cfg = {"embed_dim": 64, "vision_cfg": _TINY_VISION}
_v5, _state5 = _oc_state(_tiny_cfg, False, 7)
write_hub_checkpoint(_mine, _state5, _hub, {"model_cfg": _tiny_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
_u3 = get_backbone("hf-hub:someone/skin-clip", hub_cache=_hub)
test_eq(_u3.preprocess["mean"], [0.5, 0.5, 0.5])
_x3 = _u3.transform(_img)[None]
with torch.inference_mode(): torch.testing.assert_close(_u3.model(_x3), _v5(_x3))
test_eq(len({_u1.fingerprint, _u2.fingerprint, _u3.fingerprint, _derm.fingerprint}), 4)
for _bad_name in ("timm:", "open_clip:", "hf-hub:"): test_fail(lambda: backbone_spec(_bad_name), contains="needs")

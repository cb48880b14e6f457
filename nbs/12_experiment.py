# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp experiment

# %% [markdown]
# # Experiment: `Config`, `run(config)` and the run directory
#
# > One configuration object whose fields are exactly the papermill parameters of `run.ipynb`,
# > validated before any work, and one function that runs it into a run directory.
#
# A run is written into a temporary folder beside its destination and renamed into place only
# when it is complete, so a failed or interrupted run leaves no half-written run directory. Bad
# configuration stops before any work with one line naming the parameter, and so does a
# destination the project may not write (03_safety): a run only ever replaces a run directory
# that this project wrote.
#
# Stages: `manifest` (audit, split, pair manifest), `embed` (every side of the manifest through
# the backbone, via the shared embedding cache) and `all` (fit, score, baselines, metrics,
# figures). Asking for a stage that does not exist is an error, not a silent no-op. A run that
# needs a backbone loads it *first*, so missing weights stop it before any work.

# %%
#| export
from __future__ import annotations

import dataclasses
import difflib
import io
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from derma_jepa.backbones import ALIASES, backbone_spec, get_backbone
from derma_jepa.data import DX_CONFLICT, ConfigError, DataError, cache_dir, load_records, require_readable, summarise_audit
from derma_jepa.nuisance import HELD_OUT_FAMILIES
from derma_jepa.pairs import (ENDPOINT_KINDS, POLICIES, build_manifest, default_preset, distinct_sides, dx_mix, endpoint_mix,
                              lofo_folds, parse_ablate, parse_families)
from derma_jepa.safety import check_destination, check_free_space, coerce, coerce_fields, load_yaml, write_marked_dir
from derma_jepa.split import check_fractions, check_protocol, shared_split, split_counts, split_records

# %%
import tempfile
from fastcore.test import test_close, test_eq, test_fail
from sklearn.metrics import roc_auc_score
from derma_jepa.baselines import BASELINE_SPLITS, PIXEL_SCORERS, pixel_scores, with_paths
from derma_jepa.predictors import Predictor, control_scores

# %% [markdown]
# ## The configuration
#
# Defaults are the *embedded default*: generated fixture data, the symmetric protocol, the
# EXP-004 family rotation and the offline `color_texture` backbone, small enough to run in a
# couple of minutes on a laptop. (The random-init ViTs are offline too, but slow on a CPU, and
# `random_vits14` is nearly constant: see 07_backbones.) The experiment
# YAMLs in `nbs/experiments/` override what each experiment of the arc changes. `data` is
# `"fixture"` or a path; `$VARS` in it are expanded, so a YAML can say `data: $HAM10000_DIR`.
# `experiment` is a label (`EXP-004`) that names the run and its rows in the paper's tables.
# `preset: auto` means the protocol's own preset (`reference` → reference, `symmetric` → paper).
# `lofo_fold` = 0, 1 or 2 runs one fold of the leave-one-family-out rotation (PROTOCOL B2.9): the
# fold's family is held out for val/test and the other two rotate in train, whatever
# `train_families` and `eval_family` say. `missing_lesion` says what a blank lesion id in the
# metadata does (00_data): `auto` is the protocol's rule (`reference`: the release's
# one-image-lesion fallback, counted in audit.json; `symmetric`: an error naming the rows);
# `fallback` is the explicit opt-in under `symmetric`. `dx_conflict` says what a lesion whose
# images disagree on the diagnosis does (00_data): `error` (the default, under both protocols),
# or `majority`, each such lesion's majority diagnosis, listed in audit.json. `rephoto` adds the real re-photograph
# endpoint (05_pairs): two different photographs of one lesion against a matched changing pair,
# on val and test, the same pairs under both protocols, beside the protocol's own pairs (`auto`
# and `on`: added; `off`, or a boolean false: left out). `ablate` (under `protocol: reference`
# only) names release differences to close, taken from `symmetric`: the four pairing switches of
# 05_pairs (`processing`, `streams`, `selection`, `partner`) and `split`, 02_split's checksum
# rule. `ablate` and `dx_conflict` (`LATE_FIELDS`) are written to config.yaml only when set
# otherwise than their default, so the runs made before they existed keep their identity.
#
# Values are converted only when nothing is lost (03_safety's `coerce`): `seed=1.5`, a negative
# seed, `rephoto="maybe"` are refused with the parameter's name. Every integer has a range
# (`BOUNDS`): a seed at or above 2^32 (numpy and scikit-learn refuse it, but only after the
# whole computation), `n_boot 1e9` (which would run for days, printing nothing) and the like are
# refused at once, with the bound and why it is there. Path parameters may not hold control
# characters (a run_dir ending in a newline would make a folder whose name ends in one) or a
# name longer than the filesystem allows; `weights` given to a backbone that takes none is an
# error, not a setting config.yaml records and the run ignores.

# %%
#| export
STAGES = ("manifest", "embed", "all")
# Every integer parameter's range: the low bound is what the method needs, the high one what this code can hold, with why.
BOUNDS = {"pairs_per_split": (1, 100_000, "HAM10000 has 10,015 images; a manifest row per pair and label"),
          "fixture_lesions": (20, 100_000, "the fixture's images are generated into the cache"),
          "image_size": (32, 1024, "one 1024-px float32 batch of 32 is 400 MB before the model"),
          "epochs": (1, 100_000, "each epoch is a pass over every train stable pair"),
          "batch_size": (1, 4096, "a batch is held in memory with its activations"),
          "seed": (0, 2**32 - 1, "numpy and scikit-learn take 32-bit seeds (random_state < 2**32)"),
          "n_boot": (1, 20_000, "the resample matrix is n_boot x pairs int32 (20,000 x 2,000 pairs = 160 MB), "
                                "and each resample scores every scorer")}
NAME_MAX = 255      # bytes in one path component on the usual filesystems (ext4, xfs, apfs)


def check_path_text(name: str, value: str) -> str:
    "A path parameter without control characters (a newline, a tab, NUL) and without a component longer than NAME_MAX."
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None: raise ConfigError(f"parameter {name}={value!r} contains the control character {bad!r}")
    long = next((p for p in Path(value).parts if len(p.encode()) > NAME_MAX), None)
    if long: raise ConfigError(f"parameter {name}: the name {long[:30]!r}... is {len(long.encode())} bytes, "
                               f"longer than a file name may be ({NAME_MAX})")
    return value


# Fields added after runs were made, with their defaults: config.yaml records them only when set otherwise.
LATE_FIELDS = {"ablate": "", "dx_conflict": "error"}


@dataclass(frozen=True)
class Config:
    experiment: str = ""
    data: str = "fixture"
    fixture_lesions: int = 600
    protocol: str = "symmetric"
    ablate: str = ""
    train_families: str = "strong,strong_held_out"
    eval_family: str = "strong_held_out_2"
    changing_policy: str = "strict"
    preset: str = "auto"
    pairs_per_split: int = 100
    split_fractions: tuple = (0.70, 0.15, 0.15)
    image_size: int = 224
    rephoto: str = "auto"
    lofo_fold: int = -1
    seed: int = 20260422
    backbone: str = "color_texture"
    weights: str = ""
    dtype: str = "auto"
    batch_size: int = 32
    predictor: str = "linear"
    optimizer: str = "sgd"
    trainer: str = "auto"
    epochs: int = 200
    stop_after: str = "all"
    n_boot: int = 1000
    missing_lesion: str = "auto"
    dx_conflict: str = "error"
    run_dir: str = ""

    def __post_init__(self):
        if not (isinstance(self.rephoto, str) and self.rephoto in ("auto", "on", "off")):   # a boolean says on / off
            try: object.__setattr__(self, "rephoto", "on" if coerce("rephoto", self.rephoto, "bool") else "off")
            except ConfigError: raise ConfigError(f"parameter rephoto={self.rephoto!r}: choose auto, on or off") from None
        coerce_fields(self)         # what YAML and papermill hand over, converted only when nothing is lost
        if self.lofo_fold < -1: raise ConfigError(f"parameter lofo_fold={self.lofo_fold}: -1 (off) or a fold 0-2")
        if self.lofo_fold >= 0:     # leave-one-family-out: the fold decides the families
            if self.lofo_fold >= len(HELD_OUT_FAMILIES):
                raise ConfigError(f"lofo_fold={self.lofo_fold}: there are {len(HELD_OUT_FAMILIES)} folds (0-{len(HELD_OUT_FAMILIES) - 1})")
            train, held = lofo_folds()[self.lofo_fold]
            object.__setattr__(self, "train_families", ",".join(train)); object.__setattr__(self, "eval_family", held)
        self.validate()

    def validate(self):
        "Check every field; raise `ConfigError` naming the first bad one."
        try:
            check_protocol(self.protocol)
            preset = default_preset(self.protocol, None if self.preset == "auto" else self.preset)
            parse_families(self.train_families, preset)
            if self.eval_family: parse_families(self.eval_family, preset)
            check_fractions(self.split_fractions)
            backbone_spec(self.backbone)
            parse_ablate(self.ablate)
        except DataError as e: raise ConfigError(str(e)) from None
        if self.ablate and self.protocol != "reference":
            raise ConfigError(f"ablate={self.ablate!r}: the ablation closes the release's differences one at a time, from "
                              "protocol: reference")
        for name, allowed in [("predictor", ("linear", "mlp")), ("optimizer", ("sgd", "adam")),
                              ("trainer", ("auto", "reference", "autograd"))]:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.resolved_trainer == "reference" and self.predictor == "linear" and self.optimizer != "sgd":
            raise ConfigError("the reference linear trainer is the release's SGD: optimizer must be sgd (or trainer autograd)")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"unknown dtype {self.dtype!r}: choose auto, bf16, fp16 or fp32")
        if self.changing_policy not in POLICIES:
            raise ConfigError(f"unknown changing_policy {self.changing_policy!r}: choose one of {', '.join(POLICIES)}")
        if self.stop_after not in STAGES:
            raise ConfigError(f"stop_after={self.stop_after!r}: the stages built so far are {', '.join(STAGES)}")
        for name, allowed in (("missing_lesion", ("auto", "error", "fallback")), ("dx_conflict", DX_CONFLICT)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}: choose {', '.join(allowed)}")
        for name, (lo, hi, why) in BOUNDS.items():
            v = getattr(self, name)
            if v < lo: raise ConfigError(f"parameter {name}={v} must be at least {lo}")
            if v > hi: raise ConfigError(f"parameter {name}={v} must be at most {hi}: {why}")
        spec = backbone_spec(self.backbone)
        if self.weights and (spec.library in ("handcrafted", "ssl")):
            raise ConfigError(f"parameter weights={self.weights!r}: backbone {self.backbone!r} takes no weights "
                              + ("(it is computed, not learned)" if spec.library == "handcrafted" else "(its name is its checkpoint)"))
        for name in ("data", "weights", "run_dir"):
            check_path_text(name, getattr(self, name))

    @property
    def resolved_trainer(self) -> str:
        "`auto`: the release's trainer under the reference protocol, autograd on the paper's loss otherwise."
        return self.trainer if self.trainer != "auto" else ("reference" if self.protocol == "reference" else "autograd")

    @property
    def resolved_preset(self) -> str: return default_preset(self.protocol, None if self.preset == "auto" else self.preset)

    @property
    def resolved_rephoto(self) -> bool:
        "`auto`: the real re-photograph endpoint in every run, under both protocols."
        return self.rephoto != "off"

    @property
    def resolved_missing_lesion(self) -> str:
        "`auto`: the release's fallback under `reference`, an error under `symmetric`."
        if self.missing_lesion != "auto": return self.missing_lesion
        return "fallback" if self.protocol == "reference" else "error"

    @classmethod
    def from_params(cls, params: dict, source: str = "parameters") -> "Config":
        "Build a config from a mapping, refusing any key that is not a field."
        names = [f.name for f in fields(cls)]
        for k in (k for k in params if k not in names):
            near = difflib.get_close_matches(k, names, n=1)
            raise ConfigError(f"{source}: {k!r} is not a configuration field"
                              + (f" (did you mean {near[0]!r}?)" if near else f"; fields: {', '.join(names)}"))
        return cls(**params)

    @classmethod
    def from_yaml(cls, path, **overrides) -> "Config":
        "Read an experiment YAML (plain values only: 03_safety's `load_yaml`), then apply overrides."
        params = load_yaml(path)
        cls.from_params(params, str(path))            # unknown keys in the file are named with the file
        return cls.from_params({**params, **overrides})

    def to_dict(self) -> dict:
        "The fields as config.yaml records them; a LATE_FIELDS one only when set, so earlier runs keep their identity."
        d = dataclasses.asdict(self); d["split_fractions"] = list(self.split_fractions)
        return {k: v for k, v in d.items() if not (k in LATE_FIELDS and v == LATE_FIELDS[k])}


# %%
test_eq(Config().resolved_preset, "paper")
test_eq(Config(protocol="reference").resolved_preset, "reference")
test_eq(Config.from_params({"seed": "3", "split_fractions": [0.8, 0.1, 0.1]}).split_fractions, (0.8, 0.1, 0.1))
test_fail(lambda: Config.from_params({"seeed": 1}), contains="'seeed' is not a configuration field (did you mean 'seed'?)")
test_fail(lambda: Config(protocol="leaky"), contains="unknown protocol 'leaky'")
test_fail(lambda: Config(train_families="strong,fog"), contains="unknown nuisance family 'fog'")
test_fail(lambda: Config(preset="appendix"), contains="unknown nuisance preset 'appendix'")
test_fail(lambda: Config(split_fractions=(0.7, 0.2, 0.2)), contains="summing to 1")
test_fail(lambda: Config(pairs_per_split="many"), contains="pairs_per_split='many'")
test_fail(lambda: Config(backbone="resnet50"), contains="unknown backbone 'resnet50'")
test_fail(lambda: Config(stop_after="train"), contains="the stages built so far are manifest, embed, all")
test_fail(lambda: Config(predictor="transformer"), contains="unknown predictor 'transformer'")
test_eq((Config(protocol="reference").resolved_trainer, Config().resolved_trainer), ("reference", "autograd"))
test_eq([(c.train_families, c.eval_family) for c in (Config(lofo_fold=k) for k in range(3))],
        [("strong_held_out,strong_held_out_2", "strong"), ("strong,strong_held_out_2", "strong_held_out"),
         ("strong,strong_held_out", "strong_held_out_2")])
test_fail(lambda: Config(lofo_fold=3), contains="there are 3 folds")
# the ablation: reference with release differences closed; written (and named) only when set
_ab = Config(protocol="reference", ablate="split, processing")
test_eq(("ablate" in Config().to_dict(), _ab.to_dict()["ablate"]), (False, "split, processing"))
test_eq(("dx_conflict" in Config().to_dict(), Config(dx_conflict="majority").to_dict()["dx_conflict"]), (False, "majority"))
test_fail(lambda: Config(dx_conflict="vote"), contains="unknown dx_conflict 'vote': choose error, majority")
test_fail(lambda: Config(ablate="processing"), contains="from protocol: reference")
test_fail(lambda: Config(protocol="reference", ablate="colour"), contains="unknown difference 'colour'")
for _bad, _msg in [(dict(seed=1.5), "seed=1.5 is not a valid int"), (dict(seed=-1), "seed=-1 must be at least 0"),
                   (dict(rephoto="maybe"), "rephoto='maybe'"), (dict(epochs=True), "epochs=True"),
                   (dict(n_boot=0), "n_boot=0 must be at least 1"), (dict(missing_lesion="guess"), "unknown missing_lesion")]:
    test_fail(lambda: Config(**_bad), contains=_msg)
# ranges with the bound and its reason; paths without control characters or over-long names; weights only where used
for _bad, _msg in [(dict(seed=2**32), "seed=4294967296 must be at most 4294967295: numpy and scikit-learn take 32-bit"),
                   (dict(n_boot=10**9), "n_boot=1000000000 must be at most 20000: the resample matrix"),
                   (dict(image_size=4096), "image_size=4096 must be at most 1024"),
                   (dict(run_dir="runs/x\n"), "run_dir='runs/x\\n' contains the control character '\\n'"),
                   (dict(run_dir="runs/" + "x" * 300), "is 300 bytes, longer than a file name may be (255)"),
                   (dict(weights="w.safetensors"), "backbone 'color_texture' takes no weights (it is computed, not learned)")]:
    test_fail(lambda: Config(**_bad), contains=_msg)
test_eq(Config(seed=2**32 - 1).seed, 4294967295)
test_eq([Config(rephoto=v).rephoto for v in (True, "no", "auto", "on")], ["on", "off", "auto", "on"])
test_eq((Config().resolved_rephoto, Config(protocol="reference").resolved_rephoto, Config(rephoto=False).resolved_rephoto),
        (True, True, False))
test_eq((Config().resolved_missing_lesion, Config(protocol="reference").resolved_missing_lesion,
         Config(missing_lesion="fallback").resolved_missing_lesion), ("error", "fallback", "fallback"))


# %% [markdown]
# ## Where the data comes from
#
# `"fixture"` generates (once, cached) the synthetic dataset of `fixture_lesions` lesions; anything
# else is a HAM10000-style folder.

# %%
#| export
def resolve_data(config: Config) -> Path:
    "The dataset folder a config names, generating the fixture if needed."
    if config.data == "fixture":
        from derma_jepa.fixture import fixture_dir
        return fixture_dir(n_lesions=config.fixture_lesions, seed=0)
    path = Path(os.path.expandvars(os.path.expanduser(config.data)))
    if not path.is_dir():
        hint = " (is the environment variable set?)" if "$" in str(path) else ""
        raise DataError(f"data folder {path} not found{hint}")
    return path


# %% [markdown]
# ## The run directory
#
# `runs/<run_id>/` by default, where the run id is readable and unique to the configuration:
# the experiment label (or the families), protocol, backbone, seed and a short hash of the whole
# config. `write_run_dir` writes the files through 03_safety's `write_marked_dir`: a marked
# temporary sibling that replaces the destination in one rename, under a lock, and only if the
# destination is absent, empty or a run directory this project wrote. `destination` is the same
# check alone, made before any work: the data folder and the cache are protected. `check_space`
# compares the free space at the run directory and the cache with an estimate of what the run
# writes (32 MiB each, plus its fp32 embeddings in the cache), also before any work.

# %%
#| export
def run_id(config: Config) -> str:
    import hashlib
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    what = (re.sub(r"[^a-z0-9]+", "", config.experiment.lower()) if config.experiment else
            f"{config.train_families.replace(',', '+')}-to-{config.eval_family or 'same'}")
    bb = re.sub(r"[^A-Za-z0-9_.-]+", "_", ALIASES.get(config.backbone, config.backbone))
    prot = config.protocol + "".join(f"+{a}" for a in parse_ablate(config.ablate))
    return f"{what}-{prot}-{bb}-seed{config.seed}-{h}"


def run_path(config: Config) -> Path:
    return Path(config.run_dir) if config.run_dir else Path("runs") / run_id(config)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO(); df.to_parquet(buf, index=False); return buf.getvalue()


def protected_paths(config: Config) -> list[Path]:
    "Folders a run directory may not be, be inside of, or contain: the data folder (the cache always is)."
    if config.data == "fixture": return []        # the fixture lives in the cache
    return [Path(os.path.expandvars(os.path.expanduser(config.data)))]


def destination(config: Config) -> Path:
    "The run directory this config writes, checked before any work (03_safety)."
    return check_destination(run_path(config), "run", protected_paths(config))


def check_space(config: Config, dest: Path, dim: int = 1024) -> None:
    "Free space at run_dir and the cache against an estimate: 32 MiB each, plus the run's embeddings (fp32) in the cache."
    sides = 6 * config.pairs_per_split + 4000                    # both sides of every pair, the re-photo endpoint's
    check_free_space(dest, 32 << 20, "run_dir")
    check_free_space(cache_dir(), (32 << 20) + sides * (4 * dim + 512), "cache")


def write_run_dir(dest: Path, files: dict[str, bytes], protected=()) -> Path:
    "Write `files` (name -> bytes) as the run directory `dest`, replacing only a run directory of this project's."
    return write_marked_dir(dest, files, "run", protected)


# %%
assert "-reference+processing+split-" in run_id(_ab), run_id(_ab)        # an ablation run names what it closed
test_eq(run_id(Config()).split("-")[:2], ["strong+strong_held_out", "to"])
# free space is checked before any work: an estimate no disk holds is refused, naming the place
check_space(Config(), Path(tempfile.mkdtemp()) / "run", dim=8)
test_fail(lambda: check_space(Config(pairs_per_split=100_000), Path(tempfile.mkdtemp()) / "run", dim=10**9),
          contains=f"cache {cache_dir()}: ")


# %% [markdown]
# ## `run(config)`
#
# The data side: audit every image (stopping on the first missing or unreadable one), split,
# build and validate the manifest; `config.yaml`, `audit.json` and `manifest.parquet` record it.
# The audit carries what PROTOCOL A1 and B2 ask to be reported: image and lesion counts, failures,
# duplicate checksums, split sizes, and the dx mix of each label per split.
#
# The embedding stage: every distinct side through the backbone (cached, resumable), at the
# precision 08_embed's measurement chose for this backbone on this machine. The pixel baselines
# run first, on the splits the protocol reads them on (11_baselines) and on the re-photo endpoint's
# pairs, and embed the sides they
# render on the way, so each side is decoded and rendered once; the embedding stage then renders
# only the rest. `timings.json` records wall **and CPU** seconds per stage (CPU includes the data
# loader's workers), sides/s, cache hits and how the precision was chosen; `environment.json`
# the versions, the device and its model, the precision decision with its measured rates, the
# backbone fingerprint, its preprocessing and the weights it came from.

# %%
#| export
@dataclass
class RunResult:
    config: Config
    run_dir: Path
    records: pd.DataFrame
    split: pd.DataFrame
    manifest: pd.DataFrame
    audit: dict
    timings: dict
    embeddings: dict | None = None     # the embedded sides and their matrix
    scores: pd.DataFrame | None = None
    evaluation: dict | None = None
    figures: dict | None = None
    predictor: object = None


def manifest_for(config: Config, records: pd.DataFrame):
    "Split and manifest of audited `records` under `config`: (split records, manifest, construction log)."
    rule = "symmetric" if "split" in parse_ablate(config.ablate) else config.protocol       # 02_split's rule
    split = split_records(records, config.seed, config.split_fractions, rule)
    shared = shared_split(records, config.seed, config.split_fractions) if config.resolved_rephoto else None
    manifest, log = build_manifest(split, config.protocol, config.train_families, config.eval_family or None,
                                   config.changing_policy, None if config.preset == "auto" else config.preset,
                                   config.pairs_per_split, config.seed, config.image_size, shared, config.ablate)
    return split, manifest, log


def data_stage(config: Config):
    "Audit, split and manifest for a config: (records, split records, manifest, audit dict)."
    records = load_records(resolve_data(config), missing_lesion=config.resolved_missing_lesion, dx_conflict=config.dx_conflict)
    audit = summarise_audit(records)
    require_readable(records)
    split, manifest, log = manifest_for(config, records)
    audit.update(split_counts(split))
    audit.update(n_pairs=int(len(manifest)), pairs_by_split_and_kind=
                 {s: {k: int(n) for k, n in g.kind.value_counts().sort_index().items()} for s, g in manifest.groupby("split")},
                 distinct_sides=distinct_sides(manifest), dx_mix=dx_mix(manifest), rephoto_mix=endpoint_mix(manifest),
                 construction=log)
    return records, split, manifest, audit


def environment(backbone=None, dtype: str | None = None, precision: dict | None = None) -> dict:
    "Versions, machine and (when given) the backbone's identity, for environment.json."
    import platform, subprocess
    from importlib.metadata import version
    import torch
    try: commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError): commit = ""
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "git_commit": commit or "unknown",
           "versions": {p: version(p) for p in ["derma_jepa", "numpy", "pandas", "pillow", "scikit-image", "torch",
                                                 "torchvision", "timm", "open_clip_torch"]}}
    if backbone is not None:
        from derma_jepa.embed import device_model
        env.update(device=backbone.device, dtype=dtype, backbone=backbone.name, backbone_fingerprint=backbone.fingerprint,
                   weights=backbone.weights, weights_sha256=backbone.weights_digest, preprocess=backbone.preprocess,
                   device_model=device_model(backbone.device), precision=precision)
    return env


def pair_embeddings(manifest: pd.DataFrame, sides: pd.DataFrame, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    "Context and target embeddings of every pair, looked up among the embedded sides."
    row = pd.Series(np.arange(len(sides)), index=pd.MultiIndex.from_frame(sides[["image_id", "recipe"]]))
    zc = z[row.loc[list(zip(manifest.context_image_id, manifest.context_recipe))].to_numpy()]
    zt = z[row.loc[list(zip(manifest.target_image_id, manifest.target_recipe))].to_numpy()]
    return zc, zt


# %% [markdown]
# ## Scoring and evaluation
#
# The predictor is fitted on the train split's stable pairs only. Every pair of every split is
# then scored by the predictor, the five controls and the baselines, and 11_baselines'
# `evaluate` turns the scores into the protocol's metrics, Δs and the two endpoints (synthetic
# and real re-photograph).

# %% [markdown]
# ## Figures
#
# What a reader would rather see than read: the score distributions of both classes in each
# split (for the predictor and the strongest baseline; both classes of a panel share its bins),
# ROC curves on test (without `identity`, which is the raw cosine under another name, and
# `flipped_cosine`, its mirror image), and train-vs-test AUROC. Train and test differ in *two*
# ways, the pairs (lesions never seen in fitting) and the nuisance family (held out from
# training), so a scorer far right of the diagonal has either memorised its training pairs or
# failed to transfer to the unseen family; this figure alone cannot say which.

# %%
#| export
def make_figures(manifest: pd.DataFrame, scores: dict[str, np.ndarray], ev: dict) -> dict:
    "name -> matplotlib Figure."
    import matplotlib.pyplot as plt
    import seaborn as sns
    from sklearn.metrics import roc_curve
    main = manifest.kind.isin(["stable", "changing"]).to_numpy()
    figs = {}
    best = ev["strongest_baseline"]
    long = pd.concat([manifest.loc[main, ["split", "kind"]].assign(scorer=n, score=scores[n][main]) for n in ("predictor", best)],
                     ignore_index=True).dropna(subset=["score"])
    g = sns.displot(data=long, x="score", hue="kind", row="scorer", col="split", kind="hist", stat="density",
                    common_norm=False, common_bins=True, element="step", height=2.4, aspect=1.3,
                    facet_kws={"sharex": False, "sharey": False})
    figs["score_histograms"] = g.figure
    fig, ax = plt.subplots(figsize=(5, 5))
    t = main & (manifest.split == "test").to_numpy()
    for n, s in scores.items():
        if n in ("identity", "flipped_cosine"): continue       # the raw cosine again, and its mirror
        fpr, tpr, _ = roc_curve(manifest.label.to_numpy()[t], s[t])
        ax.plot(fpr, tpr, lw=2.2 if n == "predictor" else 1, label=f"{n} ({ev['metrics']['test'][n]['auroc']['value']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8); ax.set_xlabel("FPR"); ax.set_ylabel("TPR"); ax.set_title("test ROC (AUROC)")
    ax.legend(fontsize=7, loc="lower right"); figs["roc_test"] = fig
    fig, ax = plt.subplots(figsize=(5, 5))
    for n in scores:
        if n not in ev["metrics"]["train"]: continue          # a baseline the protocol does not score on train
        a = {sp: ev["metrics"][sp][n]["auroc"] for sp in ("train", "test")}
        ax.errorbar(a["train"]["value"], a["test"]["value"], yerr=[[a["test"]["value"] - a["test"]["ci_low"]],
                    [a["test"]["ci_high"] - a["test"]["value"]]], fmt="o", capsize=2, label=n)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8); ax.set_xlim(0, 1); ax.set_ylim(0, 1)
    ax.set_xlabel("train AUROC"); ax.set_ylabel("test AUROC (95% CI)"); ax.legend(fontsize=7); figs["train_vs_test_auroc"] = fig
    return figs


def model_card(config: Config, ev: dict, env: dict) -> str:
    "A short human-readable summary of one run: what ran, on what, and what it found."
    m = ev["metrics"]["test"]
    def ci(a): return f"{a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"
    r = ev.get("rephoto", {})
    reph = r.get("metrics", {}).get("test", {})
    rows = "\n".join(f"| {n} | {ci(m[n]['auroc'])} | {ci(reph[n]['auroc']) if n in reph else '–'} |" for n in m)
    rv = (f"**{r['verdict']}**. Δ = predictor − strongest baseline ({r['strongest_baseline']}, chosen on {r['baselines']['chosen_on']}) "
          f"= {ci(r['delta'])} test AUROC on {r['pairs']['test']['lesions']} lesions' re-photo and matched changing pairs; "
          f"rule: {r['verdict_rule']}." if r else "not evaluated (`rephoto: off`, or no re-photographed lesion on val or test).")
    b = ev["bootstrap"]
    how = (f"{b['n_boot']} resamples of context lesions within each pair kind, shared by every scorer (paired)"
           if b["unit"] == "context lesion" else f"{b['n_boot']} resamples of pairs, a generator per scorer (the release's rule)")
    stand_in = backbone_spec(config.backbone).hub_id == ""
    return f"""# Model card: {config.experiment or run_id(config)}

- protocol: **{config.protocol}**; families: train `{config.train_families}`, val/test `{config.eval_family or config.train_families}`
- backbone: `{ev['backbone']}` (frozen; fingerprint `{env.get('backbone_fingerprint', '')}`)\
{' an offline backbone, not a pretrained hub model.' if stand_in else ''}
- predictor: {config.predictor}, trainer {ev['training']['trainer']}, optimiser {config.optimizer}, \
{config.epochs} epochs, fitted on {ev['training']['train_stable_pairs']} train stable pairs only
- data: {config.data}, seed {config.seed}, {config.pairs_per_split} stable + {config.pairs_per_split} changing pairs per split

Verdict, synthetic endpoint: **{ev['verdict']}**. Δ = predictor − strongest baseline ({ev['strongest_baseline']}, \
chosen on {ev['baselines']['chosen_on']}) = {ci(ev['delta'])} test AUROC; rule: {ev['verdict_rule']}.

Verdict, real re-photograph endpoint: {rv}

Intervals: 95% percentile bootstrap, {how}; on the re-photo endpoint, resamples of lesions, each with its two pairs.

| test scorer | AUROC, stable vs changing [95% CI] | AUROC, re-photographed vs changing [95% CI] |
|---|---|---|
{rows}

Intended use: research on acquisition-nuisance invariance of frozen embeddings. Not a diagnostic
device; stable/changing labels are synthetic (PROTOCOL B2) except the re-photography pairs.
"""


def _png(fig) -> bytes:
    "The figure as PNG bytes; the figure is closed (pyplot forgets it), so a notebook shows it only where displayed."
    import matplotlib.pyplot as plt
    buf = io.BytesIO(); fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# %% [markdown]
# ## `run(config)`

# %%
#| export
class Stopwatch:
    """Wall and CPU seconds per stage. CPU counts this process and its finished children (the data loader's
    workers), so a stage that fans out to two cores shows about twice its wall time."""
    def __init__(self):
        self.wall, self.cpu = {}, {}
        self.start = self.last = self.now()

    @staticmethod
    def now() -> tuple[float, float]:
        import resource, time
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.perf_counter(), time.process_time() + c.ru_utime + c.ru_stime

    def lap(self, stage: str) -> float:
        "Close `stage` (it ran since the previous lap) and return its wall seconds."
        t = self.now()
        self.wall[stage], self.cpu[stage] = round(t[0] - self.last[0], 3), round(t[1] - self.last[1], 3)
        self.last = t
        return self.wall[stage]

    def totals(self) -> dict:
        t = self.now()
        return {"total": round(t[0] - self.start[0], 3), "cpu_total": round(t[1] - self.start[1], 3)}


def run(config: Config) -> RunResult:
    "Run `config` up to `config.stop_after` and write its run directory (the stages' modules imported here, not above)."
    from derma_jepa.baselines import BASELINE_SPLITS, PIXEL_SCORERS, VERDICT_RULES, evaluate, pixel_scores, verdict, with_paths
    from derma_jepa.embed import embed_sides, side_precision, sides_table
    from derma_jepa.metrics import representation_health
    from derma_jepa.predictors import Predictor, control_scores, cosine_distance
    t, stage, clock = {}, STAGES.index(config.stop_after), Stopwatch()
    dest = destination(config)            # a destination the project may not write stops the run here
    backbone = get_backbone(config.backbone, config.weights or None, protocol=config.protocol) if stage >= STAGES.index("embed") else None
    check_space(config, dest, backbone.dim if backbone is not None else 0)
    t["backbone_load"] = clock.lap("backbone_load")
    records, split, manifest, audit = data_stage(config)
    t["manifest"] = clock.lap("manifest")
    files = {"config.yaml": yaml.safe_dump(config.to_dict(), sort_keys=True).encode(),
             "audit.json": json.dumps(audit, indent=1, sort_keys=True).encode(),
             "manifest.parquet": _parquet_bytes(manifest)}
    embeddings, extra = None, {}
    sp, kind, y = manifest.split.to_numpy(), manifest.kind.to_numpy(), manifest.label.to_numpy()
    if backbone is not None:
        sides = sides_table(manifest, records)
        precision = side_precision(backbone, sides, config.dtype)
        t["precision"] = clock.lap("precision")
        if stage >= STAGES.index("all"):
            # the pixel baselines, only on the splits the protocol reads them on and on the re-photo endpoint; the sides they render are embedded
            # on the way (into the same cache), so `embed_sides` below renders only the other sides
            need = np.isin(sp, BASELINE_SPLITS[config.protocol]) | np.isin(kind, ENDPOINT_KINDS)
            px = pixel_scores(with_paths(manifest[need], records), progress=True, backbone=backbone,
                              dtype=precision["dtype"])
            pixel = {n: np.full(len(manifest), np.nan) for n in PIXEL_SCORERS}
            for n in PIXEL_SCORERS: pixel[n][need] = px[n].to_numpy()
            t["baselines"] = clock.lap("baselines")
        z, st = embed_sides(backbone, sides, precision, config.batch_size, progress=True)
        embeddings = {"sides": sides, "z": z}
        t["embed"] = clock.lap("embed")
        t["embed_detail"] = {k: v for k, v in st.to_dict().items() if k not in ("seconds", "dtype", "device")}
        env = environment(backbone, st.dtype, precision)
    else: env = environment()
    files["environment.json"] = json.dumps(env, indent=1).encode()
    if stage >= STAGES.index("all"):
        zc, zt = pair_embeddings(manifest, embeddings["sides"], embeddings["z"])
        fit_on, train = (sp == "train") & (kind == "stable"), (sp == "train") & np.isin(kind, ["stable", "changing"])
        predictor = Predictor(config.predictor, config.resolved_trainer, config.optimizer, config.epochs,
                              seed=config.seed).fit(zc[fit_on], zt[fit_on])
        t["fit"] = clock.lap("fit")
        cos_name = f"cosine_{backbone.name}"
        scores = {"predictor": predictor.score(zc, zt),
                  **control_scores(zc, zt, zc[fit_on], zt[fit_on], zc[train], zt[train], y[train], config.seed),
                  **pixel, cos_name: cosine_distance(zc, zt)}
        ev, scores = evaluate(manifest, scores, ["pixel_l2", "ssim", cos_name], config.protocol, config.seed, config.n_boot)
        test_main = (sp == "test") & np.isin(kind, ["stable", "changing"])
        health = representation_health(predictor.predict(zc[test_main]))
        ev.update(health=health, verdict=verdict(ev["delta"], health["collapsed"], config.protocol),
                  verdict_rule=VERDICT_RULES[config.protocol], protocol=config.protocol,
                  backbone=backbone.name, n_boot=config.n_boot,
                  training={"predictor": config.predictor, "trainer": predictor.trainer, "optimizer": config.optimizer,
                            "epochs": config.epochs, "batch_size": predictor.batch_size, "lr": predictor.lr,
                            "weight_decay": predictor.weight_decay, "train_stable_pairs": int(fit_on.sum()),
                            "loss_history": predictor.history_})
        t["metrics"] = clock.lap("metrics")
        long = pd.concat([manifest[["pair_id", "split", "kind", "label"]].assign(scorer=n, score=v) for n, v in scores.items()],
                         ignore_index=True).dropna(subset=["score"])
        figs = make_figures(manifest, scores, ev)
        from safetensors.numpy import save as st_save
        weights = st_save({k: np.ascontiguousarray(v) for k, v in predictor.params().items()},
                          metadata={"derma_jepa": json.dumps({"predictor": config.predictor, "trainer": predictor.trainer})})
        files.update({"scores.parquet": _parquet_bytes(long), "metrics.json": json.dumps(ev, indent=1).encode(),
                      "predictor.safetensors": weights, "model_card.md": model_card(config, ev, env).encode(),
                      **{f"figures/{k}.png": _png(f) for k, f in figs.items()}})
        extra = {"scores": long, "evaluation": ev, "figures": figs, "predictor": predictor}
        t["figures"] = clock.lap("figures")
    t.update(clock.totals(), cpu=clock.cpu)
    files["timings.json"] = json.dumps(t, indent=1).encode()
    dest = write_run_dir(dest, files, protected_paths(config))
    return RunResult(config, dest, records, split, manifest, audit, t, embeddings, **extra)


# %% [markdown]
# ## Tests
#
# A run on a small fixture writes the three files; running it again gives byte-identical files;
# a failing run leaves nothing behind, even where an older complete run existed.

# %%
_out = Path(tempfile.mkdtemp())
_cfg = Config(fixture_lesions=300, pairs_per_split=30, run_dir=str(_out / "r1"), stop_after="manifest")
_res = run(_cfg)
test_eq(sorted(p.name for p in _res.run_dir.iterdir()),
        [".derma_jepa.json", "audit.json", "config.yaml", "environment.json", "manifest.parquet", "timings.json"])
_first = {p.name: p.read_bytes() for p in _res.run_dir.iterdir() if p.name not in ("timings.json",)}
run(_cfg)
test_eq({p.name: p.read_bytes() for p in _res.run_dir.iterdir() if p.name not in ("timings.json",)}, _first)
_aud = json.loads(_first["audit.json"])
assert {"n_images", "n_lesions", "split_lesions", "split_images", "missing", "unreadable", "duplicate_checksums", "dx_mix"} <= set(_aud)

# %%
test_fail(lambda: run(dataclasses.replace(_cfg, run_dir=str(_out / "r2"), pairs_per_split=5000)), contains="pairs per label")
assert not (_out / "r2").exists() and [p.name for p in _out.iterdir()] == ["r1"]
test_fail(lambda: run(Config(data=str(_out / "nowhere"), run_dir=str(_out / "r3"))), contains="not found")

# %% [markdown]
# A destination that is not a run directory of this project stops the run before any work, and
# leaves it as it was: a folder of notes, a file, the data folder itself.

# %%
(_out / "notes").mkdir(); (_out / "notes" / "n.txt").write_text("mine")
(_out / "a_file").write_text("mine too")
for _d, _msg in [(_out / "notes", "non-empty folder this project did not write"), (_out / "a_file", "is an existing file")]:
    test_fail(lambda: run(dataclasses.replace(_cfg, run_dir=str(_d))), contains=_msg)
test_eq(((_out / "notes" / "n.txt").read_text(), (_out / "a_file").read_text()), ("mine", "mine too"))
_fx = resolve_data(_cfg)
test_fail(lambda: run(dataclasses.replace(_cfg, data=str(_fx), run_dir=str(_fx))), contains="is inside the cache folder")

# %% [markdown]
# The embedding stage on a tiny manifest: the second run, which differs only in predictor and
# optimiser, finds every side in the cache and computes nothing.

# %%
_e1 = run(Config(fixture_lesions=300, pairs_per_split=4, run_dir=str(_out / "e1"), stop_after="embed"))
_e2 = run(Config(fixture_lesions=300, pairs_per_split=4, run_dir=str(_out / "e2"), predictor="mlp", optimizer="adam", stop_after="embed"))
test_eq((_e2.timings["embed_detail"]["computed"], _e2.timings["embed_detail"]["cache_hits"]), (0, _e1.timings["embed_detail"]["sides"]))
test_eq(_e1.embeddings["z"].tobytes(), _e2.embeddings["z"].tobytes())
test_eq(json.loads((_e1.run_dir / "environment.json").read_text())["backbone"], "color_texture")

# %% [markdown]
# The whole run on a small fixture: the contract of `metrics.json`, `scores.parquet` and `timings.json`.

# %%
_full = run(Config(fixture_lesions=300, pairs_per_split=30, run_dir=str(_out / "full"), epochs=20, n_boot=200))
_mj = json.loads((_full.run_dir / "metrics.json").read_text())
_scorers = {"predictor", "identity", "bias_only", "flipped_cosine", "target_only_probe", "context_only_probe",
            "pixel_l2", "ssim", "cosine_color_texture"}
for _sp in ("train", "val", "test"):
    # the pixel baselines are scored where the protocol reads them: under symmetric val and test, not train
    _want = _scorers - set(PIXEL_SCORERS) if _sp not in BASELINE_SPLITS["symmetric"] else _scorers
    test_eq((set(_mj["metrics"][_sp]) >= _want, set(_mj["metrics"][_sp]) & set(PIXEL_SCORERS) <= _want), (True, True))
    for _sc in _want:
        for _mt in ("auroc", "auprc", "eer", "fpr_at_tpr"):
            assert set(_mj["metrics"][_sp][_sc][_mt]) == {"value", "ci_low", "ci_high"}
assert {"health", "strongest_baseline", "delta", "deltas", "verdict", "verdict_rule", "bootstrap", "rephoto"} <= set(_mj)
test_eq(_mj["bootstrap"]["unit"], "context lesion")
_d = _mj["delta"]
assert _d["ci_low"] <= _d["value"] <= _d["ci_high"] and set(_mj["deltas"]["test"]) == {f"predictor - {_mj['strongest_baseline']}", "predictor - identity"}
test_eq(_mj["verdict"], "improved" if _d["ci_low"] > 0 else "worse" if _d["ci_high"] < 0 else "matched")

# the re-photo endpoint, under both protocols: every scorer on val and test with an interval, the Δs, the verdict
def _check_rephoto(mj, scorers):
    r = mj["rephoto"]
    for _sp in ("val", "test"):
        missing = scorers - set(r["metrics"][_sp])
        assert not missing, f"{_sp}: no re-photo entry for {sorted(missing)}"
        for _sc in scorers: assert set(r["metrics"][_sp][_sc]["auroc"]) == {"value", "ci_low", "ci_high"}, _sc
    test_eq(set(r["deltas"]["test"]), {f"predictor - {r['strongest_baseline']}", "predictor - identity", "predictor - bias_only"})
    test_eq((r["baselines"]["chosen_on"], r["bootstrap"]["unit"], r["bootstrap"]["strata"]), ("val (re-photo endpoint)", "context lesion", None))
    assert r["verdict"] in ("improved", "matched", "worse")

_check_rephoto(_mj, _scorers)
_ref_run = run(Config(protocol="reference", fixture_lesions=300, pairs_per_split=30, run_dir=str(_out / "ref"), epochs=20, n_boot=200))
_mjr = json.loads((_ref_run.run_dir / "metrics.json").read_text())
_check_rephoto(_mjr, _scorers)
test_fail(lambda: _check_rephoto({"rephoto": {**_mjr["rephoto"], "metrics": {"val": {}, "test": {}}}}, _scorers), contains="no re-photo entry")
# the same endpoint pairs under both protocols; the release's pairs beside them untouched by it
_ends = [r.manifest[r.manifest.kind.isin(ENDPOINT_KINDS)].reset_index(drop=True) for r in (_full, _ref_run)]
test_eq(_ends[0].equals(_ends[1]), True)
test_eq(_ref_run.manifest[~_ref_run.manifest.kind.isin(ENDPOINT_KINDS)].reset_index(drop=True).equals(
        run(dataclasses.replace(_ref_run.config, rephoto="off", run_dir=str(_out / "ref_off"), stop_after="manifest")).manifest), True)
assert "Verdict, real re-photograph endpoint: **" in (_ref_run.run_dir / "model_card.md").read_text()
_tj = json.loads((_full.run_dir / "timings.json").read_text())
test_eq(set(_tj) >= {"manifest", "embed", "baselines", "fit", "metrics", "total", "cpu_total", "cpu"}, True)
test_eq(set(_tj["cpu"]) >= {"manifest", "embed", "baselines", "fit", "metrics"}, True)
assert _tj["total"] >= _tj["embed"] + _tj["fit"]
assert "| predictor |" in (_full.run_dir / "model_card.md").read_text()
_sc = pd.read_parquet(_full.run_dir / "scores.parquet")
_vt = int(_full.manifest.split.isin(BASELINE_SPLITS["symmetric"]).sum())
test_eq(len(_sc), len(_full.manifest) * (len(_mj["metrics"]["test"]) - len(PIXEL_SCORERS)) + len(PIXEL_SCORERS) * _vt)
test_eq(sorted(p.name for p in (_full.run_dir / "figures").iterdir()), ["roc_test.png", "score_histograms.png", "train_vs_test_auroc.png"])

# %% [markdown]
# What that small run reports for the test split, and its ROC figure (fixture data at 30 pairs per
# split, so the numbers show the shape of the report, not a finding; `run.ipynb` shows EXP-004 on
# the real copy):

# %%
from IPython.display import display
display(pd.DataFrame({n: {m: f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for m, v in d.items() if m != "n_boot_valid"}
                      for n, d in _mj["metrics"]["test"].items()}).T.rename_axis("test, 95% CI"))
print(f"strongest baseline: {_mj['strongest_baseline']}; Δ {_d['value']:+.3f} [{_d['ci_low']:+.3f}, {_d['ci_high']:+.3f}]; "
      f"verdict {_mj['verdict']!r} ({_mj['verdict_rule']})")
_full.figures["roc_test"]

# %% [markdown]
# ## The predictors of 07 on real pairs, under both protocols
#
# The predictors above, fitted on real EXP-004 pairs: HAM10000 when `HAM10000_DIR` is set (the
# fixture otherwise), the offline `color_texture` backbone, 150 pairs per split (100 on the fixture,
# whose 600 lesions leave 116 images in the validation split), the EXP-004
# families. First a stable and a changing training pair of each protocol, as the predictor sees
# them; then, per protocol, the training curves of the linear predictor (reference trainer, the
# release's) and of the MLP (autograd, Adam), and the linear predictor's test scores by label. The
# table gives test AUROC beside the raw cosine (`identity`) and the target-only probe, the leak
# detector: under `reference` a probe that sees the target alone scores the label because only
# stable targets are processed; under `symmetric` it has nothing to find.

# %%
#| slow
import matplotlib.pyplot as plt
from derma_jepa.pairs import pair_gallery

_data = os.environ.get("HAM10000_DIR") or "fixture"
_real, _tmp = {}, Path(tempfile.mkdtemp())
for _prot in ("reference", "symmetric"):
    _cfg = Config(experiment="EXP-004", data=_data, protocol=_prot, train_families="strong,strong_held_out",
                  eval_family="strong_held_out_2", changing_policy="strict", pairs_per_split=150 if _data != "fixture" else 100,
                  backbone="color_texture", stop_after="embed", run_dir=str(_tmp / _prot))
    _r = run(_cfg)
    _m = _r.manifest.reset_index(drop=True)
    _zc, _zt = pair_embeddings(_m, _r.embeddings["sides"], _r.embeddings["z"])
    _fit = (_m.split.eq("train") & _m.kind.eq("stable")).to_numpy()
    _test = (_m.split.eq("test") & _m.kind.isin(["stable", "changing"])).to_numpy()
    _train = (_m.split.eq("train") & _m.kind.isin(["stable", "changing"])).to_numpy()
    _preds = {"linear, reference trainer (loss per element)": Predictor("linear", "reference").fit(_zc[_fit], _zt[_fit]),
              "mlp, autograd + adam (loss per pair)": Predictor("mlp", "autograd", optimizer="adam").fit(_zc[_fit], _zt[_fit])}
    _cs = control_scores(_zc[_test], _zt[_test], _zc[_fit], _zt[_fit], _zc[_train], _zt[_train], _m.label[_train].to_numpy())
    _real[_prot] = dict(manifest=_m, records=_r.records, preds=_preds, y=_m.label[_test].to_numpy(),
                        scores={**{k: p.score(_zc[_test], _zt[_test]) for k, p in _preds.items()},
                                "identity": _cs["identity"], "target_only_probe": _cs["target_only_probe"]})
    _g = pair_gallery(_m[_m.split.eq("train") & _m.kind.isin(["stable", "changing"])], _r.records, n=1, size=96)
    _g.suptitle(f"{_prot}: a train stable and a train changing pair", y=1.02); plt.show()

# %%
#| slow
_fig, _axes = plt.subplots(2, 2, figsize=(9, 5.6))
for (_prot, _d), (_a1, _a2) in zip(_real.items(), _axes):
    for _k, _p in _d["preds"].items():
        _a1.plot(list(_p.history_), list(_p.history_.values()), marker="o", ms=3, label=_k)
    _a1.set(yscale="log", xlabel="epoch", ylabel="training loss", title=f"{_prot}: fit on train stable pairs"); _a1.legend(fontsize=7)
    _s = _d["scores"]["linear, reference trainer (loss per element)"]
    _bins = np.histogram_bin_edges(_s, 30)
    for _lab, _name in ((0, "stable"), (1, "changing")):
        _a2.hist(_s[_d["y"] == _lab], bins=_bins, density=True, histtype="step", label=_name)
    _a2.set(xlabel="linear predictor score (test)", ylabel="density", title=f"{_prot}: test scores by label"); _a2.legend(fontsize=7)
_fig.tight_layout(); plt.show()
pd.DataFrame({p: {k: round(roc_auc_score(d["y"], s), 3) for k, s in d["scores"].items()} for p, d in _real.items()}).rename_axis("test AUROC")

# %% [markdown]
# ## What the baselines of 09 see on real pairs, under both protocols
#
# Pixel L2 and SSIM distance on the test pairs of a small EXP-004 manifest (100 pairs per split;
# HAM10000 when `HAM10000_DIR` is set, the fixture otherwise), by label. Neither baseline knows
# anything about lesions, so what separates the labels here is how the two sides were *made*:
# under `reference` a changing pair is two untouched originals (pixel-close in acquisition, far in
# content) while a stable pair's target is processed; under `symmetric` both sides of both labels
# carry an independent draw of the family. An AUROC below 0.5 under `reference` is that asymmetry
# read backwards: a stable pair (one photograph and its processed copy) is *further apart* in pixels
# than two untouched photographs of different lesions taken under the same conditions.

# %%
#| slow
import matplotlib.pyplot as plt

_data = os.environ.get("HAM10000_DIR") or "fixture"
_fig, _axes = plt.subplots(2, 2, figsize=(8, 5))
_auc = {}
for _prot, _row in zip(("reference", "symmetric"), _axes):
    _recs_p, _, _man, _ = data_stage(Config(data=_data, protocol=_prot, train_families="strong,strong_held_out",
                                            eval_family="strong_held_out_2", changing_policy="strict", pairs_per_split=100))
    _t = with_paths(_man[_man.split.eq("test") & _man.kind.isin(["stable", "changing"])], _recs_p)
    _px = pixel_scores(_t)
    for _ax, _b in zip(_row, ("pixel_l2", "ssim")):
        _bins = np.histogram_bin_edges(_px[_b], 25)
        for _kind in ("stable", "changing"):
            _ax.hist(_px[_b][_t.kind.eq(_kind).to_numpy()], bins=_bins, density=True, histtype="step", label=_kind)
        _ax.set(title=f"{_prot}: {_b}", xlabel="distance (higher = more different)", ylabel="density"); _ax.legend(fontsize=7)
        _auc.setdefault(_b, {})[_prot] = round(roc_auc_score(_t.label, _px[_b]), 3)
_fig.tight_layout(); plt.show()
pd.DataFrame(_auc).T.rename_axis("test AUROC (changing = positive)")

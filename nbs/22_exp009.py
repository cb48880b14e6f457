# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp exp009

# %% [markdown]
# # EXP-009: a backbone that has seen dermoscopy, but never HAM10000
#
# > Audit the corpus, pretrain each objective on what the audit leaves in, probe the diagnoses, run the EXP-004 recipe under both protocols, and render the comparison into paper/.

# %% [markdown]
# The study's open question: is DermLIP's advantage *dermoscopy-domain transfer*, or HAM10000
# images leaking into its pretraining corpus? Its authors proposed the partition experiment and
# never ran it. Here it is, at the scale of a 2-core CPU:
#
# 1. **audit** (14_audit): HAM10000 against the pretraining corpus (exact bytes, then calibrated
#    perceptual hashes, then pixel verification). Every corpus image the audit flags, exact or
#    near, is *left out* of pretraining, whatever the adjudication says about it. What the audit
#    can claim is what it measured (a recall on synthetic copies, a false-positive rate on
#    held-out negatives), not that the corpus is free of HAM10000.
# 2. **pretrain** (15_pretrain): each objective (MAE, VAE, SimCLR, I-JEPA, GraVIS) trains the same
#    ViT-Tiny/16 at 112 px from the same initial weights, on the audited corpus, for the **same
#    number of images seen** (steps × batch; the objectives differ up to 4× in images per second,
#    so equal wall-clock budgets are not what a CPU delivers, and equal images seen is the budget
#    that does not depend on the machine; the minutes each took are reported beside it). The
#    untrained initial encoder is kept as the **random-init control** of the same architecture.
# 3. **probe** (16_probe): the 7 diagnoses from frozen embeddings. This is the **gate**, read per
#    seed from the paired interval against that seed's random-init control: an encoder whose
#    interval holds 0 "did not beat random init on this probe at this budget", which says what the
#    probe could not show, not that the encoder learned nothing (25_exp009_report words the table).
# 4. **EXP-004 recipe** (`nbs/experiments/exp009.yaml`, via `nbs/run.ipynb` and papermill) under
#    each protocol, for every encoder, the control, and offline comparisons (`color_texture`).
#
# The settings are data: `nbs/experiments/exp009_pretrain.yaml`. `nbs/exp009.ipynb` runs the
# five steps with papermill; this notebook defines and tests the pieces on fixture images.

# %%
#| export
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from derma_jepa.backbones import backbone_spec
from derma_jepa.data import ConfigError, DataError, atomic_write_bytes, experiments_dir
from derma_jepa.executors import check_resources
from derma_jepa.experiment import Config, run_id
from derma_jepa.split import PROTOCOLS
from derma_jepa.pretrain import OBJECTIVES, PretrainConfig, config_dict, random_encoder
from derma_jepa.safety import load_yaml
from derma_jepa.plan import parse_backbones

# %%
from fastcore.test import test_eq, test_fail
import tempfile

# %% [markdown]
# ## The settings
#
# `load_exp009` reads the settings file, applies overrides (papermill's parameters), and checks
# everything before any work: an unknown key, objective, protocol or comparison backbone, a
# pretraining parameter `PretrainConfig` does not have, a budget that is not a whole number of
# steps, or an unset `$VARIABLE` is one error naming the file and the value.
#
# - `seeds`: the pretraining seeds; every objective trains once per seed (and each seed has its
#   own random-init control: the initial weights that seed draws), so a table can say how much of a
#   difference is the seed's.
# - `budgets`: fractions of the steps at which each encoder is also evaluated, from snapshots of
#   the same run (15_pretrain), for the budget curve; 1 (the full run) is always among them.
# - `variants`: named objectives with changed pretraining parameters, trained beside the
#   objectives (`simclr_nocolour: {objective: simclr, colour: false}`: SimCLR without its colour
#   augmentation, to see how much of its advantage is invariance to colour, which the held-out
#   nuisance family also varies). A variant's `seeds` (some of `seeds`) trains it at those only.
# - `recipe_set`: run parameters that replace the recipe file's for every EXP-009 run (the shipped
#   settings run 250 pairs per split: see the file for why).
# - `probe`: label `fractions`, `draws` (subsamples per fraction below 100%: the label-efficiency
#   band) and `n_boot` (the lesion bootstrap).

# %%
#| export
KEYS = ("recipe", "recipe_set", "corpus", "holdout", "objectives", "variants", "seeds", "budgets", "pretrain", "steps", "protocols", "compare",
        "probe", "audit", "resources")


def _expand(value: str, what: str, path) -> str:
    out = os.path.expandvars(os.path.expanduser(str(value)))
    if "$" in out: raise ConfigError(f"{path}: {what} {value!r}: the environment variable is not set")
    return out


def budget_steps(cfg: PretrainConfig, budgets) -> list[int]:
    "The optimiser steps at which each budget (a fraction of `cfg.steps`) is reached; each must be a whole step."
    out = []
    for b in budgets:
        k = b * cfg.steps
        if abs(k - round(k)) > 1e-9 or round(k) < 1:
            raise ConfigError(f"budget {b} of {cfg.steps} steps is {k:g} steps: choose fractions that give whole steps")
        out.append(round(k))
    return out


def _int_list(values, what: str, path) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0: raise ConfigError(f"{path}: {what} {v!r} is not a whole number >= 0")
        out.append(v)
    if len(set(out)) != len(out): raise ConfigError(f"{path}: {what} {out} repeats a value")
    return out


def load_exp009(path=None, **overrides) -> dict:
    """EXP-009's settings (`exp009_pretrain.yaml`), overrides applied, validated; `pretrain` becomes one PretrainConfig per
    objective and variant (by name), `seeds` and `budgets` lists, `compare_left_out` the file's comparisons an override dropped."""
    path = Path(path or experiments_dir() / "exp009_pretrain.yaml")
    if not path.exists(): raise ConfigError(f"EXP-009 settings file {path} not found")
    file = load_yaml(path)
    s = {**file, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(s) - set(KEYS))
    if unknown: raise ConfigError(f"{path}: {unknown[0]!r} is not an EXP-009 setting (settings: {', '.join(KEYS)})")
    objs = list(s.get("objectives") or [])
    for o in objs:
        if o not in OBJECTIVES: raise ConfigError(f"{path}: unknown objective {o!r} (objectives: {', '.join(OBJECTIVES)})")
    variants = {str(k): dict(v or {}) for k, v in dict(s.get("variants") or {}).items()}
    variant_seeds = {n: spec.pop("seeds") for n, spec in variants.items() if "seeds" in spec}
    for name, spec in variants.items():
        if name in OBJECTIVES: raise ConfigError(f"{path}: variant {name!r} has the name of an objective")
        if spec.get("objective") not in OBJECTIVES:
            raise ConfigError(f"{path}: variant {name!r}: objective {spec.get('objective')!r} is not one of {', '.join(OBJECTIVES)}")
    for p in s.get("protocols") or []:
        if p not in PROTOCOLS: raise ConfigError(f"{path}: unknown protocol {p!r} (protocols: {', '.join(PROTOCOLS)})")
    steps = dict(s.get("steps") or {})
    for o in set(steps) - set(objs) - set(variants): raise ConfigError(f"{path}: steps given for {o!r}, which is not among the objectives")
    cfgs = {}
    for name, spec in [*((o, {"objective": o}) for o in objs), *variants.items()]:
        try: cfgs[name] = PretrainConfig(**{**dict(s.get("pretrain") or {}), **({"steps": steps[name]} if name in steps else {}), **spec})
        except TypeError as e: raise ConfigError(f"{path}: pretrain: {e}".replace("PretrainConfig.__init__() ", "")) from None
        except DataError as e: raise ConfigError(f"{path}: {e}") from None
    cfg0 = next(iter(cfgs.values()), PretrainConfig())
    seeds = _int_list(s.get("seeds") or [cfg0.seed], "seed", path)
    for name, vs in variant_seeds.items():
        vs = variant_seeds[name] = _int_list(vs if isinstance(vs, list) else [vs], f"variant {name!r}: seed", path)
        if not vs or set(vs) - set(seeds):
            raise ConfigError(f"{path}: variant {name!r} trains at seeds {vs}, which must be some of the seeds run ({seeds}): "
                              "give the variant's seeds too, or no variants")
    budgets = {1.0}
    for b in s.get("budgets") or []:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= 1:
            raise ConfigError(f"{path}: budget {b!r} must be a fraction of the steps in (0, 1]")
        budgets.add(float(b))
    budgets = sorted(budgets)
    for c in cfgs.values():
        try: budget_steps(c, budgets)
        except ConfigError as e: raise ConfigError(f"{path}: {c.objective}: {e}") from None
    holdout = [str(h) for h in (s.get("holdout") or [])]
    for h in holdout:
        if Path(h).is_absolute() or ".." in Path(h).parts: raise ConfigError(f"{path}: holdout {h!r}: give a folder inside the corpus")
    recipe = Path(path).parent / f"{s.get('recipe', 'exp009')}.yaml"
    if not recipe.exists(): raise ConfigError(f"{path}: recipe {recipe} not found")
    recipe_set = s.get("recipe_set") or {}
    if not isinstance(recipe_set, dict): raise ConfigError(f"{path}: recipe_set {recipe_set!r} must be a mapping of run parameters")
    try: Config.from_yaml(recipe, **recipe_set)          # a parameter the run does not know fails here, naming it
    except ConfigError as e: raise ConfigError(f"{path}: recipe_set: {e}") from None
    compare = parse_backbones(",".join(s.get("compare") or [])) if s.get("compare") else []
    in_file = parse_backbones(",".join(file.get("compare") or [])) if file.get("compare") else []
    probe = {"fractions": (0.01, 0.1, 1.0), "n_boot": 200, "draws": 1, **dict(s.get("probe") or {})}
    if not isinstance(probe["draws"], int) or probe["draws"] < 1: raise ConfigError(f"{path}: probe draws {probe['draws']!r} must be at least 1")
    return {"file": str(path), "recipe": recipe, "recipe_set": dict(recipe_set), "corpus": _expand(s.get("corpus", ""), "corpus", path), "holdout": holdout, "objectives": objs,
            "variants": {n: {k: v for k, v in spec.items() if k != "objective"} for n, spec in variants.items()}, "pretrain": cfgs, "seeds": seeds, "budgets": budgets,
            "variant_seeds": {n: variant_seeds.get(n, seeds) for n in variants},
            "protocols": list(s.get("protocols") or ["symmetric"]), "compare": compare,
            "compare_left_out": [b for b in in_file if b not in compare], "probe": probe,
            "audit": {"n_pos": 1000, "n_neg": 500_000, **dict(s.get("audit") or {})},
            "resources": check_resources(s.get("resources"), f"{path}: resources")}


# %%
os.environ.setdefault("ISIC_NONHAM_DIR", "/corpus")            # the shipped file reads $ISIC_NONHAM_DIR
_s = load_exp009()
assert {"mae", "vae", "simclr", "ijepa"} <= set(_s["objectives"]) <= set(OBJECTIVES)      # the shipped file: every objective known
test_eq(len({c.steps * c.batch_size for c in _s["pretrain"].values()}), 1)                 # equal images seen, every encoder
test_eq(len({dataclasses.replace(c, objective="mae", colour=True) for c in _s["pretrain"].values()}), 1)   # one shared recipe
test_eq({n: (c.objective, c.colour) for n, c in _s["pretrain"].items() if n in _s["variants"]}, {"simclr_nocolour": ("simclr", False)})
assert _s["budgets"][-1] == 1.0 and all(_s["budgets"][i] < _s["budgets"][i + 1] for i in range(len(_s["budgets"]) - 1))
test_eq(load_exp009(budgets=[0.5], seeds=[0, 4])["budgets"], [0.5, 1.0]); test_eq(load_exp009(seeds=[3, 4], variants={})["seeds"], [3, 4])
_vs = load_exp009(seeds=[3, 4], variants={"v": {"objective": "simclr", "colour": False, "seeds": [4]}})
test_eq((_vs["variant_seeds"], _vs["variants"]), ({"v": [4]}, {"v": {"colour": False}}))     # `seeds` is not a pretraining change
test_eq(budget_steps(PretrainConfig(steps=320), [0.25, 0.5, 1.0]), [80, 160, 320])
test_eq(load_exp009(compare=["color_texture"])["compare_left_out"], [b for b in _s["compare"] if b != "color_texture"])
_gpu = load_exp009(experiments_dir() / "exp009_pretrain_vits16.yaml")       # the GPU configuration (issue 29) reads as well
test_eq({(c.arch, c.image_size, c.steps * c.batch_size) for c in _gpu["pretrain"].values()}, {("vit_small_patch16_224", 224, 512_000)})
test_eq(_gpu["resources"]["pretrain"]["gpus"], 1)
_tmp = Path(tempfile.mkdtemp())
for _bad, _msg in [({"objectives": ["mae", "byol"]}, "unknown objective 'byol'"), ({"protocols": ["leaky"]}, "unknown protocol 'leaky'"),
                   ({"compare": ["clip_vitb16"]}, "'clip_vitb16' is a hub backbone"), ({"objective": ["mae"]}, "'objective' is not an EXP-009 setting"),
                   ({"pretrain": {"lr": 1e-3, "epochs": 3}}, "unexpected keyword argument 'epochs'"),
                   ({"steps": {"dino": 3}}, "steps given for 'dino'"), ({"corpus": "$NO_SUCH_DIR_VAR"}, "not set"),
                   ({"holdout": ["../isic2017/val"]}, "holdout '../isic2017/val': give a folder inside the corpus"),
                   ({"budgets": [0.33]}, "budget 0.33 of 128 steps is 42.24 steps"),
                   ({"budgets": [1.5]}, "budget 1.5 must be a fraction"), ({"budgets": ["half"]}, "budget 'half' must be a fraction"), ({"seeds": [0, 0]}, "seed [0, 0] repeats"),
                   ({"seeds": ["x"]}, "seed 'x' is not a whole number"), ({"variants": {"mae": {"objective": "mae"}}}, "variant 'mae' has the name"),
                   ({"variants": {"v": {"objective": "byol"}}}, "variant 'v': objective 'byol'"),
                   ({"variants": {"v": {"objective": "simclr", "colours": False}}}, "unexpected keyword argument 'colours'"),
                   ({"variants": {"v": {"objective": "simclr", "seeds": [5]}}}, "variant 'v' trains at seeds [5], which must be some of the seeds run"),
                   ({"seeds": [3, 4]}, "variant 'simclr_nocolour' trains at seeds [0], which must be some of the seeds run ([3, 4])"),
                   ({"recipe_set": {"pairs_per_splt": 5}}, "recipe_set: parameters: 'pairs_per_splt' is not a configuration field"), ({"recipe_set": [5]}, "recipe_set [5] must be a mapping"),
                   ({"probe": {"draws": 0}}, "probe draws 0 must be at least 1")]:
    test_fail(lambda: load_exp009(**_bad), contains=_msg)

# %% [markdown]
# ## Step 1: the audited corpus
#
# `audited_corpus` takes the corpus and the audit's report and returns the images pretraining may
# use: all of them except every corpus image in an exact or a near-duplicate pair. The exclusion is
# conservative on purpose: a flagged pair the eye judges to be two different lesions still goes,
# because the cost of a false exclusion is one image and the cost of a miss is the experiment.
# Beside the audit's exclusions, each `holdout` folder of the settings (ISIC 2017 validation) leaves
# pretraining too: its images are the transfer probe's test set (16_probe), which no encoder may
# have seen, and each leaves with a row saying so.

# %%
#| export
HELD_OUT = "held out of pretraining: transfer test images"


def audited_corpus(paths, report: dict, holdout=(), corpus=None) -> tuple[list[str], pd.DataFrame]:
    """(kept paths, excluded rows with the reason) given `overlap_audit`'s report against HAM10000; the images under each
    `holdout` folder of `corpus` go too (the transfer probe's test images, 16_probe), each row saying so."""
    ex = [{"path": r["path_b"], "reason": "exact copy of " + Path(r["path_a"]).name, "why": "audit"} for r in report["exact_pairs"]]
    ex += [{"path": r.path_b, "reason": f"near-duplicate of {Path(r.path_a).name} (similarity {r.similarity:.3f})", "why": "audit"}
           for r in report["near_pairs"].itertuples()]
    for h in holdout:
        under = [str(p) for p in paths if Path(p).is_relative_to(Path(corpus) / h)]
        if not under: raise DataError(f"holdout {h!r}: no corpus image under {Path(corpus) / h}")
        ex += [{"path": p, "reason": f"{HELD_OUT} ({h})", "why": "holdout"} for p in under]
    excluded = pd.DataFrame(ex, columns=["path", "reason", "why"]).drop_duplicates("path", ignore_index=True)
    drop = set(excluded.path)
    return [str(p) for p in paths if str(p) not in drop], excluded


def corpus_digest(paths) -> str:
    "SHA-256 over the sorted SHA-256s of the images: names a corpus by content."
    from derma_jepa.data import audit_files
    return hashlib.sha256("\n".join(sorted(audit_files(list(paths)).sha256)).encode()).hexdigest()[:16]


# %%
_rep = {"exact_pairs": [{"path_a": "/h/ISIC_1.jpg", "path_b": "/c/x.jpg", "sha256": "s"}],
        "near_pairs": pd.DataFrame({"path_a": ["/h/ISIC_2.jpg", "/h/ISIC_3.jpg"], "path_b": ["/c/y.jpg", "/c/y.jpg"], "similarity": [0.9, 0.85]})}
_kept, _ex = audited_corpus(["/c/x.jpg", "/c/y.jpg", "/c/z.jpg"], _rep)
test_eq(_kept, ["/c/z.jpg"]); test_eq(list(_ex.path), ["/c/x.jpg", "/c/y.jpg"])
test_eq(_ex.reason.iloc[0], "exact copy of ISIC_1.jpg")
_kept, _ex = audited_corpus(["/c/isic2017/val/a.jpg", "/c/isic2017/valx/b.jpg", "/c/x.jpg", "/c/z.jpg"], _rep, ["isic2017/val"], "/c")
test_eq(_kept, ["/c/isic2017/valx/b.jpg", "/c/z.jpg"])                 # a folder, not a prefix of names
test_eq(_ex.reason.iloc[-1], f"{HELD_OUT} (isic2017/val)"); test_eq(_ex.why.tolist(), ["audit", "audit", "holdout"])
test_fail(lambda: audited_corpus(["/c/x.jpg"], _rep, ["isic2017/test"], "/c"), contains="holdout 'isic2017/test': no corpus image under /c/isic2017/test")

# %% [markdown]
# ## Step 2: pretraining every objective, every seed, and the random-init controls
#
# Each (objective or variant, seed) trains in its own folder, named by the objective, a hash of
# its configuration (seed included), the corpus digest and the snapshot steps, so a changed setting
# or corpus never resumes from, or reuses, another's checkpoint. A finished folder (its
# `encoder.safetensors` and `train.json`) is reused; an interrupted one resumes from
# `state.safetensors`. With budgets below 1, the run exports snapshots at those steps
# (15_pretrain), and each is an encoder of its own in the table: one row per (encoder, seed,
# budget), with the images it had seen, the training FLOPs that cost (15_pretrain's `step_cost`:
# counted, not timed) and the training seconds it took here (kept across resumes). Each seed's
# random-init control is the untrained encoder that seed starts from.

# %%
#| export
OBJECTIVE_NAMES = {"mae": "MAE", "vae": "VAE", "simclr": "SimCLR", "ijepa": "I-JEPA", "gravis": "GraVIS"}
ARCH_LABEL = {"vit_tiny_patch16_224": "ViT-Ti/16", "vit_small_patch16_224": "ViT-S/16"}
CONTROL = "random init"          # the encoder that is the untrained control


def pretrain_dir(runs_dir, cfg: PretrainConfig, corpus: str, name: str | None = None, snapshots=()) -> Path:
    key = {**config_dict(cfg), "corpus": corpus, **({"snapshots": list(snapshots)} if snapshots else {})}
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(runs_dir) / "exp009" / "pretrain" / f"{name or cfg.objective}-{h}"


def encoder_name(name: str, cfg: PretrainConfig, changes: dict | None = None) -> str:
    "How tables name an encoder: the objective's name, or a variant's objective with what it changes (`changes`)."
    base = OBJECTIVE_NAMES.get(cfg.objective, cfg.objective)
    if name == cfg.objective: return base
    return f"{base} ({', '.join(f'{k} = {v}' for k, v in (changes or {}).items()) or name})"


def _train_one(cfg: PretrainConfig, images, d: Path, corpus_paths: list, digest: str, progress: bool, snapshot_every=None) -> None:
    from derma_jepa.pretrain import pretrain
    out = pretrain(cfg, images, d, progress=progress, snapshot_every=snapshot_every)
    seconds = json.loads((d / "train_seconds.json").read_text())["train_seconds"]      # across resumes
    info = {"seconds": seconds, "images_per_s": round(cfg.steps * cfg.batch_size / max(seconds, 1e-9), 1),
            "dtype": out["dtype"], "n_images": len(corpus_paths), "corpus_digest": digest}
    atomic_write_bytes(d / "train.json", (json.dumps(info, indent=1) + "\n").encode())


def pretrain_job(config: dict, corpus_file: str, out_dir: str, snapshot_every: int | None = None) -> dict:
    "What a pretraining job runs: one objective on the corpus listed in `corpus_file` (JSON), into `out_dir` (resumes)."
    from derma_jepa.pretrain import load_images
    cfg, paths = PretrainConfig(**config), json.loads(Path(corpus_file).read_text())
    _train_one(cfg, load_images(paths, cfg.image_size), Path(out_dir), paths, corpus_digest(paths), False, snapshot_every)
    return json.loads((Path(out_dir) / "train.json").read_text())


def _snapshot_every(snaps: list[int]) -> int | None:
    return math.gcd(*snaps) if snaps else None


def _encoder_rows(name: str, cfg: PretrainConfig, d: Path, snaps: list[int], gflops_per_step: float, changes=None) -> list[dict]:
    "One row per budget of one trained run: the snapshots, then the finished encoder."
    train = json.loads((d / "train.json").read_text())
    f = d / "train_seconds.json"
    total = json.loads(f.read_text())["train_seconds"] if f.exists() else train["seconds"]
    base = {"encoder": encoder_name(name, cfg, changes), "objective": cfg.objective, "seed": cfg.seed, "arch": cfg.arch,
            "image_size": cfg.image_size, "dtype": train["dtype"], "n_images": train["n_images"], "corpus_digest": train["corpus_digest"]}
    rows = []
    for k in [*snaps, cfg.steps]:
        path = d / "encoder.safetensors" if k == cfg.steps else d / "snapshots" / f"step{k:06d}.safetensors"
        sec = total if k == cfg.steps else json.loads(path.with_suffix(".json").read_text())["train_seconds"]
        rows.append({**base, "budget": k / cfg.steps, "steps": k, "images_seen": k * cfg.batch_size,
                     "gflops": round(gflops_per_step * k, 1), "seconds": sec, "path": str(path)})
    return rows


def encoder_label(row: dict, seeds: int = 1) -> str:
    "The plan's and the tables' name of one encoder row: architecture, objective, steps (and the seed when there are several)."
    arch = f"{ARCH_LABEL.get(row['arch'], row['arch'])} @ {row['image_size']} px"
    what = CONTROL if row["objective"] == "none" else f"{row['encoder']} ({row['steps']} steps)"
    return f"{arch}, {what}" + (f", seed {row['seed']}" if seeds > 1 else "")


def pretrain_all(settings: dict, corpus_paths, runs_dir="runs", progress: bool = False, log=print, executor=None) -> pd.DataFrame:
    """Train every objective and variant for every seed (resuming, or reusing finished ones; snapshots at the budgets) and
    export each seed's random-init control; one row per (encoder, seed, budget), labelled. With an `executor`
    (19_executors), each unfinished run is one job (`pretrain` resources), all at once."""
    from derma_jepa.executors import WorkItem
    from derma_jepa.pretrain import load_images, step_cost
    corpus_paths = list(corpus_paths)
    digest, images, runs, items = corpus_digest(corpus_paths), None, [], []
    for seed in settings["seeds"]:
        for name, cfg0 in settings["pretrain"].items():
            if seed not in settings.get("variant_seeds", {}).get(name, [seed]): continue      # a variant run at some seeds only
            cfg = dataclasses.replace(cfg0, seed=seed)
            snaps = [k for k in budget_steps(cfg, settings["budgets"]) if k < cfg.steps]
            d = pretrain_dir(runs_dir, cfg, digest, None if name == cfg.objective else name, snaps)
            runs.append((name, cfg, d, snaps))
            if (d / "encoder.safetensors").exists() and (d / "train.json").exists(): log(f"{name} seed {seed}: finished earlier, reused ({d.name})")
            elif executor is not None:
                corpus_file = Path(runs_dir).resolve() / "exp009" / "jobs" / "pretrain" / f"corpus-{digest[:12]}.json"
                if not corpus_file.exists(): atomic_write_bytes(corpus_file, json.dumps(corpus_paths).encode())
                items.append(WorkItem("pretrain", d.name, "derma_jepa.exp009:pretrain_job",
                                      {"config": config_dict(cfg), "corpus_file": str(corpus_file), "out_dir": str(d.resolve()),
                                       "snapshot_every": _snapshot_every(snaps)}))
            else:
                if images is None or images.shape[-1] != cfg.image_size: images = load_images(corpus_paths, cfg.image_size)
                _train_one(cfg, images, d, corpus_paths, digest, progress, _snapshot_every(snaps))
                log(f"{name} seed {seed}: {cfg.steps} steps trained ({d.name}; wall time and rate in its train.json)")
    for r in (executor.run(items) if items else []):
        if r["state"] != "done": raise DataError(f"pretraining {r['name']}: {r['state']} {r['error']} (log: {r['log']}); run again to resume")
        log(f"{r['name']}: trained as job {r['job_id']} (log: {r['log']})")
    cost, rows = {}, []
    for name, cfg, d, snaps in runs:               # FLOPs per step: counted once per objective and setting, on real images
        key = dataclasses.replace(cfg, seed=0, steps=1)
        if key not in cost: cost[key] = step_cost(cfg, load_images(corpus_paths[:cfg.batch_size], cfg.image_size))["GFLOPs per step"]
        rows += _encoder_rows(name, cfg, d, snaps, cost[key], settings["variants"].get(name))
    cfg0 = next(iter(settings["pretrain"].values()))
    for seed in settings["seeds"]:
        c = dataclasses.replace(cfg0, seed=seed)
        d = pretrain_dir(runs_dir, dataclasses.replace(c, steps=1), digest, "random")
        random_encoder(c, d / "encoder.safetensors")                      # cheap and deterministic: always rewritten
        rows.append({"encoder": CONTROL, "objective": "none", "seed": seed, "arch": c.arch, "image_size": c.image_size,
                     "dtype": "", "n_images": 0, "corpus_digest": "", "budget": 0.0, "steps": 0, "images_seen": 0,
                     "gflops": 0.0, "seconds": 0.0, "path": str(d / "encoder.safetensors")})
    out = pd.DataFrame(rows)
    return out.assign(label=[encoder_label(r, len(settings["seeds"])) for r in out.to_dict("records")])


# %% [markdown]
# Two objectives and a variant, two seeds, a snapshot at half the steps, on fixture images: the
# table names each encoder; a second call reuses them all; every trained encoder differs from the
# control it started from, the seeds' controls differ from each other, and the half-budget
# snapshot differs from the finished encoder; a variant given `seeds` runs at those only; the same
# runs as work items give the same encoders.

# %%
from derma_jepa.data import load_records
from derma_jepa.fixture import fixture_dir
from derma_jepa.pretrain import encoder_digest
_tiny = {"image_size": 48, "patch_size": 8, "batch_size": 8, "warmup": 1, "ckpt_every": 1, "log_every": 1}
_st = load_exp009(objectives=["mae", "ijepa"], pretrain=_tiny, steps={"mae": 2, "ijepa": 2, "simclr_nocolour": 2}, compare=["color_texture"],
                  seeds=[0, 1], budgets=[0.5], variants={"simclr_nocolour": {"objective": "simclr", "colour": False}})
_corpus = list(load_records(fixture_dir(n_lesions=60, seed=7)).path)
_enc = pretrain_all(_st, _corpus, _tmp / "runs")
test_eq(list(zip(_enc.encoder, _enc.seed, _enc.budget)),
        [(e, s, b) for s in (0, 1) for e in ("MAE", "I-JEPA", "SimCLR (colour = False)") for b in (0.5, 1.0)] + [("random init", 0, 0.0), ("random init", 1, 0.0)])
test_eq(_enc.label.iloc[1], "ViT-Ti/16 @ 48 px, MAE (2 steps), seed 0"); test_eq(_enc.label.iloc[0], "ViT-Ti/16 @ 48 px, MAE (1 steps), seed 0")
test_eq(_enc.images_seen.tolist()[:2], [8, 16]); assert (_enc.gflops[_enc.budget.eq(1.0)] > _enc.gflops[_enc.budget.eq(0.5)].to_numpy()).all()
_log = []
test_eq(pretrain_all(_st, _corpus, _tmp / "runs", log=_log.append).path.tolist(), _enc.path.tolist())
assert all("reused" in l for l in _log) and len(_log) == 6, _log
_log = []                                # a variant's `seeds`: trained (here: reused) at those seeds only
_e1 = pretrain_all({**_st, "variant_seeds": {"simclr_nocolour": [1]}}, _corpus, _tmp / "runs", log=_log.append)
test_eq(list(zip(_e1.encoder, _e1.seed, _e1.budget)), [(e, s, b) for s in (0, 1) for e in ("MAE", "I-JEPA", "SimCLR (colour = False)")[:2 + s]
                                                       for b in (0.5, 1.0)] + [("random init", 0, 0.0), ("random init", 1, 0.0)])
test_eq(len(_log), 5)
_d = [encoder_digest(p) for p in _enc.path]
assert len(set(_d)) == len(_d), _d                    # snapshots, finished encoders, seeds and controls all differ
# the same runs as work items (each a job on a cluster; here in this process): the same encoders, bit for bit
from derma_jepa.executors import LocalExecutor
_enc_jobs = pretrain_all(_st, _corpus, _tmp / "runs-jobs", executor=LocalExecutor(_tmp / "runs-jobs" / "jobs"))
test_eq([encoder_digest(p) for p in _enc_jobs.path], _d)
# a single seed without budgets names its folders as before seeds, budgets and variants existed (finished encoders are reused)
_one = load_exp009(objectives=["mae"], pretrain=_tiny, steps={"mae": 2}, seeds=[0], budgets=[1.0], variants={})
_before = {k: v for k, v in dataclasses.asdict(_one["pretrain"]["mae"]).items() if k != "colour"}     # the fields there were
test_eq(pretrain_dir("r", _one["pretrain"]["mae"], "c").name,
        "mae-" + hashlib.sha256(json.dumps({**_before, "corpus": "c"}, sort_keys=True).encode()).hexdigest()[:8])
_enc[["label", "budget", "images_seen", "gflops", "n_images"]]


# %% [markdown]
# ## Steps 3 and 4: what runs
#
# `plan_exp009` turns the encoders and comparisons into plan rows of the same shape as
# `plan.plan_arc` (20_plan), so the arc's machinery runs them (`run_plan`: papermill through `run.ipynb`,
# complete run directories skipped) and reads them (`collect`). The backbone of an encoder row is
# `ssl:<path to encoder.safetensors>`; `label` says what it is.

# %%
#| export
def plan_exp009(settings: dict, encoders: pd.DataFrame, runs_dir="runs", recipe_overrides: dict | None = None) -> pd.DataFrame:
    """One row per (finished encoder, control or comparison; protocol): a validated Config with its run directory, as
    plan.plan_arc, with the encoder's name, pretraining seed and (for a comparison) what the backbone is."""
    final = encoders[encoders.budget.eq(1.0) | encoders.objective.eq("none")]
    backbones = [(f"ssl:{r['path']}", r["label"], r["encoder"], r["seed"], "") for r in final.to_dict("records")]
    backbones += [(b, f"{b} (offline)", b, None, backbone_spec(b).note) for b in settings["compare"]]
    rows = []
    for protocol in settings["protocols"]:
        base = Config.from_yaml(settings["recipe"], **{**dict(recipe_overrides or {}), "protocol": protocol})
        for bb, label, enc, pseed, note in backbones:
            cfg = dataclasses.replace(base, backbone=bb)
            cfg = dataclasses.replace(cfg, run_dir=str(Path(runs_dir) / run_id(cfg)))
            rows.append({"experiment": cfg.experiment or "EXP-009", "file": settings["recipe"].stem, "protocol": protocol,
                         "seed": cfg.seed, "sweep": False, "paper_backbone": bb, "backbone": bb, "stand_in": False,
                         "status": "run", "run_dir": cfg.run_dir, "config": cfg, "label": label, "encoder": enc,
                         "pretrain_seed": pseed, "note": note})
    return pd.DataFrame(rows)


# %%
_plan = plan_exp009(_st, _enc, _tmp / "runs", {"data": "fixture", "pairs_per_split": 30})
test_eq(len(_plan), (3 * 2 + 2 + 1) * 2)             # (3 finished encoders x 2 seeds + 2 controls + color_texture) x 2 protocols
test_eq(_plan.label.tolist()[:3], ["ViT-Ti/16 @ 48 px, MAE (2 steps), seed 0", "ViT-Ti/16 @ 48 px, I-JEPA (2 steps), seed 0",
                                   "ViT-Ti/16 @ 48 px, SimCLR (colour = False) (2 steps), seed 0"])
test_eq(_plan.label.tolist()[6:9], ["ViT-Ti/16 @ 48 px, random init, seed 0", "ViT-Ti/16 @ 48 px, random init, seed 1",
                                    "color_texture (offline)"])
assert _plan.run_dir.str.contains("exp009-reference-ssl_").iloc[:8].all() and _plan.run_dir.is_unique
assert _plan.note.iloc[8].startswith("HSV colour histograms") and not _plan.note.iloc[0]
test_fail(lambda: plan_exp009(_st, _enc, _tmp, {"pairs_per_splt": 3}), contains="did you mean 'pairs_per_split'")
_plan[["label", "protocol", "backbone"]].assign(backbone=lambda d: d.backbone.str.replace(str(_tmp), "<tmp>", regex=False))


# %% [markdown]
# ## The diagnosis probe of every encoder, at every budget
#
# `probe_all` runs 16_probe's `probe_backbone` for each finished encoder and comparison of the plan
# (every label fraction, `draws` subsamples of each below 100%) and for each snapshot (all labels
# only: the budget curve's point); embeddings of the un-processed images come from, and go to, the
# shared cache, so the EXP-004 runs reuse them. Every encoder is scored against **its own seed's**
# random-init control (the same architecture, size and initial weights) on the same lesion-level
# resamples of the test split: the paired Δ that the gate reads.

# %%
#| export
def _probe_rows(plan: pd.DataFrame, encoders: pd.DataFrame) -> pd.DataFrame:
    "The backbones to probe: the plan's (finished encoders, controls, comparisons), then the snapshots; with what each is."
    cols = ["encoder", "objective", "seed", "budget", "steps", "images_seen", "gflops", "seconds", "label"]
    enc = encoders.assign(backbone="ssl:" + encoders.path)[["backbone", *cols]]
    rows = plan.drop_duplicates("backbone")[["backbone", "label", "encoder"]].merge(enc.drop(columns=["label", "encoder"]),
                                                                                  on="backbone", how="left")
    snaps = enc[enc.budget.gt(0) & enc.budget.lt(1)]
    return pd.concat([rows, snaps], ignore_index=True).rename(columns={"seed": "pretrain_seed"})


def probe_all(plan: pd.DataFrame, settings: dict, folder, seed: int, encoders: pd.DataFrame | None = None, log=print) -> pd.DataFrame:
    """The diagnosis probe of every distinct backbone of an EXP-009 plan (and of every snapshot in `encoders`) on the dataset
    `folder`, labelled; with the paired Δ balanced accuracy against the same seed's random-init control on the same
    resamples of test lesions (16_probe)."""
    from derma_jepa.probe import probe_backbone, probe_summary
    none = pd.DataFrame(columns=["path", "encoder", "objective", "seed", "budget", "steps", "images_seen", "gflops", "seconds", "label"])
    rows = _probe_rows(plan, none if encoders is None else encoders)
    pr, preds = settings["probe"], {}
    for k, r in rows.iterrows():
        snap = 0 < r.budget < 1 if pd.notna(r.budget) else False
        preds[k] = probe_backbone(r.backbone, folder, seed, fractions=(1.0,) if snap else tuple(pr["fractions"]),
                                  draws=1 if snap else pr["draws"])
        log(f"probe {r.label}: predictions done")
    ctrl = {r.pretrain_seed: k for k, r in rows.iterrows() if r.encoder == CONTROL}
    out = []
    for k, r in rows.iterrows():
        c = ctrl.get(r.pretrain_seed) if pd.notna(r.pretrain_seed) else None
        out.append(probe_summary(preds[k], pr["n_boot"], seed, None if c in (None, k) else preds[c])
                   .assign(**{col: r[col] for col in rows.columns}))
    return pd.concat(out, ignore_index=True)


# %% [markdown]
# ## The re-photograph endpoint at every budget
#
# The budget curve's second axis: the raw embedding cosine (no predictor) on the real
# re-photographs of the test split, each against its matched changing pair (the EXP-004 recipe's
# endpoint pairs, read from a finished run's manifest: all EXP-009 encoders share one input size,
# so one manifest), AUROC with a percentile bootstrap over context lesions (a lesion's re-photo
# pair and its changing pair go together).

# %%
#| export
def rephoto_cosine(backbone: str, manifest: pd.DataFrame, records: pd.DataFrame, n_boot: int = 200, seed: int = 20260422) -> dict:
    "AUROC [95% CI over context lesions] of 1 − cosine on the test re-photo pairs (stable) against their changing pairs."
    from derma_jepa.backbones import get_backbone
    from derma_jepa.embed import embed_sides, sides_table
    from derma_jepa.metrics import bootstrap_metrics, cluster_counts
    m = manifest[manifest.split.eq("test") & manifest.kind.isin(["rephoto", "rephoto_changing"])].reset_index(drop=True)
    if m.empty: raise DataError("the manifest has no test re-photo pairs (a run with `rephoto: off`?)")
    sides = sides_table(m, records)
    z = embed_sides(get_backbone(backbone), sides)[0]
    at = {k: i for i, k in enumerate(zip(sides.image_id, sides.recipe))}
    c = z[[at[k] for k in zip(m.context_image_id, m.context_recipe)]]
    t = z[[at[k] for k in zip(m.target_image_id, m.target_recipe)]]
    score = 1 - (c * t).sum(1)
    b = bootstrap_metrics(m.label.to_numpy(), score, n_boot, seed, counts=cluster_counts(m.context_lesion_id.to_numpy(),
                                                                                        np.zeros(len(m)), n_boot, seed))
    return {"rephoto_auroc": b["auroc"]["value"], "rephoto_lo": b["auroc"]["ci_low"], "rephoto_hi": b["auroc"]["ci_high"],
            "rephoto_pairs": int(m.kind.eq("rephoto").sum()), "rephoto_lesions": int(m.context_lesion_id.nunique())}


def rephoto_all(plan: pd.DataFrame, encoders: pd.DataFrame, folder, n_boot: int = 200, seed: int = 20260422, log=print) -> pd.DataFrame:
    "`rephoto_cosine` for every encoder row (snapshots, finished encoders, controls), on the manifest of a finished run."
    from derma_jepa.data import load_records
    if encoders.image_size.nunique() != 1: raise DataError(f"encoders of several input sizes {sorted(encoders.image_size.unique())}: one manifest each")
    done = [Path(d) for d, b in zip(plan.run_dir, plan.backbone) if b.startswith("ssl:") and (Path(d) / "metrics.json").exists()]
    if not done: raise DataError("no finished EXP-009 run with an ssl encoder to read the re-photo pairs from (run the plan first)")
    manifest, records = pd.read_parquet(done[0] / "manifest.parquet"), load_records(folder)
    out = []
    for r in encoders.to_dict("records"):
        out.append({**{k: r[k] for k in ("encoder", "seed", "budget", "steps", "images_seen", "gflops", "label")},
                    **rephoto_cosine(f"ssl:{r['path']}", manifest, records, n_boot, seed)})
        log(f"re-photo {r['label']}: AUROC {out[-1]['rephoto_auroc']:.3f}")
    return pd.DataFrame(out).rename(columns={"seed": "pretrain_seed"})


# %% [markdown]
# On fixture data: the probe of every backbone of the plan and of every snapshot, each scored
# against its own seed's control (a control against itself has no Δ; the comparison has none);
# then one EXP-004 run, whose manifest gives the re-photo endpoint of every encoder.

# %%
from derma_jepa.experiment import resolve_data, run
_ref = _plan[_plan.protocol.eq("reference")]
_probe_set = {**_st, "probe": {"fractions": (0.1, 1.0), "draws": 2, "n_boot": 20}}
_pr = probe_all(_ref, _probe_set, fixture_dir(n_lesions=300, seed=0), 20260422, _enc, log=lambda m: None)
test_eq(_pr.drop_duplicates("backbone").shape[0], 9 + 6)          # 9 backbones of the plan, 6 snapshots
test_eq(set(_pr[_pr.budget.eq(0.5)].fraction), {1.0})             # snapshots: all labels only
test_eq(_pr[_pr.label.str.startswith("ViT-Ti/16 @ 48 px, MAE (2 steps)")].groupby("fraction").draw.nunique().to_dict(), {0.1: 2, 1.0: 1})
_d0 = _pr[_pr.fraction.eq(1.0) & _pr.classifier.eq("logistic")].set_index("label")
assert _d0.loc[_d0.encoder.eq(CONTROL), "delta_ba"].isna().all() and pd.isna(_d0.loc["color_texture (offline)", "delta_ba"])
assert _d0.loc[_d0.encoder.ne(CONTROL) & _d0.pretrain_seed.notna(), "delta_ci_low"].notna().all()
_c1 = _pr[_pr.encoder.eq(CONTROL) & _pr.pretrain_seed.eq(1) & _pr.fraction.eq(1.0) & _pr.draw.eq(0)]    # seed 1 against its own control:
_m1 = _pr[_pr.label.eq("ViT-Ti/16 @ 48 px, MAE (2 steps), seed 1") & _pr.fraction.eq(1.0)]
np.testing.assert_allclose(_m1.delta_ba.to_numpy(), _m1.balanced_accuracy.to_numpy() - _c1.balanced_accuracy.to_numpy())
_fx_run = _ref[_ref.backbone.str.startswith("ssl:")].iloc[0]
run(_fx_run.config)
_rp = rephoto_all(_ref.iloc[[0]].assign(run_dir=_fx_run.run_dir), _enc, resolve_data(_fx_run.config), n_boot=20, log=lambda m: None)
test_eq(len(_rp), len(_enc)); assert _rp.rephoto_auroc.between(0, 1).all() and (_rp.rephoto_lo <= _rp.rephoto_hi).all()
assert _rp.rephoto_pairs.gt(0).all()
test_fail(lambda: rephoto_all(_ref.assign(run_dir=str(_tmp / "nowhere")), _enc, "."), contains="no finished EXP-009 run")
_rp[["label", "images_seen", "rephoto_auroc", "rephoto_lo", "rephoto_hi", "rephoto_pairs"]].round(3)

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
# 3. **probe** (16_probe): the 7 diagnoses from frozen embeddings. This is the **gate**: a
#    pretraining whose balanced accuracy does not exceed its random-init control's learned nothing
#    worth interpreting downstream, and its row is flagged as such in the table.
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
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from derma_jepa.backbones import backbone_spec
from derma_jepa.data import ConfigError, DataError, atomic_write_bytes, experiments_dir
from derma_jepa.executors import check_resources
from derma_jepa.experiment import Config, run_id
from derma_jepa.split import PROTOCOLS
from derma_jepa.pretrain import OBJECTIVES, PretrainConfig, random_encoder
from derma_jepa.safety import load_checkpoint, load_yaml, write_marked_dir
from derma_jepa.plan import parse_backbones
from derma_jepa.render import PALETTE, figure_tex, paper_style

# %%
from fastcore.test import test_eq, test_fail
import tempfile

# %% [markdown]
# ## The settings
#
# `load_exp009` reads the settings file, applies overrides (papermill's parameters), and checks
# everything before any work: an unknown key, objective, protocol or comparison backbone, a
# pretraining parameter `PretrainConfig` does not have, or an unset `$VARIABLE` is one error
# naming the file and the value.

# %%
#| export
KEYS = ("recipe", "corpus", "holdout", "objectives", "pretrain", "steps", "protocols", "compare", "probe", "audit", "resources")


def _expand(value: str, what: str, path) -> str:
    out = os.path.expandvars(os.path.expanduser(str(value)))
    if "$" in out: raise ConfigError(f"{path}: {what} {value!r}: the environment variable is not set")
    return out


def load_exp009(path=None, **overrides) -> dict:
    "EXP-009's settings (`exp009_pretrain.yaml`), overrides applied, validated; `pretrain` becomes one PretrainConfig per objective."
    path = Path(path or experiments_dir() / "exp009_pretrain.yaml")
    if not path.exists(): raise ConfigError(f"EXP-009 settings file {path} not found")
    s = load_yaml(path)
    s = {**s, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(s) - set(KEYS))
    if unknown: raise ConfigError(f"{path}: {unknown[0]!r} is not an EXP-009 setting (settings: {', '.join(KEYS)})")
    objs = list(s.get("objectives") or [])
    for o in objs:
        if o not in OBJECTIVES: raise ConfigError(f"{path}: unknown objective {o!r} (objectives: {', '.join(OBJECTIVES)})")
    for p in s.get("protocols") or []:
        if p not in PROTOCOLS: raise ConfigError(f"{path}: unknown protocol {p!r} (protocols: {', '.join(PROTOCOLS)})")
    steps = dict(s.get("steps") or {})
    for o in set(steps) - set(objs): raise ConfigError(f"{path}: steps given for {o!r}, which is not among the objectives")
    cfgs = {}
    for o in objs:
        try: cfgs[o] = PretrainConfig(objective=o, **{**dict(s.get("pretrain") or {}), **({"steps": steps[o]} if o in steps else {})})
        except TypeError as e: raise ConfigError(f"{path}: pretrain: {e}".replace("PretrainConfig.__init__() ", "")) from None
        except DataError as e: raise ConfigError(f"{path}: {e}") from None
    holdout = [str(h) for h in (s.get("holdout") or [])]
    for h in holdout:
        if Path(h).is_absolute() or ".." in Path(h).parts: raise ConfigError(f"{path}: holdout {h!r}: give a folder inside the corpus")
    recipe = Path(path).parent / f"{s.get('recipe', 'exp009')}.yaml"
    if not recipe.exists(): raise ConfigError(f"{path}: recipe {recipe} not found")
    return {"file": str(path), "recipe": recipe, "corpus": _expand(s.get("corpus", ""), "corpus", path), "holdout": holdout, "objectives": objs,
            "pretrain": cfgs, "protocols": list(s.get("protocols") or ["symmetric"]),
            "compare": parse_backbones(",".join(s.get("compare") or [])) if s.get("compare") else [],
            "probe": {"fractions": (0.01, 0.1, 1.0), "n_boot": 200, **dict(s.get("probe") or {})},
            "audit": {"n_pos": 1000, "n_neg": 500_000, **dict(s.get("audit") or {})},
            "resources": check_resources(s.get("resources"), f"{path}: resources")}


# %%
os.environ.setdefault("ISIC_NONHAM_DIR", "/corpus")            # the shipped file reads $ISIC_NONHAM_DIR
_s = load_exp009()
assert {"mae", "vae", "simclr", "ijepa"} <= set(_s["objectives"]) <= set(OBJECTIVES)      # the shipped file: every objective known
test_eq({o: c.steps for o, c in _s["pretrain"].items()}, dict.fromkeys(_s["objectives"], 320))   # equal images seen
test_eq(len({dataclasses.replace(c, objective="mae", steps=1) for c in _s["pretrain"].values()}), 1)   # one shared recipe
_gpu = load_exp009(experiments_dir() / "exp009_pretrain_vits16.yaml")       # the GPU configuration (issue 29) reads as well
test_eq({(c.arch, c.image_size, c.steps * c.batch_size) for c in _gpu["pretrain"].values()}, {("vit_small_patch16_224", 224, 512_000)})
test_eq(_gpu["resources"]["pretrain"]["gpus"], 1)
_tmp = Path(tempfile.mkdtemp())
for _bad, _msg in [({"objectives": ["mae", "byol"]}, "unknown objective 'byol'"), ({"protocols": ["leaky"]}, "unknown protocol 'leaky'"),
                   ({"compare": ["clip_vitb16"]}, "'clip_vitb16' is a hub backbone"), ({"objective": ["mae"]}, "'objective' is not an EXP-009 setting"),
                   ({"pretrain": {"lr": 1e-3, "epochs": 3}}, "unexpected keyword argument 'epochs'"),
                   ({"steps": {"dino": 3}}, "steps given for 'dino'"), ({"corpus": "$NO_SUCH_DIR_VAR"}, "not set"),
                   ({"holdout": ["../isic2017/val"]}, "holdout '../isic2017/val': give a folder inside the corpus")]:
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
    ex = [{"path": r["path_b"], "reason": "exact copy of " + Path(r["path_a"]).name} for r in report["exact_pairs"]]
    ex += [{"path": r.path_b, "reason": f"near-duplicate of {Path(r.path_a).name} (similarity {r.similarity:.3f})"}
           for r in report["near_pairs"].itertuples()]
    for h in holdout:
        under = [str(p) for p in paths if Path(p).is_relative_to(Path(corpus) / h)]
        if not under: raise DataError(f"holdout {h!r}: no corpus image under {Path(corpus) / h}")
        ex += [{"path": p, "reason": f"{HELD_OUT} ({h})"} for p in under]
    excluded = pd.DataFrame(ex, columns=["path", "reason"]).drop_duplicates("path", ignore_index=True)
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
test_eq(_ex.reason.iloc[-1], f"{HELD_OUT} (isic2017/val)")
test_fail(lambda: audited_corpus(["/c/x.jpg"], _rep, ["isic2017/test"], "/c"), contains="holdout 'isic2017/test': no corpus image under /c/isic2017/test")


# %% [markdown]
# ## Step 2: pretraining every objective, and the random-init control
#
# Each objective trains in its own folder, named by the objective, a hash of its configuration
# and the corpus digest, so a changed setting or corpus never resumes from, or reuses, another's
# checkpoint. A finished folder (its `encoder.safetensors` and `train.json`) is reused; an interrupted one
# resumes from `state.safetensors`. `train.json` records the wall time, throughput, dtype and corpus.

# %%
#| export
def pretrain_dir(runs_dir, cfg: PretrainConfig, corpus: str, name: str | None = None) -> Path:
    h = hashlib.sha256(json.dumps({**dataclasses.asdict(cfg), "corpus": corpus}, sort_keys=True).encode()).hexdigest()[:8]
    return Path(runs_dir) / "exp009" / "pretrain" / f"{name or cfg.objective}-{h}"


def _train_one(cfg: PretrainConfig, images, d: Path, corpus_paths: list, digest: str, progress: bool) -> None:
    from derma_jepa.pretrain import pretrain
    t0 = time.perf_counter()
    out = pretrain(cfg, images, d, progress=progress)
    info = {"seconds": round(time.perf_counter() - t0, 1), "images_per_s": round(out["images_per_s"], 1),
            "dtype": out["dtype"], "n_images": len(corpus_paths), "corpus_digest": digest}
    atomic_write_bytes(d / "train.json", (json.dumps(info, indent=1) + "\n").encode())


def pretrain_job(config: dict, corpus_file: str, out_dir: str) -> dict:
    "What a pretraining job runs: one objective on the corpus listed in `corpus_file` (JSON), into `out_dir` (resumes)."
    from derma_jepa.pretrain import load_images
    cfg, paths = PretrainConfig(**config), json.loads(Path(corpus_file).read_text())
    _train_one(cfg, load_images(paths, cfg.image_size), Path(out_dir), paths, corpus_digest(paths), False)
    return json.loads((Path(out_dir) / "train.json").read_text())


def pretrain_all(settings: dict, corpus_paths, runs_dir="runs", progress: bool = False, log=print, executor=None) -> pd.DataFrame:
    """Train every objective (resuming, or reusing finished ones) and export the random-init control; one row per encoder.
    With an `executor` (19_executors), each unfinished objective is one job (`pretrain` resources), all at once."""
    from derma_jepa.executors import WorkItem
    from derma_jepa.pretrain import load_images
    corpus_paths = list(corpus_paths)
    digest, images, rows, items = corpus_digest(corpus_paths), None, [], []
    for obj, cfg in settings["pretrain"].items():
        d = pretrain_dir(runs_dir, cfg, digest)
        if (d / "encoder.safetensors").exists() and (d / "train.json").exists(): log(f"{obj}: finished earlier, reused ({d.name})")
        elif executor is not None:
            corpus_file = Path(runs_dir).resolve() / "exp009" / "jobs" / "pretrain" / f"corpus-{digest[:12]}.json"
            if not corpus_file.exists(): atomic_write_bytes(corpus_file, json.dumps(corpus_paths).encode())
            items.append(WorkItem("pretrain", d.name, "derma_jepa.exp009:pretrain_job",
                                  {"config": dataclasses.asdict(cfg), "corpus_file": str(corpus_file), "out_dir": str(d.resolve())}))
        else:
            if images is None or images.shape[-1] != cfg.image_size: images = load_images(corpus_paths, cfg.image_size)
            _train_one(cfg, images, d, corpus_paths, digest, progress)
            log(f"{obj}: {cfg.steps} steps trained ({d.name}; wall time and rate in its train.json)")
    for r in (executor.run(items) if items else []):
        if r["state"] != "done": raise DataError(f"pretraining {r['name']}: {r['state']} {r['error']} (log: {r['log']}); run again to resume")
        log(f"{r['name']}: trained as job {r['job_id']} (log: {r['log']})")
    for obj, cfg in settings["pretrain"].items():
        d = pretrain_dir(runs_dir, cfg, digest)
        rows.append({"encoder": obj, "objective": obj, "steps": cfg.steps, "images_seen": cfg.steps * cfg.batch_size,
                     "path": str(d / "encoder.safetensors"), **json.loads((d / "train.json").read_text())})
    cfg0 = next(iter(settings["pretrain"].values()))
    d = pretrain_dir(runs_dir, dataclasses.replace(cfg0, steps=1), digest, "random")
    random_encoder(cfg0, d / "encoder.safetensors")                      # cheap and deterministic: always rewritten
    rows.append({"encoder": "random init", "objective": "none", "steps": 0, "images_seen": 0, "path": str(d / "encoder.safetensors"),
                 "seconds": 0.0, "n_images": 0, "corpus_digest": ""})
    return pd.DataFrame(rows)


# %% [markdown]
# Two objectives, two steps, on fixture images: the table names each encoder, a second call
# reuses both, and every trained encoder differs from the control it started from.

# %%
from derma_jepa.data import load_records
from derma_jepa.fixture import fixture_dir
from derma_jepa.pretrain import encoder_digest
_tiny = {"image_size": 48, "patch_size": 8, "batch_size": 8, "warmup": 1, "ckpt_every": 1, "log_every": 1}
_st = load_exp009(objectives=["mae", "ijepa"], pretrain=_tiny, steps={"mae": 2, "ijepa": 2}, compare=["color_texture"])
_corpus = list(load_records(fixture_dir(n_lesions=60, seed=7)).path)
_enc = pretrain_all(_st, _corpus, _tmp / "runs")
test_eq(list(_enc.encoder), ["mae", "ijepa", "random init"])
_log = []
test_eq(pretrain_all(_st, _corpus, _tmp / "runs", log=_log.append).path.tolist(), _enc.path.tolist())
assert all("reused" in l for l in _log), _log
_d = [encoder_digest(p) for p in _enc.path]
assert len(set(_d)) == 3, _d
# the same objectives as work items (each a job on a cluster; here in this process): the same encoders, bit for bit
from derma_jepa.executors import LocalExecutor
_enc_jobs = pretrain_all(_st, _corpus, _tmp / "runs-jobs", executor=LocalExecutor(_tmp / "runs-jobs" / "jobs"))
test_eq([encoder_digest(p) for p in _enc_jobs.path], _d)
_enc[["encoder", "steps", "images_seen", "n_images"]]

# %% [markdown]
# ## Steps 3 and 4: what runs
#
# `plan_exp009` turns the encoders and comparisons into plan rows of the same shape as
# `plan.plan_arc` (20_plan), so the arc's machinery runs them (`run_plan`: papermill through `run.ipynb`,
# complete run directories skipped) and reads them (`collect`). The backbone of an encoder row is
# `ssl:<path to encoder.safetensors>`; `label` says what it is.

# %%
#| export
ARCH_LABEL = {"vit_tiny_patch16_224": "ViT-Ti/16", "vit_small_patch16_224": "ViT-S/16"}


def encoder_label(row: dict, cfg: PretrainConfig) -> str:
    arch = f"{ARCH_LABEL.get(cfg.arch, cfg.arch)} @ {cfg.image_size} px"
    return f"{arch}, random init" if row["objective"] == "none" else f"{arch}, {row['objective'].upper()} ({row['steps']} steps)"


def plan_exp009(settings: dict, encoders: pd.DataFrame, runs_dir="runs", recipe_overrides: dict | None = None) -> pd.DataFrame:
    "One row per (encoder or comparison, protocol): a validated Config with its run directory, as plan.plan_arc."
    cfg0 = next(iter(settings["pretrain"].values()))
    backbones = [(f"ssl:{r['path']}", encoder_label(r, cfg0), r["encoder"]) for r in encoders.to_dict("records")]
    backbones += [(b, f"{b} (offline)", b) for b in settings["compare"]]
    rows = []
    for protocol in settings["protocols"]:
        base = Config.from_yaml(settings["recipe"], **{**dict(recipe_overrides or {}), "protocol": protocol})
        for bb, label, enc in backbones:
            cfg = dataclasses.replace(base, backbone=bb)
            cfg = dataclasses.replace(cfg, run_dir=str(Path(runs_dir) / run_id(cfg)))
            rows.append({"experiment": cfg.experiment or "EXP-009", "file": settings["recipe"].stem, "protocol": protocol,
                         "seed": cfg.seed, "sweep": False, "paper_backbone": bb, "backbone": bb, "stand_in": False,
                         "status": "run", "run_dir": cfg.run_dir, "config": cfg, "label": label, "encoder": enc})
    return pd.DataFrame(rows)


# %%
_plan = plan_exp009(_st, _enc, _tmp / "runs", {"data": "fixture", "pairs_per_split": 30})
test_eq(len(_plan), (3 + 1) * 2)                                   # (2 objectives + control + color_texture) x 2 protocols
test_eq(_plan.label.tolist()[:4], ["ViT-Ti/16 @ 48 px, MAE (2 steps)", "ViT-Ti/16 @ 48 px, IJEPA (2 steps)",
                               "ViT-Ti/16 @ 48 px, random init", "color_texture (offline)"])
assert _plan.run_dir.str.contains("exp009-reference-ssl_").iloc[:3].all() and _plan.run_dir.is_unique
test_fail(lambda: plan_exp009(_st, _enc, _tmp, {"pairs_per_splt": 3}), contains="did you mean 'pairs_per_split'")
_plan[["label", "protocol", "backbone"]].assign(backbone=lambda d: d.backbone.str.replace(str(_tmp), "<tmp>", regex=False))

# %% [markdown]
# ## The diagnosis probe of every encoder
#
# `probe_all` runs 16_probe's `probe_backbone` for each backbone of the plan (embeddings of the
# un-processed images come from, and go to, the shared cache, so the EXP-004 runs reuse them) and
# scores every encoder against the plan's random-init control (the `random init` encoder, same
# architecture, size and initial weights) on the same lesion-level resamples of the test split.

# %%
#| export
CONTROL = "random init"          # the plan's encoder that is the untrained control


def probe_all(plan: pd.DataFrame, settings: dict, folder, seed: int, log=print) -> pd.DataFrame:
    """The diagnosis probe of every distinct backbone of an EXP-009 plan on the dataset `folder`, labelled; with the
    paired Δ balanced accuracy against the random-init control on the same resamples of test lesions (16_probe)."""
    from derma_jepa.probe import probe_backbone, probe_summary
    rows, preds = plan.drop_duplicates("backbone"), {}
    for k, r in rows.iterrows():
        preds[k] = probe_backbone(r.backbone, folder, seed, fractions=tuple(settings["probe"]["fractions"]))
        log(f"probe {r.label}: predictions done")
    ctrl = next((k for k, e in rows.encoder.items() if e == CONTROL), None)
    out = [probe_summary(preds[k], settings["probe"]["n_boot"], seed, None if ctrl in (None, k) else preds[ctrl])
           .assign(label=r.label, encoder=r.encoder, backbone=r.backbone) for k, r in rows.iterrows()]
    return pd.concat(out, ignore_index=True)


# %% [markdown]
# ## The tables
#
# - **EXP-009**: a row per encoder (the pretrained ones, their random-init control, the offline
#   comparisons): its budget (steps, images seen, passes over the corpus), the linear probe's
#   balanced accuracy at 100% labels with its lesion-level CI, the paired Δ against the random-init
#   control with its interval, and the **gate**, read from that interval only: *passed* (the whole
#   interval above 0), *below random init* (the whole interval below 0), *did not beat random init*
#   (the interval holds 0: on this probe, at this budget, the encoder is not shown to differ from
#   its untrained self; that is not evidence that it learned nothing).
# - **EXP-004 recipe**: a row per (encoder, protocol), the arc table's columns (13_report
#   `arc_cells`): the predictor's synthetic test AUROC (marked *below chance* when its whole CI is
#   under 0.5: under `reference` that is the leak working against an encoder, not a weak encoder),
#   the strongest baseline, Δ and the verdict (the release's rule under `reference`, labelled so),
#   **both single-side probes** (target-only, context-only: the leak made visible, per encoder), and
#   the **re-photo endpoint** with its Δ against the val-chosen baseline and its verdict.
# - **probe**: balanced accuracy and macro AUROC of both classifiers at every label fraction.

# %%
#| export
def probe_gate(delta_lo: float, delta_hi: float) -> str:
    "The probe gate from the paired interval of Δ balanced accuracy (encoder − random-init control)."
    if delta_lo > 0: return "passed"
    return "below random init" if delta_hi < 0 else "did not beat random init"


def _probe_cell(p: pd.DataFrame, label: str, clf: str = "logistic", fraction: float = 1.0):
    q = p[(p.label == label) & (p.classifier == clf) & np.isclose(p.fraction, fraction)] if len(p) else p
    return None if q.empty else q.iloc[0]


def exp009_table(probes: pd.DataFrame, plan: pd.DataFrame, encoders: pd.DataFrame) -> pd.DataFrame:
    "EXP-009 by encoder: pretraining and the diagnosis probe against the random-init control (paired, lesion-level)."
    from derma_jepa.report import fmt_ci
    enc = {f"ssl:{r['path']}": r for r in encoders.to_dict("records")}
    rows = {}
    for bb, label in dict(zip(plan.backbone, plan.label)).items():
        r, q = enc.get(bb), _probe_cell(probes, label)
        has_delta = q is not None and not pd.isna(q.get("delta_ba", np.nan))
        rows[label] = {"pretraining": ("–" if r is None else "random init" if r["objective"] == "none" else
                                       f"{r['steps']} steps, {r['images_seen']:,} images seen "
                                       f"({r['images_seen'] / r['n_images']:.1f} passes)"),
                       "probe: balanced acc. [95% CI]": "–" if q is None else fmt_ci(q.balanced_accuracy, q.ba_ci_low, q.ba_ci_high),
                       "Δ vs random init [95% CI, paired]": (f"{q.delta_ba:+.3f} [{q.delta_ci_low:+.3f}, {q.delta_ci_high:+.3f}]"
                                                             if has_delta else "–"),
                       "gate": probe_gate(q.delta_ci_low, q.delta_ci_high) if has_delta and r is not None else "–"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("encoder")


def exp009_recipe_table(long: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
    "The EXP-004 recipe per (encoder, protocol): 13_report's arc columns (synthetic, both single-side probes, re-photo)."
    from derma_jepa.report import ARC_COLUMNS, arc_cells
    by_bb = dict(zip(plan.backbone, plan.label))
    rows = {}
    for (bb, prot), g in long.groupby(["backbone", "protocol"], sort=False) if len(long) else []:
        t = g[g.split.eq("test")] if "split" in g else g.iloc[:0]
        if t.empty: rows[(by_bb[bb], prot)] = {ARC_COLUMNS[0]: g.status.iloc[0]}; continue
        cells = arc_cells(t)
        if t.set_index("scorer").loc["predictor"].auroc_hi < 0.5: cells[ARC_COLUMNS[0]] += " (below chance)"
        rows[(by_bb[bb], prot)] = cells
    df = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(ARC_COLUMNS)).astype(object).fillna("–")
    df.index.names = ["encoder", "protocol"]
    return df


def probe_table(probes: pd.DataFrame) -> pd.DataFrame:
    "Balanced accuracy and macro AUROC [95% CI] per encoder, classifier and label fraction."
    from derma_jepa.report import fmt_ci
    p = probes.assign(fraction=lambda d: [f"{f:.0%} labels" for f in d.fraction],
                      ba=lambda d: [fmt_ci(*v) for v in zip(d.balanced_accuracy, d.ba_ci_low, d.ba_ci_high)],
                      auc=lambda d: [fmt_ci(*v) for v in zip(d.macro_auroc, d.auroc_ci_low, d.auroc_ci_high)])
    t = p.pivot_table(index=["label", "classifier"], columns="fraction", values=["ba", "auc"], aggfunc="first", sort=False)
    t = t.rename(columns={"ba": "balanced accuracy", "auc": "macro AUROC"}, level=0)
    t.index.names = ["encoder", "classifier"]
    return t


# %% [markdown]
# A synthetic long table (two encoders, the control and an offline comparison, two protocols) and
# synthetic probe rows check the cells: the gate reads the paired interval (MAE's lies above 0,
# I-JEPA's holds 0), the control and the offline comparison get no gate, un-run rows keep their
# status.

# %%
from derma_jepa.report import collect

def _fake(bb, prot, auroc):
    run = dict(experiment="EXP-009", protocol=prot, seed=20260422, sweep=False, backbone=bb, stand_in=False, status="run",
               split="test", strongest_baseline="pixel_l2", delta=-0.05, delta_lo=-0.08, delta_hi=-0.02, verdict="worse",
               bootstrap_unit="pair" if prot == "reference" else "context lesion", rephoto_baseline="ssim",
               rephoto_verdict="did not beat", rephoto_delta_best=0.01, rephoto_delta_best_lo=-0.02, rephoto_delta_best_hi=0.04)
    return [dict(run, scorer=sc, auroc=auroc + d, auroc_lo=auroc + d - 0.02, auroc_hi=auroc + d + 0.02,
                 rephoto_auroc=0.6 + d, rephoto_lo=0.57 + d, rephoto_hi=0.63 + d)
            for sc, d in (("predictor", 0.0), ("pixel_l2", 0.05), ("target_only_probe", 0.2), ("context_only_probe", 0.0))]

_labels = dict(zip(_plan.backbone, _plan.label))
_long = pd.DataFrame([r for bb, au in zip(_plan.backbone.unique(), (0.7, 0.66, 0.45, 0.65)) for prot in ("reference", "symmetric")
                      for r in _fake(bb, prot, au)])
_probes = pd.concat([pd.DataFrame({"classifier": c, "fraction": f, "balanced_accuracy": ba + 0.01 * k, "ba_ci_low": ba - 0.02,
                                   "ba_ci_high": ba + 0.03, "macro_auroc": 0.8, "auroc_ci_low": 0.78, "auroc_ci_high": 0.82,
                                   "delta_ba": np.nan if d is None else d, "delta_ci_low": np.nan if d is None else d - 0.03,
                                   "delta_ci_high": np.nan if d is None else d + 0.03, "label": _labels[bb]}, index=[0])
                     for bb, ba, d in zip(_plan.backbone.unique(), (0.40, 0.32, 0.30, 0.33), (0.10, 0.02, None, 0.03))
                     for c in ("logistic", "knn") for k, f in enumerate((0.01, 0.1, 1.0))], ignore_index=True)
_t = exp009_table(_probes, _plan, _enc)
_mae, _ij, _rnd = "ViT-Ti/16 @ 48 px, MAE (2 steps)", "ViT-Ti/16 @ 48 px, IJEPA (2 steps)", "ViT-Ti/16 @ 48 px, random init"
test_eq(_t.loc[_mae, "Δ vs random init [95% CI, paired]"], "+0.100 [+0.070, +0.130]")
test_eq(_t.loc[_mae, "gate"], "passed")
test_eq(_t.loc[_ij, "gate"], "did not beat random init")
test_eq(_t.loc[_rnd, "gate"], "–"); test_eq(_t.loc[_rnd, "Δ vs random init [95% CI, paired]"], "–")
test_eq(_t.loc["color_texture (offline)", "pretraining"], "–"); test_eq(_t.loc["color_texture (offline)", "gate"], "–")
test_eq([probe_gate(0.01, 0.2), probe_gate(-0.2, -0.01), probe_gate(-0.01, 0.01)],
        ["passed", "below random init", "did not beat random init"])
_rt = exp009_recipe_table(_long, _plan)
test_eq(_rt.loc[(_rnd, "symmetric"), "predictor AUROC [95% CI]"], "0.450 [0.430, 0.470] (below chance)")
test_eq(_rt.loc[(_mae, "reference"), "verdict"], "worse (release rule)")
test_eq(_rt.loc[(_mae, "symmetric"), "Δ [95% CI]"], "-0.050 [-0.080, -0.020]")
test_eq(_rt.loc[(_mae, "symmetric"), "target-only probe"], "0.900 [0.880, 0.920]")
test_eq(_rt.loc[(_mae, "symmetric"), "re-photo Δ [95% CI] vs val-chosen baseline: verdict"], "+0.010 [-0.020, +0.040] vs SSIM: did not beat")
test_eq(len(_rt), 8)
test_eq(probe_table(_probes).shape, (8, 6))
_none = exp009_recipe_table(collect(_plan), _plan)          # nothing ran yet: every row still listed, with its status
test_eq(_none.loc[(_mae, "symmetric"), "predictor AUROC [95% CI]"], "not run: no metrics.json")
test_eq(exp009_table(_probes.iloc[:0], _plan, _enc).loc[_mae, "gate"], "–")
_t

# %%
_rt


# %% [markdown]
# ## The figures
#
# - **pretraining**: each objective's loss and the collapse monitor (batch std of the normalised
#   features; ≈ 1/√d when spread, d = 192 for ViT-Ti's tokens and 64 for the VAE's μ; → 0 when
#   collapsed) against steps.
# - **by encoder**: the diagnosis probe's balanced accuracy at each label fraction, and the EXP-004
#   recipe's test AUROC with CI per protocol, next to the raw cosine and pixel L2.

# %%
#| export
def fig_pretraining(encoders: pd.DataFrame):
    import matplotlib.pyplot as plt
    trained = encoders[encoders.objective.ne("none")]
    if trained.empty: return None
    fig, axes = plt.subplots(2, len(trained), figsize=(min(11.5, 1.0 + 2.6 * len(trained)), 5.2), squeeze=False)   # fits the page
    for k, r in enumerate(trained.itertuples()):
        tensors, meta = load_checkpoint(r.path)
        h = pd.DataFrame(meta["history"])
        dim = tensors["head.weight"].shape[0] // 2 if "head.weight" in tensors else tensors["encoder.pos_embed"].shape[-1]  # the monitored feature
        axes[0][k].plot(h.step, h.loss); axes[0][k].set_title(f"{r.objective}: loss", fontsize=10)
        axes[0][k].set_ylabel("training loss (the objective's own scale)" if k == 0 else "", fontsize=9.5)
        axes[1][k].plot(h.step, h.feature_std, color=PALETTE[1])
        axes[1][k].axhline(1 / np.sqrt(dim), color="grey", ls=":", lw=0.8, label=f"1/√{dim} (spread)")
        axes[1][k].set_ylim(0, 1.15 * max(h.feature_std.max(), 1 / np.sqrt(dim)))
        axes[1][k].legend(fontsize=9.5, loc="lower right")
        axes[1][k].set_title(f"{r.objective}: collapse monitor", fontsize=10); axes[1][k].set_xlabel("optimiser step", fontsize=9.5)
        axes[1][k].set_ylabel("batch std of normalised features" if k == 0 else "", fontsize=9.5)
        for ax in (axes[0][k], axes[1][k]): ax.tick_params(labelsize=9.5)
    fig.tight_layout()
    return fig


def fig_by_encoder(long: pd.DataFrame, probes: pd.DataFrame, plan: pd.DataFrame, scorers=("predictor", "identity", "pixel_l2")):
    "Per encoder (rows): the diagnosis probe by label fraction, then the EXP-004 recipe's test AUROC per protocol."
    import matplotlib.pyplot as plt
    from derma_jepa.report import scorer_label
    labels = list(dict.fromkeys(plan.label))
    prots = list(dict.fromkeys(plan.protocol))
    height = 2.2 + 0.42 * len(labels)                    # the rows, then titles, axis labels and the legends below
    fig, axes = plt.subplots(1, 1 + len(prots), figsize=(11, height), squeeze=False, sharey=True)
    ax = axes[0][0]
    q = probes[probes.classifier.eq("logistic")] if len(probes) else probes
    for k, (f, g) in enumerate(q.groupby("fraction")):
        g = g.set_index("label").reindex(labels)
        ax.errorbar(g.balanced_accuracy, np.arange(len(labels)) + (k - 1) * 0.2, xerr=[g.balanced_accuracy - g.ba_ci_low,
                    g.ba_ci_high - g.balanced_accuracy], fmt="o", ms=4, capsize=2, label=f"{f:.0%}")
    ax.axvline(1 / 7, color="k", ls=":", lw=0.8); ax.set_title("diagnosis probe\n(logistic regression)", fontsize=10.5)
    ax.set_xlabel("test balanced accuracy (95% CI)\nchance 1/7 dotted", fontsize=9.5)
    ax.set_yticks(range(len(labels)), labels, fontsize=9.5); ax.invert_yaxis()
    ax.legend(fontsize=9.5, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=3, title="training labels used", title_fontsize=9.5,
              frameon=False)
    t = long[long.split.eq("test") & long.scorer.isin(scorers)].assign(label=lambda d: d.backbone.map(dict(zip(plan.backbone, plan.label))))
    colours = dict(zip(scorers, PALETTE))
    for ax, prot in zip(axes[0][1:], prots):
        for k, sc in enumerate(scorers):
            s = t[t.protocol.eq(prot) & t.scorer.eq(sc)].set_index("label").reindex(labels)
            ax.errorbar(s.auroc, np.arange(len(labels)) + (k - 1) * 0.2, xerr=[s.auroc - s.auroc_lo, s.auroc_hi - s.auroc],
                        fmt="o", ms=4, capsize=2, color=colours[sc], label=scorer_label(sc))
        ax.axvline(0.5, color="k", ls=":", lw=0.8); ax.set_title(f"the EXP-004 recipe,\n{prot} protocol", fontsize=10.5)
        ax.set_xlabel("test AUROC, stable vs changing\n(95% CI); chance 0.5 dotted", fontsize=9.5)
        ax.set_xlim(0.2, 1.0); ax.set_xticks([0.25, 0.5, 0.75, 1.0])
    axes[0][1].legend(fontsize=9.5, loc="upper center", bbox_to_anchor=(1.05, -0.32), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


# %%
fig_pretraining(_enc);

# %%
fig_by_encoder(_long, _probes, _plan);

# %% [markdown]
# ## Rendering into paper/
#
# `render_exp009` writes `paper/exp009/` in one move: `exp009.tex` (the section `main.tex` inputs
# when it exists), the tables as Markdown and LaTeX, the figures, the audit's verdict and the
# corpus images it excluded, and `runs.md` naming every run directory (each with its executed
# `run.ipynb`) and every encoder checkpoint. Nothing in it depends on the time of rendering.

# %%
#| export
EXP009_TEX = r"""\section{EXP-009: self-supervised dermoscopy pretraining without HAM10000}
\noindent Corpus: %(n_corpus)d dermoscopy images not in HAM10000 (%(excluded)d left out by the overlap audit%(held)s). Audit: %(verdict)s
Each objective trains the same %(arch)s from the same initial weights for the same number of images seen (%(budget)s); the minutes each took on this machine are in the table; ``random init'' is that initial encoder, untrained.
The diagnosis probe is a logistic regression on frozen embeddings of un-processed HAM10000 images (lesion-aware split, all training labels), scored by balanced accuracy on the test split (chance $1/7$); its intervals resample test lesions, each with all its images. It is the gate: $\Delta$ balanced accuracy against the random-init control is computed on the same lesion resamples for both (a paired percentile interval); ``passed'' means the whole interval lies above 0, ``below random init'' the whole interval below 0, and ``did not beat random init'' an interval that holds 0: on this probe, at this pretraining budget, the encoder is not shown to differ from its untrained self, which is not evidence that it learned nothing.
The EXP-004 recipe trains the predictor on two nuisance families and tests it on the third (second table: one row per encoder and protocol). An AUROC whose whole interval lies below 0.5 is marked ``below chance'': under the reference protocol that is the leak working against the encoder (its processed stable targets look further from their contexts than unprocessed changing pairs), not an encoder that merely failed to beat a baseline. Beside it, both single-side probes (a target-only probe far above 0.5 is the leak, per encoder) and the real re-photograph endpoint, the same pairs under both protocols, with $\Delta$ against the baseline chosen on its validation split.%(compare)s
\input{exp009/exp009_table.tex}
\input{exp009/recipe_table.tex}
\input{exp009/probe_table.tex}
%(maps)s
%(figures)s
"""
MAPS_TEX = r"""Where each encoder looks, and whether what it learned carries to another collection (24\_featuremaps): the last block's attention over the patches of %(n)d HAM10000 test images with segmentation masks, as the share that falls on the lesion against the lesion's share of the image (the lift: 1 when attention ignores where the lesion is), with 95\%% percentile intervals over images; and a logistic probe for melanoma against the six other diagnoses, fitted on the HAM10000 train split and scored on the ISIC 2017 validation images by AUROC (95\%% percentile interval over those images, which carry no lesion ids). The last column counts the transfer images the encoder's pretraining corpus held, unlabelled.
\input{exp009/featuremaps_table.tex}"""
EXP009_FIGURES = {
    "attention": "Where the encoders look: the last block's attention over the patches (bright: more), a row per HAM10000 test "
                 "image (one per diagnosis, lesion outlined in the first column), a column per encoder, each over its own view "
                 "of the image; below each map its lesion-attention lift (1: attention ignores the lesion). Encoders without a "
                 "class token show the attention each patch receives, averaged over all patch queries.",
    "pca": "What the encoders group together: the first three principal components of the patch features (fitted on all "
           "shown images together, per encoder) as colour; patches alike to the encoder share a colour. A lesion that "
           "stands out in its own colour is a lesion the encoder tells from skin.",
    "anchors": "Patch similarity (cosine of patch features, bright: alike) from three anchors chosen from the mask of one "
               "melanoma (white dot): the lesion's centre, its border and skin, a row per encoder.",
    "by_encoder": "EXP-009 by encoder (rows; random init is the untrained control). Left: the diagnosis probe's test balanced "
                  "accuracy (95% CI over test lesions) at each fraction of training labels, chance 1/7 dotted; an encoder "
                  "that learned something about lesions lies right of random init. Right: the EXP-004 recipe on each "
                  "encoder, test AUROC (95% CI) of the predictor beside the raw cosine and pixel L2, per protocol; chance "
                  "0.5 dotted.",
    "pretraining": "Pretraining, per objective: the training loss (top, in the objective's own scale) and the collapse "
                   "monitor (bottom: batch standard deviation of the L2-normalised features against optimiser steps; near "
                   "1/sqrt(d), dotted, when the features spread, near 0 when they collapse to a point).",
    "audit": "The overlap audit's hardest pairs, a column each: a HAM10000 image (top) and the pretraining-corpus image "
             "matched to it (bottom). The pairs flagged by perceptual hashes and pixel correlation come first, each with the "
             "adjudication's decision and its aligned fine-structure correlation (duplicate: above every held-out hard "
             "negative; undecided: between the hard negatives and the synthetic copies). Every flagged corpus image is left "
             "out of pretraining.",
}


def render_exp009(plan: pd.DataFrame, probes: pd.DataFrame, encoders: pd.DataFrame, audit: dict, excluded: pd.DataFrame,
                  n_corpus: int, paper_dir="paper", maps: dict | None = None) -> dict:
    """Tables, figures and the LaTeX section of EXP-009, written atomically into `<paper_dir>/exp009/`; `maps` (24_featuremaps'
    `encoder_maps`, drawn): {"table", "figures": {name: Figure}, "n": images behind the lift}."""
    from derma_jepa.report import collect, fig_files, tex_text, to_latex, to_markdown
    long = collect(plan)
    tables = {"exp009_table": (exp009_table(probes, plan, encoders), "EXP-009: pretraining and the diagnosis probe (linear, 100\\% labels) against the random-init control; intervals over test lesions, $\\Delta$ paired."),
              "recipe_table": (exp009_recipe_table(long, plan), "EXP-009: the EXP-004 recipe by encoder and protocol: synthetic test AUROC [95\\% CI], single-side probes, and the re-photograph endpoint."),
              "probe_table": (probe_table(probes), "Diagnosis probe by label fraction: balanced accuracy and macro AUROC [95\\% CI].")}
    if maps: tables["featuremaps_table"] = (maps["table"], "EXP-009: lesion-attention lift and ISIC 2017 melanoma transfer per encoder [95\\% CI].")
    files = {}
    for name, (df, cap) in tables.items():
        files[f"{name}.md"] = to_markdown(df).encode()
        files[f"{name}.tex"] = to_latex(df, cap, f"tab:{name}").encode()
    with paper_style():                   # the paper's palette (21_render), not matplotlib's default cycle
        figs = {"by_encoder": fig_by_encoder(long, probes, plan), "pretraining": fig_pretraining(encoders)}
    figs = {k: v for k, v in {**figs, **(maps or {}).get("figures", {})}.items() if v is not None}
    for k, f in figs.items(): files.update({f"{k}.{ext}": b for ext, b in fig_files(f).items()})
    shown = [*((k, f"exp009/{k}") for k in figs), *((("audit", f"audit/{Path(audit['figure']).stem}"),) if audit.get("figure") else ())]
    files["figures.md"] = "".join(f"- `{path}.png`: {EXP009_FIGURES[k]}\n" for k, path in shown).encode()   # the site's captions
    cfg0, held = plan_config0(encoders), excluded.reason.str.startswith(HELD_OUT)
    files["exp009.tex"] = (EXP009_TEX % {
        "n_corpus": n_corpus, "excluded": int((~held).sum()), "verdict": tex_text(audit["verdict"]),
        "held": f"; {int(held.sum())} held out of pretraining as the transfer probe's test images" if held.any() else "",
        "arch": f"{ARCH_LABEL.get(cfg0.arch, cfg0.arch)} at {cfg0.image_size} px",
        "budget": tex_text(budget_text(encoders)), "maps": MAPS_TEX % {"n": maps["n"]} if maps else "",
        "compare": "".join(f"\n\\texttt{{{tex_text(b)}}}: {tex_text(backbone_spec(b).note)}." for b in
                           dict.fromkeys(plan.backbone) if not b.startswith("ssl:")),
        "figures": "\n".join(figure_tex(f"{path}.pdf", EXP009_FIGURES[k], f"fig:exp009-{k}") for k, path in shown)}).encode()
    runs = plan[["label", "protocol", "backbone", "status", "run_dir"]].assign(
        notebook=lambda d: [f"{x}/run.ipynb" for x in d.run_dir])
    files["runs.md"] = ("# EXP-009: runs and encoders behind the tables\n\n" + runs.to_markdown(index=False) + "\n\n"
                        + encoders.drop(columns=[c for c in ("images_per_s",) if c in encoders]).to_markdown(index=False) + "\n\n"
                        + "## Corpus images left out by the audit\n\n"
                        + (excluded.assign(path=[Path(p).name for p in excluded.path]).to_markdown(index=False) if len(excluded) else "none")
                        + "\n").encode()
    write_marked_dir(Path(paper_dir) / "exp009", files, kind="paper", what="paper folder")
    return {"long": long, "tables": {k: v[0] for k, v in tables.items()}, "figures": figs, "files": sorted(files)}


def budget_text(encoders: pd.DataFrame) -> str:
    "How the pretraining budgets compare: equal images seen, or not (wall times are in each encoder's train.json)."
    t = encoders[encoders.objective.ne("none")]
    if t.empty: return "no objective trained"
    seen = sorted(set(t.images_seen))
    same = f"{seen[0]:,} images each" if len(seen) == 1 else "NOT equal: " + ", ".join(f"{o} {n:,}" for o, n in zip(t.objective, t.images_seen))
    return same


def plan_config0(encoders: pd.DataFrame) -> PretrainConfig:
    "The pretraining configuration shared by the encoders (read back from the control's checkpoint)."
    return PretrainConfig(**load_checkpoint(encoders.path.iloc[-1])[1]["config"])


# %% [markdown]
# Rendered from the fixture plan before any run: every encoder has its row, saying why it has no
# AUROC; rendering twice gives the same bytes.

# %%
_paper = _tmp / "paper"
_audit = {"verdict": "no exact or near-duplicate image shared"}
_r1 = render_exp009(_plan, _probes, _enc, _audit, _ex, len(_corpus), _paper)
from derma_jepa.render import palette_problems, small_text
for _k, _f in _r1["figures"].items(): test_eq((_k, palette_problems(_f), small_text(_f)), (_k, [], []))   # palette; no text < 8 pt
_bytes = {f: (_paper / "exp009" / f).read_bytes() for f in _r1["files"]}
render_exp009(_plan, _probes, _enc, _audit, _ex, len(_corpus), _paper)
test_eq({f: (_paper / "exp009" / f).read_bytes() for f in _r1["files"]}, _bytes)
assert all(f"{{exp009/{k}.pdf}}" in _bytes["exp009.tex"].decode() for k in _r1["figures"])   # LaTeX takes the vector PDF
test_eq(sorted(_r1["files"]), ["by_encoder.pdf", "by_encoder.png", "exp009.tex", "exp009_table.md", "exp009_table.tex", "figures.md", "pretraining.pdf", "pretraining.png",
                               "probe_table.md", "probe_table.tex", "recipe_table.md", "recipe_table.tex", "runs.md"])
assert "not run: no metrics.json" in _bytes["recipe_table.md"].decode()
assert "\\texttt{color\\_texture}: HSV colour histograms" in _bytes["exp009.tex"].decode()   # comparisons described
# with maps (24_featuremaps' encoder_maps; here a hand-made table and figure), they join the section; without, no trace
import matplotlib.pyplot as plt
_mf, _ax = plt.subplots(figsize=(4, 3)); _ax.imshow(np.zeros((4, 4)), cmap="magma"); _ax.set_title("attention", fontsize=9)
_mt = pd.DataFrame({"encoder": ["random init"], "lift [95% CI]": ["1.020 [0.990, 1.050]"]}).set_index("encoder")
_r2 = render_exp009(_plan, _probes, _enc, _audit, _ex, len(_corpus), _tmp / "paper2", {"table": _mt, "figures": {"attention": _mf}, "n": 120})
_tex = (_tmp / "paper2" / "exp009" / "exp009.tex").read_text()
assert "\\input{exp009/featuremaps_table.tex}" in _tex and "{exp009/attention.pdf}" in _tex and "patches of 120 HAM10000" in _tex
assert {"featuremaps_table.md", "attention.pdf", "attention.png"} <= set(_r2["files"])
assert "`exp009/attention.png`: Where the encoders look" in (_tmp / "paper2" / "exp009" / "figures.md").read_text()
assert "featuremaps" not in _bytes["exp009.tex"].decode() and "attention.pdf" not in _r1["files"]

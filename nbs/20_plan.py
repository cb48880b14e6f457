# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp plan

# %% [markdown]
# # Plan: the arc as runs, executed here or on a cluster
#
# > Plan the experiment arc, embed every side it needs once, run each config through the papermill notebook, render the paper.

# %% [markdown]
# The published arc (PROTOCOL B4) is nine runs and a seed sweep. Here an arc is *data*: a YAML
# naming the experiment files, the protocols and the sweep (`nbs/experiments/arc.yaml`). Four
# steps turn it into a paper:
#
# 1. **plan** (`plan_arc`): every (experiment, protocol, seed, backbone) becomes one `Config`,
#    validated before anything runs, with its run directory and whether it can run here. A hub
#    backbone without weights becomes a row that says so ("not run: weights for … not found"); it
#    is never replaced silently. Offline backbones can be asked for *beside* the paper's
#    backbone, and are then labelled as stand-ins everywhere.
# 2. **embed** (`embed_items`): every distinct side the plan's unfinished runs need, per
#    backbone, embedded once into the content-addressed cache, in chunks (one job each on a
#    cluster), so the runs that follow only read it.
# 3. **execute** (`execute_run`): each runnable config goes through `nbs/run.ipynb` with papermill;
#    the executed notebook is filed in its run directory as `run.ipynb`, so every number in the
#    paper leads back to an executed notebook. A run whose directory is complete is not re-run.
# 4. **render**: 13_report and 21_render turn the run directories into `paper/`, once every run
#    has ended.
#
# Steps 2 and 3 go through an executor (19_executors): this process, or SLURM jobs.

# %%
#| export
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from derma_jepa.backbones import OFFLINE_BACKBONES, WeightsNotFound, backbone_spec, resolve_weights
from derma_jepa.data import ConfigError, DataError, atomic_write_bytes, experiments_dir, repo_root
from derma_jepa.executors import EXECUTORS, LocalExecutor, WorkItem, check_resources, make_executor, summary
from derma_jepa.experiment import Config, resolve_data, run_id
from derma_jepa.safety import check_destination, load_yaml
from derma_jepa.pairs import ABLATIONS, lofo_folds

SIDES_PER_JOB = 2048         # sides one embedding job takes (an arc file's `sides_per_job` changes it)

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## Where things are
#
# The arc files and `run.ipynb` live in the repository, found by walking up from the working
# directory to `settings.ini` (so notebooks, tests and `make` agree): 00_data's `repo_root` and
# `experiments_dir`, which the paper's text (23_text) reads too without importing this module.

# %%
assert (experiments_dir() / "arc.yaml").exists()


# %% [markdown]
# ## The arc as data
#
# `arc.yaml` lists experiment files (their stems), the protocols, the sweep and the experiments
# run in every leave-one-family-out fold (`lofo`: each of the three held-out families in turn is
# val/test, the other two train, 05_pairs' `lofo_folds`); on a cluster it
# may also say what the jobs get (`resources`, 19_executors) and how many sides one embedding job
# takes (`sides_per_job`). Any other key is an error that names the file, as is an experiment
# whose YAML is missing.

# %%
#| export
def _anchors(value, path) -> dict[str, list[str]]:
    "`anchors`: experiment -> the extra backbones it runs with, for the table of published anchors (13_report)."
    if not value: return {}
    if not isinstance(value, dict) or not all(isinstance(v, list) and all(isinstance(b, str) for b in v) for v in value.values()):
        raise ConfigError(f"{path}: anchors must map an experiment to a list of backbones, e.g. {{exp004: [random_vitb16]}}")
    return {str(k): list(v) for k, v in value.items()}


ARC_KEYS = {"experiments", "protocols", "sweep", "lofo", "ablation", "anchors", "resources", "sides_per_job"}
SWEEP_KEYS = {"experiments", "seeds"}

def load_arc(path) -> dict:
    "Read and check an arc file: {'experiments': [...], 'protocols': [...], 'sweep': {'experiments', 'seeds'}, 'lofo': [...]}."
    path = Path(path)
    if not path.exists(): raise ConfigError(f"arc file {path} not found")
    arc = load_yaml(path)
    if set(arc) - ARC_KEYS: raise ConfigError(f"{path}: unknown key {sorted(set(arc) - ARC_KEYS)[0]!r}; keys: {', '.join(sorted(ARC_KEYS))}")
    sweep = arc.get("sweep") or {}
    if set(sweep) - SWEEP_KEYS: raise ConfigError(f"{path}: unknown sweep key {sorted(set(sweep) - SWEEP_KEYS)[0]!r}")
    per_job = arc.get("sides_per_job", SIDES_PER_JOB)
    if isinstance(per_job, bool) or not isinstance(per_job, int) or per_job < 1:
        raise ConfigError(f"{path}: sides_per_job={per_job!r}: a positive number of sides per embedding job")
    out = {"experiments": list(arc.get("experiments") or []), "protocols": list(arc.get("protocols") or ["symmetric"]),
           "sweep": {"experiments": list(sweep.get("experiments") or []), "seeds": [int(s) for s in sweep.get("seeds") or []]},
           "lofo": list(arc.get("lofo") or []), "ablation": list(arc.get("ablation") or []),
           "anchors": _anchors(arc.get("anchors"), path),
           "resources": check_resources(arc.get("resources"), f"{path}: resources"), "sides_per_job": per_job}
    for e in out["experiments"] + out["sweep"]["experiments"] + out["lofo"] + out["ablation"] + list(out["anchors"]):
        if not (path.parent / f"{e}.yaml").exists(): raise ConfigError(f"{path}: experiment {e!r} has no file {path.parent / (e + '.yaml')}")
    return out


# %%
_arc = load_arc(experiments_dir() / "arc.yaml")
test_eq(_arc["experiments"], ["exp001", "exp002", "exp003", "exp004", "exp005", "exp006a", "exp006b", "exp007", "exp008"])
test_eq(_arc["sweep"], {"experiments": ["exp007", "exp008"], "seeds": [20260422, 1, 2, 3, 4]})
test_eq((_arc["lofo"], _arc["ablation"], _arc["anchors"]), (["exp004"], ["exp004"], {"exp004": ["random_vitb16"]}))
_bad_arc = Path(tempfile.mkdtemp()) / "arc.yaml"
_bad_arc.write_text("experiments: []\nanchors: [random_vitb16]\n")
test_fail(lambda: load_arc(_bad_arc), contains="anchors must map an experiment to a list of backbones")
test_eq((_arc["resources"], _arc["sides_per_job"]), ({}, SIDES_PER_JOB))
test_eq(load_arc(experiments_dir() / "arc_cluster.yaml")["resources"]["backbones"]["dinov2_vitb14"]["gpus"], 1)
_tmp = Path(tempfile.mkdtemp())
(_tmp / "bad.yaml").write_text("experiments: [exp004]\nprotocol: [reference]\n")
test_fail(lambda: load_arc(_tmp / "bad.yaml"), contains="unknown key 'protocol'")
(_tmp / "gone.yaml").write_text("experiments: [exp404]\n")
test_fail(lambda: load_arc(_tmp / "gone.yaml"), contains="experiment 'exp404' has no file")
(_tmp / "res.yaml").write_text("experiments: [exp004]\nresources: {run: {gpus: one}}\n")
test_fail(lambda: load_arc(_tmp / "res.yaml"), contains="res.yaml: resources.run.gpus: 'one' is not a int")
(_tmp / "per.yaml").write_text("experiments: [exp004]\nsides_per_job: 0\n")
test_fail(lambda: load_arc(_tmp / "per.yaml"), contains="sides_per_job=0")


# %% [markdown]
# ## Can a backbone run here?
#
# Offline backbones always can. A hub backbone can when its weights are in the Hugging Face cache
# (or at the config's `weights` path); otherwise its rows carry the reason, in the words the
# tables print.

# %%
#| export
def weights_status(backbone: str, weights: str = "", hub_cache=None) -> str:
    "'' when the backbone's weights are available here, else 'not run: weights for <hub id> not found'."
    spec = backbone_spec(backbone)
    if not spec.hub_id and not weights: return ""
    try: resolve_weights(spec, weights or None, hub_cache)
    except WeightsNotFound: return f"not run: weights for {spec.hub_id or weights} not found"
    return ""


def parse_backbones(backbones: str) -> list[str]:
    "`hub` → no stand-ins; `offline` → every offline backbone of the arc; else a comma list of offline names."
    if backbones in ("", "hub"): return []
    names = list(STAND_INS) if backbones == "offline" else [b.strip() for b in backbones.split(",") if b.strip()]
    for b in names:
        if backbone_spec(b).hub_id: raise ConfigError(f"BACKBONES={backbones}: {b!r} is a hub backbone; stand-ins must be offline ({', '.join(OFFLINE_BACKBONES)})")
    return [backbone_spec(b).name for b in names]


STAND_INS = ("random_vitb16", "color_texture")

# %%
test_eq(weights_status("color_texture"), "")
test_eq(weights_status("dinov2", hub_cache=_tmp / "empty-hub"), "not run: weights for timm/vit_base_patch14_dinov2.lvd142m not found")
test_eq(parse_backbones("offline"), ["random_vitb16", "color_texture"])
test_eq(parse_backbones("hub"), [])
test_fail(lambda: parse_backbones("color_texture,clip"), contains="'clip' is a hub backbone")
test_fail(lambda: parse_backbones("resnet"), contains="unknown backbone 'resnet'")

# %% [markdown]
# ## The plan
#
# One row per run: the experiment's label, protocol, seed, whether it belongs to the sweep, the
# backbone the paper used and the one this row runs, `stand_in`, the run directory and its
# status (`run` or the reason it cannot). Configs are built (and so validated) here, before any
# work; `overrides` apply to every experiment (e.g. `data=fixture` for a dry run). The sweep's
# seed-20260422 runs are the arc's own, so they share run directories and run once. Likewise a
# run that differs from an earlier one *only in its experiment label* is that run: EXP-004,
# 006b, 007 and 008 differ only in the hub backbone, so on an offline stand-in they are one
# run, which is made once and shown once, naming every experiment it stands for. A `lofo` row
# names its held-out family (`lofo`, "" elsewhere); the fold whose families are the experiment's
# own is the experiment's run itself. An `ablation` row names its step (`ABLATION_STEPS`): the
# experiment under `reference`, then with the release's differences closed one at a time and
# cumulatively (the four pairing switches of 05_pairs, 02_split's checksum rule, the paper's
# preset, the autograd trainer), then under `symmetric`. What is left between the last step and
# `symmetric` is the evaluation: the baseline rule, the bootstrap and the missing-lesion rule.

# %%
#| export
# The ablation from the release to the paper: `reference`, then one difference closed at a time (cumulative), the
# five of 05_pairs / 02_split and then the preset and the trainer (existing options), then `symmetric` itself.
_ALL = ",".join(ABLATIONS)
ABLATION_STEPS = ([("reference", "reference", {})] +
                  [(f"+ {a}", "reference", {"ablate": ",".join(ABLATIONS[:k + 1])}) for k, a in enumerate(ABLATIONS)] +
                  [("+ preset paper", "reference", {"ablate": _ALL, "preset": "paper"}),
                   ("+ trainer autograd", "reference", {"ablate": _ALL, "preset": "paper", "trainer": "autograd"}),
                   ("symmetric", "symmetric", {})])


def plan_arc(arc_file=None, backbones: str = "hub", overrides: dict | None = None, sweep: bool = True,
             runs_dir="runs") -> pd.DataFrame:
    "Every run of the arc (and sweep) as a validated config with its run directory and status."
    arc_file = Path(arc_file or experiments_dir() / "arc.yaml")
    arc, stand_ins, overrides = load_arc(arc_file), parse_backbones(backbones), dict(overrides or {})
    if "run_dir" in overrides: raise ConfigError("run_dir cannot be overridden for a whole arc: use the runs folder")
    jobs = [(e, {}, {}, arc["protocols"]) for e in arc["experiments"]]
    if sweep: jobs += [(e, {"seed": s}, {"sweep": True}, arc["protocols"]) for e in arc["sweep"]["experiments"] for s in arc["sweep"]["seeds"]]
    jobs += [(e, {"lofo_fold": f}, {"lofo": held}, arc["protocols"]) for e in arc["lofo"] for f, (_, held) in enumerate(lofo_folds())]
    jobs += [(e, params, {"ablation": label}, [prot]) for e in arc["ablation"] for label, prot, params in ABLATION_STEPS]
    jobs += [(e, {"backbone": bb}, {"anchor": bb}, arc["protocols"]) for e, bbs in arc["anchors"].items() for bb in bbs]
    rows = []
    for stem, params, tags, protocols in jobs:
        for protocol in protocols:
            make = lambda **p: Config.from_yaml(arc_file.parent / f"{stem}.yaml", **{**overrides, "protocol": protocol, **p})
            base = make(**params)
            if base.lofo_fold >= 0:        # the fold equal to the experiment's own families is the experiment's run
                own = make()
                base = own if (own.train_families, own.eval_family) == (base.train_families, base.eval_family) else base
            for bb in [backbone_spec(base.backbone).name, *([] if "anchor" in tags else stand_ins)]:
                cfg = dataclasses.replace(base, backbone=bb)
                stand_in = bb != backbone_spec(base.backbone).name
                cfg = dataclasses.replace(cfg, run_dir=str(Path(runs_dir) / run_id(cfg)))
                rows.append({"experiment": cfg.experiment or stem, "file": stem, "protocol": protocol, "seed": cfg.seed,
                             "sweep": tags.get("sweep", False), "lofo": tags.get("lofo", ""), "ablation": tags.get("ablation", ""),
                             "anchor": tags.get("anchor", ""),
                             "paper_backbone": base.backbone, "backbone": bb, "stand_in": stand_in,
                             "status": weights_status(bb, cfg.weights) or "run", "run_dir": cfg.run_dir, "config": cfg})
    plan = pd.DataFrame(rows)
    same = [json.dumps({k: v for k, v in c.to_dict().items() if k not in ("experiment", "run_dir")}, sort_keys=True)
            for c in plan.config]
    first = {}
    src = [first.setdefault(k, i) for i, k in enumerate(same)]       # the first row with this config runs it
    return plan.assign(run_dir=plan.run_dir.to_numpy()[src], config=plan.config.to_numpy()[src])


# %%
_plan = plan_arc(backbones="offline", overrides={"data": "fixture"}, runs_dir=_tmp / "runs")
test_eq(len(_plan), ((9 + 2 * 5 + 3) * 2 + len(ABLATION_STEPS)) * 3 + 2)     # + the random-init ViT anchor, per protocol
test_eq(list(_plan[_plan.anchor.ne("")].backbone), ["random_vitb16"] * 2)
test_eq(_plan[~_plan.stand_in & _plan.anchor.eq("")].status.str.startswith("not run: weights for").all(), True)
test_eq(set(_plan[_plan.stand_in].status), {"run"})
# seed 20260422 of the sweep = the arc's runs; EXP-004/006b/007/008 are one run per stand-in and protocol,
# and so are the sweep's EXP-007/008 at each seed
test_eq(_plan[_plan.stand_in].run_dir.nunique(), (9 - 3 + 4 + 2) * 2 * 2 + (len(ABLATION_STEPS) - 2) * 2)
# the ablation: its first and last steps are EXP-004's own runs, the steps between close one difference more each
_ab = _plan[_plan.ablation.ne("") & _plan.backbone.eq("color_texture")]
test_eq(list(_ab.ablation), [label for label, _, _ in ABLATION_STEPS])
test_eq([c.ablate for c in _ab.config][1:6], [",".join(ABLATIONS[:k + 1]) for k in range(5)])
_e4 = _plan[_plan.experiment.eq("EXP-004") & _plan.backbone.eq("color_texture") & _plan.lofo.eq("") & _plan.ablation.eq("") & ~_plan.sweep]
test_eq((_ab.run_dir.iloc[0], _ab.run_dir.iloc[-1]), tuple(_e4.set_index("protocol").run_dir[["reference", "symmetric"]]))
# leave-one-family-out: three folds of EXP-004 per protocol, the fold holding out strong_held_out_2 is EXP-004's run
_lf = _plan[_plan.lofo.ne("") & _plan.backbone.eq("color_texture") & _plan.protocol.eq("symmetric")]
test_eq(list(_lf.lofo), ["strong", "strong_held_out", "strong_held_out_2"])
test_eq([c.eval_family for c in _lf.config], list(_lf.lofo))

_shared = _plan[_plan.stand_in & ~_plan.sweep & _plan.lofo.eq("") & _plan.ablation.eq("") & _plan.anchor.eq("") & _plan.protocol.eq("symmetric")
               & _plan.backbone.eq("color_texture")]
test_eq(_shared.groupby("run_dir").experiment.apply(list).tolist()[3], ["EXP-004", "EXP-006b", "EXP-007", "EXP-008"])
test_eq(_lf.run_dir.iloc[2], _shared[_shared.experiment.eq("EXP-004")].run_dir.iloc[0])
_plan[["experiment", "protocol", "seed", "sweep", "lofo", "paper_backbone", "backbone", "stand_in", "status"]].head(6)

# %% [markdown]
# Bad input stops the plan, and so the arc, before anything runs: a typo in an override, an
# unknown backbone among the stand-ins, an unknown key in an experiment YAML.

# %%
test_fail(lambda: plan_arc(overrides={"pairs_per_splt": 3}), contains="did you mean 'pairs_per_split'")
test_fail(lambda: plan_arc(backbones="resnet"), contains="unknown backbone 'resnet'")
(_tmp / "exp404.yaml").write_text("experiment: EXP-404\nbackbone: color_texture\nlearning_rate: 3\n")
(_tmp / "arc404.yaml").write_text("experiments: [exp404]\n")
test_fail(lambda: plan_arc(_tmp / "arc404.yaml"), contains="exp404.yaml: 'learning_rate' is not a configuration field")

# %% [markdown]
# Where nothing could run (the paper's hub backbones on a machine without their weights), every
# table of 13_report still lists every row of the plan, with its reason.

# %%
from derma_jepa.report import arc_table, collect, optimiser_table, sweep_table
_none = collect(plan_arc(overrides={"data": "fixture"}, runs_dir=_tmp / "runs"))
assert arc_table(_none).map(lambda v: v.startswith("not run") or v == "–").all().all()
test_eq(len(sweep_table(_none)), 2 * 2)                  # EXP-007 and EXP-008 x 2 protocols, each "not run"
test_eq(optimiser_table(_none).empty, True)


# %% [markdown]
# ## Executing one run
#
# papermill executes `nbs/run.ipynb` with the config's fields as parameters, into a temporary
# file that is moved into the run directory once the run has finished (`run()` itself wrote the
# directory atomically). A run is *complete* when its directory holds `run.ipynb`, `metrics.json`
# and the same `config.yaml`; complete runs are skipped. A failed notebook is kept beside the runs
# (`<runs>/failed/`) for inspection, and the error is returned, not raised, so one bad run does
# not lose the rest of an arc.

# %%
#| export
def is_complete(config: Config) -> bool:
    d = Path(config.run_dir)
    if not ((d / "run.ipynb").exists() and (d / "metrics.json").exists() and (d / "config.yaml").exists()): return False
    return yaml.safe_load((d / "config.yaml").read_text()) == config.to_dict()


def execute_run(config: Config, notebook=None, kernel: str = "python3") -> str:
    "Run `config` through run.ipynb with papermill; '' on success, else the error in one line."
    import papermill as pm
    notebook = Path(notebook or repo_root() / "nbs" / "run.ipynb")
    dest = Path(config.run_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".nb-") as tmp:
        out = Path(tmp) / "run.ipynb"
        try:
            pm.execute_notebook(str(notebook), str(out), parameters=config.to_dict(), kernel_name=kernel,
                                progress_bar=False, log_output=False, cwd=str(Path.cwd()))
        except pm.PapermillExecutionError as e:
            failed = dest.parent / "failed"; failed.mkdir(exist_ok=True)
            shutil.copyfile(out, failed / f"{dest.name}.ipynb")
            return f"{e.ename}: {e.evalue}".splitlines()[0]
        import nbformat
        nb = nbformat.read(out, as_version=4)
        for c in nb.cells:                # papermill gives its parameters cell a random id: the same run, the same bytes
            if "injected-parameters" in c.metadata.get("tags", []): c.id = "injected-parameters"
        atomic_write_bytes(dest / "run.ipynb", nbformat.writes(nb).encode())
    return ""


# %% [markdown]
# ## Embedding every side once
#
# The runs of an arc share most of their sides (EXP-004 to 006a use the same pairs; the sweep's
# seeds overlap in images). Run one after another on one machine, the cache made that free: the
# first run embedded, the rest read. Run at the same time on a cluster, every job would embed
# what it needs, and the same sides would be embedded many times over. So before the runs, one
# embedding phase per backbone embeds the *union* of the sides that the unfinished runs need.
#
# A side's cache key is its backbone fingerprint (which includes the preprocessing, so it can
# depend on the protocol), precision, source bytes and recipe (08_embed). The sides are therefore
# gathered per (backbone, weights, protocol, dtype, batch size), from exactly the tables the runs
# will build (`data_stage` → `sides_table`), deduplicated by key, written as one parquet file in
# the jobs folder, and cut into chunks of `sides_per_job`. A chunk's name carries a digest of its
# group and its sides, and a chunk whose last job ended `done` is not submitted again. Two jobs
# that meet over the same sides (a resubmission while an old job still runs) are harmless: shards
# are written atomically under a name derived from their keys, with the same values.

# %%
#| export
def side_groups(configs) -> dict[tuple, list[Config]]:
    "Configs that embed into the same cache, grouped by (backbone, weights, protocol, dtype, batch size)."
    groups: dict[tuple, list[Config]] = {}
    for c in configs: groups.setdefault((c.backbone, c.weights, c.protocol, c.dtype, c.batch_size), []).append(c)
    return groups


def group_sides(configs, log=print) -> pd.DataFrame:
    """The distinct sides (by cache key content) that the runs of `configs` will embed, in first-use order. A config
    whose data cannot be built is left out with a line saying why: its run fails on its own, reported as any failure."""
    from derma_jepa.embed import sides_table
    from derma_jepa.experiment import data_stage
    from derma_jepa.nuisance import side_keys_of
    tables = []
    for c in configs:
        try: records, _, manifest, _ = data_stage(c)
        except Exception as e:
            log(f"embed: {Path(c.run_dir).name} left out ({type(e).__name__}: {e}); its run will report it".splitlines()[0]); continue
        tables.append(sides_table(manifest, records))
    if not tables: return pd.DataFrame(columns=["image_id", "recipe", "path", "sha256", "orientation", "exif"])
    s = pd.concat(tables, ignore_index=True)
    content = s.sha256.astype(str) + "|" + pd.Series(side_keys_of(s), index=s.index)
    return s[~content.duplicated()].reset_index(drop=True)


def _parquet(df: pd.DataFrame) -> bytes:
    import io
    buf = io.BytesIO(); df.to_parquet(buf, index=False); return buf.getvalue()


def embed_items(configs, jobs_dir, sides_per_job: int = SIDES_PER_JOB, log=print) -> list[WorkItem]:
    "Work items that embed every side `configs` need, `sides_per_job` at a time; chunks done earlier are left out."
    from derma_jepa.executors import read_status, status_path
    items, skipped = [], 0
    for (bb, weights, protocol, dtype, batch), group in side_groups(configs).items():
        sides = group_sides(group, log)
        if sides.empty: continue
        data = _parquet(sides)
        digest = hashlib.sha256(json.dumps([bb, weights, protocol, dtype, batch]).encode() + data).hexdigest()[:12]
        sides_file = Path(jobs_dir).resolve() / "embed" / f"sides-{digest}.parquet"
        if not sides_file.exists(): atomic_write_bytes(sides_file, data)
        name = Path(bb).stem if ":" in bb else bb
        for k, start in enumerate(range(0, len(sides), sides_per_job)):
            item = WorkItem("embed", f"{name}-{digest}-{k:04d}", "derma_jepa.plan:embed_job",
                            {"backbone": bb, "weights": weights, "protocol": protocol, "dtype": dtype, "batch_size": batch,
                             "sides_file": str(sides_file), "start": start, "stop_at": min(start + sides_per_job, len(sides))}, bb)
            if (read_status(status_path(jobs_dir, item)) or {}).get("state") == "done": skipped += 1; continue
            items.append(item)
    if skipped: log(f"embed: {skipped} chunk(s) finished earlier, not resubmitted")
    return items


def embed_job(backbone: str, weights: str, protocol: str, dtype: str, batch_size: int, sides_file: str, start: int,
              stop_at: int, shard_size: int = 256, stop=None) -> dict:
    "What an embedding job runs: one chunk of a sides file into the cache. `stop` as 08_embed's `cached_compute`."
    from derma_jepa.backbones import get_backbone
    from derma_jepa.embed import embed_sides
    bb = get_backbone(backbone, weights or None, protocol=protocol)
    sides = pd.read_parquet(sides_file).iloc[start:stop_at].reset_index(drop=True)
    _, st = embed_sides(bb, sides, dtype, batch_size, shard_size=shard_size, stop=stop)
    return {"sides": st.sides, "computed": st.computed, "cache_hits": st.cache_hits, "dtype": st.dtype,
            "device": st.device, "seconds": round(st.seconds, 2)}


def run_job(config: dict) -> dict:
    "What a run job runs: one config through run.ipynb; raises with the notebook's error when it fails."
    cfg = Config.from_params(config)
    err = execute_run(cfg)
    if err: raise RuntimeError(err)
    t = json.loads((Path(cfg.run_dir) / "timings.json").read_text())
    return {"run_dir": cfg.run_dir, "embedded": t.get("embed_detail", {}).get("computed", 0)}


# %% [markdown]
# On a fixture plan: two protocols of `color_texture` are two groups; the items cover every side
# once; a chunk that ended `done` is not handed out again.

# %%
from derma_jepa.executors import job_entry, status_path
_fx = {"data": "fixture", "fixture_lesions": 300, "pairs_per_split": 12, "epochs": 20, "n_boot": 100}
_small = plan_arc(backbones="color_texture", overrides=_fx, sweep=False, runs_dir=_tmp / "runs")
_small = _small[_small.lofo.eq("") & _small.ablation.eq("") & _small.anchor.eq("")]     # the arc's own runs; LOFO and ablation vary EXP-004
_cfgs = list(_small[_small.status.eq("run") & _small.experiment.eq("EXP-004")].drop_duplicates("run_dir").config)
test_eq(len(side_groups(_cfgs)), 2)
_items = embed_items(_cfgs, _tmp / "jobs", sides_per_job=100)
_per_group = {k: len(group_sides(g)) for k, g in side_groups(_cfgs).items()}
test_eq(sum(i.kwargs["stop_at"] - i.kwargs["start"] for i in _items), sum(_per_group.values()))
test_eq(job_entry(json.dumps({"fn": _items[0].fn, "kwargs": _items[0].kwargs, "status": str(status_path(_tmp / "jobs", _items[0]))}),
                  handle_signals=False), "done")
test_eq(embed_items(_cfgs, _tmp / "jobs", sides_per_job=100, log=lambda m: None), _items[1:])
# a config whose data cannot be built does not stop the phase (nor the arc): it is left out, saying why
_said = []
test_eq(embed_items([dataclasses.replace(_cfgs[0], pairs_per_split=5000)], _tmp / "jobs", log=_said.append), [])
assert "left out (DataError" in _said[0] and "its run will report it" in _said[0], _said
_per_group


# %% [markdown]
# ## Running a plan
#
# `run_plan` takes the rows that can run, each distinct run directory once, and skips complete
# ones. Then the two phases go through the executor: the embedding items, then one `run` item per
# run (in plan order; on a cluster they run side by side). A failed embedding chunk is reported
# and costs nothing else: the runs embed whatever they do not find. A failed run is reported with
# its error (and, on a cluster, its SLURM state and log) and marked `failed: …` in the plan; the
# other runs carry on. Each run row records its job's id, state and log. The plan, without the
# config objects, is written as JSON beside the runs (it is what `paper.ipynb` reads), and every
# job record of both phases beside it (`<plan>-jobs.json`).

# %%
#| export
def plan_records(plan: pd.DataFrame) -> list[dict]:
    "The plan as JSON-ready records (the config as its dict)."
    return [{**{k: v for k, v in r.items() if k != "config"}, "config": r["config"].to_dict()}
            for r in plan.to_dict("records")]


def run_plan(plan: pd.DataFrame, plan_file=None, log=print, executor=None, sides_per_job: int = SIDES_PER_JOB,
             jobs_dir=None) -> pd.DataFrame:
    "Embed, then execute, every runnable row of `plan` through `executor` (default: here); `status` updated for failures."
    plan = plan.copy()
    for c in ("job_id", "job_state", "job_log"): plan[c] = plan.get(c, pd.Series("", index=plan.index)).fillna("").astype(str)
    todo = plan[plan.status == "run"].drop_duplicates("run_dir")
    jobs_dir = Path(jobs_dir or (Path(plan_file).parent if plan_file else Path(todo.run_dir.iloc[0]).parent if len(todo) else ".")
                    / "jobs")
    executor = executor or LocalExecutor(jobs_dir, log=log)
    done = [is_complete(c) for c in todo.config]
    for row in todo[done].itertuples(): log(f"{row.experiment} {row.protocol} seed {row.seed} {row.backbone}: complete, skipped ({row.run_dir})")
    todo = todo[[not d for d in done]]
    items = embed_items(list(todo.config), jobs_dir, sides_per_job, log)
    records = executor.run(items)
    if items: log(f"embed ({executor.name}): {len(items)} chunk(s): {summary(records)}")
    for r in records:
        if r["state"] != "done": log(f"  embed {r['name']}: {r['state'].upper()} {r['error']} (log: {r['log']})")
    runs = [WorkItem("run", Path(r.run_dir).name, "derma_jepa.plan:run_job", {"config": r.config.to_dict()}, r.backbone)
            for r in todo.itertuples()]
    run_records = executor.run(runs)
    for k, (row, r) in enumerate(zip(todo.itertuples(), run_records), 1):
        at = plan.run_dir == row.run_dir
        plan.loc[at, ["job_id", "job_state", "job_log"]] = [r["job_id"], r["state"], r["log"]]
        if r["state"] != "done": plan.loc[at, "status"] = f"failed: {r['error']}"
        log(f"[{k}/{len(todo)}] {row.experiment} {row.protocol} seed {row.seed} {row.backbone}: "
            f"{'done, seconds per stage in its timings.json' if r['state'] == 'done' else r['state'].upper() + ' ' + r['error']}"
            f" ({row.run_dir}{'' if r['state'] == 'done' or executor.name == 'local' else '; log: ' + r['log']})")
    if plan_file:
        atomic_write_bytes(Path(plan_file), json.dumps(plan_records(plan), indent=1).encode())
        atomic_write_bytes(Path(plan_file).with_name(Path(plan_file).stem + "-jobs.json"),
                           json.dumps({"executor": executor.name, "jobs": records + run_records}, indent=1, default=str).encode())
    return plan


def read_plan(path) -> pd.DataFrame:
    "A plan written by `run_plan`, with its configs rebuilt."
    rows = json.loads(Path(path).read_text())
    return pd.DataFrame([{**r, "config": Config.from_params(r["config"])} for r in rows])


# %% [markdown]
# The fixture plan run here: the embedding phase embeds the sides left after the chunk above, the
# runs find every side in the cache, and a second call skips both complete runs.

# %%
_log = []
_done = run_plan(_small[_small.experiment.eq("EXP-004")], _tmp / "runs" / "plan.json", log=_log.append)
test_eq(list(_done[_done.status.eq("run")].job_state), ["done", "done"])
_jobs = json.loads((_tmp / "runs" / "plan-jobs.json").read_text())["jobs"]
test_eq([j["result"]["embedded"] for j in _jobs if j["stage"] == "run"], [0, 0])
_log2 = []
run_plan(_small[_small.experiment.eq("EXP-004")], _tmp / "runs" / "plan.json", log=_log2.append)
assert all("complete, skipped" in l for l in _log2), _log2
[l.replace(str(_tmp), "<tmp>") for l in _log]


# %% [markdown]
# ## One run from a YAML file: `derma_jepa_run` (`make demo`)
#
# `papermill nbs/run.ipynb out.ipynb -f FILE.yaml` parses the file with papermill's own loader and
# renders it into the notebook before any of our code runs: a `!!python/...` tag or an alias bomb
# is papermill's to meet (a traceback or a hang). `derma_jepa_run -f FILE.yaml -p KEY VALUE ...`
# reads the file and every value with 03_safety's `load_yaml` (plain values only), builds and
# validates the `Config` (every field, range and path; the data folder must exist), and only then
# hands papermill the checked plain values; the executed notebook is filed in the run directory
# (`run_dir`, by default `runs/<run id>`), as `make paper` files its runs. Bad input ends in one
# line and exit status 2, before anything is written.

# %%
#| export
def run_main(argv=None):
    "Run one experiment through nbs/run.ipynb: the YAML and every value checked first, then papermill."
    ap = argparse.ArgumentParser(prog="derma_jepa_run", description=run_main.__doc__)
    ap.add_argument("-f", "--file", default=None, help="experiment YAML (plain values; nbs/experiments/*.yaml)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                    help="a parameter (its value read as YAML), after the file's")
    a = ap.parse_args(argv)
    try:
        params = load_yaml(a.file) if a.file else {}
        if a.file: Config.from_params(params, str(a.file))             # the file's own keys named with the file
        for k, v in a.param: params[k] = load_yaml(text=v, source=f"-p {k}", mapping=False)
        cfg = Config.from_params(params, "-p")
        if not cfg.run_dir: cfg = dataclasses.replace(cfg, run_dir=str(Path("runs") / run_id(cfg)))
        if cfg.data != "fixture": resolve_data(cfg)
        check_destination(cfg.run_dir)
    except (ConfigError, DataError) as e:
        print(f"derma_jepa_run: {e}", file=sys.stderr); sys.exit(2)
    err = execute_run(cfg)
    if err:
        print(f"derma_jepa_run: {err} (executed notebook: {Path(cfg.run_dir).parent / 'failed' / Path(cfg.run_dir).name}.ipynb)",
              file=sys.stderr); sys.exit(1)
    print(f"run directory: {cfg.run_dir} (run.ipynb, metrics.json, model_card.md, ...)")
    print("\n".join(verdict_lines(cfg)))


FIXTURE_NOTE = ("fixture data (01_fixture: generated lesions, a few hundred) and an offline backbone: this run checks that every "
                "stage works end to end; its verdicts are not evidence about any backbone. Under the symmetric protocol a "
                "synthetic stable pair is one photograph twice, which pixel metrics separate by construction, so 'worse' "
                "there is expected; the re-photo endpoint is the one to read.")


def verdict_lines(cfg: Config) -> list[str]:
    "What a finished run found (both endpoints' verdicts with Δ and its interval) and, on fixture data, what that means."
    f = Path(cfg.run_dir) / "metrics.json"
    if not f.exists(): return [f"stopped after the {cfg.stop_after} stage: no verdict yet"]
    m = json.loads(f.read_text())
    d = lambda x: f"{x['value']:+.3f} [{x['ci_low']:+.3f}, {x['ci_high']:+.3f}]"
    out = [f"verdict, synthetic endpoint: {m['verdict']} (predictor − {m['strongest_baseline']}: {d(m['delta'])})"]
    r = m.get("rephoto") or {}
    if r: out.append(f"verdict, re-photo endpoint: {r['verdict']} (predictor − {r['strongest_baseline']}: {d(r['delta'])})")
    if cfg.data == "fixture": out.append("what it means: " + FIXTURE_NOTE)
    return out


# %% [markdown]
# Refused before papermill starts, each in one line, nothing written (a whole run through the
# command: `make demo`, and tests/test_run_notebook.py):

# %%
import contextlib, io
def _run_cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        try: run_main(list(argv)); code = 0
        except SystemExit as e: code = e.code
    return code, err.getvalue().strip(), out.getvalue().strip()

_cli = Path(tempfile.mkdtemp())
(_cli / "laughs.yaml").write_text("a: &a [x, x, x]\nb: [*a, *a]\n")
(_cli / "tag.yaml").write_text("seed: !!python/object/apply:os.system ['true']\n")
(_cli / "list.yaml").write_text("- seed\n")
(_cli / "typo.yaml").write_text("seeed: 3\n")
for _argv, _msg in [(["-f", str(_cli / "laughs.yaml")], "alias *a is not accepted"),
                    (["-f", str(_cli / "tag.yaml")], "is not accepted (plain YAML values only)"),
                    (["-f", str(_cli / "list.yaml")], "expected a mapping of parameters, found a list"),
                    (["-f", str(_cli / "typo.yaml")], "typo.yaml: 'seeed' is not a configuration field (did you mean 'seed'?)"),
                    (["-p", "seed", "4294967296"], "parameter seed=4294967296 must be at most 4294967295"),
                    (["-p", "split_fractions", "[0.8, 0.1"], "-p split_fractions: line 1:"),
                    (["-p", "data", str(_cli / "nowhere")], "nowhere"),
                    (["-p", "run_dir", str(_cli / "typo.yaml")], "typo.yaml")]:
    _code, _err, _ = _run_cli(*_argv)
    test_eq(_code, 2); assert _msg in _err and len(_err.splitlines()) == 1, (_argv, _err)
test_eq(sorted(p.name for p in _cli.iterdir()), ["laughs.yaml", "list.yaml", "tag.yaml", "typo.yaml"])
# what a finished run prints last: both verdicts, and on fixture data what they mean
(_cli / "done").mkdir()
(_cli / "done" / "metrics.json").write_text(json.dumps({"verdict": "worse", "strongest_baseline": "pixel_l2",
    "delta": {"value": -0.11, "ci_low": -0.18, "ci_high": -0.04},
    "rephoto": {"verdict": "matched", "strongest_baseline": "ssim", "delta": {"value": 0.15, "ci_low": -0.08, "ci_high": 0.37}}}))
_lines = verdict_lines(Config(run_dir=str(_cli / "done")))
test_eq(_lines[:2], ["verdict, synthetic endpoint: worse (predictor − pixel_l2: -0.110 [-0.180, -0.040])",
                     "verdict, re-photo endpoint: matched (predictor − ssim: +0.150 [-0.080, +0.370])"])
assert _lines[2].startswith("what it means: fixture data")
test_eq(verdict_lines(Config(run_dir=str(_cli), stop_after="manifest")), ["stopped after the manifest stage: no verdict yet"])


# %% [markdown]
# ## The command: `derma_jepa_paper` (`make paper`)
#
# Plan (stopping on the first bad parameter with one line), embed and execute through the chosen
# executor, write the plan beside the runs, then render the paper through `nbs/paper.ipynb`,
# whose executed copy is kept as `<runs>/paper.ipynb`. The render runs here, once, after every run
# has ended (failed ones included: their rows say so). `--executor slurm` submits the jobs with
# the arc file's `resources` and waits for them; run it again after a failure and only what is
# incomplete is submitted.

# %%
#| export
def paper_main(argv=None):
    "Run the arc (and sweep) whose backbones load here, then render paper/."
    ap = argparse.ArgumentParser(prog="derma_jepa_paper", description=paper_main.__doc__)
    ap.add_argument("--arc", default=None, help="arc file (default nbs/experiments/arc.yaml)")
    ap.add_argument("--backbones", default="hub", help="hub | offline | comma list of offline backbones run beside the paper's")
    ap.add_argument("--runs", default="runs", help="folder of run directories")
    ap.add_argument("--paper", default="paper", help="where the paper is rendered")
    ap.add_argument("--no-sweep", action="store_true", help="leave out the seed sweep")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter in every experiment")
    ap.add_argument("--executor", default="local", choices=EXECUTORS, help="where embedding and runs execute")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between looks at SLURM jobs")
    a = ap.parse_args(argv)
    try:
        for flag, folder in (("--runs", a.runs), ("--paper", a.paper)):
            if Path(folder).exists() and not Path(folder).is_dir(): raise ConfigError(f"{flag} {folder}: a file, not a folder")
        overrides = {}
        for kv in a.set:
            if "=" not in kv: raise ConfigError(f"--set {kv!r}: expected KEY=VALUE")
            k, v = kv.split("=", 1)
            overrides[k] = load_yaml(text=v, source=f"--set {kv!r}", mapping=False)
        arc = load_arc(a.arc or experiments_dir() / "arc.yaml")
        plan = plan_arc(a.arc, a.backbones, overrides, not a.no_sweep, a.runs)
        for cfg in plan[plan.status == "run"].drop_duplicates("run_dir").config:
            if cfg.data != "fixture": resolve_data(cfg)
    except (ConfigError, DataError) as e:
        print(f"derma_jepa_paper: {e}", file=sys.stderr); sys.exit(2)
    n_run = plan[plan.status == "run"].run_dir.nunique()
    print(f"plan: {len(plan)} rows, {n_run} runs to execute or reuse, {int((plan.status != 'run').sum())} not runnable here")
    plan_file = Path(a.runs) / f"plan-{a.backbones.replace(',', '+')}.json"
    jobs_dir = Path(a.runs) / "jobs"
    executor = make_executor(a.executor, jobs_dir, arc["resources"], poll_s=a.poll)
    plan = run_plan(plan, plan_file, executor=executor, sides_per_job=arc["sides_per_job"], jobs_dir=jobs_dir)
    import papermill as pm
    pm.execute_notebook(str(repo_root() / "nbs" / "paper.ipynb"), str(Path(a.runs) / "paper.ipynb"),
                        parameters={"plan_file": str(plan_file), "paper_dir": a.paper, "backbones": a.backbones},
                        kernel_name="python3", progress_bar=False, cwd=str(Path.cwd()),
                        engine_name="derma_jepa")          # its kernel traced, so make notebooks can stamp it (17_notebooks)
    failed = plan[plan.status.str.startswith("failed")]
    print(f"paper rendered into {a.paper}/ (main.tex, tables/, figures/); executed notebook: {Path(a.runs) / 'paper.ipynb'}")
    if len(failed): print(f"{failed.run_dir.nunique()} run(s) failed: see {Path(a.runs) / 'failed'}", file=sys.stderr); sys.exit(1)

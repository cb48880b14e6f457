"EXP-009 end to end through papermill (nbs/exp009.ipynb) on fixture data: audit -> pretrain -> probe -> runs -> paper."
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

TINY_PRETRAIN = "{image_size: 48, patch_size: 8, batch_size: 8, warmup: 1, ckpt_every: 1, log_every: 1}"
TINY_RECIPE = "{data: fixture, fixture_lesions: 250, pairs_per_split: 20, epochs: 20, n_boot: 100}"


def exp009_cmd(tmp: Path, corpus: Path, *extra):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    pm = str(Path(sys.executable).parent / "papermill")
    cmd = [pm, "--log-level", "WARNING", str(ROOT / "nbs" / "exp009.ipynb"), str(tmp / "exp009.ipynb"),
           "-p", "corpus", str(corpus), "-p", "objectives", "mae", "-p", "steps", "{mae: 2}",
           "-p", "protocols", "symmetric", "-p", "compare", "none", "-p", "pretrain_set", TINY_PRETRAIN, "-p", "variants", "{}", "-p", "seeds", "[0]", "-p", "budgets", "[1.0]",
           "-p", "recipe_set", TINY_RECIPE, "-p", "audit_set", "{n_pos: 40, n_neg: 4000}",
           "-p", "runs_dir", str(tmp / "runs"), "-p", "paper_dir", str(tmp / "paper"), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    "A pretraining corpus of other (synthetic) lesions, with one resized, recompressed HAM-fixture image planted in it."
    from PIL import Image
    from derma_jepa.data import load_records
    from derma_jepa.fixture import fixture_dir
    d = tmp_path_factory.mktemp("corpus")
    for p in load_records(fixture_dir(n_lesions=40, seed=7)).path:
        with Image.open(p) as im: im.save(d / f"other_{Path(p).name}")
    ham = load_records(fixture_dir(n_lesions=250, seed=0))
    with Image.open(ham.path.iloc[3]) as im: im.resize((180, 135)).save(d / "planted.jpg", quality=75)
    return d, Path(ham.path.iloc[3]).name


@pytest.mark.slow
def test_exp009_end_to_end(tmp_path, corpus):
    folder, planted_from = corpus
    p = exp009_cmd(tmp_path, folder)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    runs = tmp_path / "runs" / "exp009"
    # the audit caught the planted copy, and pretraining left it out
    out = (tmp_path / "paper" / "exp009" / "runs.md").read_text()
    assert "planted.jpg" in out and planted_from in out
    enc = {d.name.split("-")[0] for d in (runs / "pretrain").iterdir()}
    assert enc == {"mae", "random"}
    rows = [l for l in out.split("## Corpus images left out of pretraining")[1].splitlines() if l.startswith("| ")]
    n_excluded = len(rows) - 1                                     # less the header
    assert n_excluded >= 1
    n_corpus = len(list(folder.glob("*.jpg")))
    mae = next((runs / "pretrain").glob("mae-*"))
    assert json.loads((mae / "train.json").read_text())["n_images"] == n_corpus - n_excluded
    # every encoder ran the recipe under both protocols, through run.ipynb
    plan = json.loads((runs / "plan.json").read_text())
    assert len(plan) == 2 and {r["status"] for r in plan} == {"run"}
    for r in plan: assert (Path(r["run_dir"]) / "run.ipynb").exists() and (Path(r["run_dir"]) / "metrics.json").exists()
    table = (tmp_path / "paper" / "exp009" / "exp009_table.md").read_text()
    for label in ("| MAE ", "| random init "): assert label in table
    assert "Δ vs random init (paired, same seed)" in table
    recipe = (tmp_path / "paper" / "exp009" / "recipe_table.md").read_text()
    assert "symmetric" in recipe and "re-photo AUROC (predictor)" in recipe and "not run" not in recipe
    probes = pd.read_csv(runs / "probes.csv")            # the settings file's fractions, each below 100% drawn several times
    from derma_jepa.exp009 import load_exp009
    pr = load_exp009(corpus=str(folder))["probe"]
    per = sum(pr["draws"] if f < 1 else 1 for f in pr["fractions"])
    assert len(probes) == 2 * 2 * per and probes.balanced_accuracy.between(0, 1).all()
    # the gate's paired Δ: for the trained encoder, not for its random-init control
    assert probes[probes.encoder.eq("MAE")].delta_ba.notna().all() and probes[probes.encoder.eq("random init")].delta_ba.isna().all()
    rephoto = pd.read_csv(runs / "rephoto.csv")          # the re-photo endpoint of every encoder
    assert set(rephoto.encoder) == {"MAE", "random init"} and rephoto.rephoto_auroc.between(0, 1).all()
    assert "label_efficiency.png" in (tmp_path / "paper" / "exp009" / "figures.md").read_text()
    # a second run reuses every checkpoint and run directory
    p2 = exp009_cmd(tmp_path, folder)
    assert p2.returncode == 0, p2.stderr[-3000:]
    nb = (tmp_path / "exp009.ipynb").read_text()
    assert nb.count("finished earlier, reused") == 1 and nb.count("complete, skipped") == 2


def test_exp009_bad_setting_stops_before_work(tmp_path, corpus):
    p = exp009_cmd(tmp_path, corpus[0], "-p", "objectives", "mae,byol")
    assert p.returncode != 0 and "unknown objective 'byol'" in p.stdout + p.stderr
    assert not (tmp_path / "runs").exists()

"`derma_jepa_paper` (what `make paper` runs) on a tiny fixture arc: runs through papermill, paper/ rendered, reruns idle."
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

EXP = ROOT / "nbs" / "experiments"
TINY = ["--set", "data=fixture", "--set", "fixture_lesions=250", "--set", "pairs_per_split=20", "--set", "epochs=20",
        "--set", "n_boot=100"]


def paper_cmd(tmp: Path, arc: Path, *extra):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp / "empty-hub"), "MPLBACKEND": "Agg"}
    cmd = [str(Path(sys.executable).parent / "derma_jepa_paper"), "--arc", str(arc), "--backbones", "color_texture",
           "--runs", str(tmp / "runs"), "--paper", str(tmp / "paper"), *TINY, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def tiny_arc(tmp: Path) -> Path:
    for stem in ("exp004", "exp005"): (tmp / f"{stem}.yaml").write_text((EXP / f"{stem}.yaml").read_text())
    arc = tmp / "arc.yaml"
    arc.write_text("experiments: [exp004, exp005]\nprotocols: [reference, symmetric]\nlofo: [exp004]\n"
                   "sweep:\n  experiments: [exp005]\n  seeds: [20260422, 1]\n")
    return arc


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    p = paper_cmd(tmp, tiny_arc(tmp))
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp, p


def test_paper_rendered_from_executed_runs(rendered):
    tmp, p = rendered
    paper = tmp / "paper"
    for name in ("arc", "rephoto", "rephoto_deltas", "lofo", "ablation", "intervals", "anchors", "optimisers", "sweep",
                 "sweep_deltas"):
        assert (paper / "tables" / f"{name}.md").stat().st_size > 0 and (paper / "tables" / f"{name}.tex").stat().st_size > 0
        assert f"\\input{{tables/{name}.tex}}" in (paper / "main.tex").read_text()
    # one backbone ran: the by-backbone figure waits for several (21_render)
    figures = {"leak", "pair_gallery", "delta_forest", "roc_exp004", "score_histograms", "train_vs_test"}
    assert {f.name for f in (paper / "figures").iterdir()} == {".derma_jepa.json", *(f"{k}.{e}" for k in figures for e in ("png", "pdf"))}
    main, readme = (paper / "main.tex").read_text(), (paper / "README.md").read_text()
    for k in figures:                              # every figure with a caption that says what it shows
        assert f"figures/{k}.pdf}}\\caption{{" in main and f"`figures/{k}.png`: " in readme, k   # LaTeX takes the vector PDF
    arc = (paper / "tables" / "arc.md").read_text()
    for column in ("Δ [95% CI]", "target-only probe", "context-only probe", "re-photo AUROC [95% CI]", "(release rule)",
                   "re-photo Δ [95% CI] vs val-chosen baseline: verdict"):
        assert column in arc, column
    stand_in = [line for line in arc.splitlines() if "color_texture (offline stand-in)" in line]
    assert stand_in and all(line.count(" vs ") == 2 for line in stand_in)     # a re-photo verdict under both protocols
    # the results table holds the rows that ran; what did not, and why, follows it in main.tex
    assert "color_texture (offline stand-in)" in arc and "DINOv2 ViT-B/14" not in arc and "not run" not in arc
    assert "Not run on this machine.} DINOv2 ViT-B/14 (EXP-" in main
    assert "weights for timm/vit\\_base\\_patch14\\_dinov2.lvd142m not found" in main
    sweep = (paper / "tables" / "sweep.md").read_text()
    assert "±" in sweep and "|   2 |" in sweep                    # two seeds aggregated
    assert "release's ±1.96·SD/√n" in sweep
    rephoto = (paper / "tables" / "rephoto.md").read_text()          # every scorer on both endpoints
    for scorer in ("predictor", "raw cosine", "bias-only control", "pixel L2", "SSIM", "target-only probe"):
        assert f"| {scorer} " in rephoto, scorer
    assert "symmetric · re-photo" in rephoto and "reference · synthetic" in rephoto
    assert "| –" not in rephoto.split("reference · re-photo")[1]        # the reference column is filled too
    rd = (paper / "tables" / "rephoto_deltas.md").read_text()
    for comparison in ("predictor − val-chosen baseline", "predictor − raw cosine", "predictor − bias-only control"):
        assert comparison in rd, comparison
    lofo = (paper / "tables" / "lofo.md").read_text()                # three folds x both protocols x both endpoints
    for fam in ("strong", "strong_held_out", "strong_held_out_2"):
        assert f"EXP-004 holding out {fam} " in lofo, fam
    assert "reference · re-photo" in lofo and "symmetric · synthetic" in lofo
    anchors = (paper / "tables" / "anchors.md").read_text()          # the release's numbers beside ours
    assert "| pixel L2 " in anchors and "0.580" in anchors and "0.944" in anchors
    assert "two-way / pair" in (paper / "tables" / "intervals.md").read_text()     # widths by resampling unit
    deltas = (paper / "tables" / "sweep_deltas.md").read_text()      # paired within seeds, both protocols
    for comparison in ("predictor − raw cosine", "predictor − val-chosen baseline", "target-only probe"):
        assert comparison in deltas, comparison
    assert "reference − symmetric" in deltas and "1, 20260422" in deltas
    plan = json.loads((tmp / "runs" / "plan-color_texture.json").read_text())
    ran = {r["run_dir"] for r in plan if r["status"] == "run"}
    assert len(ran) == 10               # 2 experiments x 2 protocols + seed 1 of the sweep x 2 + 2 more LOFO folds x 2
    for d in ran:
        assert (Path(d) / "run.ipynb").exists() and (Path(d) / "metrics.json").exists()
    assert (tmp / "runs" / "paper.ipynb").exists()
    # EXP-005 found every embedding of EXP-004 in the cache
    exp005 = [d for d in ran if Path(d).name.startswith("exp005") and "seed20260422" in d]
    for d in exp005:
        assert json.loads((Path(d) / "timings.json").read_text())["embed_detail"]["computed"] == 0


def test_rerun_reuses_everything_and_rewrites_identical_tables(rendered):
    tmp, _ = rendered
    paper = tmp / "paper"
    before = {f: f.read_bytes() for f in paper.rglob("*") if f.is_file()}
    stamps = {f: f.stat().st_mtime_ns for f in (tmp / "runs").glob("*/metrics.json")}
    p = paper_cmd(tmp, tmp / "arc.yaml")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("complete, skipped") == 10 and " done in " not in p.stdout
    assert {f.stat().st_mtime_ns for f in stamps} == set(stamps.values())
    assert {f: f.read_bytes() for f in paper.rglob("*") if f.is_file()} == before


@pytest.mark.parametrize("arc_text, exp_extra, message", [
    ("experiments: [exp004]\nprotocol: [reference]\n", "", "unknown key 'protocol'"),
    ("experiments: [exp004]\n", "learning_rate: 0.1\n", "'learning_rate' is not a configuration field"),
    ("experiments: [exp004]\nprotocols: [leaky]\n", "", "unknown protocol 'leaky'"),
])
def test_bad_arc_stops_before_any_work(tmp_path, arc_text, exp_extra, message):
    (tmp_path / "exp004.yaml").write_text((EXP / "exp004.yaml").read_text() + exp_extra)
    (tmp_path / "arc.yaml").write_text(arc_text)
    p = paper_cmd(tmp_path, tmp_path / "arc.yaml")
    assert p.returncode == 2
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "paper").exists()


def test_typo_in_override_is_one_line(tmp_path):
    p = paper_cmd(tmp_path, EXP / "arc.yaml", "--set", "pairs_per_splt=3")
    assert p.returncode == 2 and "did you mean 'pairs_per_split'" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--set", "epochs=[1, 2"], "--set 'epochs=[1, 2': line 1: expected ','"),
    (["--runs", "FILE"], "afile: a file, not a folder"),
    (["--paper", "FILE"], "afile: a file, not a folder"),
])
def test_bad_command_line_is_one_line(tmp_path, extra, message):
    mine = tmp_path / "afile"
    mine.write_text("not the project's\n")
    p = paper_cmd(tmp_path, EXP / "arc.yaml", *[str(mine) if x == "FILE" else x for x in extra])
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert mine.read_text() == "not the project's\n" and not (tmp_path / "runs").exists()


def test_committed_prose_uses_only_generated_numbers():
    "paper/prose.tex states every number through a macro of paper/numbers.tex; README opens with paper/finding.md."
    import re
    from derma_jepa.text import prose_problems
    paper = ROOT / "paper"
    defined = re.findall(r"\\newcommand\{\\num([A-Za-z]+)\}", (paper / "numbers.tex").read_text())
    assert len(defined) > 50
    assert prose_problems((paper / "prose.tex").read_text(), defined) == []
    assert "\\input{prose.tex}" in (paper / "main.tex").read_text()
    finding = (paper / "finding.md").read_text().strip()
    block = re.search(r"<!-- finding -->\n(.*?)\n<!-- /finding -->", (ROOT / "README.md").read_text(), re.S).group(1)
    assert block == finding and "n/a" not in finding


@pytest.mark.skipif(not all(shutil.which(t) for t in ("latexmk", "pdflatex", "pdftoppm", "pdftotext")),
                    reason="TeX Live / poppler not installed (.ci/run installs texlive-latex-* latexmk poppler-utils)")
def test_pdf_builds_from_the_committed_paper(tmp_path):
    "make paper-pdf on the committed paper/: a PDF whose first pages are not blank, no undefined reference, no box 10 pt over."
    import numpy as np
    from PIL import Image
    from derma_jepa.text import build_pdf
    r = build_pdf(ROOT / "paper", out=tmp_path / "main.pdf")
    assert r["problems"] == [] and r["pages"] >= 5, r
    subprocess.run(["pdftoppm", "-r", "40", "-f", "1", "-l", "2", "-png", str(tmp_path / "main.pdf"), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 2
    for p in pages:
        a = np.asarray(Image.open(p).convert("L"), float)
        assert a.std() > 5 and (a < 200).mean() > 0.01, f"{p.name} looks blank"
    # the committed PDF is the committed sources' (its text, which does not depend on the TeX Live version's bytes)
    txt = lambda f: subprocess.run(["pdftotext", "-layout", str(f), "-"], capture_output=True, text=True, check=True).stdout
    assert txt(ROOT / "paper" / "main.pdf") == txt(tmp_path / "main.pdf"), "paper/main.pdf is stale: run make paper-pdf"

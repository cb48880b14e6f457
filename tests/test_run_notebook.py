"run.ipynb through papermill, as a user runs it: the contract of its run directory, and its refusals."
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT

MANIFEST_COLUMNS = {"pair_id", "split", "label", "kind", "context_image_id", "target_image_id", "context_recipe",
                    "target_recipe", "context_lesion_id", "target_lesion_id", "dx", "site"}
TINY = ["-p", "fixture_lesions", "250", "-p", "pairs_per_split", "20"]


def papermill(out: Path, *args):
    cmd = [str(Path(sys.executable).parent / "papermill"), "--log-level", "WARNING", "-k", "python3",
           str(ROOT / "nbs" / "run.ipynb"), str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("protocol", ["symmetric", "reference"])
def test_manifest_stage(tmp_path, protocol):
    run_dir = tmp_path / "run"
    p = papermill(tmp_path / "out.ipynb", *TINY, "-p", "protocol", protocol, "-p", "run_dir", str(run_dir),
                  "-p", "stop_after", "manifest")
    assert p.returncode == 0, p.stderr[-3000:]
    m = pd.read_parquet(run_dir / "manifest.parquet")
    assert MANIFEST_COLUMNS <= set(m.columns)
    # both protocols carry the real re-photo endpoint (val and test) beside their own synthetic pairs
    assert set(m.kind) == {"stable", "changing", "rephoto", "rephoto_changing"} and set(m.label) == {0, 1}
    own, end = m[m.kind.isin(["stable", "changing"])], m[~m.kind.isin(["stable", "changing"])]
    assert set(end.split) == {"val", "test"} and set(end.protocol) == {"shared"}
    families = {json.loads(r)["family"] for r in own.context_recipe}
    assert families == ({"none"} if protocol == "reference" else {"strong", "strong_held_out", "strong_held_out_2"})
    audit = json.loads((run_dir / "audit.json").read_text())
    for key in ["n_images", "n_lesions", "split_lesions", "split_images", "missing", "unreadable", "duplicate_checksums"]:
        assert key in audit, key
    assert set(audit["split_images"]) == {"train", "val", "test"}
    assert set(audit["dx_mix"]["test"]) >= {"stable", "changing"}


@pytest.mark.parametrize("args, message", [
    (["-p", "seeed", "3"], "'seeed' is not a configuration field"),
    (["-p", "train_families", "strong,fog"], "unknown nuisance family 'fog'"),
    (["-p", "preset", "appendix"], "unknown nuisance preset 'appendix'"),
    (["-p", "backbone", "resnet50"], "unknown backbone 'resnet50'"),
    (["-p", "backbone", "timm:../../x"], "'../../x' is not a timm model name"),
    (["-p", "backbone", "open_clip:ViT-B-61"], "open_clip has no model 'ViT-B-61' (did you mean ViT-B-16"),
    (["-p", "protocol", "leaky"], "unknown protocol 'leaky'"),
])
def test_bad_parameters_stop_before_any_work(tmp_path, args, message):
    run_dir = tmp_path / "run"
    p = papermill(tmp_path / "out.ipynb", *TINY, "-p", "run_dir", str(run_dir), *args)
    assert p.returncode != 0
    assert message in p.stderr
    assert not run_dir.exists()


def test_full_run_contract(tmp_path):
    run_dir = tmp_path / "run"
    p = papermill(tmp_path / "out.ipynb", *TINY, "-p", "run_dir", str(run_dir), "-p", "epochs", "20", "-p", "n_boot", "200")
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    scorers = {"predictor", "identity", "bias_only", "flipped_cosine", "target_only_probe", "context_only_probe",
               "pixel_l2", "ssim", "cosine_color_texture"}
    pixel = {"pixel_l2", "ssim"}             # symmetric scores the pixel baselines on val and test only (11_baselines)
    for split in ("train", "val", "test"):
        want = scorers - pixel if split == "train" else scorers
        assert want <= set(metrics["metrics"][split]) and (split != "train" or not pixel & set(metrics["metrics"][split]))
        for scorer in want:
            for metric in ("auroc", "auprc", "eer", "fpr_at_tpr"):
                block = metrics["metrics"][split][scorer][metric]
                assert set(block) == {"value", "ci_low", "ci_high"}
    assert {"health", "strongest_baseline", "delta", "deltas", "verdict", "verdict_rule", "bootstrap"} <= set(metrics)
    timings = json.loads((run_dir / "timings.json").read_text())
    assert {"manifest", "embed", "baselines", "fit", "metrics", "total", "cpu_total"} <= set(timings)
    assert set(timings["cpu"]) >= {"manifest", "embed", "baselines", "fit", "metrics"}
    scores, manifest = pd.read_parquet(run_dir / "scores.parquet"), pd.read_parquet(run_dir / "manifest.parquet")
    on_val_test = int(manifest.split.isin(["val", "test"]).sum())
    assert set(scores.scorer) == scorers and len(scores) == len(manifest) * (len(scorers) - 2) + 2 * on_val_test
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == ["roc_test.png", "score_histograms.png",
                                                                     "train_vs_test_auroc.png"]
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    pngs = [o["data"]["image/png"] for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    assert len(pngs) >= 6 and len(pngs) == len(set(pngs)), "a figure is shown twice in the executed notebook"
    assert "AUROC, re-photo vs matched changing" in json.dumps(nb) and "width ratio" in json.dumps(nb)

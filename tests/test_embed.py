"The embedding stage as a user meets it: missing weights, a local checkpoint, a killed run resumed."
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from test_run_notebook import papermill

TINY = ["-p", "fixture_lesions", "250", "-p", "pairs_per_split", "3"]


def test_hub_backbone_without_weights_stops_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("DERMA_JEPA_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    p = papermill(tmp_path / "out.ipynb", "-p", "backbone", "dinov2_vitb14", "-p", "run_dir", str(run_dir))
    assert p.returncode != 0
    assert "weights for timm/vit_base_patch14_dinov2.lvd142m not found" in p.stderr
    assert "hf download timm/vit_base_patch14_dinov2.lvd142m model.safetensors" in p.stderr
    assert not run_dir.exists()
    assert not (tmp_path / "cache" / "fixture").exists(), "no data work may happen before the weights are found"


def test_local_checkpoint_runs(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    # the smallest model with the hub's DINOv2 layout (timm's model.safetensors, 518-px position embeddings): ViT-S/14
    src = timm.create_model("vit_small_patch14_dinov2.lvd142m", pretrained=False, num_classes=0)
    ckpt = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(ckpt))
    run_dir = tmp_path / "run"
    p = papermill(tmp_path / "out.ipynb", *TINY, "-p", "backbone", "dinov2_vits14", "-p", "weights", str(ckpt), "-p", "stop_after", "embed", "-p", "dtype", "fp32",
                  "-p", "run_dir", str(run_dir))
    assert p.returncode == 0, p.stderr[-3000:]
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["weights"] == str(ckpt) and env["backbone"] == "dinov2_vits14"
    timings = json.loads((run_dir / "timings.json").read_text())
    detail = timings["embed_detail"]
    assert detail["sides"] == detail["computed"] + detail["cache_hits"] > 0


EMBED = textwrap.dedent("""
    import sys, numpy as np
    from derma_jepa.backbones import get_backbone
    from derma_jepa.data import load_records
    from derma_jepa.embed import embed_sides, sides_table
    from derma_jepa.fixture import fixture_dir
    from derma_jepa.pairs import build_manifest
    from derma_jepa.split import split_records
    recs = load_records(fixture_dir(n_lesions=250, seed=0))
    m, _ = build_manifest(split_records(recs, 5), "symmetric", pairs_per_split=3, seed=5)
    z, st = embed_sides(get_backbone("random_vits14"), sides_table(m, recs), dtype="fp32", batch_size=4, shard_size=4,
                        workers=0, cache_root=sys.argv[1])
    np.save(sys.argv[2], z)
    print(st.computed, st.cache_hits)
""")


def _embed(cache, out, **kw):
    return subprocess.Popen([sys.executable, "-c", EMBED, str(cache), str(out)], stdout=subprocess.PIPE, text=True, **kw)


def test_killed_run_resumes_to_identical_embeddings(tmp_path):
    whole = _embed(tmp_path / "cache-a", tmp_path / "a.npy")
    victim = _embed(tmp_path / "cache-b", tmp_path / "unused.npy")
    t0 = time.time()
    while not list((tmp_path / "cache-b").glob("*/shard-*.npz")):       # wait for the first complete shard
        assert victim.poll() is None and time.time() - t0 < 300, "the run ended before it could be killed"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL); victim.wait()
    shards_at_kill = len(list((tmp_path / "cache-b").glob("*/shard-*.npz")))
    assert whole.wait() == 0
    resumed = _embed(tmp_path / "cache-b", tmp_path / "b.npy")
    computed, hits = map(int, resumed.communicate()[0].split())
    assert resumed.returncode == 0 and hits >= 4 * shards_at_kill and computed > 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.tobytes() == b.tobytes()


def test_ssl_backbone_through_the_engine(tmp_path):
    "A self-supervised checkpoint (15_pretrain) named `ssl:<path>` embeds through 08_embed like any backbone, cache included."
    from derma_jepa.backbones import get_backbone
    from derma_jepa.data import load_records
    from derma_jepa.embed import embed_sides
    from derma_jepa.fixture import fixture_dir
    from derma_jepa.pretrain import PretrainConfig, random_encoder
    tiny = {"image_size": 48, "patch_size": 8, "batch_size": 8, "warmup": 1, "dtype": "fp32"}
    ckpt = random_encoder(PretrainConfig(objective="mae", **tiny), tmp_path / "mae.safetensors")
    bb = get_backbone(f"ssl:{ckpt}")
    sides = load_records(fixture_dir(n_lesions=300, seed=0)).head(6).assign(recipe='{"family":"none","ops":[]}')
    z, st = embed_sides(bb, sides, cache_root=tmp_path / "cache", workers=0)
    assert z.shape == (6, bb.dim) and st.computed == 6 and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-4)
    z2, st2 = embed_sides(get_backbone(f"ssl:{ckpt}"), sides, cache_root=tmp_path / "cache", workers=0)
    assert (st2.computed, st2.cache_hits, z2.tobytes()) == (0, 6, z.tobytes())

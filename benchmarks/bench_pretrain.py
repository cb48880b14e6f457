"""EXP-009's costs on this machine (issue 6):
- pretraining throughput, training images/s, of each objective (MAE, VAE, SimCLR, I-JEPA) on the ViT-Tiny at 112 px that
  15_pretrain trains, batch 64, bf16 autocast vs fp32, measured in one process (the ratio bf16/fp32 is the figure to read:
  it is > 1 only where the CPU has AMX or the run is on CUDA);
- the overlap audit's hashing (images/s, three hashes per image, cold cache) and matching (pairs/s, XOR + popcount).
Images: isic-nonham when ISIC_NONHAM_DIR is set (the pretraining corpus), else generated fixture images.
Usage: [ISIC_NONHAM_DIR=...] python benchmarks/bench_pretrain.py [--steps 6]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402


def corpus(n: int):
    "The first n image paths of the pretraining corpus (isic-nonham when ISIC_NONHAM_DIR is set, else the fixture)."
    from derma_jepa.audit import image_paths
    if os.environ.get("ISIC_NONHAM_DIR"): return image_paths(os.environ["ISIC_NONHAM_DIR"])[:n], "isic-nonham"
    from derma_jepa.data import load_records
    from derma_jepa.fixture import fixture_dir
    return list(load_records(fixture_dir(n_lesions=300, seed=0)).path[:n]), "fixture"


def train_rate(objective: str, dtype: str, imgs, steps: int) -> float:
    "Training images/s over `steps` steps after one warm-up step (a SimCLR step sees two views of each image)."
    from derma_jepa.pretrain import PretrainConfig, pretrain
    cfg = PretrainConfig(objective=objective, steps=steps + 1, dtype=dtype, warmup=1, ckpt_every=10_000, log_every=10_000)
    with tempfile.TemporaryDirectory() as d:
        pretrain(cfg, imgs, d, stop_at=1)                       # warm-up: allocations, lazy imports
        return round(pretrain(cfg, imgs, d)["images_per_s"], 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--audit-images", type=int, default=1000)
    args = ap.parse_args()
    import torch
    from derma_jepa.audit import HASHES, hash_files, match
    from derma_jepa.pretrain import OBJECTIVES
    from derma_jepa.pretrain import load_images
    paths, source = corpus(256)
    imgs = load_images(paths, 112)
    train = {obj: {dt: train_rate(obj, dt, imgs, args.steps) for dt in ("fp32", "bf16")} for obj in OBJECTIVES}
    for v in train.values(): v["bf16_over_fp32"] = round(v["bf16"] / v["fp32"], 3)
    print("training images/s:", train)
    apaths, _ = corpus(args.audit_images)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); h = hash_files(apaths, cache=Path(d) / "hashes.parquet"); t_hash = time.perf_counter() - t0
        t0 = time.perf_counter(); hash_files(apaths, cache=Path(d) / "hashes.parquet"); t_cached = time.perf_counter() - t0
    big = h.sample(20_000, replace=True, random_state=0).reset_index(drop=True)
    t0 = time.perf_counter(); match(big, h, {k: 15 for k in HASHES}, votes=3); t_match = time.perf_counter() - t0
    audit = {"images": len(apaths), "hash_images_per_s_cold": round(len(apaths) / t_hash, 1),
             "hash_images_per_s_cached": round(len(apaths) / t_cached, 1),
             "match_pairs_per_s": round(len(big) * len(h) / t_match, 1), "match_pairs": len(big) * len(h)}
    print("audit:", audit)
    return record("bench_pretrain", {"source": source, "arch": "vit_tiny_patch16_224 @ 112 px, batch 64",
                                     "steps_timed": args.steps, "torch_threads": torch.get_num_threads(),
                                     "train_images_per_s": train, "audit": audit})


if __name__ == "__main__":
    main()

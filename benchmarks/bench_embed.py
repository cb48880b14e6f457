"""The embedding engine on real HAM10000 sides (issue 3's targets), with `random_vitb16` at 224 px on this machine:
- end-to-end (decode + nuisance + preprocess + forward) sides/s in `auto` dtype; target >= 15;
- the model-only forward rate at the same batch size in the same run; target e2e >= 0.85 x model-only;
- a fully cached re-run of the whole symmetric EXP-004 manifest (12,000 sides); target >= 5,000 sides/s;
- peak RSS of the process and of its data-loader workers; target <= 4 GB.
Usage: HAM10000_DIR=... python benchmarks/bench_embed.py [n_sides]
"""
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402

EXP004 = Path(__file__).resolve().parents[1] / "nbs" / "experiments" / "exp004.yaml"


def main():
    ham = os.environ.get("HAM10000_DIR")
    if not ham: sys.exit("bench_embed: set HAM10000_DIR to the HAM10000 copy")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    from derma_jepa.backbones import get_backbone
    from derma_jepa.embed import EmbeddingCache, SideDataset, autocast, embed_sides, resolve_dtype, side_keys, sides_table
    from derma_jepa.experiment import Config, data_stage
    records, _, manifest, _ = data_stage(Config.from_yaml(EXP004, data=ham))
    sides = sides_table(manifest, records)
    bb = get_backbone("random_vitb16")
    dtype, batch = resolve_dtype("auto", bb.device), 32
    with tempfile.TemporaryDirectory() as root:
        # model only: preprocessed tensors already in memory, same batch size and dtype
        ds = SideDataset(sides.path[:batch], sides.recipe[:batch], bb.transform)
        x = torch.stack([ds[i] for i in range(batch)])
        with torch.inference_mode(), autocast(bb.device, dtype):
            bb.model(x)
            t0 = time.perf_counter()
            reps = max(1, n // batch)
            for _ in range(reps): bb.model(x)
            model_rate = reps * batch / (time.perf_counter() - t0)
        # end to end on n real sides, cold cache
        part = sides.iloc[:n]
        _, st = embed_sides(bb, part, dtype="auto", batch_size=batch, cache_root=root)
        e2e_rate = st.sides_per_s
        # the whole manifest cached: the n sides embedded above plus the rest filled with unit vectors
        rest = sides.iloc[n:]
        rng = np.random.default_rng(0)
        cache = EmbeddingCache(bb.fingerprint, dtype, root)
        keys = side_keys(bb.fingerprint, dtype, rest.sha256, rest.recipe)
        for i in range(0, len(rest), 256):
            v = rng.standard_normal((len(keys[i:i + 256]), bb.dim)).astype(np.float32)
            cache.put(keys[i:i + 256], v / np.linalg.norm(v, axis=1, keepdims=True))
        _, cached = embed_sides(bb, sides, dtype="auto", batch_size=batch, cache_root=root)
        assert cached.computed == 0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    res = record("bench_embed", {
        "backbone": "random_vitb16", "image_size": 224, "dtype": dtype, "amx": torch.cpu._is_amx_tile_supported(),
        "torch_threads": torch.get_num_threads(), "batch_size": batch, "workers": st.workers, "sides_e2e": n,
        "e2e_sides_per_s": round(e2e_rate, 2), "model_only_sides_per_s": round(model_rate, 2),
        "e2e_over_model_only": round(e2e_rate / model_rate, 3),
        "cached_rerun": {"sides": cached.sides, "sides_per_s": round(cached.sides_per_s, 1),
                         "note": f"{n} sides embedded here, the rest of the manifest's cache filled with unit vectors"},
        "peak_rss_gb": {"main": round(rss_self, 2), "largest_worker": round(rss_children, 2)},
        "targets": {"e2e_sides_per_s_min": 15, "e2e_over_model_only_min": 0.85, "cached_sides_per_s_min": 5000,
                    "peak_rss_gb_max": 4},
        "met": {"e2e": e2e_rate >= 15, "ratio": e2e_rate / model_rate >= 0.85, "cached": cached.sides_per_s >= 5000,
                "rss": max(rss_self, rss_children) <= 4},
    })
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

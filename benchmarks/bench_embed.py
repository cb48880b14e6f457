"""The embedding engine on real HAM10000 sides, with `random_vitb16` at 224 px on this machine (issues 3 and 15):
- the precision `auto` chooses here, from the model-only rate of every precision this device runs and the agreement of
  its embeddings with fp32's on 32 real sides (08_embed's `measure_precisions` / `choose_precision`);
- end-to-end (decode + nuisance + preprocess + forward) sides/s at that precision, and the model-only forward rate at
  the same batch size and precision, in the same run; target e2e >= 0.9 x model-only;
- a fully cached re-run of the whole symmetric EXP-004 manifest; target >= 5,000 sides/s;
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
    from derma_jepa.embed import (EmbeddingCache, SideDataset, choose_precision, device_model, embed_sides, encoder,
                                  measure_precisions, side_keys, sides_table)
    from derma_jepa.experiment import Config, data_stage
    records, _, manifest, _ = data_stage(Config.from_yaml(EXP004, data=ham))
    sides = sides_table(manifest, records)                        # symmetric: every side carries a nuisance draw
    ref_sides = sides_table(data_stage(Config.from_yaml(EXP004, data=ham, protocol="reference"))[2], records)
    # under reference 5,004 of the 8,004 sides are untouched originals: a spread sample of them all
    ref_sides = ref_sides.iloc[np.linspace(0, len(ref_sides) - 1, 3 * n).astype(int)]
    bb = get_backbone("random_vitb16")
    batch = 32
    ds = SideDataset(sides.path[:batch], sides.recipe[:batch], bb.transform)
    x = torch.stack([ds[i] for i in range(batch)])
    # every precision, model only, on the same 32 real sides: the measurement `auto` makes (here without its cache)
    measured = measure_precisions(bb.model, x, bb.device)
    dtype = choose_precision(measured)
    with tempfile.TemporaryDirectory() as root:
        # model only at the chosen precision (preprocessed tensors already in memory, same batch size), then end to end
        # on n new real sides (cold cache, same precision), three times in turn: a shared machine's load moves both
        # rates from one minute to the next, so the ratio is read per round and summarised by its median
        forward = encoder(bb.model, bb.device, dtype)
        forward(x)
        rounds = {"symmetric": [], "reference": []}
        for r in range(3):
            for prot, table in (("symmetric", sides), ("reference", ref_sides)):
                t0 = time.perf_counter()
                reps = max(1, n // batch // 2)
                for _ in range(reps): forward(x)
                model_rate = reps * batch / (time.perf_counter() - t0)
                _, st = embed_sides(bb, table.iloc[r * n:(r + 1) * n], dtype=dtype, batch_size=batch, cache_root=root)
                rounds[prot].append({"model_only": round(model_rate, 2), "e2e": round(st.sides_per_s, 2),
                                     "ratio": round(st.sides_per_s / model_rate, 3)})
        med = {p: {k: float(np.median([r[k] for r in v])) for k in ("model_only", "e2e", "ratio")} for p, v in rounds.items()}
        model_rate, e2e_rate, ratio = (med["symmetric"][k] for k in ("model_only", "e2e", "ratio"))
        # the whole manifest cached: the n sides embedded above plus the rest filled with unit vectors
        rest = sides.iloc[3 * n:]
        rng = np.random.default_rng(0)
        cache = EmbeddingCache(bb.fingerprint, dtype, root)
        keys = side_keys(bb.fingerprint, dtype, rest.sha256, rest.recipe)
        for i in range(0, len(rest), 256):
            v = rng.standard_normal((len(keys[i:i + 256]), bb.dim)).astype(np.float32)
            cache.put(keys[i:i + 256], v / np.linalg.norm(v, axis=1, keepdims=True))
        _, cached = embed_sides(bb, sides, dtype=dtype, batch_size=batch, cache_root=root)
        assert cached.computed == 0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    res = record("bench_embed", {
        "backbone": "random_vitb16", "image_size": 224, "device": bb.device, "device_model": device_model(bb.device),
        "precisions_model_only": measured, "chosen_dtype": dtype, "amx": torch.cpu._is_amx_tile_supported(),
        "torch_threads": torch.get_num_threads(), "batch_size": batch, "workers": st.workers, "sides_e2e": n,
        "e2e_sides_per_s": round(e2e_rate, 2), "model_only_sides_per_s": round(model_rate, 2),
        "e2e_over_model_only": round(ratio, 3), "rounds": rounds, "median_by_sides": med,
        "cached_rerun": {"sides": cached.sides, "sides_per_s": round(cached.sides_per_s, 1),
                         "note": f"{3 * n} sides embedded here, the rest of the manifest's cache filled with unit vectors"},
        "peak_rss_gb": {"main": round(rss_self, 2), "largest_worker": round(rss_children, 2)},
        "targets": {"e2e_sides_per_s_min": 15, "e2e_over_model_only_min": 0.9, "cached_sides_per_s_min": 5000,
                    "peak_rss_gb_max": 4},
        "met": {"e2e": e2e_rate >= 15, "ratio": ratio >= 0.9, "ratio_reference_sides": med["reference"]["ratio"] >= 0.9, "cached": cached.sides_per_s >= 5000,
                "rss": max(rss_self, rss_children) <= 4},
    })
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""The data side on the real HAM10000 copy (issue 2's targets):
- cold (empty cache) and warm: audit + split + EXP-004 manifests under both protocols; target cold <= 20 s, warm <= 5 s;
- rendering every distinct side of the symmetric EXP-004 manifest at 224 px on all cores; target >= 150 sides/s
  on 2 cores. The single-process rate is measured in the same run, so the parallel speed-up is a ratio.
Usage: HAM10000_DIR=... python benchmarks/bench_data.py
"""
import hashlib
import json
import os
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402

EXP004 = Path(__file__).resolve().parents[1] / "nbs" / "experiments" / "exp004.yaml"


def data_side(ham):
    from derma_jepa.data import load_records, require_readable
    from derma_jepa.experiment import Config
    from derma_jepa.pairs import build_manifest
    from derma_jepa.split import split_records
    t = {}
    t0 = time.perf_counter()
    records = require_readable(load_records(ham)); t["audit_s"] = time.perf_counter() - t0
    out = {}
    for protocol in ("reference", "symmetric"):
        c = Config.from_yaml(EXP004, data=str(ham), protocol=protocol)
        t1 = time.perf_counter()
        split = split_records(records, c.seed, c.split_fractions, c.protocol)
        t[f"split_{protocol}_s"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        out[protocol] = build_manifest(split, protocol, c.train_families, c.eval_family, c.changing_policy,
                                       c.resolved_preset, c.pairs_per_split, c.seed, c.image_size)[0]
        t[f"manifest_{protocol}_s"] = time.perf_counter() - t1
    t["total_s"] = time.perf_counter() - t0
    return records, out, {k: round(v, 3) for k, v in t.items()}


def _render_chunk(items):
    from derma_jepa.nuisance import load_rgb, render
    digests = []
    for path, recipe in items:
        digests.append(hashlib.sha256(render(load_rgb(path), recipe).tobytes()).hexdigest())
    return digests


def render_rate(sides, processes):
    chunks = [sides[i:i + 64] for i in range(0, len(sides), 64)]
    t0 = time.perf_counter()
    if processes == 1: digests = [d for c in chunks for d in _render_chunk(c)]
    else:
        with get_context("fork").Pool(processes) as pool:
            digests = [d for ds in pool.imap(_render_chunk, chunks) for d in ds]
    dt = time.perf_counter() - t0
    return len(sides) / dt, hashlib.sha256("".join(digests).encode()).hexdigest()


def main():
    ham = os.environ.get("HAM10000_DIR")
    if not ham: sys.exit("bench_data: set HAM10000_DIR to the HAM10000 copy")
    from derma_jepa.pairs import manifest_sides
    with tempfile.TemporaryDirectory() as cache:
        os.environ["DERMA_JEPA_CACHE"] = cache
        _, _, cold = data_side(ham)
        records, manifests, warm = data_side(ham)
    path = records.set_index("image_id").path
    sides = manifest_sides(manifests["symmetric"])
    items = list(zip(path[sides.image_id].tolist(), sides.recipe.tolist()))
    cores = os.cpu_count() or 1
    one, digest1 = render_rate(items[:1000], 1)
    many, digest = render_rate(items, cores)
    _, digest_again = render_rate(items[:1000], cores)
    res = record("bench_data", {
        "cold": cold, "warm": warm,
        "render": {"sides": len(items), "size": 224, "processes": cores, "sides_per_s": round(many, 1),
                   "single_process_sides_per_s": round(one, 1), "speedup": round(many / one, 2),
                   "deterministic": digest1 == digest_again, "digest_all_sides": digest},
        "targets": {"cold_total_s_max": 20, "warm_total_s_max": 5, "render_sides_per_s_min": 150},
        "met": {"cold": cold["total_s"] <= 20, "warm": warm["total_s"] <= 5, "render": many >= 150},
    })
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

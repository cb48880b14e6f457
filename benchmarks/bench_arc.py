"""The nine-run arc (issue 5's target), both protocols, on the real copy, on this machine:
- cold (empty embedding cache) <= 90 min and warm (every embedding cached) <= 5 min for `random_vitb16`;
- the seed sweep's cost recorded separately; EXP-005 and EXP-006a <= 10% of EXP-004's time.

Phases (run in the order given, results merged into benchmarks/results.json under bench_arc/<backbones>):
  cold     run the arc with `derma_jepa_paper` on an empty cache (--cache, default a fresh temp folder), then the sweep;
  summary  the per-run times (timings.json 'total') of the runs already in --runs, arc and sweep apart;
  warm     the arc again into a fresh runs folder with the same cache: nothing is embedded, everything is refitted;
  idle     `derma_jepa_paper` again on the complete runs: nothing runs, the paper is re-rendered;
  project  distinct sides the arc embeds (from its manifests) and the backbone's sides/s on 128 real sides, giving
           the projected embedding time of a cold arc.
Usage: HAM10000_DIR=... python benchmarks/bench_arc.py --backbones random_vitb16 --phases cold,warm,idle
       HAM10000_DIR=... python benchmarks/bench_arc.py --backbones color_texture --phases cold,warm \
         --arc nbs/experiments/arc_exp004_to_006a.yaml --name=-exp004-006a   (their cost ratio from an empty cache)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


ARC = None      # --arc: another arc file (e.g. EXP-004/005/006a only, to time them cold)


def paper(runs: Path, backbones: str, *extra, env=None) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "derma_jepa_paper"), "--backbones", backbones, "--runs", str(runs), "--paper",
                    str(runs / "paper"), *(["--arc", ARC] if ARC else []), *extra], cwd=ROOT, env=env, check=True)
    return round(time.perf_counter() - t0, 1)


def run_times(runs: Path, backbones: str) -> dict:
    "timings.json of every run of the plan in `runs`: arc and sweep totals, EXP-004/005/006a, embedding work."
    plan = json.loads((runs / f"plan-{backbones.replace(',', '+')}.json").read_text())
    seen, arc, sweep, per = set(), 0.0, 0.0, {}
    for r in plan:
        if r["status"] != "run" or r["run_dir"] in seen: continue
        seen.add(r["run_dir"])
        t = json.loads((Path(r["run_dir"]) / "timings.json").read_text())
        if r["sweep"]: sweep += t["total"]
        else:
            arc += t["total"]
            per[f"{r['experiment']}/{r['protocol']}/{r['backbone']}"] = {
                k: t.get(k) for k in ("total", "embed", "fit", "baselines", "metrics", "manifest")} | {
                "sides_computed": t.get("embed_detail", {}).get("computed")}
    ratios = {}
    for k, v in per.items():
        if k.startswith("EXP-004/"):
            for e in ("EXP-005", "EXP-006a"):
                o = per.get(k.replace("EXP-004", e))
                if o: ratios[k.replace("EXP-004", e)] = round(o["total"] / v["total"], 4)
    return {"arc_run_seconds": round(arc, 1), "sweep_run_seconds": round(sweep, 1), "runs": len(seen),
            "ratio_to_exp004": ratios, "per_run": per}


def project(backbone: str, data: str) -> dict:
    "Distinct sides the arc embeds per protocol, the backbone's measured sides/s, and the projected cold embedding time."
    from derma_jepa.backbones import get_backbone
    from derma_jepa.embed import embed_sides, sides_table
    from derma_jepa.plan import plan_arc
    from derma_jepa.experiment import data_stage
    plan = plan_arc(backbones=backbone, overrides={"data": data}, sweep=True)
    plan = plan[plan.stand_in]
    keys, last = {"arc": set(), "sweep": set()}, None
    for r in plan.drop_duplicates("run_dir").itertuples():
        records, _, manifest, _ = data_stage(r.config)
        s = sides_table(manifest, records)
        keys["sweep" if r.sweep else "arc"] |= set(zip(s.image_id, s.recipe))
        last = (s, records)
    sweep_only = keys["sweep"] - keys["arc"]
    bb = get_backbone(backbone)
    with tempfile.TemporaryDirectory() as tmp:          # a fresh cache: every side computed
        _, st = embed_sides(bb, last[0].head(128), "auto", 32, cache_root=tmp)
    rate = st.sides / st.seconds
    return {"distinct_sides_arc": len(keys["arc"]), "distinct_sides_sweep_only": len(sweep_only),
            "sides_per_s_measured_128": round(rate, 2), "dtype": st.dtype,
            "projected_embed_minutes_arc": round(len(keys["arc"]) / rate / 60, 1),
            "projected_embed_minutes_sweep": round(len(sweep_only) / rate / 60, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="random_vitb16")
    ap.add_argument("--phases", default="cold,warm,idle")
    ap.add_argument("--runs", default=None, help="runs folder of the cold/summary/idle phases (default: a fresh one)")
    ap.add_argument("--cache", default=None, help="embedding cache (default: a fresh one, i.e. cold)")
    ap.add_argument("--arc", default=None, help="arc file (default nbs/experiments/arc.yaml)")
    ap.add_argument("--name", default="", help="suffix of the results key (bench_arc/<backbones><name>)")
    a = ap.parse_args()
    global ARC
    ARC = a.arc
    data = os.environ.get("HAM10000_DIR")
    if not data: sys.exit("bench_arc: set HAM10000_DIR to the HAM10000 copy")
    work = Path(tempfile.mkdtemp(prefix="bench_arc-"))
    runs = Path(a.runs) if a.runs else work / "runs"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    if a.cache or "cold" in a.phases: env["DERMA_JEPA_CACHE"] = a.cache or str(work / "cache")
    out = {"backbones": a.backbones, "arc": a.arc or "nbs/experiments/arc.yaml", "cold_cache": "cold" in a.phases}
    for phase in a.phases.split(","):
        if phase == "cold":
            out["cold_arc_wall_s"] = paper(runs, a.backbones, "--no-sweep", env=env)
            out["cold_sweep_wall_s"] = paper(runs, a.backbones, env=env)
            out.update(run_times(runs, a.backbones))
        elif phase == "summary": out["summary"] = run_times(runs, a.backbones)
        elif phase == "warm":
            warm = work / "warm-runs"
            out["warm_arc_wall_s"] = paper(warm, a.backbones, "--no-sweep", env=env)
            wt = run_times(warm, a.backbones)
            out["warm"] = {k: wt[k] for k in ("arc_run_seconds", "runs", "ratio_to_exp004")}
            out["warm"]["sides_computed"] = sum(v["sides_computed"] or 0 for v in wt["per_run"].values())
        elif phase == "idle": out["idle_wall_s"] = paper(runs, a.backbones, env=env)
        elif phase == "project": out["projection"] = project(a.backbones.split(",")[0], data)
        else: sys.exit(f"bench_arc: unknown phase {phase!r}")
        print(json.dumps(out, indent=1))
    record(f"bench_arc/{a.backbones}{a.name}", out)


if __name__ == "__main__":
    main()

"""The color_texture arc (and seed sweep) on the real copy, from an empty cache, through a local single-node SLURM with
two one-CPU workers and through `--executor local`, one after the other on this machine (issue 16).

Records: the wall time of each, the per-job overhead of SLURM (sbatch call per task, and submission → the job's
function starting: queueing, srun, interpreter start, submitit's unpickling and imports), and the count of sides
embedded: the embedding jobs' `computed` summed, which must equal the distinct sides of the plan (the rows of the
phase's sides files), with every run embedding none itself. Both start from an empty cache except the file-hash
audit cache (copied in: hashing 10,015 files is not what is compared), and both render the paper, compared byte by byte.
Usage: HAM10000_DIR=... python benchmarks/bench_cluster.py
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import record  # noqa: E402
import slurm_cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def arc_file(folder: Path) -> Path:
    "arc.yaml with one-CPU jobs, beside copies of the experiment files it names."
    for f in (ROOT / "nbs" / "experiments").glob("exp0*.yaml"): shutil.copy(f, folder / f.name)
    import yaml
    arc = yaml.safe_load((ROOT / "nbs" / "experiments" / "arc.yaml").read_text())
    arc["resources"] = {"default": {"cpus": 1, "time_min": 120}}
    (folder / "arc.yaml").write_text(yaml.safe_dump(arc))
    return folder / "arc.yaml"


def one(executor: str, tmp: Path, arc: Path, audit: Path) -> dict:
    cache = tmp / f"cache-{executor}"
    (cache / "audit").mkdir(parents=True)
    for f in audit.glob("*"): shutil.copy(f, cache / "audit" / f.name)
    env = {**os.environ, "DERMA_JEPA_CACHE": str(cache), "TQDM_DISABLE": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    t0 = time.perf_counter()
    p = subprocess.run([str(BIN / "derma_jepa_paper"), "--arc", str(arc), "--backbones", "color_texture", "--runs", str(tmp / "runs"),
                        "--paper", str(tmp / "paper"), "--executor", executor, "--poll", "2"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode: raise SystemExit(f"{executor}: {p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    jobs = json.loads((tmp / "runs" / "plan-color_texture-jobs.json").read_text())["jobs"]
    emb = [j for j in jobs if j["stage"] == "embed"]
    runs = [j for j in jobs if j["stage"] == "run"]
    distinct = sum(len(pd.read_parquet(f)) for f in (tmp / "runs" / "jobs" / "embed").glob("sides-*.parquet"))
    out = {"wall_s": round(wall, 1), "embed_jobs": len(emb), "run_jobs": len(runs),
           "sides_embedded_by_embed_jobs": sum(j["result"]["computed"] for j in emb),
           "sides_embedded_by_runs": sum(j["result"]["embedded"] for j in runs), "distinct_sides_of_plan": distinct,
           "states": sorted({j["state"] for j in jobs}),
           "run_job_seconds_median": round(statistics.median(j["seconds"] for j in runs), 1)}
    out["each_side_once"] = out["sides_embedded_by_embed_jobs"] == distinct and out["sides_embedded_by_runs"] == 0
    if executor == "slurm":
        start = [j["started_at"] - j["submitted_at"] for j in jobs if j.get("submitted_at")]
        per_array = {j["job_id"].split("_")[0]: j["array_submit_s"] for j in jobs}     # one sbatch call per array
        out["sbatch_s_per_task"] = round(sum(per_array.values()) / len(jobs), 4)
        out["sbatch_s_per_array"] = [round(s, 3) for s in per_array.values()]
        out["submit_to_start_s"] = {"median": round(statistics.median(start), 2), "min": round(min(start), 2),
                                    "max": round(max(start), 2), "note": "includes waiting for a free CPU"}
        first = {}
        for j in jobs: first[j["stage"]] = min(first.get(j["stage"], 1e18), j["started_at"] - j["submitted_at"])
        out["first_task_submit_to_start_s"] = {k: round(v, 2) for k, v in first.items()}
    (tmp / "runs").rename(tmp / f"runs-{executor}"); (tmp / "paper").rename(tmp / f"paper-{executor}")
    return out


def main():
    if not os.environ.get("HAM10000_DIR"): sys.exit("bench_cluster: set HAM10000_DIR to the HAM10000 copy")
    why = slurm_cluster.install()
    if why: sys.exit(f"bench_cluster: {why}")
    audit = Path(os.environ.get("DERMA_JEPA_CACHE", Path.home() / ".cache" / "derma_jepa")) / "audit"
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "arc").mkdir()
        arc = arc_file(tmp / "arc")
        with slurm_cluster.LocalSlurm(tmp / "dermajepa-slurm", cpus=2) as cluster:
            os.environ["SLURM_CONF"] = str(cluster.conf)
            res = {"slurm": one("slurm", tmp, arc, audit)}
        res["local"] = one("local", tmp, arc, audit)
        files = lambda d: {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}
        a, b = files(tmp / "paper-local"), files(tmp / "paper-slurm")
        res["paper_identical"] = a == b
        res["paper_files_differing"] = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    res["wall_ratio_local_over_slurm"] = round(res["local"]["wall_s"] / res["slurm"]["wall_s"], 2)
    print(json.dumps(record("bench_cluster", {"arc": "nbs/experiments/arc.yaml (with sweep)", "backbone": "color_texture",
                                              "cluster": "local SLURM 22.05, one node, 2 CPUs, jobs of 1 CPU",
                                              "cache": "empty (file-hash audit cache copied in)", **res}), indent=1))


if __name__ == "__main__":
    main()

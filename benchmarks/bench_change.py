"""What a change costs (issue "A change costs what it touches"), on this machine:
- for every module of derma_jepa, the committed notebooks an edit to it would stale, read from the notebooks' stamps
  (the modules each kernel actually imported) plus the notebook that defines the module; targets: `pretrain` at most
  4, no module but the data layer (`data`) more than 12, the mean over modules at most 6;
- the wall time of `make test` and of each of its stages (check-clean, check-notebooks, nbtest, pytest), run one after
  another here, with what each ran (skipped with --no-test).
Usage: [HAM10000_DIR=... ISIC_NONHAM_DIR=...] python benchmarks/bench_change.py [--no-test]
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"pretrain_max": 4, "non_data_max": 12, "mean_max": 6}
DATA_LAYER = {"data"}
STAGES = ["check-clean", "check-notebooks", "nbtest", "pytest"]


def costs() -> dict:
    from derma_jepa.notebooks import change_cost
    cost = change_cost(sorted((ROOT / "nbs").glob("*.ipynb")), ROOT)
    counts = {m: len(v) for m, v in cost.items()}
    non_data = {m: n for m, n in counts.items() if m not in DATA_LAYER}
    worst = max(non_data, key=non_data.get)
    summary = {"mean": round(statistics.mean(counts.values()), 2), "pretrain": counts.get("pretrain"),
               "worst_non_data": [worst, non_data[worst]]}
    summary["meets_targets"] = (summary["pretrain"] <= TARGETS["pretrain_max"] and non_data[worst] <= TARGETS["non_data_max"]
                                and summary["mean"] <= TARGETS["mean_max"])
    return {"stales": cost, "counts": counts, "summary": summary, "targets": TARGETS, "notebooks": len(list((ROOT / "nbs").glob("*.ipynb")))}


def timed_stage(target: str) -> dict:
    t0 = time.monotonic()
    p = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True)
    out = p.stdout + p.stderr
    res = {"wall_s": round(time.monotonic() - t0, 1), "returncode": p.returncode}
    m = re.findall(r"=+ (.*\d+ passed.*) =+", out)
    if m: res["pytest"] = m[-1]
    if target == "nbtest": res["notebooks"] = len(re.findall(r"^- Completed ", out, re.M))
    if target == "check-notebooks":
        m = re.search(r"(\d+) notebooks:", out)
        res["notebooks"] = int(m.group(1)) if m else None
    if p.returncode: res["tail"] = out[-2000:]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-test", action="store_true", help="only the staleness table, no `make test` timing")
    a = ap.parse_args()
    res = costs()
    width = max(map(len, res["counts"]))
    for m, n in sorted(res["counts"].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{m:<{width}}  {n:>2}  {', '.join(res['stales'][m])}")
    s = res["summary"]
    print(f"mean {s['mean']} (target <= {TARGETS['mean_max']}); pretrain {s['pretrain']} (<= {TARGETS['pretrain_max']}); "
          f"worst outside the data layer {s['worst_non_data'][0]} {s['worst_non_data'][1]} (<= {TARGETS['non_data_max']}); "
          f"{'meets' if s['meets_targets'] else 'MISSES'} the targets")
    if not a.no_test:
        stages = {}
        for st in STAGES:
            print(f"make {st} ...", flush=True)
            stages[st] = timed_stage(st)
            print(f"  {stages[st]}", flush=True)
        res["make_test"] = {"stages": stages, "wall_s": round(sum(v["wall_s"] for v in stages.values()), 1),
                            "green": all(v["returncode"] == 0 for v in stages.values())}
        print(f"make test: {res['make_test']['wall_s']} s, {'green' if res['make_test']['green'] else 'RED'}")
    else:   # keep the last measured `make test`, with the machine and commit it was measured on
        last = json.loads(RESULTS.read_text()).get("bench_change", {}) if RESULTS.exists() else {}
        if "make_test" in last: res["make_test"] = {"measured_on": last.get("machine", {}), **last["make_test"]}
    record("bench_change", res)


if __name__ == "__main__":
    main()

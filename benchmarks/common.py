"Shared by the benchmark scripts: the machine description and the results file."
import json
import os
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


def machine() -> dict:
    from derma_jepa.embed import device_model       # the CPU model name the precision decision is keyed by
    cpu = device_model("cpu")
    try: commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError: commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "numpy": version("numpy"), "pillow": version("pillow"), "pandas": version("pandas"), "git_commit": commit,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def record(name: str, results: dict) -> dict:
    "Merge one benchmark's results (with the machine) into benchmarks/results.json."
    allres = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    allres[name] = {"machine": machine(), **results}
    RESULTS.write_text(json.dumps(allres, indent=1, sort_keys=True) + "\n")
    return allres[name]

# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp executors

# %% [markdown]
# # Executors: where the work of a plan runs
#
# > One interface, two implementations: in this process, or as SLURM jobs through submitit.

# %% [markdown]
# A plan (20_plan) is a list of *work items*: embed these sides with that backbone, run this
# config through `run.ipynb`, pretrain that objective. An executor takes a list of items and
# returns one record per item saying what happened. That is the whole interface, so an executor
# is a small, swappable piece:
#
# - `LocalExecutor` runs the items one after another in this process (what `make paper` always did);
# - `SlurmExecutor` submits them as SLURM job arrays through [submitit](https://github.com/facebookincubator/submitit),
#   the library FAIR wrote for exactly this, waits for them, and reports each job's state and log.
#
# A work item names its function as text (`"derma_jepa.plan:run_job"`) and its arguments as
# JSON-ready values, so what travels to a job is data, not code. What comes back is read from a
# JSON *status file* the job writes when it ends (done, interrupted or failed, with the error and
# the result); a job that dies without one (killed, out of memory, node lost) is reported with
# the state SLURM gives it. submitit itself moves its submission and result as pickles inside the
# job folder; the project never reads those results (it reads the status JSON), so no file is
# unpickled by derma-jepa's code.

# %%
#| export
from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import signal
import socket
import subprocess
import time
import traceback
from pathlib import Path

from derma_jepa.data import ConfigError, atomic_write_bytes

# %%
import tempfile
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## Resources, as data
#
# What a job may use comes from the arc YAML's `resources` mapping: `default`, then one entry per
# stage (`embed`, `run`, `pretrain`), then one per backbone (the backbone's entry wins, so a GPU
# can be asked for where a hub ViT runs and not where `color_texture` does). Each entry may set
# `partition`, `cpus`, `mem_gb`, `gpus`, `time_min`, `max_parallel` (how many tasks of one array
# run at once; 0 = no limit) and `sbatch` (any other sbatch option, e.g. `{account: lab, qos:
# short, constraint: a100}`). The defaults work on a plain single-node cluster: the default
# partition, 2 CPUs, no memory or GPU request, 4 hours. Any other key is an error that names it.

# %%
#| export
RESOURCE_TYPES = {"partition": str, "cpus": int, "mem_gb": (int, float), "gpus": int, "time_min": int,
                  "max_parallel": int, "sbatch": dict}
DEFAULT_RESOURCES = {"partition": "", "cpus": 2, "mem_gb": 0, "gpus": 0, "time_min": 240, "max_parallel": 0, "sbatch": {}}
JOB_STAGES = ("embed", "run", "pretrain")


def _check_entry(entry, where: str) -> dict:
    if not isinstance(entry, dict): raise ConfigError(f"{where}: expected a mapping of {', '.join(RESOURCE_TYPES)}")
    for k, v in entry.items():
        if k not in RESOURCE_TYPES: raise ConfigError(f"{where}: unknown resource {k!r}; known: {', '.join(RESOURCE_TYPES)}")
        if isinstance(v, bool) or not isinstance(v, RESOURCE_TYPES[k]):
            raise ConfigError(f"{where}.{k}: {v!r} is not a {getattr(RESOURCE_TYPES[k], '__name__', 'number')}")
        if k != "sbatch" and k != "partition" and v < 0: raise ConfigError(f"{where}.{k}: {v!r} is negative")
    return entry


def check_resources(res, where: str = "resources") -> dict:
    "Validate an arc file's `resources` mapping: {default, <stage>..., backbones: {<name>: ...}}."
    res = res or {}
    if not isinstance(res, dict): raise ConfigError(f"{where}: expected a mapping")
    for k, v in res.items():
        if k == "backbones":
            if not isinstance(v, dict): raise ConfigError(f"{where}.backbones: expected a mapping of backbone names")
            for b, e in v.items(): _check_entry(e, f"{where}.backbones.{b}")
        elif k in ("default", *JOB_STAGES): _check_entry(v, f"{where}.{k}")
        else: raise ConfigError(f"{where}: unknown key {k!r}; keys: default, {', '.join(JOB_STAGES)}, backbones")
    return res


def resources_for(res: dict, stage: str, backbone: str = "") -> dict:
    "The resources of one job: defaults, then `default`, then the stage's entry, then the backbone's."
    out = {**DEFAULT_RESOURCES, **res.get("default", {}), **res.get(stage, {}), **res.get("backbones", {}).get(backbone, {})}
    return {**out, "sbatch": {**DEFAULT_RESOURCES["sbatch"], **res.get("default", {}).get("sbatch", {}),
                              **res.get(stage, {}).get("sbatch", {}), **res.get("backbones", {}).get(backbone, {}).get("sbatch", {})}}


def slurm_parameters(r: dict, name: str) -> dict:
    "Resources as submitit SlurmExecutor parameters (only what is asked for; 0 / '' leave SLURM's default)."
    p = {"job_name": name, "time": int(r["time_min"]), "cpus_per_task": int(r["cpus"]), "nodes": 1, "ntasks_per_node": 1,
         "additional_parameters": dict(r["sbatch"])}
    if r["partition"]: p["partition"] = r["partition"]
    if r["mem_gb"]: p["mem"] = f"{int(r['mem_gb'] * 1024)}MB"
    if r["gpus"]: p["gpus_per_node"] = int(r["gpus"])
    if r["max_parallel"]: p["array_parallelism"] = int(r["max_parallel"])
    return p


# %%
_res = check_resources({"default": {"time_min": 60}, "run": {"cpus": 4},
                        "backbones": {"dinov2_vitb14": {"gpus": 1, "mem_gb": 32, "sbatch": {"constraint": "a100"}}}})
test_eq(resources_for(_res, "run", "color_texture")["cpus"], 4)
test_eq(resources_for(_res, "embed", "dinov2_vitb14") | {"sbatch": None},
        {**DEFAULT_RESOURCES, "time_min": 60, "gpus": 1, "mem_gb": 32, "sbatch": None})
test_eq(slurm_parameters(resources_for(_res, "embed", "dinov2_vitb14"), "dj-embed"),
        {"job_name": "dj-embed", "time": 60, "cpus_per_task": 2, "nodes": 1, "ntasks_per_node": 1,
         "additional_parameters": {"constraint": "a100"}, "mem": "32768MB", "gpus_per_node": 1})
test_fail(lambda: check_resources({"run": {"gpu": 1}}), contains="resources.run: unknown resource 'gpu'")
test_fail(lambda: check_resources({"backbones": {"clip": {"cpus": "four"}}}), contains="resources.backbones.clip.cpus: 'four' is not a int")
test_fail(lambda: check_resources({"render": {}}), contains="unknown key 'render'")
test_fail(lambda: check_resources({"run": {"time_min": -5}}), contains="resources.run.time_min: -5 is negative")


# %% [markdown]
# ## A work item and what a job runs
#
# `job_entry` is the one function a job runs. It resolves the item's function by name, passes it
# `stop` when the function takes one, and writes the status file atomically when it ends. SIGTERM
# (pre-emption, `scancel`, the time limit) and SIGUSR2 (submitit's warning before the time limit)
# only raise a flag: a function that watches `stop()` (the embedding loop checks it after every
# shard) finishes the shard in progress, stores it, and ends as `interrupted`, so nothing computed
# is lost and a resubmission picks up there.

# %%
#| export
@dataclasses.dataclass(frozen=True)
class WorkItem:
    "One unit of work: `fn` as 'module:function', JSON-ready `kwargs`; `stage` and `backbone` pick its resources."
    stage: str
    name: str
    fn: str
    kwargs: dict
    backbone: str = ""


_STOP = {"requested": False, "signal": ""}


def stop_requested() -> bool: return _STOP["requested"]


def _on_stop(signum, frame):
    _STOP.update(requested=True, signal=signal.Signals(signum).name)


def resolve_fn(name: str):
    "'package.module:function' → the function (a ConfigError naming it when there is none)."
    mod, _, fn = name.partition(":")
    try: return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError) as e: raise ConfigError(f"work item function {name!r}: {e}") from None


def _status(state: str, t0: float, **kw) -> dict:
    return {"state": state, "host": socket.gethostname(), "seconds": round(time.monotonic() - t0, 3),
            "started_at": round(time.time() - (time.monotonic() - t0), 3), "ended_at": round(time.time(), 3),
            "slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "")),
            "slurm_task_id": os.environ.get("SLURM_ARRAY_TASK_ID", ""), **kw}


def job_entry(payload: str, handle_signals: bool = True) -> str:
    """Run one work item ({'fn', 'kwargs', 'status'} as JSON) and write its status file; returns the state.
    Exceptions become a `failed` status (with the error and the traceback's tail), never an unhandled crash."""
    from derma_jepa.embed import Interrupted
    item, t0 = json.loads(payload), time.monotonic()
    if handle_signals:
        _STOP.update(requested=False, signal="")
        for s in (signal.SIGTERM, signal.SIGUSR2): signal.signal(s, _on_stop)
    try:
        fn = resolve_fn(item["fn"])
        takes_stop = "stop" in inspect.signature(fn).parameters
        result = fn(**item["kwargs"], **({"stop": stop_requested} if takes_stop else {}))
        st = _status("done", t0, result=result)
    except Interrupted as e:
        st = _status("interrupted", t0, error=f"{_STOP['signal'] or 'stop'}: {e}", done=e.done, todo=e.todo)
    except Exception as e:
        tb = traceback.format_exc().strip().splitlines()
        st = _status("interrupted" if stop_requested() else "failed", t0, error=f"{type(e).__name__}: {e}".splitlines()[0][:500],
                     traceback=tb[-12:], **({"signal": _STOP["signal"]} if stop_requested() else {}))
    atomic_write_bytes(Path(item["status"]), json.dumps(st, indent=1, default=str).encode())
    return st["state"]


# %%
_jobs = Path(tempfile.mkdtemp())
_pl = lambda fn, kw, name: json.dumps({"fn": fn, "kwargs": kw, "status": str(_jobs / f"{name}.json")})
test_eq(job_entry(_pl("os.path:join", {"a": "x", "b": "y"} , "ok"), handle_signals=False), "failed")  # join takes no kwargs
test_eq(json.loads((_jobs / "ok.json").read_text())["error"].split(":")[0], "TypeError")
test_eq(job_entry(_pl("json:dumps", {"obj": [1, 2]}, "ok"), handle_signals=False), "done")
test_eq(json.loads((_jobs / "ok.json").read_text())["result"], "[1, 2]")
test_eq(job_entry(_pl("derma_jepa.nowhere:f", {}, "bad"), handle_signals=False), "failed")
assert "work item function 'derma_jepa.nowhere:f'" in json.loads((_jobs / "bad.json").read_text())["error"]


# %% [markdown]
# ## Records
#
# Every executor returns, per item, one record: the item's stage and name, the `state` (`done`,
# `interrupted`, `failed`, or a SLURM state for a job that ended without a status file), the error,
# the function's result, where the job's log is, and the job id. `summary` counts them for the
# one line the plan prints per phase.

# %%
#| export
def status_path(jobs_dir, item: WorkItem) -> Path: return Path(jobs_dir) / item.stage / f"{item.name}.status.json"


def read_status(path: Path) -> dict | None:
    "A job's status file, or None when it is absent or not (yet) whole JSON."
    try: return json.loads(Path(path).read_text())
    except (OSError, ValueError): return None


def make_record(item: WorkItem, st: dict | None, **kw) -> dict:
    st = st or {}
    return {"stage": item.stage, "name": item.name, "backbone": item.backbone, "state": st.get("state", kw.pop("state", "lost")),
            "error": st.get("error", kw.pop("error", "")), "result": st.get("result"), "seconds": st.get("seconds"),
            "host": st.get("host", ""), "started_at": st.get("started_at"), "ended_at": st.get("ended_at"),
            **{"job_id": "", "log": "", "slurm_state": "", "submitted_at": None, **kw}}


def summary(records: list[dict]) -> str:
    from collections import Counter
    c = Counter(r["state"] for r in records)
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items())) or "nothing to do"


# %% [markdown]
# ## In this process
#
# `LocalExecutor` runs the items in order, each through `job_entry` (without signal handlers: an
# interactive ^C should stop the whole command), says which one it starts, and returns the same
# records a cluster would.

# %%
#| export
class LocalExecutor:
    "Run work items one after another in this process."
    name = "local"

    def __init__(self, jobs_dir, log=print):
        self.jobs_dir, self.log = Path(jobs_dir), log

    def run(self, items: list[WorkItem]) -> list[dict]:
        out = []
        for k, item in enumerate(items, 1):
            self.log(f"{item.stage} [{k}/{len(items)}] {item.name} ...")          # long work shows where it is
            path = status_path(self.jobs_dir, item)
            path.unlink(missing_ok=True)
            job_entry(json.dumps({"fn": item.fn, "kwargs": item.kwargs, "status": str(path)}), handle_signals=False)
            out.append(make_record(item, read_status(path), job_id="local", log="(this process)"))
        return out


# %%
_items = [WorkItem("run", "a", "json:dumps", {"obj": {"k": 1}}), WorkItem("run", "b", "json:loads", {"s": "{"})]
_said = []
_recs = LocalExecutor(_jobs, log=_said.append).run(_items)
test_eq(_said, ["run [1/2] a ...", "run [2/2] b ..."])
test_eq([r["state"] for r in _recs], ["done", "failed"])
test_eq(_recs[0]["result"], '{"k": 1}')
assert _recs[1]["error"].startswith("JSONDecodeError")
test_eq(summary(_recs), "1 done, 1 failed")

# %% [markdown]
# ## On a SLURM cluster
#
# `SlurmExecutor` groups the items by the resources they get (stage × backbone) and submits each
# group as one job array with submitit (`map_array`). The job folder is `<jobs_dir>/<stage>/`,
# beside the run directories; each task's log is `<array id>_<task>_0_log.out` / `.err` there.
# Then it waits: every `poll_s` it reads the status files, and asks SLURM for the state of the
# jobs that have none (`sacct` where the cluster keeps accounting, else one `squeue` call for the
# live jobs and `scontrol show job` for those that left the queue). A
# job SLURM calls ended (FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...) that still
# has no status file after `grace_s` (a shared filesystem can be slow to show a new file) is
# recorded with that state and its log path; the other jobs carry on regardless.

# %%
#| export
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


def _run(cmd) -> subprocess.CompletedProcess: return subprocess.run(cmd, capture_output=True, text=True)


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    "SLURM's state per job id ('123' or array task '123_4'); 'UNKNOWN' where SLURM no longer knows the job."
    if not job_ids: return {}
    r = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(sorted({j.split("_")[0] for j in job_ids}))])
    if r.returncode == 0 and r.stdout.strip():
        got = dict(line.split("|")[:2] for line in r.stdout.splitlines() if "|" in line)
        return {j: got[j].split()[0] if j in got else "PENDING" for j in job_ids}   # pending array tasks show as ranges
    # no accounting storage: squeue for the live jobs (arrays expanded, one call), scontrol for those that ended
    q = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(sorted({j.split("_")[0] for j in job_ids}))])
    live = dict(line.split("|")[:2] for line in q.stdout.splitlines() if "|" in line) if q.returncode == 0 else {}
    out = {j: live[j] for j in job_ids if j in live}
    for j in set(job_ids) - set(out):
        s = _run(["scontrol", "show", "job", "-o", j])
        f = dict(kv.split("=", 1) for kv in s.stdout.split() if "=" in kv) if s.returncode == 0 else {}
        out[j] = f.get("JobState", "UNKNOWN")
    return out


class SlurmExecutor:
    "Submit work items as SLURM job arrays through submitit; wait; one record per item."
    name = "slurm"

    def __init__(self, jobs_dir, resources: dict | None = None, poll_s: float = 10, grace_s: float = 60, log=print):
        self.jobs_dir, self.resources = Path(jobs_dir).resolve(), check_resources(resources)
        self.poll_s, self.grace_s, self.log = poll_s, grace_s, log
        self.submitted: dict[str, tuple[float, float]] = {}     # job id -> (time sbatch was called, seconds it took)

    def executor(self, stage: str, backbone: str = ""):
        "The submitit executor for one (stage, backbone) group, parameters from the resources."
        import submitit
        ex = submitit.SlurmExecutor(folder=self.jobs_dir / stage, max_num_timeout=0)
        ex.update_parameters(**slurm_parameters(resources_for(self.resources, stage, backbone), f"dj-{stage}"))
        return ex

    def submit(self, items: list[WorkItem]) -> list[tuple[WorkItem, object]]:
        groups: dict[tuple, list[WorkItem]] = {}
        for it in items: groups.setdefault((it.stage, it.backbone), []).append(it)
        out = []
        for (stage, bb), group in groups.items():
            payloads = []
            for it in group:
                path = status_path(self.jobs_dir, it); path.parent.mkdir(parents=True, exist_ok=True)
                path.unlink(missing_ok=True)
                payloads.append(json.dumps({"fn": it.fn, "kwargs": it.kwargs, "status": str(path)}))
            t0 = time.time()
            jobs = self.executor(stage, bb).map_array(job_entry, payloads)
            took = time.time() - t0                    # one sbatch call for the whole array
            self.submitted.update({j.job_id: (t0, took) for j in jobs})
            self.log(f"{stage}{' ' + bb if bb else ''}: submitted {len(jobs)} task(s) as SLURM array {jobs[0].job_id.split('_')[0]}")
            out += list(zip(group, jobs))
        return out

    def wait(self, submitted) -> list[dict]:
        pending, ended_at, done = dict(enumerate(submitted)), {}, {}
        while pending:
            for k, (it, job) in list(pending.items()):
                st = read_status(status_path(self.jobs_dir, it))
                if st:
                    at, took = self.submitted.get(job.job_id, (None, None))
                    done[k] = make_record(it, st, job_id=job.job_id, log=str(job.paths.stdout), submitted_at=at,
                                          array_submit_s=took)
                    del pending[k]
            states = slurm_states([job.job_id for it, job in pending.values()])
            for k, (it, job) in list(pending.items()):
                s = states.get(job.job_id, "UNKNOWN")
                if s not in ENDED and s != "UNKNOWN": ended_at.pop(k, None); continue
                if time.monotonic() - ended_at.setdefault(k, time.monotonic()) < self.grace_s: continue
                done[k] = make_record(it, None, state="lost" if s == "UNKNOWN" else s.lower(), slurm_state=s, job_id=job.job_id,
                                      log=str(job.paths.stdout), error=f"SLURM state {s}, no status file: see {job.paths.stdout}")
                del pending[k]
            if pending: time.sleep(self.poll_s)
        return [done[k] for k in range(len(submitted))]

    def run(self, items: list[WorkItem]) -> list[dict]:
        return self.wait(self.submit(items)) if items else []


# %% [markdown]
# One entry point picks the executor by name, for the command line and the EXP-009 notebook.

# %%
#| export
EXECUTORS = ("local", "slurm")


def make_executor(name: str, jobs_dir, resources: dict | None = None, poll_s: float = 10, log=print):
    "`local` or `slurm` (with `resources` as 19_executors reads them), writing job files under `jobs_dir`."
    if name == "local": return LocalExecutor(jobs_dir, log=log)
    if name == "slurm": return SlurmExecutor(jobs_dir, resources, poll_s=poll_s, log=log)
    raise ConfigError(f"executor={name!r}: choose {' or '.join(EXECUTORS)}")


# %%
test_eq(make_executor("local", _jobs).name, "local")
test_fail(lambda: make_executor("ssh", _jobs), contains="executor='ssh': choose local or slurm")

# %% [markdown]
# What sbatch receives for a GPU job: submitit writes the script from the parameters above (here
# built without a cluster; `tests/test_cluster.py` runs them on a real one).

# %%
_ex = SlurmExecutor(_jobs, {"embed": {"gpus": 1, "mem_gb": 32, "partition": "gpu", "sbatch": {"account": "derm"}}})
_sb = _ex.executor("embed", "dinov2_vitb14")._make_submission_file_text("python -m submitit.core._submit", "x")
print("\n".join(l for l in _sb.splitlines() if l.startswith("#SBATCH")).replace(str(_jobs), "<runs>/jobs"))
assert "#SBATCH --gpus-per-node=1" in _sb and "#SBATCH --partition=gpu" in _sb and "#SBATCH --account=derm" in _sb

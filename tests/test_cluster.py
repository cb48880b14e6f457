"""Beyond one machine: concurrent embedding into one cache, and the arc through a real single-node SLURM cluster.

The SLURM tests start slurmctld + slurmd + munged from Debian's packages on 127.0.0.1 (tests/slurm_cluster.py),
installing the packages first when they are missing and this is root; they skip, saying why, only where that
cannot be done. The daemons are stopped by pid when the module's tests end.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import slurm_cluster
from derma_jepa.embed import EmbeddingCache, embed_sides, sides_table
from derma_jepa.executors import SlurmExecutor, WorkItem
from derma_jepa.plan import embed_items, plan_arc, read_plan

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIXTURE = {"data": "fixture", "fixture_lesions": 300, "pairs_per_split": 10, "epochs": 20, "n_boot": 100, "dtype": "fp32"}


def _fixture_sides(n_pairs=12, seed=3):
    from derma_jepa.data import load_records
    from derma_jepa.fixture import fixture_dir
    from derma_jepa.pairs import build_manifest
    from derma_jepa.split import split_records
    recs = load_records(fixture_dir(n_lesions=300, seed=0))
    m, _ = build_manifest(split_records(recs, seed), "symmetric", pairs_per_split=n_pairs, seed=seed)
    return sides_table(m, recs)


def _embed_rows(args):
    cache, lo, hi, out = args
    from derma_jepa.backbones import get_backbone
    sides = pd.read_parquet(out).iloc[lo:hi].reset_index(drop=True)
    z, st = embed_sides(get_backbone("random_vits14"), sides, "fp32", batch_size=4, workers=0, shard_size=8, cache_root=cache)
    return z, st.computed


def test_concurrent_embedding_same_cache(tmp_path):
    "Two processes embed overlapping sides into one cache at the same time: identical embeddings, no corrupt shard."
    sides = _fixture_sides()
    n = min(len(sides), 64)
    sides_file = tmp_path / "sides.parquet"
    sides.head(n).to_parquet(sides_file, index=False)
    ref, _ = _embed_rows((tmp_path / "alone", 0, n, sides_file))
    shared = tmp_path / "shared"
    with mp.get_context("spawn").Pool(2) as pool:       # rows 0..3n/4 and n/4..n: half of them in both processes
        (za, ca), (zb, cb) = pool.map(_embed_rows, [(shared, 0, 3 * n // 4, sides_file), (shared, n // 4, n, sides_file)])
    assert za.tobytes() == ref[: 3 * n // 4].tobytes() and zb.tobytes() == ref[n // 4:].tobytes()
    cache = next(shared.iterdir())
    assert not list(cache.glob("*.corrupt")) and not list(cache.glob(".*.tmp"))
    from derma_jepa.backbones import get_backbone
    bb = get_backbone("random_vits14")
    for shard in cache.glob("shard-*.npz"): assert EmbeddingCache.read_shard(shard, bb.dim) is not None
    z, st = embed_sides(bb, sides.head(n), "fp32", cache_root=shared, workers=0)
    assert st.computed == 0 and z.tobytes() == ref.tobytes()


# --- a real SLURM ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = slurm_cluster.install()
    if why: pytest.skip(f"no local SLURM: {why}")
    cluster = slurm_cluster.LocalSlurm(tmp_path_factory.mktemp("dermajepa-slurm"), cpus=2)
    cluster.start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try: yield cluster
    finally:
        cluster.stop()
        if old is None: os.environ.pop("SLURM_CONF", None)
        else: os.environ["SLURM_CONF"] = old


def _arc(folder: Path, resources: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "nbs" / "experiments" / "exp004.yaml", folder / "exp004.yaml")
    arc = {"experiments": ["exp004"], "protocols": ["reference", "symmetric"], "sides_per_job": 150,
           "sweep": {"experiments": ["exp004"], "seeds": [20260422, 7]}, "resources": resources}
    (folder / "arc.yaml").write_text(json.dumps(arc))
    return folder / "arc.yaml"


def _paper(arc, tmp: Path, executor: str, cache: Path) -> subprocess.CompletedProcess:
    sets = [x for k, v in FIXTURE.items() for x in ("--set", f"{k}={v}")]
    env = {**os.environ, "DERMA_JEPA_CACHE": str(cache), "PATH": f"{BIN}:{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    return subprocess.run([str(BIN / "derma_jepa_paper"), "--arc", str(arc), "--backbones", "color_texture,random_vits14",
                           "--runs", str(tmp / "runs"), "--paper", str(tmp / "paper"), "--executor", executor, "--poll", "1",
                           *sets], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_arc_through_slurm_matches_local(slurm, tmp_path):
    "A tiny fixture arc (both protocols, two backbones, a two-seed sweep): the same paper bytes from SLURM and from here."
    arc = _arc(tmp_path / "arc", {"default": {"cpus": 1, "time_min": 30}})
    local = _paper(arc, tmp_path, "local", tmp_path / "cache-local")
    assert local.returncode == 0, local.stderr[-3000:]
    (tmp_path / "runs").rename(tmp_path / "runs-local"); (tmp_path / "paper").rename(tmp_path / "paper-local")
    t0 = time.monotonic()
    sl = _paper(arc, tmp_path, "slurm", tmp_path / "cache-slurm")
    assert sl.returncode == 0, sl.stdout[-3000:] + sl.stderr[-3000:]
    assert "submitted" in sl.stdout and "SLURM array" in sl.stdout
    a, b = _files(tmp_path / "paper-local"), _files(tmp_path / "paper")
    assert a.keys() == b.keys() and len(a) > 10
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"paper files differ between local and slurm: {differ}"
    # every run ran as a SLURM job whose id and log the plan records; none embedded anything itself
    plan = read_plan(tmp_path / "runs" / "plan-color_texture+random_vits14.json")
    ran = plan[plan.status.eq("run")].drop_duplicates("run_dir")
    assert len(ran) == 8 and ran.job_state.eq("done").all() and ran.job_id.str.match(r"^\d+_\d+$").all()
    assert all(Path(p).exists() for p in ran.job_log)
    jobs = json.loads((tmp_path / "runs" / "plan-color_texture+random_vits14-jobs.json").read_text())
    assert jobs["executor"] == "slurm"
    embedded = sum(j["result"]["computed"] for j in jobs["jobs"] if j["stage"] == "embed")
    assert [j["result"]["embedded"] for j in jobs["jobs"] if j["stage"] == "run"] == [0] * 8
    sides = sum(len(pd.read_parquet(f)) for f in (tmp_path / "runs" / "jobs" / "embed").glob("sides-*.parquet"))
    assert embedded == sides, (embedded, sides)           # each distinct side of the plan embedded once
    # resubmitting: nothing is incomplete, so nothing is submitted
    again = _paper(arc, tmp_path, "slurm", tmp_path / "cache-slurm")
    assert again.returncode == 0 and "submitted" not in again.stdout and again.stdout.count("complete, skipped") == 8
    print(f"slurm arc: {time.monotonic() - t0:.0f} s")


def test_failures_stay_local(slurm, tmp_path):
    "A failing job and a cancelled one are reported with state and log; the job beside them finishes."
    ex = SlurmExecutor(tmp_path / "jobs", {"default": {"cpus": 1, "time_min": 10}}, poll_s=0.5, grace_s=3, log=lambda m: None)
    items = [WorkItem("run", "ok", "json:dumps", {"obj": [1]}), WorkItem("run", "bad", "json:loads", {"s": "{"}),
             WorkItem("run", "slow", "subprocess:check_call", {"args": ["sleep", "300"]})]
    submitted = ex.submit(items)
    slow = submitted[2][1].job_id
    t0 = time.monotonic()
    while not subprocess.run(["squeue", "-h", "-t", "R", "-j", slow], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() - t0 < 60; time.sleep(0.5)
    subprocess.run(["scancel", slow], check=True)
    ok, bad, gone = ex.wait(submitted)
    assert (ok["state"], ok["result"]) == ("done", "[1]")
    assert bad["state"] == "failed" and bad["error"].startswith("JSONDecodeError") and Path(bad["log"]).exists()
    assert gone["state"] == "cancelled" and gone["slurm_state"] == "CANCELLED" and gone["log"] in gone["error"]


def test_sigterm_finishes_the_shard(slurm, tmp_path, monkeypatch):
    "SIGTERM to an embedding job: it stores the shard in progress and ends `interrupted`; a resubmission does the rest."
    monkeypatch.setenv("DERMA_JEPA_CACHE", str(tmp_path / "cache"))
    sides = _fixture_sides(n_pairs=6)          # a few shards of 8: enough to stop one mid-way
    (tmp_path / "jobs" / "embed").mkdir(parents=True)
    sides.to_parquet(tmp_path / "jobs" / "embed" / "sides.parquet", index=False)
    item = WorkItem("embed", "chunk", "derma_jepa.plan:embed_job",
                    {"backbone": "random_vits14", "weights": "", "protocol": "symmetric", "dtype": "fp32", "batch_size": 4,
                     "sides_file": str(tmp_path / "jobs" / "embed" / "sides.parquet"), "start": 0, "stop_at": len(sides),
                     "shard_size": 8}, "random_vits14")
    ex = SlurmExecutor(tmp_path / "jobs", {"default": {"cpus": 1, "time_min": 10}}, poll_s=0.5, grace_s=5, log=lambda m: None)
    [(it, job)] = ex.submit([item])
    from derma_jepa.backbones import get_backbone
    cache = EmbeddingCache(get_backbone("random_vits14").fingerprint, "fp32", tmp_path / "cache" / "embeddings")
    t0 = time.monotonic()
    status = tmp_path / "jobs" / "embed" / "chunk.status.json"
    while not cache.shards():
        assert not status.exists(), status.read_text()          # the job ended before writing a shard
        assert time.monotonic() - t0 < 180, "no shard written"; time.sleep(0.2)
    subprocess.run(["scancel", "--signal=TERM", job.job_id], check=True)
    [rec] = ex.wait([(it, job)])
    st = json.loads((tmp_path / "jobs" / "embed" / "chunk.status.json").read_text())
    assert rec["state"] == "interrupted" and st["error"].startswith("SIGTERM"), rec
    assert 0 < st["done"] < st["todo"] == len(sides) and st["done"] % 8 == 0
    assert not list(cache.dir.glob("*.corrupt"))
    [again] = ex.run([item])
    assert again["state"] == "done" and again["result"]["computed"] == len(sides) - st["done"]


def test_exp009_pretraining_as_jobs(slurm, tmp_path, monkeypatch):
    "EXP-009's objectives as SLURM jobs (all at once) give the same encoders, bit for bit, as training them here."
    monkeypatch.setenv("DERMA_JEPA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ISIC_NONHAM_DIR", str(tmp_path))          # the settings file names it; the corpus is given below
    from derma_jepa.data import load_records
    from derma_jepa.exp009 import load_exp009, pretrain_all
    from derma_jepa.fixture import fixture_dir
    from derma_jepa.pretrain import encoder_digest
    tiny = {"image_size": 48, "patch_size": 8, "batch_size": 8, "warmup": 1, "ckpt_every": 1, "log_every": 1, "dtype": "fp32"}
    settings = load_exp009(objectives=["mae", "simclr"], pretrain=tiny, steps={"mae": 2, "simclr": 2}, compare=["color_texture"],
                           variants={}, seeds=[0], budgets=[1.0])
    corpus = list(load_records(fixture_dir(n_lesions=60, seed=7)).path)
    here = pretrain_all(settings, corpus, tmp_path / "here", log=lambda m: None)
    log = []
    ex = SlurmExecutor(tmp_path / "jobs", {"pretrain": {"cpus": 1, "time_min": 10}}, poll_s=0.5, log=log.append)
    jobs = pretrain_all(settings, corpus, tmp_path / "cluster", log=log.append, executor=ex)
    assert [encoder_digest(p) for p in jobs.path] == [encoder_digest(p) for p in here.path]
    assert any("submitted 2 task(s)" in m for m in log) and sum("trained as job" in m for m in log) == 2
    log.clear()
    pretrain_all(settings, corpus, tmp_path / "cluster", log=log.append, executor=ex)     # finished: nothing submitted
    assert not any("submitted" in m for m in log) and sum("reused" in m for m in log) == 2


@pytest.fixture
def short_dir():
    "A folder with a short path: munged's socket path must stay under 108 bytes (pytest's tmp_path under xdist does not)."
    d = Path(tempfile.mkdtemp(prefix="dermajepa-slurm-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_daemons_die_with_the_process_that_started_them(short_dir):
    "A test run killed outright (SIGKILL: no cleanup runs) leaves no daemon behind: each has a parent-death signal."
    why = slurm_cluster.install()
    if why: pytest.skip(f"no local SLURM: {why}")
    tmp_path = short_dir
    script = (f"import sys, json, time; sys.path.insert(0, {str(Path(__file__).parent)!r}); import slurm_cluster; "
              f"c = slurm_cluster.LocalSlurm({str(tmp_path / 'dermajepa-slurm')!r}, cpus=1).start(); "
              "print(json.dumps([p.pid for p in c.procs]), flush=True); time.sleep(600)")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(owner.stdout.readline())
        assert len(pids) == 3 and all(slurm_cluster.alive(p) for p in pids)
    finally:
        owner.kill(); owner.wait()
    t0 = time.monotonic()
    while any(slurm_cluster.alive(p) for p in pids) and time.monotonic() - t0 < 30: time.sleep(0.2)
    assert not [p for p in pids if slurm_cluster.alive(p)], "daemons outlived the process that started them"
    assert slurm_cluster.stale_daemons() == []


def test_a_cluster_whose_owner_is_gone_is_found_and_stopped(short_dir):
    "What a run killed before its daemons had their signal leaves is stopped by the next start (here: by stop_stale)."
    why = slurm_cluster.install()
    if why: pytest.skip(f"no local SLURM: {why}")
    tmp_path = short_dir
    cluster = slurm_cluster.LocalSlurm(tmp_path / "dermajepa-slurm", cpus=1).start()
    pids = [p.pid for p in cluster.procs]
    try:
        assert not set(pids) & set(slurm_cluster.stale_daemons())          # its owner (this process) is alive
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (cluster.folder / "owner.pid").write_text(gone.stdout.strip())   # as if the process that started it had died
        assert set(pids) <= set(slurm_cluster.stale_daemons())
        slurm_cluster.stop_stale()
        assert not [p for p in pids if slurm_cluster.alive(p)]
    finally:
        cluster.stop()

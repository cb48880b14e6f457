# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp embed

# %% [markdown]
# # Embed: manifest sides → L2-normalised embeddings, cached and resumable
#
# > Render every side (source image + recipe), preprocess, run the frozen backbone in batches,
# > normalise, and never compute the same embedding twice.
#
# The cache is content-addressed: a side's key is the hash of (backbone fingerprint, dtype,
# SHA-256 of the source file's bytes, canonical recipe). It is shared by every run and every
# experiment, so runs that differ only in predictor or optimiser embed nothing, and EXP-005+
# reuse EXP-004's embeddings. Embeddings are written in shards (`.npz` of a key array and a
# float32 matrix, read with `allow_pickle=False`), each through a temporary file and a rename:
# a killed run loses at most the shard in progress and resumes where it stopped.
#
# Speed: decoding, nuisance and preprocessing run in DataLoader worker processes while the main
# process runs the model under `torch.inference_mode`. `dtype="auto"` decides the precision by
# measurement, not by a CPU flag: whether bf16 pays depends on the machine (an Intel Xeon without
# AMX ran ViT-B/16 slower in bf16 than in fp32; an AMD EPYC Zen 5 with AVX-512-BF16 runs it 2.6×
# faster), and the machine changes from one session to the next.

# %%
#| export
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from derma_jepa.data import atomic_write_bytes, cache_dir, quarantine

if TYPE_CHECKING: from derma_jepa.backbones import Backbone    # annotations only
# The renderer (04_nuisance) is imported where sides are rendered: the precision helpers above the side engine
# (15_pretrain uses them) do not need it.

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## Precision
#
# `dtype="auto"`: at first use of a backbone on a machine, `measure_precisions` times the model
# alone (preprocessed images already in memory, one warm-up batch, then `reps` timed batches) in
# fp32, bf16 and, on CUDA, fp16, and compares each precision's embeddings of the same images with
# fp32's. `choose_precision` keeps the fastest whose mean cosine to fp32 is at least 0.999 (fp32
# itself always qualifies). The decision, both rates and the agreement are written as JSON under
# the cache folder, keyed by (device, CPU or GPU model, torch version, backbone fingerprint), and
# reused: a later run on the same machine does not measure again; another machine, torch or
# backbone does. A model without parameters (the handcrafted `color_texture`) is always fp32.

# %%
#| export
DTYPES = ("fp32", "bf16", "fp16")


def autocast(device: str, dtype: str):
    "The autocast context for a resolved dtype (a no-op for fp32)."
    return torch.autocast(device_type=device.split(":")[0], dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype),
                          enabled=dtype != "fp32")


def encoder(model: torch.nn.Module, device: str, dtype: str):
    "x (a batch of preprocessed images) -> L2-normalised float32 rows, under inference mode and the dtype's autocast."
    def forward(x):
        with torch.inference_mode(), autocast(device, dtype):
            z = model(x.to(device, non_blocking=True)).float()
        return torch.nn.functional.normalize(z.reshape(len(z), -1), dim=-1, eps=1e-12).cpu().numpy()
    return forward


def device_model(device: str) -> str:
    "What the precision decision depends on besides torch and the model: the GPU's or the CPU's model name."
    if device.startswith("cuda"): return torch.cuda.get_device_name(torch.device(device))
    cpuinfo = Path("/proc/cpuinfo")
    names = [l.split(":", 1)[1].strip() for l in cpuinfo.read_text().splitlines() if l.startswith("model name")] if cpuinfo.exists() else []
    import platform
    return names[0] if names else platform.processor() or platform.machine()


def measure_precisions(model: torch.nn.Module, images: torch.Tensor, device: str, reps: int = 2,
                       candidates: tuple = DTYPES) -> dict:
    "Model-only images/s of each candidate precision this device runs, and the mean cosine of its embeddings to fp32's."
    cands = [d for d in candidates if d == "fp32" or d == "bf16" or (d == "fp16" and device.startswith("cuda"))]
    if device.startswith("cuda") and not torch.cuda.is_bf16_supported(): cands = [d for d in cands if d != "bf16"]
    out, ref = {}, None
    for d in ["fp32"] + [c for c in cands if c != "fp32"]:
        f = encoder(model, device, d)
        z = f(images)                                          # warm-up, and the embeddings compared
        if device.startswith("cuda"): torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps): f(images)
        if device.startswith("cuda"): torch.cuda.synchronize()
        ref = z if ref is None else ref
        out[d] = {"images_per_s": round(reps * len(images) / (time.perf_counter() - t0), 2),
                  "cosine_to_fp32": round(float((z * ref).sum(1).mean()), 6)}
    return out


def choose_precision(measured: dict, min_cosine: float = 0.999) -> str:
    "The fastest measured precision whose embeddings agree with fp32's (mean cosine ≥ `min_cosine`)."
    ok = [d for d, m in measured.items() if d == "fp32" or m["cosine_to_fp32"] >= min_cosine]
    return max(ok, key=lambda d: measured[d]["images_per_s"])


def precision_key(device: str, fingerprint: str) -> dict:
    return {"device": device.split(":")[0], "device_model": device_model(device), "torch": torch.__version__,
            "backbone": fingerprint}


def resolve_precision(dtype: str, model: torch.nn.Module, device: str, fingerprint: str, sample=None,
                      cache_root=None, candidates: tuple = DTYPES) -> dict:
    """The precision to run `model` in: `dtype` itself when it names one; for `auto`, the cached decision for this
    (device, device model, torch, fingerprint), else one measured now on `sample()` (a batch of preprocessed images).
    Returns {"dtype", "how", and for a measured decision "measured" and "key"}."""
    if dtype in DTYPES: return {"dtype": dtype, "how": "given"}
    if dtype != "auto": raise ValueError(f"unknown dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    if not any(True for _ in model.parameters()): return {"dtype": "fp32", "how": "no parameters (nothing to cast)"}
    key = precision_key(device, fingerprint)
    path = Path(cache_root or cache_dir("precision")) / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]}.json"
    try:
        rec = json.loads(path.read_text())
        if rec.get("key") == key and rec.get("dtype") in DTYPES: return {**rec, "how": "cached measurement"}
    except (OSError, ValueError): pass
    measured = measure_precisions(model, sample(), device, candidates=candidates)
    rec = {"dtype": choose_precision(measured), "key": key, "measured": measured, "min_cosine": 0.999}
    first = write_once(path, json.dumps(rec, indent=1, sort_keys=True).encode())
    return {**rec, "how": "measured now"} if first else {**json.loads(path.read_text()), "how": "cached measurement"}


def write_once(path: Path, data: bytes) -> bool:
    "Create `path` holding `data` unless it exists; True when this call created it. Atomic: the first writer wins."
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f: f.write(data)
        os.link(tmp, path)             # fails when the name exists, on a local disk and on NFS alike
        return True
    except FileExistsError: return False
    finally: Path(tmp).unlink(missing_ok=True)


# %% [markdown]
# On a cluster, jobs of one backbone start on identical nodes at the same time, and each would
# measure: timings are noisy, so two of them could decide differently and then embed into two
# caches (the precision is part of a side's key). So the decision is written *once*: the first
# job to finish measuring creates the file (`os.link`, which refuses an existing name), and every
# later one, its own measurement notwithstanding, reads and follows that decision.
#
# On a tiny model: measured once, then read back (the second call's sample would raise if it were
# measured again); another fingerprint is measured anew; a named dtype and a model without
# parameters need no measurement; the choice is the fastest precision that agrees with fp32, never
# a faster one that does not.

# %%
import tempfile
_tiny = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
_proot, _x = tempfile.mkdtemp(), torch.rand(8, 3, 8, 8)
_p1 = resolve_precision("auto", _tiny, "cpu", "tiny-0", lambda: _x, cache_root=_proot)
test_eq((_p1["how"], set(_p1["measured"]), _p1["dtype"]), ("measured now", {"fp32", "bf16"}, choose_precision(_p1["measured"])))
_p2 = resolve_precision("auto", _tiny, "cpu", "tiny-0", lambda: 1 / 0, cache_root=_proot)
test_eq((_p2["how"], _p2["dtype"]), ("cached measurement", _p1["dtype"]))
test_eq(resolve_precision("auto", _tiny, "cpu", "tiny-1", lambda: _x, cache_root=_proot)["how"], "measured now")
_late = json.loads(next(Path(_proot).glob("*.json")).read_text())    # a concurrent job measured, then lost the race
_lost = {**_late, "dtype": "bf16" if _late["dtype"] == "fp32" else "fp32"}
test_eq(write_once(next(Path(_proot).glob("*.json")), json.dumps(_lost).encode()), False)
test_eq(resolve_precision("auto", _tiny, "cpu", "tiny-0", lambda: 1 / 0, cache_root=_proot)["dtype"], _p1["dtype"])
test_eq(resolve_precision("bf16", _tiny, "cpu", "x")["dtype"], "bf16")
test_eq(resolve_precision("auto", torch.nn.Identity(), "cpu", "x")["dtype"], "fp32")
test_fail(lambda: resolve_precision("fp8", _tiny, "cpu", "x"), contains="unknown dtype 'fp8'")
_m = lambda r32, r16, c16: {"fp32": {"images_per_s": r32, "cosine_to_fp32": 1.0}, "bf16": {"images_per_s": r16, "cosine_to_fp32": c16}}
test_eq([choose_precision(_m(1, 3, 0.9999)), choose_precision(_m(1, 3, 0.99)), choose_precision(_m(2, 1, 1.0))],
        ["bf16", "fp32", "fp32"])


# %% [markdown]
# ## Sides as a dataset
#
# A side is (path, recipe). The dataset renders and preprocesses one side per item; the
# DataLoader batches them in order. Worker processes do the image work unless we are under
# `nbdev_test` (which sets `IN_TEST`), where workers are off.

# %%
#| export
class SideDataset(torch.utils.data.Dataset):
    "Rendered, preprocessed sides: item i = transform(render(load(paths[i], exif[i]), recipes[i]))."
    def __init__(self, paths, recipes, transform, exif=None):
        self.paths, self.recipes, self.transform = list(paths), list(recipes), transform
        self.exif = [False] * len(self.paths) if exif is None else [bool(e) for e in exif]
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        from derma_jepa.nuisance import load_rgb, render
        return self.transform(render(load_rgb(self.paths[i], self.exif[i]), self.recipes[i]))


def default_workers() -> int:
    if os.environ.get("IN_TEST"): return 0
    return min(2, os.cpu_count() or 1)


# %% [markdown]
# ## The cache
#
# One folder per (fingerprint, dtype) under `$DERMA_JEPA_CACHE/embeddings/`. `lookup` reads every
# shard once per call (a few MB for a whole manifest); `put` writes one shard.
#
# A cache must never be the reason a run fails. A shard that is truncated (a full disk, a copy
# cut short), damaged, or not one of ours (wrong arrays, wrong width, pickled objects, which
# `allow_pickle=False` refuses) is moved aside as `<name>.corrupt` with a warning naming it
# (00_data's `quarantine`), and its rows are simply not found, so they are computed again.

# %%
#| export
def side_keys(fingerprint: str, dtype: str, sha256s, recipes) -> np.ndarray:
    "Content-addressed keys of sides: hash of (backbone fingerprint, dtype, source bytes hash, recipe)."
    return np.array([hashlib.sha256(f"{fingerprint}|{dtype}|{s}|{r}".encode()).hexdigest() for s, r in zip(sha256s, recipes)],
                    dtype="S64")


class EmbeddingCache:
    "Sharded, append-only store of embeddings for one backbone fingerprint and dtype."
    def __init__(self, fingerprint: str, dtype: str, root: Path | None = None):
        self.dir = Path(root or cache_dir("embeddings")) / f"{fingerprint}-{dtype}"
        self.dir.mkdir(parents=True, exist_ok=True)

    def shards(self): return sorted(self.dir.glob("shard-*.npz"))

    def lookup(self, keys: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        "(found mask, vectors) for `keys`; rows not found are zero."
        out, found = np.zeros((len(keys), dim), np.float32), np.zeros(len(keys), bool)
        want = pd.Index(keys)
        for shard in self.shards():
            got = self.read_shard(shard, dim)
            if got is None: continue
            pos = want.get_indexer(got[0])
            hit = pos >= 0
            out[pos[hit]], found[pos[hit]] = got[1][hit], True
        return found, out

    @staticmethod
    def read_shard(shard: Path, dim: int):
        "(keys, vectors) of a shard, or None after quarantining a damaged or foreign one."
        try:
            with np.load(shard, allow_pickle=False) as z:
                keys, vec = z["keys"], z["vectors"]
        except Exception as e:      # BadZipFile, EOFError, zlib.error, ValueError (pickled), KeyError, OSError
            quarantine(shard, f"{type(e).__name__}: {e}".splitlines()[0][:200]); return None
        if not (keys.dtype == np.dtype("S64") and keys.ndim == 1 and vec.dtype == np.float32 and vec.shape == (len(keys), dim)):
            quarantine(shard, f"arrays keys {keys.dtype}{keys.shape}, vectors {vec.dtype}{vec.shape} "
                              f"are not this cache's (S64 keys, float32 n x {dim})"); return None
        return keys, vec

    def put(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.savez(buf, keys=np.asarray(keys, "S64"), vectors=np.asarray(vectors, np.float32))
        name = hashlib.sha256(np.asarray(keys, "S64").tobytes()).hexdigest()[:20]
        path = self.dir / f"shard-{name}.npz"
        atomic_write_bytes(path, buf.getvalue())
        return path


# %% [markdown]
# ## `embed_sides`
#
# `cached_compute` is the engine: look every key up, compute only the missing items through a
# DataLoader, write whole batches as shards. `embed_sides` is it with a backbone's forward pass
# (the pixel baselines of 11_baselines are it with a pixel comparison). It looks every side up; embeds only the missing ones, in order, in batches; writes a shard every
# `shard_size` sides. Because batches are formed over the *missing* sides in order and shards
# hold whole batches, a resumed run forms exactly the batches the interrupted run would have
# formed next, so its results are identical to an uninterrupted run's. Returns the embeddings
# (aligned with the input rows) and the stage's statistics.

# %%
#| export
@dataclass
class EmbedStats:
    sides: int
    cache_hits: int
    computed: int
    seconds: float
    dtype: str
    device: str
    batch_size: int
    workers: int
    precision: dict | None = None      # how the dtype was chosen (08_embed's `resolve_precision`)

    @property
    def sides_per_s(self) -> float: return self.sides / self.seconds if self.seconds else float("inf")
    def to_dict(self): return {**self.__dict__, "sides_per_s": round(self.sides_per_s, 2)}


def _ignore_stop_signals(_worker_id):
    """DataLoader workers leave SIGTERM/SIGUSR2 to the main process (SLURM signals every process of a job step), so a
    stop request ends the work after the shard in progress instead of killing the workers under it."""
    import signal
    for s in (signal.SIGTERM, signal.SIGUSR2): signal.signal(s, signal.SIG_IGN)


class Interrupted(Exception):
    "Computation stopped on request (a job's SIGTERM) after writing `done` of `todo` missing rows to the cache."
    def __init__(self, done: int, todo: int):
        super().__init__(f"stopped on request after {done} of {todo} rows (stored; a rerun computes the rest)")
        self.done, self.todo = done, todo


def cached_compute(cache: EmbeddingCache, keys: np.ndarray, dim: int, dataset_for, compute, batch_size: int = 32,
                   workers: int = 0, shard_size: int = 256, progress: bool = False, desc: str = "compute", stop=None):
    """Rows for `keys` from `cache`; the missing ones computed in order, in batches of `dataset_for(todo)` items
    through `compute(batch) -> np.ndarray`, and stored a shard of whole batches at a time. Returns (rows, hits).
    Repeated keys (two files with the same bytes and recipe) are computed once; the repeats count as hits.
    `stop()`, asked after each shard is stored, ends the work there by raising `Interrupted`."""
    codes, uniq = pd.factorize(np.asarray(keys))
    if len(uniq) < len(keys):
        first = np.unique(codes, return_index=True)[1]           # first occurrence of each key, in order
        rows, hits = cached_compute(cache, np.asarray(keys)[first], dim, lambda todo: dataset_for(first[todo]), compute,
                                    batch_size, workers, shard_size, progress, desc, stop)
        return rows[codes], hits + len(keys) - len(uniq)
    found, out = cache.lookup(keys, dim)
    todo = np.flatnonzero(~found)
    if len(todo):
        from tqdm import tqdm
        dl = torch.utils.data.DataLoader(dataset_for(todo), batch_size=batch_size, shuffle=False, num_workers=workers,
                                         persistent_workers=False, prefetch_factor=4 if workers else None,
                                         worker_init_fn=_ignore_stop_signals if workers else None)
        per_shard = max(1, shard_size // batch_size)
        pend_idx, pend_vec = [], []
        # `disable` passed only to switch the bar off: with progress on, tqdm's own TQDM_DISABLE=1 still silences it
        bar = tqdm(total=len(todo), unit="item", desc=desc, mininterval=2, **({} if progress else {"disable": True}))
        for b, x in enumerate(dl):
            z = np.asarray(compute(x), np.float32)
            idx = todo[b * batch_size: b * batch_size + len(z)]
            out[idx] = z
            pend_idx.append(idx); pend_vec.append(z)
            if len(pend_idx) == per_shard or b == len(dl) - 1:
                i = np.concatenate(pend_idx); cache.put(keys[i], np.concatenate(pend_vec))
                pend_idx, pend_vec = [], []
                if stop is not None and stop() and b < len(dl) - 1:
                    bar.close(); raise Interrupted(min((b + 1) * batch_size, len(todo)), len(todo))
            bar.update(len(z))
        bar.close()
    return out, int(found.sum())


def _side_data(backbone: Backbone, sides: pd.DataFrame):
    exif = sides["exif"].to_numpy(bool) if "exif" in sides else np.zeros(len(sides), bool)
    return lambda todo: SideDataset(sides.path.iloc[todo], sides.recipe.iloc[todo], backbone.transform, exif[todo])


def side_precision(backbone: Backbone, sides: pd.DataFrame, dtype: str = "auto") -> dict:
    "`resolve_precision` for a backbone; a measurement (only when one must be made) runs on the first 16 of `sides`."
    data = _side_data(backbone, sides)
    return resolve_precision(dtype, backbone.model, backbone.device, backbone.fingerprint,
                             lambda: torch.stack(list(data(np.arange(min(16, len(sides)))))))


def embed_sides(backbone: Backbone, sides: pd.DataFrame, dtype: str | dict = "auto", batch_size: int = 32,
                workers: int | None = None, shard_size: int = 256, cache_root=None, progress: bool = False, stop=None):
    """Embeddings (n × dim, L2-normalised, float32) of `sides` (columns path, sha256, recipe), via the cache.
    `dtype` is a precision name, `auto`, or a decision `side_precision` already made; `stop` as `cached_compute`."""
    t0 = time.perf_counter()
    device = backbone.device
    workers = default_workers() if workers is None else workers
    data = _side_data(backbone, sides)
    precision = dtype if isinstance(dtype, dict) else side_precision(backbone, sides, dtype)
    dtype = precision["dtype"]
    from derma_jepa.nuisance import side_keys_of
    keys = side_keys(backbone.fingerprint, dtype, sides.sha256, side_keys_of(sides))
    out, hits = cached_compute(EmbeddingCache(backbone.fingerprint, dtype, cache_root), keys, backbone.dim, data,
                               encoder(backbone.model, device, dtype), batch_size, workers, shard_size, progress,
                               f"embed {backbone.name}", stop)
    stats = EmbedStats(len(sides), hits, len(sides) - hits, time.perf_counter() - t0, dtype, device, batch_size, workers,
                       precision)
    return out, stats


# %% [markdown]
# `sides_table` turns a manifest into the engine's input: its distinct (image, recipe) sides with
# the source file's path, SHA-256 and EXIF orientation from the audited records, and whether the
# manifest's protocol turns the side by that tag before the backbone sees it (04_nuisance).

# %%
#| export
def sides_table(manifest: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    "The distinct sides of a manifest with each source file's path, SHA-256, orientation and EXIF rule."
    from derma_jepa.nuisance import exif_applies
    from derma_jepa.pairs import manifest_sides
    s = manifest_sides(manifest)
    rec = records.set_index("image_id")
    protocol = manifest.protocol.iloc[0] if "protocol" in manifest and len(manifest) else "symmetric"
    orient = rec.orientation.reindex(s.image_id).fillna(1).astype(int).to_numpy() if "orientation" in rec else 1
    return s.assign(path=rec.path.reindex(s.image_id).to_numpy(), sha256=rec.sha256.reindex(s.image_id).to_numpy(),
                    orientation=orient, exif=[exif_applies(protocol, r, "backbone") for r in s.recipe])


# %% [markdown]
# ## Tests on fixture sides
#
# Sides of a small symmetric manifest: embeddings are unit vectors; a second call computes
# nothing and returns the same bytes; a partial cache (the first shard only, as a killed run
# leaves it) is completed to the same result.

# %%
import tempfile
from derma_jepa.backbones import get_backbone
from derma_jepa.data import load_records
from derma_jepa.fixture import fixture_dir
from derma_jepa.pairs import build_manifest, manifest_sides
from derma_jepa.split import split_records

# %%
_recs = load_records(fixture_dir(n_lesions=300, seed=0))
_m, _ = build_manifest(split_records(_recs, 7), "symmetric", pairs_per_split=8, seed=7)
_sides = sides_table(_m, _recs)
_bb = get_backbone("random_vits14")
_root = Path(tempfile.mkdtemp())
_z, _st = embed_sides(_bb, _sides, dtype="fp32", cache_root=_root, batch_size=8, shard_size=16)
test_eq((_z.shape, _st.computed, _st.cache_hits), ((len(_sides), 384), len(_sides), 0))
np.testing.assert_allclose(np.linalg.norm(_z, axis=1), 1, atol=1e-5)
_z2, _st2 = embed_sides(_bb, _sides, dtype="fp32", cache_root=_root, batch_size=8, shard_size=16)
test_eq((_st2.computed, _st2.cache_hits, _z2.tobytes() == _z.tobytes()), (0, len(_sides), True))

# %%
_shards = EmbeddingCache(_bb.fingerprint, "fp32", _root).shards()
assert len(_shards) >= 2
_part = Path(tempfile.mkdtemp())
(_part / _shards[0].parent.name).mkdir()
(_part / _shards[0].parent.name / _shards[0].name).write_bytes(_shards[0].read_bytes())
_z3, _st3 = embed_sides(_bb, _sides, dtype="fp32", cache_root=_part, batch_size=8, shard_size=16)
test_eq((_st3.cache_hits, _z3.tobytes() == _z.tobytes()), (16, True))

# %% [markdown]
# A job asked to stop (21_executors turns SIGTERM into `stop()` returning True) finishes the shard
# in progress, stores it, and raises `Interrupted` saying how far it got; the next call computes
# only the rest, to the same bytes as an uninterrupted run.

# %%
_stopped = Path(tempfile.mkdtemp())
try: embed_sides(_bb, _sides, dtype="fp32", cache_root=_stopped, batch_size=8, shard_size=16, stop=lambda: True); raise AssertionError("not stopped")
except Interrupted as e: test_eq((e.done, e.todo), (16, len(_sides)))
test_eq(len(EmbeddingCache(_bb.fingerprint, "fp32", _stopped).shards()), 1)
_z5, _st5 = embed_sides(_bb, _sides, dtype="fp32", cache_root=_stopped, batch_size=8, shard_size=16, stop=lambda: False)
test_eq((_st5.cache_hits, _z5.tobytes() == _z.tobytes()), (16, True))

# %% [markdown]
# A cache that heals: one shard truncated (as a full disk leaves it) and one foreign file under a
# shard's name are each named in a warning and moved aside; their rows are computed again, to the
# same bytes.

# %%
import warnings
from derma_jepa.data import CacheWarning
_sh = EmbeddingCache(_bb.fingerprint, "fp32", _part).shards()
_sh[0].write_bytes(_sh[0].read_bytes()[:500])
np.savez(_sh[0].parent / "shard-foreign.npz", keys=np.arange(3), vectors=np.zeros((3, 2)))
with warnings.catch_warnings(record=True) as _w:
    warnings.simplefilter("always")
    _z4, _st4 = embed_sides(_bb, _sides, dtype="fp32", cache_root=_part, batch_size=8, shard_size=16)
test_eq(_z4.tobytes(), _z.tobytes())
test_eq(sorted(Path(str(w.message).split()[2]).name for w in _w if issubclass(w.category, CacheWarning)),
        sorted([_sh[0].name, "shard-foreign.npz"]))
test_eq(sorted(p.name for p in _sh[0].parent.glob("*.corrupt")), sorted([_sh[0].name + ".corrupt", "shard-foreign.npz.corrupt"]))

# %% [markdown]
# The handcrafted backbone goes through the same engine.

# %%
_ctb = get_backbone("color_texture")
_zc, _ = embed_sides(_ctb, _sides.head(5), cache_root=_root)
test_eq(_zc.shape, (5, _ctb.dim))

# %% [markdown]
# Two files with identical bytes and the same recipe (HAM10000 has two such pairs; the `reference`
# protocol does not merge them, so both can be sides of one manifest) share one cache key: it is
# computed once and both rows get it.

# %%
_dup = pd.concat([_sides.head(3), _sides.head(1).assign(image_id="a_copy")], ignore_index=True)
_zd, _std = embed_sides(_ctb, _dup, cache_root=tempfile.mkdtemp())
test_eq((_std.computed, _std.cache_hits, _zd[3].tobytes() == _zd[0].tobytes()), (3, 1, True))

# %% [markdown]
# ## What a random initialisation sees
#
# A caveat for anyone using the random-init backbones as a floor. DINOv2's architecture
# initialises its LayerScale at 1e-5, so at random init every residual branch is scaled to almost
# nothing and the normed CLS token is nearly the same vector for every image: `random_vits14` is a
# *constant* embedding to about seven digits. `random_vitb16` (no LayerScale) and `color_texture`
# do vary with the image. The mean pairwise cosine between the embeddings of 32 different images:

# %%
#| slow
from derma_jepa.backbones import OFFLINE_BACKBONES
_src = load_records(os.environ["HAM10000_DIR"] if os.environ.get("HAM10000_DIR") else fixture_dir(300, 0)).head(32)
_s32 = pd.DataFrame({"path": _src.path, "sha256": _src.sha256, "recipe": '{"family":"none","ops":[]}'})
_pairwise = {}
for _name in OFFLINE_BACKBONES:
    _z, _ = embed_sides(get_backbone(_name), _s32, cache_root=tempfile.mkdtemp(), workers=0)
    _c = _z @ _z.T
    _pairwise[_name] = float((_c.sum() - len(_z)) / (len(_z) ** 2 - len(_z)))
print({k: round(v, 7) for k, v in _pairwise.items()})
assert _pairwise["random_vits14"] > 0.9999 and _pairwise["color_texture"] < 0.99

# %% [markdown]
# ## bf16 against fp32, and what each costs here
#
# On 32 real images (the fixture when `HAM10000_DIR` is unset), every ViT architecture of the
# registry that can be built here (the DINOv2 ViT-S/14, the timm ViT-B/16, open_clip's ViT-B/16
# image tower from a random checkpoint; hub weights are not on this machine), in bf16 autocast and
# in fp32: the mean cosine between the two embeddings of each image must be at least 0.999. Which of
# the two is faster depends on the CPU (the rates, measured side by side, are recorded by
# `benchmarks/bench_embed.py`, not shown here: a rate measured while other work runs differs from
# one execution to the next, and committed outputs must not). (The ViT-S/14 agreement is trivially
# 1: at random init it is a constant, see 07_backbones.)

# %%
#| slow
import json
_src = (load_records(os.environ["HAM10000_DIR"]) if os.environ.get("HAM10000_DIR") else _recs).head(32)
_s32 = pd.DataFrame({"path": _src.path, "sha256": _src.sha256, "recipe": '{"family":"none","ops":[]}'})
# the open_clip ViT-B/16 image tower, from a random checkpoint in the hub's layout (07_backbones)
import open_clip
from open_clip.model import _build_vision_tower
from derma_jepa.backbones import REGISTRY, write_hub_checkpoint
torch.manual_seed(0)
_oc = open_clip.get_model_config("ViT-B-16")
_vis = _build_vision_tower(_oc["embed_dim"], _oc["vision_cfg"], quick_gelu=True)
_clip_ckpt = write_hub_checkpoint(REGISTRY["clip_vitb16"], {f"visual.{k}": v for k, v in _vis.state_dict().items()},
                                  tempfile.mkdtemp())
_agree, _cosines, _bbs = {}, {}, {}
for _name, _b in [("random_vits14", get_backbone("random_vits14")), ("random_vitb16", get_backbone("random_vitb16")),
                  ("clip_vitb16 (random checkpoint)", get_backbone("clip_vitb16", weights=_clip_ckpt))]:
    _r = {}
    for _dt in ["fp32", "bf16"]:
        _zz, _ss = embed_sides(_b, _s32, dtype=_dt, cache_root=tempfile.mkdtemp(), batch_size=32, workers=0)
        _r[_dt] = _zz
    _cos = (_r["fp32"] * _r["bf16"]).sum(1)
    _cosines[_name], _bbs[_name] = _cos, _b
    _agree[_name] = {"mean_cosine": round(float(_cos.mean()), 4), "min_cosine": round(float(_cos.min()), 4)}
    assert _cos.mean() >= 0.999, (_name, _cos.mean())
print(json.dumps(_agree, indent=1))

# %% [markdown]
# What each ViT is given, and how close bf16 stays to fp32 image by image: four of the 32 images,
# then the tensor the timm ViT-B/16 and the open_clip ViT-B/16 receive after their own
# preprocessing (resize, centre crop; shown rescaled to [0, 1]); right, the per-image cosine between
# the bf16 and fp32 embeddings.

# %%
#| slow
import matplotlib.pyplot as plt
from PIL import Image
_fig = plt.figure(figsize=(10, 4.2))
_gs = _fig.add_gridspec(3, 6)
_show = [("image", None), ("random_vitb16", _bbs["random_vitb16"]), ("open_clip ViT-B/16", _bbs["clip_vitb16 (random checkpoint)"])]
for _i, _path in enumerate(_src.path.head(4)):
    _img = Image.open(_path).convert("RGB")
    for _j, (_lab, _b) in enumerate(_show):
        _ax = _fig.add_subplot(_gs[_j, _i])
        if _b is None: _ax.imshow(_img)
        else:
            _x = _b.transform(_img).permute(1, 2, 0).numpy()
            _ax.imshow((_x - _x.min()) / (_x.max() - _x.min()))
        _ax.set(xticks=[], yticks=[]); _ax.set_ylabel(_lab if _i == 0 else "", fontsize=7)
_ax = _fig.add_subplot(_gs[:, 4:])
for _k, (_name, _c) in enumerate(_cosines.items()):
    _ax.scatter(np.full(len(_c), _k) + np.linspace(-0.15, 0.15, len(_c)), _c, s=8)
_ax.axhline(0.999, ls=":", c="grey"); _ax.set_xticks(range(len(_cosines)), [n.split(" ")[0] for n in _cosines], fontsize=7)
_ax.set(ylabel="cosine(bf16, fp32) per image", title="bf16 vs fp32, 32 images"); _fig.tight_layout(); plt.show()

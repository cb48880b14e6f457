# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp safety

# %% [markdown]
# # Safety: what this project never does
#
# > It never deletes or overwrites what it did not write, never runs code from a file it reads,
# > and never reads a parameter as something it was not given.
#
# A research tool is trusted with folders of data and with checkpoints from elsewhere. Three
# rules, each one function that every writer and reader of the project goes through:
#
# 1. **Output folders are owned.** A run directory (and each folder of `paper/`) carries a marker
#    file, `.derma_jepa.json`, with its kind and format version. Only a folder with that marker,
#    or an empty one, is ever replaced. Anything else at the destination (a file, a folder of
#    notes, the data folder, the cache, a parent of either) stops the run *before any work* with
#    one line naming the path. Writers of one folder are serialised by a lock (`filelock`, an
#    OS-level lock that the kernel drops when its process dies, so a killed writer leaves no stale
#    lock) and debris of a killed writer (its temporary or set-aside folder, each marked) is
#    removed by the next one. New files and folders get the user's umask.
# 2. **No unpickling.** Every checkpoint the project writes is a safetensors file whose metadata
#    holds the JSON the project needs; every read is safetensors or `torch.load(weights_only=True)`,
#    and a file that is neither is refused with one line naming it, before anything in it runs.
# 3. **Typed parameters.** A configuration value is converted only when nothing is lost: `3`,
#    `3.0` and `"3"` are the integer 3, but `1.5`, `True` and `"many"` are refused with the
#    parameter's name.

# %%
#| export
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from derma_jepa.data import ConfigError, DataError, atomic_write_bytes, cache_dir, follow_umask, os_reason

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## Output folders
#
# `check_destination` is called before any work and again, under the lock, just before the swap.
# `protected` lists folders the destination may be neither, nor sit inside, nor contain (the data
# folder and the cache); the cache root is always protected.

# %%
#| export
MARKER = ".derma_jepa.json"
MARKER_FORMAT = 1


class DestinationError(DataError):
    "An output path the project refuses to write: the message names it and says why."


def marker_of(path) -> dict | None:
    "The marker of a folder this project wrote, or None."
    m = Path(path) / MARKER
    try: d = json.loads(m.read_text())
    except (OSError, ValueError): return None
    return d if isinstance(d, dict) and "kind" in d and "format" in d else None


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent: path = path.parent
    return path


def check_destination(dest, kind: str = "run", protected=(), what: str = "run_dir") -> Path:
    "The destination as an absolute path if the project may (re)write it there; else one-line `DestinationError`."
    raw = Path(os.path.expanduser(str(dest)))
    if raw.is_symlink(): raise DestinationError(f"{what} {raw} is a symbolic link; give the real folder")
    dest = raw.resolve()
    cache = cache_dir().resolve()
    for label, p in [("the cache folder", cache)] + [("the data folder", Path(q).resolve()) for q in protected if q]:
        if dest == p: raise DestinationError(f"{what} {dest} is {label}; choose another folder (nothing was written)")
        if _inside(dest, p): raise DestinationError(f"{what} {dest} is inside {label} {p}; choose another folder (nothing was written)")
        if _inside(p, dest): raise DestinationError(f"{what} {dest} contains {label} {p}; choose another folder (nothing was written)")
    if dest.exists():
        if not dest.is_dir():
            raise DestinationError(f"{what} {dest} is an existing file, not a folder this project wrote; "
                                   f"choose another path (nothing was written)")
        m = marker_of(dest)
        if m is None and any(dest.iterdir()):
            raise DestinationError(f"{what} {dest} is a non-empty folder this project did not write (no {MARKER}); "
                                   f"choose another path (nothing was written)")
        if m is not None and (m["kind"] != kind or m["format"] > MARKER_FORMAT):
            raise DestinationError(f"{what} {dest} was written as a {m['kind']!r} folder (format {m['format']}), "
                                   f"not a {kind!r} folder of format <= {MARKER_FORMAT}; choose another path")
    base = _first_existing(dest.parent)
    if not base.is_dir(): raise DestinationError(f"{what} {dest}: {base} is a file, not a folder")
    try: os.rmdir(tempfile.mkdtemp(dir=base, prefix=".derma_jepa-probe-"))
    except OSError as e:
        raise DestinationError(f"{what} {dest}: cannot write in {base} ({e.strerror or e}); nothing was written") from None
    return dest


# %% [markdown]
# The lock lives in the cache (`locks/`, one file per destination, named by a hash of its path),
# so nothing is left beside the user's folders. `flock` locks belong to the process: when a
# writer is killed, the kernel releases its lock and the next writer takes it at once.
#
# The swap: files are written into a marked temporary sibling, the old folder (marked, or empty)
# is renamed aside, the new one renamed into place, the old one removed. A writer killed in the
# middle leaves marked siblings (`.<name>.tmp-*`, `.<name>.old-*`); the next writer, holding the
# lock, knows no live writer owns them and removes them. A sibling with those names but no
# marker is not ours and is left alone.

# %%
#| export
def dir_lock(dest: Path, timeout: float = 600):
    "An inter-process lock for writing `dest` (a `filelock.FileLock` in the cache's `locks/`)."
    from filelock import FileLock
    key = hashlib.sha256(str(Path(dest).resolve()).encode()).hexdigest()[:24]
    return FileLock(str(cache_dir("locks") / f"{key}.lock"), timeout=timeout)


def _remove_ours(path: Path) -> bool:
    "Remove a folder this project wrote (marked, or empty); leave anything else. True if removed."
    if not path.is_dir() or path.is_symlink(): return False
    if marker_of(path) is not None: shutil.rmtree(path); return True
    try: path.rmdir(); return True
    except OSError: return False


def clear_debris(dest: Path) -> list[str]:
    "Remove what killed writers of `dest` left beside it (marked or empty `.<name>.tmp-*`/`.old-*` folders)."
    gone = []
    for p in sorted(dest.parent.glob(f".{dest.name}.tmp-*")) + sorted(dest.parent.glob(f".{dest.name}.old-*")):
        if _remove_ours(p): gone.append(p.name)
    return gone


def _write_marked(dest, files: dict[str, bytes], kind: str, protected, what: str) -> Path:
    dest = check_destination(dest, kind, protected, what)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = dir_lock(dest)
    try: lock.acquire()
    except TimeoutError: raise DestinationError(f"{what} {dest}: another writer holds its lock for too long") from None
    try:
        check_destination(dest, kind, protected, what)          # again, under the lock
        clear_debris(dest)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
        try:
            follow_umask(tmp, is_dir=True)
            (tmp / MARKER).write_text(json.dumps({"kind": kind, "format": MARKER_FORMAT, "writer": "derma_jepa"}) + "\n")
            for name, data in files.items():
                if Path(name).is_absolute() or ".." in Path(name).parts: raise DestinationError(f"bad file name {name!r}")
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            if dest.exists():
                old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-")); old.rmdir()
                os.replace(dest, old)
                try: os.replace(tmp, dest)
                except BaseException: os.replace(old, dest); raise
                _remove_ours(old)
            else: os.replace(tmp, dest)
        except BaseException:
            _remove_ours(tmp)
            raise
    finally: lock.release()
    return dest


def write_marked_dir(dest, files: dict[str, bytes], kind: str = "run", protected=(), what: str = "run_dir") -> Path:
    "Write `files` (relative name -> bytes) as the folder `dest`, replacing only a folder of this project's."
    try: return _write_marked(dest, files, kind, protected, what)
    except OSError as e:                            # a full disk, a read-only mount: named, nothing half-written
        raise DestinationError(f"{what} {dest}: could not write ({os_reason(Path(dest) / 'x', e)}); nothing was written "
                               "there") from None


def check_free_space(path, need: int, what: str) -> None:
    "Refuse, naming `path`, when its filesystem (the nearest existing folder's) has fewer than `need` bytes free."
    free = shutil.disk_usage(_first_existing(Path(os.path.expanduser(str(path))).absolute())).free
    if free < need:
        raise DestinationError(f"{what} {path}: {free / 2**20:,.0f} MiB free on its filesystem, and this needs about "
                               f"{need / 2**20:,.0f} MiB; free some space or choose another place")


# %% [markdown]
# ### Tests: what is refused, what is replaced, what is recovered
#
# Every refusal leaves the destination and its surroundings byte-identical.

# %%
def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}

_w = Path(tempfile.mkdtemp())
(_w / "notes").mkdir(); (_w / "notes" / "todo.txt").write_text("keep me")
(_w / "file.txt").write_text("a file")
(_w / "data").mkdir(); (_w / "data" / "HAM10000_metadata.csv").write_text("x")
(_w / "empty").mkdir()
_before = _tree(_w)
for _dest, _msg in [(_w / "notes", "non-empty folder this project did not write"), (_w / "file.txt", "is an existing file"),
                    (_w / "data", "is the data folder"), (_w / "data" / "run", "is inside the data folder"),
                    (_w, "contains the data folder"), (_w / "file.txt" / "run", "is a file, not a folder")]:
    test_fail(lambda: write_marked_dir(_dest, {"a.txt": b"1"}, protected=[_w / "data"]), contains=_msg)
test_eq(_tree(_w), _before)
_cache_root = cache_dir()
test_fail(lambda: check_destination(_cache_root / "embeddings"), contains="inside the cache folder")
test_fail(lambda: check_destination(_cache_root.parent), contains="contains the cache folder")

# %% [markdown]
# An empty folder and a folder this project wrote are replaced; a folder of another kind is not.

# %%
_r = write_marked_dir(_w / "empty", {"a.txt": b"1", "sub/b.txt": b"2"})
test_eq((marker_of(_r)["kind"], (_r / "sub" / "b.txt").read_bytes()), ("run", b"2"))
write_marked_dir(_r, {"a.txt": b"3"})
test_eq(sorted(p.name for p in _r.iterdir()), [MARKER, "a.txt"])
test_fail(lambda: write_marked_dir(_r, {}, kind="paper"), contains="was written as a 'run' folder")
test_eq(sorted(p.name for p in _w.iterdir()), ["data", "empty", "file.txt", "notes"])     # no debris
# a write that fails midway (here a file name longer than the filesystem allows) is named, and leaves nothing
test_fail(lambda: write_marked_dir(_w / "long", {"a.txt": b"1", "x" * 300: b"2"}), contains="could not write (File name too long)")
test_eq(sorted(p.name for p in _w.iterdir()), ["data", "empty", "file.txt", "notes"])
# free space is checked against an estimate before work (the nearest existing folder's filesystem)
check_free_space(_w / "not" / "yet", 1, "run_dir")
test_fail(lambda: check_free_space(_w / "not" / "yet", 2**60, "run_dir"), contains="this needs about 1,099,511,627,776 MiB")

# %% [markdown]
# Debris of a killed writer (a marked temporary folder and a set-aside old one) is cleared by the
# next writer; a look-alike without the marker is not ours and stays.

# %%
for _n in (".empty.tmp-dead", ".empty.old-dead"):
    (_w / _n).mkdir(); (_w / _n / MARKER).write_text('{"kind": "run", "format": 1}')
(_w / ".empty.tmp-foreign").mkdir(); (_w / ".empty.tmp-foreign" / "mine.txt").write_text("not yours")
write_marked_dir(_w / "empty", {"a.txt": b"4"})
test_eq(sorted(p.name for p in _w.iterdir()), [".empty.tmp-foreign", "data", "empty", "file.txt", "notes"])

# %% [markdown]
# Created files and folders follow the umask (`tempfile` alone would make them 0700/0600).

# %%
_old = os.umask(0o022)
try:
    _r2 = write_marked_dir(_w / "umask", {"a.txt": b"1", "d/b.txt": b"2"})
    test_eq([oct(p.stat().st_mode & 0o777) for p in (_r2, _r2 / "a.txt", _r2 / "d", _r2 / "d" / "b.txt")],
            ["0o755", "0o644", "0o755", "0o644"])
finally: os.umask(_old)

# %% [markdown]
# A lock held by a process that is then killed is taken over at once (the kernel released it).

# %%
import subprocess, sys, signal, time
_lock_path = dir_lock(_w / "umask").lock_file
_holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; import time; l = FileLock({_lock_path!r}); "
                            "l.acquire(); print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
test_eq(_holder.stdout.readline().strip(), "held")
test_fail(lambda: dir_lock(_w / "umask", timeout=0.2).acquire(), exc=TimeoutError)
_holder.send_signal(signal.SIGKILL); _holder.wait()
write_marked_dir(_w / "umask", {"a.txt": b"after"}, what="run_dir")
test_eq((_w / "umask" / "a.txt").read_bytes(), b"after")

# %% [markdown]
# ## Checkpoints: tensors plus JSON, never a pickle
#
# `save_checkpoint(path, tensors, meta)` writes one safetensors file; `meta` (config, history,
# anything JSON) rides in its metadata under the key `derma_jepa`. `load_checkpoint` recognises a
# safetensors file by its header, whatever its name. Any other file is offered to
# `torch.load(weights_only=True)` (tensors-only torch files, such as checkpoints written by older
# versions of this project, still load); what that refuses is refused here in one line naming the
# file, and nothing in it has run.

# %%
#| export
META_KEY = "derma_jepa"


class CheckpointError(DataError):
    "A checkpoint that is missing or not tensors-only: the message names the file."


def save_checkpoint(path, tensors: dict, meta: dict | None = None) -> Path:
    "Write `tensors` (name -> torch tensor) and JSON-able `meta` as one safetensors file, atomically."
    from safetensors.torch import save
    data = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                metadata={META_KEY: json.dumps(meta or {}, sort_keys=True)})
    atomic_write_bytes(Path(path), data)
    return Path(path)


def tensors_under(tensors: dict, prefix: str) -> dict:
    "The tensors whose names start with `prefix.`, with the prefix taken off (`encoder.x` -> `x`)."
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def is_safetensors(path) -> bool:
    "Does the file start like a safetensors file (8-byte little-endian header length, then a JSON object)?"
    with open(path, "rb") as f: head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{": return False
    return int.from_bytes(head[:8], "little") < os.path.getsize(path)


def torch_load_tensors(path):
    "`torch.load(path, weights_only=True)` on the CPU; a refusal or a damaged file becomes one `CheckpointError` line."
    import torch
    try: return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # UnpicklingError for a pickle that is not tensors-only; RuntimeError etc. for damage
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path}: refused: not a safetensors file nor a tensors-only torch checkpoint "
                              f"({type(e).__name__}: {first}); nothing in it was run") from None


def _flatten_legacy(obj) -> tuple[dict, dict]:
    "A tensors-only torch checkpoint as (tensors, meta): dicts of tensors become 'key.name' tensors, the rest meta."
    import torch
    if not isinstance(obj, dict): raise CheckpointError("a checkpoint must be a mapping")
    tensors, meta = {}, {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor): tensors[k] = v
        elif isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()):
            tensors.update({f"{k}.{n}": t for n, t in v.items()})
        else: meta[k] = v
    return tensors, json.loads(json.dumps(meta))             # tuples -> lists, as a JSON round trip would


def load_checkpoint(path) -> tuple[dict, dict]:
    "(tensors, meta) of a checkpoint: safetensors (+ JSON metadata), or a tensors-only torch file; else refused."
    path = Path(path)
    if not path.is_file(): raise CheckpointError(f"{path}: checkpoint not found")
    if is_safetensors(path):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
                return {k: f.get_tensor(k) for k in f.keys()}, meta
        except Exception as e:
            raise CheckpointError(f"{path}: damaged safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    try: return _flatten_legacy(torch_load_tensors(path))
    except CheckpointError as e:
        raise CheckpointError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


# %% [markdown]
# A round trip, a legacy tensors-only torch file, and a malicious pickle whose payload would
# write a marker file: refused, and the marker never appears.

# %%
import torch
_ck = Path(tempfile.mkdtemp())
_t, _m = load_checkpoint(save_checkpoint(_ck / "a.safetensors", {"w": torch.arange(6.).reshape(2, 3)}, {"step": 3, "cfg": {"lr": 0.1}}))
test_eq((_t["w"].tolist(), _m), ([[0., 1., 2.], [3., 4., 5.]], {"step": 3, "cfg": {"lr": 0.1}}))
test_eq(tensors_under({"enc.a": 1, "enc.b.c": 2, "encx.d": 3, "head.w": 4}, "enc"), {"a": 1, "b.c": 2})
torch.save({"config": {"a": 1}, "encoder": {"w": torch.ones(2)}, "mean": (0.5,)}, _ck / "legacy.pt")
_t, _m = load_checkpoint(_ck / "legacy.pt")
test_eq((list(_t), _m), (["encoder.w"], {"config": {"a": 1}, "mean": [0.5]}))

class _Payload:
    def __reduce__(self): return (Path.write_text, (_ck / "PWNED", "code ran"))
torch.save({"encoder": {"w": torch.ones(1)}, "x": _Payload()}, _ck / "evil.pt")
test_fail(lambda: load_checkpoint(_ck / "evil.pt"), contains="evil.pt: refused: not a safetensors file nor a tensors-only")
assert not (_ck / "PWNED").exists()
(_ck / "cut.safetensors").write_bytes((_ck / "a.safetensors").read_bytes()[:40])
test_fail(lambda: load_checkpoint(_ck / "cut.safetensors"), contains="cut.safetensors")
test_fail(lambda: load_checkpoint(_ck / "none.safetensors"), contains="checkpoint not found")

# %% [markdown]
# ## Typed parameters
#
# Papermill (`-p`), YAML and Python hand over values of whatever type they parsed. `coerce`
# converts a value to a field's type only when the conversion loses nothing, and otherwise raises
# a `ConfigError` naming the parameter. `coerce_fields` applies it to every field of a dataclass
# from its annotations.

# %%
#| export
_INT = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def coerce(name: str, value, typ: str):
    "`value` as `typ` (int, float, bool, str, tuple of floats), converted only when nothing is lost."
    bad = ConfigError(f"parameter {name}={value!r} is not a valid {typ}")
    if typ == "int":
        if isinstance(value, bool): raise bad
        if isinstance(value, int): return value
        if isinstance(value, float) and value.is_integer(): return int(value)
        if isinstance(value, str) and _INT.fullmatch(value.strip()): return int(value)
        raise bad
    if typ == "float":
        if isinstance(value, bool): raise bad
        try: v = float(value) if isinstance(value, (int, float, str)) else None
        except ValueError: v = None
        if v is None or not math.isfinite(v): raise bad
        return v
    if typ == "bool":
        if isinstance(value, bool): return value
        if isinstance(value, int) and value in (0, 1): return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE: return value.strip().lower() in _TRUE
        raise bad
    if typ == "str":
        if value is None: return ""
        if isinstance(value, str): return value
        if isinstance(value, int) and not isinstance(value, bool): return str(value)
        if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value): return ",".join(value)
        raise bad
    if typ == "tuple":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)): raise bad
        try: return tuple(coerce(name, x, "float") for x in items)
        except ConfigError: raise bad from None
    raise ValueError(f"coerce: unknown type {typ!r}")


def coerce_fields(obj) -> None:
    "Coerce every field of a (frozen) dataclass instance to its annotated type, in place."
    import dataclasses
    for f in dataclasses.fields(obj):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if t in ("int", "float", "bool", "str", "tuple"):
            object.__setattr__(obj, f.name, coerce(f.name, getattr(obj, f.name), t))


# %%
test_eq([coerce("seed", v, "int") for v in (3, 3.0, "3", " -2 ")], [3, 3, 3, -2])
for _v in (1.5, "1.5", True, "many", None, [1]):
    test_fail(lambda: coerce("seed", _v, "int"), contains=f"parameter seed={_v!r} is not a valid int")
test_eq([coerce("rephoto", v, "bool") for v in (True, 0, "yes", "False")], [True, False, True, False])
test_fail(lambda: coerce("rephoto", "maybe", "bool"), contains="rephoto='maybe'")
test_fail(lambda: coerce("rephoto", 2, "bool"), contains="rephoto=2")
test_eq((coerce("families", ["strong", "strong_held_out"], "str"), coerce("weights", None, "str")), ("strong,strong_held_out", ""))
test_fail(lambda: coerce("backbone", 1.5, "str"), contains="backbone=1.5")
test_fail(lambda: coerce("backbone", {"a": 1}, "str"), contains="backbone={'a': 1}")
test_eq(coerce("split_fractions", "0.8,0.1,0.1", "tuple"), (0.8, 0.1, 0.1))
test_fail(lambda: coerce("split_fractions", 0.7, "tuple"), contains="split_fractions=0.7")
test_fail(lambda: coerce("split_fractions", "a,b,c", "tuple"), contains="split_fractions='a,b,c' is not a valid tuple")
test_fail(lambda: coerce("lr", float("nan"), "float"), contains="lr=nan")

# %% [markdown]
# ## YAML: plain values only, read before any work
#
# An experiment file is a few lines of plain values. `load_yaml` reads one (or a `-p`/`--set`
# value) with PyYAML's safe loader and refuses, in one line naming the file and line, what a plain
# file never needs and a hostile one uses: **tags** (`!!python/object/apply:os.system` is refused
# by the safe loader; we name it), **aliases** (`*a`: a "billion laughs" file expands nine lines
# into 10^9 strings, and papermill would hang rendering them), a key given twice (PyYAML keeps the
# last one without a word), files larger than 1 MiB, and, where a mapping is expected, a list or a
# scalar. Every YAML the project reads goes through it, and
# `derma_jepa_run` (20_plan) uses it so that a YAML file reaches papermill as checked plain values.

# %%
#| export
import yaml

YAML_MAX_BYTES = 1 << 20


class _PlainLoader(yaml.SafeLoader):
    "The safe loader, refusing aliases (anchors alone are harmless)."
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{ev.anchor} is not accepted: write the value out",
                                              ev.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for k, _ in node.value:                     # a key given twice: PyYAML would keep the last one, silently
            key = self.construct_object(k, deep=True)
            if not isinstance(key, (str, int, float, bool)): continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice (first on line "
                                                        f"{seen[key] + 1})", k.start_mark)
            seen[key] = k.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(path=None, *, text: str | None = None, source: str | None = None, mapping: bool = True):
    "Plain values from a YAML file (or `text`); a tag, an alias, > 1 MiB or (with `mapping`) a non-mapping is a ConfigError."
    source = source or str(path)
    if text is None:
        p = Path(path)
        if not p.is_file(): raise ConfigError(f"{source}: YAML file not found" if not p.exists() else f"{source}: not a file")
        if p.stat().st_size > YAML_MAX_BYTES: raise ConfigError(f"{source}: {p.stat().st_size:,} bytes; a YAML file here is at most 1 MiB")
        from derma_jepa.data import read_text_utf8
        try: text = read_text_utf8(p)
        except DataError as e: raise ConfigError(str(e)) from None
    if len(text.encode()) > YAML_MAX_BYTES: raise ConfigError(f"{source}: more than 1 MiB of YAML")
    try: value = yaml.load(text, Loader=_PlainLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "could not determine a constructor" in problem:
            problem = f"the tag {problem.split('tag ')[-1]} is not accepted (plain YAML values only)"
        raise ConfigError(f"{source}: {where}{problem}") from None
    if mapping:
        value = {} if value is None else value
        if not isinstance(value, dict): raise ConfigError(f"{source}: expected a mapping of parameters, found a {type(value).__name__}")
        bad = next((k for k in value if not isinstance(k, str)), None)
        if bad is not None: raise ConfigError(f"{source}: key {bad!r} is not text")
    return value


# %%
_y = Path(tempfile.mkdtemp())
(_y / "ok.yaml").write_text("seed: 3\nbackbone: color_texture\nsplit_fractions: [0.8, 0.1, 0.1]\n")
test_eq(load_yaml(_y / "ok.yaml"), {"seed": 3, "backbone": "color_texture", "split_fractions": [0.8, 0.1, 0.1]})
(_y / "laughs.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n")
test_fail(lambda: load_yaml(_y / "laughs.yaml"), contains="laughs.yaml: line 2: alias *a is not accepted")
(_y / "tag.yaml").write_text("seed: !!python/object/apply:os.system ['echo hi']\n")
test_fail(lambda: load_yaml(_y / "tag.yaml"), contains="tag.yaml: line 1: the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not accepted")
(_y / "list.yaml").write_text("- seed\n- 3\n")
test_fail(lambda: load_yaml(_y / "list.yaml"), contains="list.yaml: expected a mapping of parameters, found a list")
(_y / "bad.yaml").write_text("seed: [1, 2\n")
test_fail(lambda: load_yaml(_y / "bad.yaml"), contains="bad.yaml: line 2:")
(_y / "big.yaml").write_text("x: '" + "a" * YAML_MAX_BYTES + "'\n")
test_fail(lambda: load_yaml(_y / "big.yaml"), contains="a YAML file here is at most 1 MiB")
test_fail(lambda: load_yaml(_y / "none.yaml"), contains="none.yaml: YAML file not found")
test_fail(lambda: load_yaml(_y), contains=": not a file")
test_eq(load_yaml(text="[0.8, 0.1, 0.1]", source="-p split_fractions", mapping=False), [0.8, 0.1, 0.1])
test_fail(lambda: load_yaml(text="{a: 1", source="--set x={a: 1"), contains="--set x={a: 1: line 1: expected ',' or '}'")
test_eq(load_yaml(text=""), {})
test_fail(lambda: load_yaml(text="seed: 1\nbackbone: x\nseed: 2\n", source="exp.yaml"),
          contains="exp.yaml: line 3: key 'seed' is given twice (first on line 1)")
test_eq(load_yaml(text="a: {seed: 1}\nb: {seed: 2}\n"), {"a": {"seed": 1}, "b": {"seed": 2}})   # one key per mapping


# %% [markdown]
# ## A kernel that outlives its runner
#
# papermill starts a kernel as its child; killed with SIGKILL, papermill cannot stop it, and the
# kernel would go on computing, an orphan. `exit_with_parent()`, called in the first cell of each
# notebook papermill runs (run, paper, exp009), watches the kernel's parent process from a daemon
# thread and ends the kernel when the parent is gone (the kernel is re-parented). Tested below on
# a child whose parent is killed.

# %%
#| export
def exit_with_parent(poll_s: float = 1.0) -> None:
    "End this process (exit status 1) soon after its parent process dies; a daemon thread polls `os.getppid()`."
    import threading
    parent = os.getppid()
    def watch():
        while os.getppid() == parent: time.sleep(poll_s)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# %%
import subprocess, sys, signal
_code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', "
         "'import time; from derma_jepa.safety import exit_with_parent; exit_with_parent(0.1); time.sleep(60)']); "
         "print(c.pid, flush=True); c.wait()")
_runner = subprocess.Popen([sys.executable, "-c", _code], stdout=subprocess.PIPE, text=True)
_kernel = int(_runner.stdout.readline())
time.sleep(1.5); _runner.kill(); _runner.wait()
for _ in range(50):
    try: os.kill(_kernel, 0)
    except ProcessLookupError: break
    time.sleep(0.1)
else: raise AssertionError("the child outlived its killed parent")

# %% [markdown]
# ## The refusals, as a reader meets them
#
# One line each, naming the path or the parameter; nothing was written in any of these cases.
# (Temporary folders are shown as `<tmp>`.)

# %%
import pandas as pd
_t = Path(tempfile.mkdtemp())
(_t / "notes").mkdir(); (_t / "notes" / "mine.txt").write_text("x"); (_t / "a_file").write_text("x")
(_t / "data").mkdir()
_pickled = _t / "model.pt"; _pickled.write_bytes(b"\x00 not a checkpoint")
_cases = {"a file at run_dir": lambda: check_destination(_t / "a_file"),
          "a folder of your own": lambda: check_destination(_t / "notes"),
          "inside the data folder": lambda: check_destination(_t / "data" / "run", protected=[_t / "data"]),
          "a parent of the data folder": lambda: check_destination(_t, protected=[_t / "data"]),
          "seed=1.5": lambda: coerce("seed", 1.5, "int"),
          "a file that is not a checkpoint": lambda: load_checkpoint(_pickled),
          "a YAML file with aliases": lambda: load_yaml(_y / "laughs.yaml"),
          "a YAML file with a python tag": lambda: load_yaml(_y / "tag.yaml")}
_rows = []
for _case, _f in _cases.items():
    try: _f(); _rows.append((_case, "(accepted)"))
    except Exception as e: _rows.append((_case, f"{type(e).__name__}: {str(e).replace(str(_t), '<tmp>').replace(str(_y), '<tmp>')}"))
pd.set_option("display.max_colwidth", None)
pd.DataFrame(_rows, columns=["case", "what the reader sees"]).set_index("case")

# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp data

# %% [markdown]
# # Data: HAM10000-style metadata, image index and audit
#
# > Read a metadata CSV and its image folders into one table of *records*, and audit every row.
#
# Everything downstream (split, pairs, embeddings) starts from the table this notebook builds.
# The reference release reads `HAM10000_metadata.csv` plus the folders `HAM10000_images_part_1/`,
# `HAM10000_images_part_2/` and `images/`, searched in that order for `<image_id>.{jpg,jpeg,png}`
# (PROTOCOL A1). Column names are matched case-insensitively through alias lists, so ISIC-style
# CSVs (`isic_id`, `diagnosis`, `anatom_site_general`) load too. What must never happen is a
# *silent* wrong read: two columns that both claim one field (`dx` and `DX`, or `dx` and
# `diagnosis`), a file that is not UTF-8, a blank lesion id that quietly becomes a lesion of its
# own, or a 16-bit image that becomes white. Each is an error naming the file, row or value, or
# (where the release had a documented behaviour) that behaviour, counted in the audit.
#
# The audit is the first line of defence against leakage and silent data loss: it records, for
# every row, whether the file was found and decodes, its size, and the SHA-256 of its bytes.
# Identical bytes under two image ids are a leak waiting to happen (the two copies can land in
# different splits); the `symmetric` protocol forces them together (02_split).

# %%
#| export
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# %%
from fastcore.test import test_eq, test_fail


# %% [markdown]
# ## Errors and the cache folder
#
# Every bad input raises one `DataError` whose message names the culprit (file, row, column or
# value), on one line. Expensive derived data (audits, fixtures, later embeddings) lives in one
# cache folder, `$DERMA_JEPA_CACHE` or `~/.cache/derma_jepa`.

# %%
#| export
class DataError(ValueError):
    "Bad input data: the message names the file, row, column or value at fault."


class ConfigError(ValueError):
    "A bad configuration value or an unknown parameter; the message names it (03_safety's `coerce`, `load_yaml`)."


def os_reason(path, e: OSError, folder: bool = False) -> str:
    "Why writing at `path` (a `folder`, or a file in one) failed, in words: a file where a folder should be, else the system's."
    anc = next((a for a in [Path(path)] * folder + list(Path(path).parents) if a.exists()), None)
    return f"{anc} is a file, not a folder" if anc is not None and not anc.is_dir() else e.strerror or type(e).__name__


def repo_root(start=None) -> Path:
    "The folder holding settings.ini, searched upwards from `start` (default: the working directory)."
    p = Path(start or Path.cwd()).resolve()
    for q in [p, *p.parents]:
        if (q / "settings.ini").exists() and (q / "nbs").is_dir(): return q
    raise DataError(f"no derma-jepa checkout (settings.ini + nbs/) above {p}")


def experiments_dir() -> Path:
    "The folder of the experiment files (nbs/experiments) of the checkout: inputs, like the data, of every run and of the paper."
    return repo_root() / "nbs" / "experiments"


def cache_dir(*parts: str) -> Path:
    "The project's cache folder (`$DERMA_JEPA_CACHE`, default `~/.cache/derma_jepa`), sub-path created."
    root = Path(os.environ.get("DERMA_JEPA_CACHE") or Path.home() / ".cache" / "derma_jepa")
    path = root.joinpath(*parts)
    try: path.mkdir(parents=True, exist_ok=True)
    except OSError as e: raise DataError(f"cache folder {path} (DERMA_JEPA_CACHE): cannot create it ({os_reason(path, e, folder=True)})") from None
    return path


def current_umask() -> int:
    "The process's umask, read without changing it where the OS says it (Linux), else set and restored."
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"): return int(line.split()[1], 8)
    except OSError: pass
    old = os.umask(0o022); os.umask(old)
    return old


def follow_umask(path, is_dir: bool | None = None) -> None:
    "Give `path` the mode a plain `open`/`mkdir` would have (0666/0777 less the umask): `tempfile` makes 0600/0700."
    path = Path(path)
    is_dir = path.is_dir() if is_dir is None else is_dir
    os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    "Write `data` to `path` through a temporary file and a rename, so readers never see half a file."
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f: f.write(data)
        follow_umask(tmp, is_dir=False)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp: Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):                  # a full disk, a read-only mount, a file where a folder should be
            raise DataError(f"{path}: could not write ({os_reason(path, e)}); nothing was written") from None
        raise


# %%
_u = Path(tempfile.mkdtemp()) / "f.bin"
_old = os.umask(0o027)
try:
    atomic_write_bytes(_u, b"x")
    test_eq((current_umask(), oct(_u.stat().st_mode & 0o777)), (0o027, "0o640"))
finally: os.umask(_old)
test_fail(lambda: atomic_write_bytes(_u / "g.bin", b"x"), contains=f"{_u / 'g.bin'}: could not write ({_u} is a file, not a folder)")
test_eq(sorted(p.name for p in _u.parent.iterdir()), ["f.bin"])          # nothing half-written
_env = os.environ.get("DERMA_JEPA_CACHE")
os.environ["DERMA_JEPA_CACHE"] = str(_u)                                  # a cache "folder" that is a file
try:
    test_fail(lambda: cache_dir("audit"), contains=f"cache folder {_u / 'audit'} (DERMA_JEPA_CACHE): cannot create it ({_u} is a file")
    test_fail(lambda: cache_dir(), contains=f"cache folder {_u} (DERMA_JEPA_CACHE): cannot create it ({_u} is a file")
finally:
    if _env is None: del os.environ["DERMA_JEPA_CACHE"]
    else: os.environ["DERMA_JEPA_CACHE"] = _env

# %% [markdown]
# ## Column aliases
#
# Only four columns matter: the image id, the lesion id (the leakage unit), the diagnosis and
# the body site. A patient id is used when present (HAM10000 has none). The alias table is data:
# extending it is a one-line change.

# %%
#| export
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "image_id": ("image_id", "isic_id", "image", "image_name", "imageid"),
    "lesion_id": ("lesion_id", "lesion", "lesionid", "lesion_uid"),
    "dx": ("dx", "diagnosis", "diagnosis_1", "label"),
    "site": ("localization", "anatom_site_general", "anatom_site_general_challenge", "site",
             "anatomical_site", "location"),
    "patient_id": ("patient_id", "patient", "patientid", "subject_id", "participant_id"),
}
REQUIRED_COLUMNS = ("image_id", "lesion_id", "dx", "site")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
METADATA_NAMES = ("HAM10000_metadata.csv", "metadata.csv")
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "images")


def resolve_columns(columns, source="metadata") -> dict[str, str]:
    "Map each canonical column to the CSV column that holds it (case-insensitive alias match); refuse ambiguity."
    found = {}
    for canon, aliases in COLUMN_ALIASES.items():
        hits = [c for c in columns if str(c).strip().lower() in aliases]
        if len(hits) > 1:
            raise DataError(f"{source}: columns {', '.join(repr(str(h)) for h in hits)} all name the field {canon!r}; "
                            f"keep one of them")
        if hits: found[canon] = hits[0]
    missing = [c for c in REQUIRED_COLUMNS if c not in found]
    if missing:
        c = missing[0]
        raise DataError(f"{source}: required column {c!r} not found (accepted names: "
                        f"{', '.join(COLUMN_ALIASES[c])}; columns present: {', '.join(map(str, columns))})")
    return found


# %%
test_eq(resolve_columns(["Lesion_ID", "isic_id", "Diagnosis", "anatom_site_general"]),
        {"image_id": "isic_id", "lesion_id": "Lesion_ID", "dx": "Diagnosis", "site": "anatom_site_general"})
test_fail(lambda: resolve_columns(["image_id", "lesion_id", "dx"], "m.csv"), contains="'site'")
test_fail(lambda: resolve_columns(["image_id", "lesion_id", "dx", "DX", "site"], "m.csv"),
          contains="m.csv: columns 'dx', 'DX' all name the field 'dx'")
test_fail(lambda: resolve_columns(["image_id", "lesion_id", "dx", "diagnosis", "site"]), contains="'dx', 'diagnosis'")


# %% [markdown]
# ## Reading the metadata
#
# `read_metadata` returns the canonical columns as strings. Empty dx and site get the release's
# fallbacks `unknown_diagnosis` and `unknown_site` (HAM10000's literal site `unknown` stays as it
# is). An empty **lesion id** is different: the lesion is the leakage unit, and the release's
# fallback `missing_lesion::<image_id>` makes each such image a lesion of its own, so two images
# of one real lesion can become a "changing" pair or sit in two splits. `missing_lesion="error"`
# (what the `symmetric` protocol uses unless told otherwise) stops with the rows named;
# `"fallback"` is the release's rule (the `reference` protocol, or an explicit opt-in), and the
# rows it touched are kept in `attrs["lesion_fallback_rows"]` for the audit to count.
#
# **Diagnoses and sites are labels, compared as such**: case and runs of whitespace are folded
# (`NV `, `nv` and `Nv` are one diagnosis; pairs are matched on them). A diagnosis outside
# HAM10000's seven (`DX_VOCABULARY`) is kept, but listed in one warning and in
# `attrs["dx_outside_vocabulary"]` (the audit records it), since a typo there silently makes a
# class of its own. **A lesion has one diagnosis**: a lesion id whose images disagree would give a
# "stable" re-photograph pair that goes from `nv` to `mel`, so it is an error naming the lesion and
# its rows; `dx_conflict="majority"` opts in to each such lesion's majority diagnosis (a tie is
# still an error) and the lesions it changed are kept in `attrs["dx_conflicts"]` for the audit.
# An explicit lesion id may not start with `missing_lesion::`, the fallback's prefix: it could
# collide with a synthetic id and merge two lesions.
#
# The file must be UTF-8 (a byte-order mark is allowed): a Latin-1 or damaged byte is an error
# naming the line and the byte, never a guess at an encoding. The split's *group* is the patient
# when one is known, otherwise the lesion, so every HAM10000 group is `lesion::<lesion_id>`. An
# empty CSV or a duplicated image id stops here: the release aborts its manifest build on
# duplicate ids, and so do we.

# %%
#| export
def _clean(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip().fillna("").astype(str)


MISSING_LESION = ("error", "fallback")


def read_text_utf8(path) -> str:
    "A text file's contents; a byte that is not UTF-8 is an error naming the file, line, column and byte."
    data = Path(path).read_bytes()
    try: return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}: line {line}, column {col}: byte 0x{data[e.start]:02x} is not UTF-8 "
                        f"(save the file as UTF-8)") from None


DX_VOCABULARY = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")       # HAM10000's seven diagnoses
DX_CONFLICT = ("error", "majority")
FALLBACK_PREFIX = "missing_lesion::"


def _label(s: pd.Series) -> pd.Series:
    "A label as it is compared: lower case, inner whitespace runs folded to one space."
    return s.str.lower().str.split().str.join(" ")


def resolve_dx_conflicts(df: pd.DataFrame, source, dx_conflict: str = "error") -> list[dict]:
    """Lesions whose rows disagree on the diagnosis: an error naming the first (with its rows), or, under
    `dx_conflict='majority'`, each set to its majority diagnosis in place; returns what was changed."""
    if dx_conflict not in DX_CONFLICT: raise DataError(f"dx_conflict={dx_conflict!r}: choose one of {', '.join(DX_CONFLICT)}")
    multi = df[df.groupby("lesion_id").dx.transform("nunique").gt(1)]
    out = []
    for lid, g in multi.groupby("lesion_id", sort=False):
        counts = g.dx.value_counts()
        top = sorted(counts.index[counts.eq(counts.max())])
        out.append({"lesion_id": lid, "rows": {int(i) + 2: dx for i, dx in g.dx.items()}, "majority": top[0] if len(top) == 1 else None})
    for c in out:
        seen = ", ".join(f"row {r} {d!r}" for r, d in list(c["rows"].items())[:6])
        if dx_conflict == "error":
            raise DataError(f"{source}: lesion {c['lesion_id']!r} has images with different diagnoses ({seen}); {len(out)} such "
                            f"lesion(s) in all. A lesion has one diagnosis: correct the rows, or opt in to each lesion's "
                            f"majority diagnosis (dx_conflict='majority')")
        if c["majority"] is None:
            raise DataError(f"{source}: lesion {c['lesion_id']!r} has images with different diagnoses and no majority ({seen}): "
                            f"correct the rows")
        df.loc[df.lesion_id.eq(c["lesion_id"]), "dx"] = c["majority"]
    return out


def read_metadata(csv_path, missing_lesion: str = "fallback", dx_conflict: str = "error") -> pd.DataFrame:
    "Read a HAM10000-style metadata CSV into canonical columns: image_id, lesion_id, patient_id, dx, site, group."
    csv_path = Path(csv_path)
    if missing_lesion not in MISSING_LESION:
        raise DataError(f"missing_lesion={missing_lesion!r}: choose one of {', '.join(MISSING_LESION)}")
    if dx_conflict not in DX_CONFLICT: raise DataError(f"dx_conflict={dx_conflict!r}: choose one of {', '.join(DX_CONFLICT)}")
    if not csv_path.is_file(): raise DataError(f"{csv_path}: metadata CSV not found")
    text = read_text_utf8(csv_path)
    try: raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError: raise DataError(f"{csv_path}: metadata CSV is empty") from None
    except pd.errors.ParserError as e: raise DataError(f"{csv_path}: not a readable CSV ({str(e).strip().splitlines()[0]})") from None
    cols = resolve_columns(raw.columns, str(csv_path))
    if raw.empty: raise DataError(f"{csv_path}: metadata CSV has a header but no rows")
    df = pd.DataFrame({c: _clean(raw[src]) for c, src in cols.items()})
    if "patient_id" not in df: df["patient_id"] = ""
    blank = df.image_id == ""
    if blank.any():
        raise DataError(f"{csv_path}: row {int(np.flatnonzero(blank)[0]) + 2} has an empty image id")
    dup = df.image_id[df.image_id.duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]
        rows = [int(i) + 2 for i in np.flatnonzero(df.image_id == first)]
        raise DataError(f"{csv_path}: duplicate image id {first!r} on rows {rows} "
                        f"({dup.nunique()} duplicated ids in all)")
    reserved = np.flatnonzero(df.lesion_id.str.startswith(FALLBACK_PREFIX).to_numpy())
    if len(reserved):
        raise DataError(f"{csv_path}: row {reserved[0] + 2}: lesion id {df.lesion_id.iloc[reserved[0]]!r} starts with "
                        f"{FALLBACK_PREFIX!r}, the prefix of the fallback's synthetic ids: rename it")
    rows = [int(i) + 2 for i in np.flatnonzero((df.lesion_id == "").to_numpy())]
    if len(rows) and missing_lesion == "error":
        raise DataError(f"{csv_path}: {len(rows)} row(s) have no lesion id (rows {_row_list(rows)}); a lesion id is "
                        f"the leakage unit. Fill them in, or opt in to the release's one-image-lesion fallback "
                        f"(missing_lesion='fallback')")
    df["lesion_id"] = df.lesion_id.where(df.lesion_id != "", FALLBACK_PREFIX + df.image_id)
    df["dx"] = _label(df.dx).where(df.dx != "", "unknown_diagnosis")
    df["site"] = _label(df.site).where(df.site != "", "unknown_site")
    conflicts = resolve_dx_conflicts(df, csv_path, dx_conflict)
    outside = df.dx[~df.dx.isin(DX_VOCABULARY)].value_counts().sort_index()
    if len(outside):
        warnings.warn(f"{csv_path}: {int(outside.sum())} row(s) with a diagnosis outside HAM10000's seven "
                      f"({', '.join(DX_VOCABULARY)}): " + ", ".join(f"{v!r} x{n}" for v, n in outside.items()), stacklevel=2)
    df["group"] = np.where(df.patient_id != "", "patient::" + df.patient_id, "lesion::" + df.lesion_id)
    out = df[["image_id", "lesion_id", "patient_id", "dx", "site", "group"]].copy()
    out.attrs.update(lesion_fallback_rows=rows, dx_conflicts=conflicts, dx_outside_vocabulary={k: int(v) for k, v in outside.items()})
    return out


def _row_list(rows: list[int], n: int = 10) -> str:
    return ", ".join(map(str, rows[:n])) + (f" and {len(rows) - n} more" if len(rows) > n else "")


# %%
_tmp = Path(tempfile.mkdtemp())
(_tmp / "m.csv").write_text("isic_id,LESION_ID,diagnosis,localization\nA,L1,nv,back\nB,,,\n")
with warnings.catch_warnings(record=True) as _w:                 # the blank diagnosis's fallback is outside the seven
    warnings.simplefilter("always")
    _m = read_metadata(_tmp / "m.csv")
assert len(_w) == 1 and "'unknown_diagnosis' x1" in str(_w[0].message)
test_eq(list(_m.lesion_id), ["L1", "missing_lesion::B"])
test_eq(_m.attrs["lesion_fallback_rows"], [3])
test_fail(lambda: read_metadata(_tmp / "m.csv", missing_lesion="error"), contains="1 row(s) have no lesion id (rows 3)")
(_tmp / "latin1.csv").write_bytes("image_id,lesion_id,dx,localization\nA,L1,nv,back\nB,L2,nv,\xe9paule\n".encode("latin-1"))
test_fail(lambda: read_metadata(_tmp / "latin1.csv"), contains="latin1.csv: line 3, column 9: byte 0xe9 is not UTF-8")
(_tmp / "bom.csv").write_bytes("\ufeffimage_id,lesion_id,dx,localization\nA,L1,nv,back\n".encode("utf-8"))
test_eq(list(read_metadata(_tmp / "bom.csv").image_id), ["A"])
test_eq(list(_m.dx), ["nv", "unknown_diagnosis"])
test_eq(list(_m.group), ["lesion::L1", "lesion::missing_lesion::B"])
(_tmp / "dup.csv").write_text("image_id,lesion_id,dx,localization\nA,L1,nv,back\nA,L2,nv,back\n")
test_fail(lambda: read_metadata(_tmp / "dup.csv"), contains="duplicate image id 'A' on rows [2, 3]")
(_tmp / "empty.csv").write_text("")
test_fail(lambda: read_metadata(_tmp / "empty.csv"), contains="empty")

# %% [markdown]
# Labels, the vocabulary, one diagnosis per lesion and the reserved prefix, each on a hand-made CSV:

# %%
(_tmp / "case.csv").write_text("image_id,lesion_id,dx,localization\nA,L1, NV ,Lower  Extremity\nB,L1,nv,lower extremity\n"
                               "C,L2,Melanoma,back\n")
with warnings.catch_warnings(record=True) as _w:
    warnings.simplefilter("always")
    _m = read_metadata(_tmp / "case.csv")
test_eq(list(_m.dx), ["nv", "nv", "melanoma"]); test_eq(list(_m.site), ["lower extremity"] * 2 + ["back"])
test_eq(_m.attrs["dx_outside_vocabulary"], {"melanoma": 1})
test_eq(len(_w), 1); assert "outside HAM10000's seven" in str(_w[0].message) and "'melanoma' x1" in str(_w[0].message)
(_tmp / "conflict.csv").write_text("image_id,lesion_id,dx,localization\nA,L1,nv,back\nB,L1,mel,back\nC,L1,nv,back\n"
                                   "D,L2,bcc,face\n")
test_fail(lambda: read_metadata(_tmp / "conflict.csv"),
          contains="lesion 'L1' has images with different diagnoses (row 2 'nv', row 3 'mel', row 4 'nv'); 1 such lesion(s)")
_m = read_metadata(_tmp / "conflict.csv", dx_conflict="majority")
test_eq(list(_m.dx), ["nv", "nv", "nv", "bcc"])
test_eq(_m.attrs["dx_conflicts"], [{"lesion_id": "L1", "rows": {2: "nv", 3: "mel", 4: "nv"}, "majority": "nv"}])
(_tmp / "tie.csv").write_text("image_id,lesion_id,dx,localization\nA,L1,nv,back\nB,L1,mel,back\n")
test_fail(lambda: read_metadata(_tmp / "tie.csv", dx_conflict="majority"), contains="different diagnoses and no majority")
test_fail(lambda: read_metadata(_tmp / "tie.csv", dx_conflict="vote"), contains="dx_conflict='vote': choose one of error, majority")
(_tmp / "reserved.csv").write_text("image_id,lesion_id,dx,localization\nA,missing_lesion::B,nv,back\nB,,nv,back\n")
test_fail(lambda: read_metadata(_tmp / "reserved.csv"), contains="row 2: lesion id 'missing_lesion::B' starts with 'missing_lesion::'")


# %% [markdown]
# ## Finding the images
#
# A dataset folder holds the CSV and one or more image roots. Each root is listed once (not
# probed per id: on a network mount a `stat` per candidate is what made the release's manifest
# phase slow); ids are then resolved root by root, extension by extension, in the release's order.

# %%
#| export
@dataclass(frozen=True)
class Dataset:
    "Where a HAM10000-style dataset lives: its metadata CSV and its image roots, in search order."
    metadata_csv: Path
    image_roots: tuple[Path, ...]

    @classmethod
    def from_dir(cls, root) -> "Dataset":
        "Find the metadata CSV and the image roots of a dataset folder."
        root = Path(root).expanduser()
        if not root.is_dir(): raise DataError(f"{root}: dataset folder not found")
        csv = next((root / n for n in METADATA_NAMES if (root / n).is_file()), None)
        if csv is None:
            csvs = sorted(root.glob("*.csv"))
            if len(csvs) != 1:
                raise DataError(f"{root}: expected {METADATA_NAMES[0]} or exactly one *.csv, found "
                                f"{[c.name for c in csvs]}")
            csv = csvs[0]
        roots = tuple(root / n for n in IMAGE_FOLDERS if (root / n).is_dir()) or (root,)
        return cls(csv.resolve(), tuple(r.resolve() for r in roots))


def index_images(roots) -> dict[str, Path]:
    "Map image id -> file, searching `roots` in order and, within a root, jpg before jpeg before png."
    found: dict[str, Path] = {}
    for root in roots:
        by_ext: dict[str, dict[str, Path]] = {e: {} for e in IMAGE_EXTENSIONS}
        with os.scandir(root) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in by_ext and e.is_file(): by_ext[ext.lower()].setdefault(stem, Path(e.path))
        for ext in IMAGE_EXTENSIONS:
            for stem, p in by_ext[ext].items(): found.setdefault(stem, p)
    return found


# %% [markdown]
# ## Reading an image: every mode to 8-bit RGB
#
# Everything downstream works on 8-bit RGB. Pillow's `convert("RGB")` is right for the 8-bit modes
# (`1`, `L`, `LA`, `P`, `RGBA`, ...) but *clips* wider ones: a 16-bit greyscale PNG (`I;16`) has
# values up to 65,535, and clipping them at 255 makes a dermoscopy image pure white. So the wide
# modes are scaled, never clipped:
#
# | mode | read as | to 8 bits |
# |---|---|---|
# | `I;16`, `I;16L`, `I;16B`, `I;16N` | 16-bit grey | round(v / 257) |
# | `I` | 32-bit integer grey, which is how 16-bit files decode | round(v / 257) when 0 ≤ v ≤ 65,535, else an error naming the file and the range |
# | `F` | float grey in [0, 1] | round(255 v), an error outside [0, 1] |
# | 16-bit RGB(A) PNG | Pillow keeps the high byte | v >> 8 (at most one level from round(v / 257)) |
# | `CMYK` | no ICC profile applied | Pillow's naive conversion (255 − C)(255 − K)/255 |
# | `RGBA`, `LA`, `PA` | colour + alpha | alpha dropped, the colour kept (as the release's `convert("RGB")`) |
#
# Multi-frame files give their first frame. A mode this table does not cover goes through
# Pillow's `convert("RGB")` and, if Pillow cannot, is an error naming the file and the mode.
#
# **EXIF orientation.** A camera JPEG may be stored sideways with an EXIF tag saying how to turn
# it. The release is inconsistent (PROTOCOL A1): its backbone path applies the tag
# (`ImageOps.exif_transpose`) to the original files, its stable-variant renderer and its pixel
# baselines do not. The `reference` protocol keeps exactly that: an untouched original side
# (recipe family `none`) is turned before the backbone sees it; rendered sides and pixel
# baselines never are. The `symmetric` protocol applies the tag everywhere, so a side's pixels do
# not depend on which path reads it. The audit records every file's tag (`orientation`, 1 = as
# stored), so a cache key changes only for files the tag actually turns. HAM10000's JPEGs carry
# no orientation tag: on it the two rules give the same pixels.

# %%
#| export
def to_rgb8(img: Image.Image, source="image") -> Image.Image:
    "An 8-bit RGB copy of any image Pillow reads: wide modes scaled, never clipped (see the table above)."
    from PIL import ImageSequence
    if getattr(img, "n_frames", 1) > 1: img = next(ImageSequence.Iterator(img)).copy()
    mode = img.mode
    if mode == "RGB": return img.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1 or np.isnan(a).any()):
                raise DataError(f"{source}: float image (mode F) with values outside [0, 1] "
                                f"({np.nanmin(a):g} to {np.nanmax(a):g}); cannot tell its scale")
            g = np.rint(a * 255)
        else:
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise DataError(f"{source}: integer image (mode {mode}) with values {a.min():g} to {a.max():g}, "
                                f"outside the 16-bit range; cannot tell its scale")
            g = np.rint(a / 257)
        return Image.fromarray(np.repeat(g.astype(np.uint8)[..., None], 3, axis=2))
    try: return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise DataError(f"{source}: cannot convert image mode {mode} to RGB ({e})") from None


def exif_orientation(img: Image.Image) -> int:
    "The EXIF orientation tag (1 = as stored, also when there is none)."
    try: return int(img.getexif().get(0x0112, 1) or 1)
    except Exception: return 1      # a damaged EXIF block is no orientation


def open_rgb(path, exif: bool = False) -> Image.Image:
    "Open an image file as 8-bit RGB; `exif=True` first turns it as its EXIF orientation tag says."
    from PIL import ImageOps
    try:
        with Image.open(path) as im:
            if exif: im = ImageOps.exif_transpose(im)
            return to_rgb8(im, path)
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})".splitlines()[0]) from None


# %% [markdown]
# Each mode against an independent conversion: the 16-bit arrays are made here, so the expected
# 8-bit values are computed from the numbers themselves, not by Pillow.

# %%
_g16 = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], np.uint16)
_want = np.rint(_g16 / 257).astype(np.uint8)
test_eq(np.asarray(to_rgb8(Image.fromarray(_g16)))[..., 0], _want)                        # I;16
test_eq(np.asarray(to_rgb8(Image.frombytes("I;16B", (4, 2), _g16.astype(">u2").tobytes())))[..., 1], _want)   # I;16B
test_eq(np.asarray(to_rgb8(Image.fromarray(_g16.astype(np.int32))))[..., 2], _want)        # I
test_eq(np.asarray(to_rgb8(Image.fromarray((_g16 / 65535).astype(np.float32))))[..., 0],  # F
        np.rint((_g16 / 65535).astype(np.float32).astype(np.float64) * 255).astype(np.uint8))
test_fail(lambda: to_rgb8(Image.fromarray(np.array([[-5, 70000]], np.int32)), "x.png"), contains="x.png: integer image")
test_fail(lambda: to_rgb8(Image.fromarray(np.array([[0.0, 3.0]], np.float32)), "y.tif"), contains="outside [0, 1]")
_cmyk = Image.new("CMYK", (3, 1)); [_cmyk.putpixel((i, 0), v) for i, v in enumerate([(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0)])]
test_eq(np.asarray(to_rgb8(_cmyk))[0].tolist(), [[0, 255, 255], [0, 0, 0], [255, 255, 255]])
test_eq(np.asarray(to_rgb8(Image.new("RGBA", (1, 1), (10, 20, 30, 0))))[0, 0].tolist(), [10, 20, 30])
test_eq(np.asarray(to_rgb8(Image.new("1", (1, 1), 1)))[0, 0].tolist(), [255, 255, 255])

# %% [markdown]
# The EXIF rule: a file stored sideways with orientation 6 ("turn 90° clockwise") comes back as
# stored unless `exif=True`.

# %%
_e = Path(tempfile.mkdtemp()) / "side.jpg"
_ex = Image.Exif(); _ex[0x0112] = 6
Image.new("RGB", (40, 20), (200, 10, 10)).save(_e, exif=_ex)
with Image.open(_e) as _im: test_eq(exif_orientation(_im), 6)
test_eq((open_rgb(_e).size, open_rgb(_e, exif=True).size), ((40, 20), (20, 40)))
_z = _e.with_name("zero.jpg"); _z.write_bytes(b"")
test_fail(lambda: open_rgb(_z), contains="zero.jpg: cannot read image")

# %% [markdown]
# ## The audit
#
# For every row: status (`found`, `missing`, `unreadable`), width and height, EXIF orientation,
# file size and the SHA-256 of the bytes. An image counts as readable only if PIL decodes it fully (a truncated
# JPEG has a valid header). Files are hashed and decoded by a thread pool (hashlib and PIL's
# decoder release the GIL), and the per-file result is cached under (path, size, mtime): a second
# audit of 10,015 files reads one parquet file instead of 10,015 images.

# %%
#| export
AUDIT_COLUMNS = ["status", "width", "height", "size", "sha256", "error", "orientation"]
AUDIT_CACHE = "files-v2.parquet"      # v2: + orientation


def inspect_image(path) -> dict:
    "Status, size and SHA-256 of one image file; `unreadable` with the reason when PIL can't decode it."
    path = Path(path)
    try: data = path.read_bytes()
    except FileNotFoundError: return dict(status="missing", width=0, height=0, size=0, sha256="", error="no such file", orientation=1)
    out = dict(status="found", width=0, height=0, size=len(data), sha256=hashlib.sha256(data).hexdigest(), error="",
               orientation=1)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            out.update(width=im.width, height=im.height, orientation=exif_orientation(im))
    except Exception as e:  # PIL raises several types for corrupt data
        out.update(status="unreadable", error=f"{type(e).__name__}: {e}".splitlines()[0])
    return out


def _file_keys(paths) -> list[tuple[str, int, int]]:
    keys = []
    for p in paths:
        try: st = os.stat(p); keys.append((str(p), st.st_size, st.st_mtime_ns))
        except (FileNotFoundError, TypeError): keys.append((str(p), -1, -1))     # p is None: not in any root
    return keys


class CacheWarning(UserWarning):
    "A cache file could not be used: it was moved aside and its entries are recomputed."


def quarantine(path, reason: str) -> Path | None:
    """Move a damaged cache file aside (`<name>.corrupt`, numbered if taken) and warn, naming it; its entries
    are then recomputed. Returns where it went (None when another process moved it first)."""
    import warnings
    path = Path(path)
    dest = path.with_name(path.name + ".corrupt")
    k = 1
    while dest.exists(): dest, k = path.with_name(f"{path.name}.corrupt-{k}"), k + 1
    try: os.replace(path, dest)
    except FileNotFoundError: return None
    warnings.warn(f"cache file {path} is unusable ({reason}); moved aside to {dest.name}, its entries will be recomputed",
                  CacheWarning, stacklevel=2)
    return dest


def read_cached_table(path, columns) -> pd.DataFrame | None:
    "A cache parquet with at least `columns`, or None (missing; or damaged/foreign, then quarantined)."
    path = Path(path)
    if not path.exists(): return None
    try: df = pd.read_parquet(path)
    except Exception as e:       # pyarrow raises several types for a damaged file
        quarantine(path, f"{type(e).__name__}: {e}".splitlines()[0][:200]); return None
    if not set(columns) <= set(df.columns):
        quarantine(path, f"columns {sorted(df.columns)[:8]} are not this cache's"); return None
    return df


def audit_files(paths, workers: int | None = None, cache: Path | None = None, progress=False) -> pd.DataFrame:
    "Inspect every file (in parallel), reusing cached results for files whose size and mtime are unchanged."
    keys = pd.DataFrame(_file_keys([None if p is None else str(p) for p in paths]), columns=["path", "size", "mtime_ns"])
    cache = Path(cache) if cache else cache_dir("audit") / AUDIT_CACHE
    old = read_cached_table(cache, ["path", "mtime_ns"] + AUDIT_COLUMNS)
    if old is None: old = pd.DataFrame(columns=["path", "mtime_ns"] + AUDIT_COLUMNS)
    old = old.drop_duplicates("path").astype({"size": "int64", "mtime_ns": "int64"})
    out = keys.merge(old, on=["path", "size", "mtime_ns"], how="left")      # hits: size and mtime unchanged
    gone = keys["size"] < 0
    out.loc[gone, AUDIT_COLUMNS] = ["missing", 0, 0, 0, "", "no such file", 1]
    todo = np.flatnonzero(out.status.isna().to_numpy())
    if len(todo):
        from tqdm import tqdm
        with ThreadPoolExecutor(workers or min(8, 2 * (os.cpu_count() or 1))) as ex:
            it = ex.map(inspect_image, out.path.iloc[todo], chunksize=64)
            new = pd.DataFrame(list(tqdm(it, total=len(todo), desc="audit", disable=not progress)), columns=AUDIT_COLUMNS)
        new.insert(0, "path", out.path.iloc[todo].to_numpy()); new.insert(1, "mtime_ns", out.mtime_ns.iloc[todo].to_numpy())
        out.loc[out.index[todo], AUDIT_COLUMNS] = new[AUDIT_COLUMNS].to_numpy()
        keep = new[new.status != "missing"]
        merged = pd.concat([old[~old.path.isin(keep.path)], keep]) if len(old) else keep
        buf = io.BytesIO(); merged[["path", "mtime_ns"] + AUDIT_COLUMNS].to_parquet(buf, index=False)
        atomic_write_bytes(cache, buf.getvalue())
    out["size"] = keys["size"].clip(lower=0)
    return out[AUDIT_COLUMNS].astype({"width": int, "height": int, "size": int, "status": str, "sha256": str, "error": str,
                                      "orientation": int})


# %% [markdown]
# `load_records` ties it together: metadata + index + audit = one row per image, with its path
# and checksum. `summarise_audit` condenses it into the numbers the audit reports.

# %%
#| export
def load_records(data, progress=False, cache: Path | None = None, missing_lesion: str = "fallback",
                 dx_conflict: str = "error") -> pd.DataFrame:
    "Read a dataset folder (or `Dataset`) into audited records, one row per metadata row."
    ds = data if isinstance(data, Dataset) else Dataset.from_dir(data)
    meta = read_metadata(ds.metadata_csv, missing_lesion, dx_conflict)
    index = index_images(ds.image_roots)
    paths = [index.get(i) for i in meta.image_id]
    audit = audit_files(paths, cache=cache, progress=progress)
    rec = pd.concat([meta.reset_index(drop=True), audit], axis=1)
    rec.insert(6, "path", [str(p) if p else "" for p in paths])
    rec.attrs.update(metadata_csv=str(ds.metadata_csv), **meta.attrs)
    return rec


def summarise_audit(records: pd.DataFrame) -> dict:
    "The audit's headline numbers: coverage, failures, duplicates, dx/site histograms, multi-image lesions."
    ok = records[records.status == "found"]
    dup_sums = ok[ok.sha256.duplicated(keep=False)].groupby("sha256").image_id.apply(sorted)
    per_lesion = records.groupby("lesion_id").size()
    fallback = records.attrs.get("lesion_fallback_rows", [])
    return {
        "metadata_csv": records.attrs.get("metadata_csv", ""),
        "n_rows": int(len(records)),
        "n_images": int(len(ok)),
        "n_lesions": int(records.lesion_id.nunique()),
        "missing_lesion_ids": {"count": len(fallback), "rows": fallback[:50],
                               "rule": "missing_lesion::<image_id> (the release's one-image-lesion fallback)"},
        "dx_conflicts": {"count": len(records.attrs.get("dx_conflicts", [])),
                         "lesions": [{**c, "rows": {str(k): v for k, v in c["rows"].items()}}
                                     for c in records.attrs.get("dx_conflicts", [])[:50]],
                         "rule": "dx_conflict='majority': each listed lesion set to its majority diagnosis"},
        "dx_outside_vocabulary": {"values": records.attrs.get("dx_outside_vocabulary", {}), "vocabulary": list(DX_VOCABULARY)},
        "missing": sorted(records.image_id[records.status == "missing"]),
        "unreadable": sorted(records.image_id[records.status == "unreadable"]),
        "duplicate_ids": int(records.image_id.duplicated().sum()),
        "duplicate_checksums": [list(v) for v in dup_sums.sort_values().tolist()],
        "image_sizes": {f"{w}x{h}": int(n) for (w, h), n in ok.groupby(["width", "height"]).size().items()},
        "dx_counts": {k: int(v) for k, v in records.dx.value_counts().sort_index().items()},
        "site_counts": {k: int(v) for k, v in records.site.value_counts().sort_index().items()},
        "lesions_multi_image": int((per_lesion >= 2).sum()),
        "images_in_multi_image_lesions": int(per_lesion[per_lesion >= 2].sum()),
        "max_images_per_lesion": int(per_lesion.max()),
    }


def require_readable(records: pd.DataFrame) -> pd.DataFrame:
    "Stop on the first missing or unreadable image, naming it; otherwise return the records."
    bad = records[records.status != "found"]
    if len(bad):
        r = bad.iloc[0]
        where = r.path or f"any image root as {r.image_id}.jpg/.jpeg/.png"
        raise DataError(f"image {r.image_id!r} (metadata row {int(bad.index[0]) + 2}) is {r.status}: "
                        f"{where}{' (' + r.error + ')' if r.error and r.status != 'missing' else ''}"
                        f"; {len(bad)} bad image(s) in all")
    return records


# %% [markdown]
# ### A small dataset with every kind of defect
#
# Three good images, one missing, one zero-byte and one truncated JPEG, plus two ids with
# identical bytes. The audit must see each, and `require_readable` must name the first culprit.

# %%
_d = Path(tempfile.mkdtemp())
(_d / "images").mkdir()
_rng = np.random.default_rng(0)
for _i in range(3):
    Image.fromarray(_rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)).save(_d / "images" / f"I{_i}.jpg")
(_d / "images" / "I3.png").write_bytes((_d / "images" / "I0.jpg").read_bytes())   # same bytes as I0
(_d / "images" / "Z.jpg").write_bytes(b"")
(_d / "images" / "T.jpg").write_bytes((_d / "images" / "I1.jpg").read_bytes()[:200])
(_d / "HAM10000_metadata.csv").write_text(
    "lesion_id,image_id,dx,localization\n" + "".join(f"L{i},{i},nv,back\n" for i in ["I0", "I1", "I2", "I3", "M", "Z", "T"]))
_cache = _d / "audit.parquet"
_r = load_records(_d, cache=_cache)
test_eq(list(_r.status), ["found"] * 4 + ["missing", "unreadable", "unreadable"])
test_eq(set(_r.orientation), {1})
test_eq((_r.width[0], _r.height[0]), (20, 15))
_s = summarise_audit(_r)
test_eq(_s["duplicate_checksums"], [["I0", "I3"]])
test_eq((_s["n_rows"], _s["n_images"], _s["missing"], _s["unreadable"]), (7, 4, ["M"], ["T", "Z"]))
test_fail(lambda: require_readable(_r), contains="image 'M' (metadata row 6) is missing")
test_fail(lambda: require_readable(_r[_r.image_id != "M"]), contains="Z.jpg")

# %% [markdown]
# The cache is keyed by size and mtime: a second audit reads nothing but the cache, and a file
# that changes is inspected again.

# %%
import time
_r2 = load_records(_d, cache=_cache)
test_eq(_r2.drop(columns="path"), _r.drop(columns="path"))
_p = _d / "images" / "I2.jpg"
Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(_p)
os.utime(_p, ns=(time.time_ns(), time.time_ns() + 10**9))
test_eq(load_records(_d, cache=_cache).loc[2, ["width", "height"]].tolist(), [10, 10])

# %% [markdown]
# A damaged cache file is moved aside with a warning naming it, and the audit is recomputed.

# %%
import warnings
_cache.write_bytes(_cache.read_bytes()[:100])
with warnings.catch_warnings(record=True) as _w:
    warnings.simplefilter("always")
    _r3 = load_records(_d, cache=_cache)
test_eq(_r3.drop(columns="path"), load_records(_d, cache=_cache).drop(columns="path"))
assert any(str(_cache) in str(w.message) and issubclass(w.category, CacheWarning) for w in _w), _w
assert _cache.with_name("audit.parquet.corrupt").exists()

# %% [markdown]
# ## The real copy
#
# When `HAM10000_DIR` points at a HAM10000 folder, audit it. On the 200×150 copy of the full
# release this must find 10,015 images of 7,470 lesions, 1,956 of them photographed 2–6 times,
# and the duplicate checksums the release also reports.

# %%
import json
_ham = os.environ.get("HAM10000_DIR")
if _ham:
    ham_records = load_records(_ham)
    ham_audit = summarise_audit(ham_records)
    _shown = {k: v for k, v in ham_audit.items() if k not in ("site_counts",)}
    _shown["metadata_csv"] = "$HAM10000_DIR/" + os.path.relpath(ham_audit["metadata_csv"], _ham)   # no machine paths in outputs
    print(json.dumps(_shown, indent=1))
    assert ham_audit["n_rows"] == 10_015 and ham_audit["n_lesions"] == 7_470
    assert ham_audit["lesions_multi_image"] == 1_956 and ham_audit["images_in_multi_image_lesions"] == 4_501
    test_eq(ham_audit["dx_counts"], {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142})
else:
    print("HAM10000_DIR is not set: the real-data audit is skipped")

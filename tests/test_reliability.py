"""Reliability battery (issue 12): nothing lost, no code executed, no silent wrong result.

Every case asserts one of two outcomes: a one-line error naming the culprit, or the correct
result. Around every case the test folder (data copy, notes, files beside the run) is hashed
before and after: nothing outside the run directory may change, no run directory may be left by
a refused run, and no temporary or set-aside folder may be left by any run."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import ROOT
from derma_jepa.data import CacheWarning, DataError, load_records, open_rgb
from derma_jepa.experiment import Config, ConfigError, run
from derma_jepa.fixture import fixture_dir
from derma_jepa.safety import MARKER, dir_lock

PY = sys.executable


# ----------------------------------------------------------------------------------------------
# helpers

def snapshot(root: Path, skip: Path | None = None) -> dict:
    "Every path under root (but `skip`) with its content hash (or 'dir'), and its mode."
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents): continue
        kind = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "other"
        out[str(p.relative_to(root))] = (kind, p.lstat().st_mode)
    return out


def debris(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*") if re.search(r"\.(tmp|old)-", p.name) or p.name.startswith(".derma_jepa-probe")]


@pytest.fixture
def world(tmp_path):
    "A damageable copy of a small fixture dataset, a folder of notes and a plain file, all in tmp_path."
    shutil.copytree(fixture_dir(n_lesions=200, seed=1), tmp_path / "data")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "ideas.md").write_text("my notes: not the project's")
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    return tmp_path


def cfg(world: Path, **kw) -> Config:
    base = dict(data=str(world / "data"), pairs_per_split=10, stop_after="manifest", run_dir=str(world / "run"))
    return Config(**{**base, **kw})


def refused(world: Path, match: str, exc=(DataError, ConfigError), make=None, **kw) -> str:
    "Run (or `make()`), expect one error line containing `match`, and check nothing changed or was left."
    before = snapshot(world)
    with pytest.raises(exc) as e:
        (make or (lambda: run(cfg(world, **kw))))()
    msg = str(e.value)
    assert match in msg, msg
    assert "\n" not in msg, f"the error must be one line: {msg!r}"
    assert snapshot(world) == before, "files outside the run directory changed"
    assert not debris(world), debris(world)
    return msg


def succeeds(world: Path, **kw):
    "Run; check nothing outside the run directory changed and nothing was left beside it."
    rd = Path(kw.get("run_dir", world / "run"))
    before = snapshot(world, skip=rd)
    res = run(cfg(world, **kw))
    assert snapshot(world, skip=rd) == before, "files outside the run directory changed"
    assert not debris(world), debris(world)
    assert (res.run_dir / MARKER).exists()
    return res


def csv(world): return world / "data" / "HAM10000_metadata.csv"


def edit_csv(world, fn):
    df = pd.read_csv(csv(world), dtype=str, keep_default_na=False)
    fn(df).to_csv(csv(world), index=False)


# ----------------------------------------------------------------------------------------------
# 1. Run directories: only this project's run directories are ever replaced

def test_run_dir_is_a_folder_of_notes(world):
    refused(world, "non-empty folder this project did not write", run_dir=str(world / "notes"))


def test_run_dir_is_the_data_folder(world):
    refused(world, "is the data folder", run_dir=str(world / "data"))


def test_run_dir_inside_the_data_folder(world):
    refused(world, "is inside the data folder", run_dir=str(world / "data" / "images" / "run"))


def test_run_dir_is_a_parent_of_the_data_folder(world):
    refused(world, "contains the data folder", run_dir=str(world))


def test_run_dir_is_an_existing_file(world):
    refused(world, "is an existing file", run_dir=str(world / "results.csv"))


def test_run_dir_under_a_file(world):
    refused(world, "is a file, not a folder", run_dir=str(world / "results.csv" / "run"))


def test_run_dir_is_the_cache_or_inside_it(world):
    cache = Path(os.environ["DERMA_JEPA_CACHE"])
    refused(world, "is the cache folder", run_dir=str(cache))
    refused(world, "is inside the cache folder", run_dir=str(cache / "embeddings"))


def test_run_dir_is_a_symlink(world):
    (world / "link").symlink_to(world / "notes", target_is_directory=True)
    refused(world, "is a symbolic link", run_dir=str(world / "link"))


def test_run_dir_not_writable(world):
    if not Path("/sys").is_dir(): pytest.skip("no read-only /sys on this system")
    refused(world, "cannot write in /sys", run_dir="/sys/derma_jepa_run")


def test_run_dir_of_another_kind(world):
    (world / "paperlike").mkdir(); (world / "paperlike" / MARKER).write_text('{"kind": "paper", "format": 1}')
    (world / "paperlike" / "table.md").write_text("|a|")
    refused(world, "was written as a 'paper' folder", run_dir=str(world / "paperlike"))


def test_empty_folder_and_own_run_dir_are_replaced(world):
    (world / "run").mkdir()
    first = succeeds(world).run_dir
    files = {p.name: p.read_bytes() for p in first.iterdir() if p.name != "timings.json"}
    second = succeeds(world).run_dir
    assert {p.name: p.read_bytes() for p in second.iterdir() if p.name != "timings.json"} == files


def test_killed_writer_debris_is_cleared(world):
    for n in (".run.tmp-killed", ".run.old-killed"):
        (world / n).mkdir(); (world / n / MARKER).write_text('{"kind": "run", "format": 1}')
        (world / n / "half.parquet").write_bytes(b"half")
    (world / ".run.tmp-mine").mkdir(); (world / ".run.tmp-mine" / "keep.txt").write_text("not the project's")
    run(cfg(world))
    assert sorted(p.name for p in world.iterdir() if p.name.startswith(".")) == [".run.tmp-mine"]
    assert (world / ".run.tmp-mine" / "keep.txt").read_text() == "not the project's"


def test_stale_lock_of_a_killed_process_is_recovered(world):
    lock = dir_lock(world / "run").lock_file
    holder = subprocess.Popen([PY, "-c", f"from filelock import FileLock; import time; FileLock({lock!r}).acquire(); "
                               "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL); holder.wait()
    assert (succeeds(world).run_dir / "manifest.parquet").exists()


def test_concurrent_writers_are_serialised(world):
    code = ("import sys; from derma_jepa.experiment import Config, run; "
            f"run(Config(data={str(world / 'data')!r}, pairs_per_split=10, stop_after='manifest', run_dir={str(world / 'run')!r}))")
    procs = [subprocess.Popen([PY, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert not debris(world), debris(world)
    assert sorted(p.name for p in (world / "run").iterdir()) == sorted(
        [MARKER, "audit.json", "config.yaml", "environment.json", "manifest.parquet", "timings.json"])
    run(cfg(world))                                     # and a later write still works


def test_created_files_follow_the_umask(world):
    old = os.umask(0o027)
    try: rd = run(cfg(world)).run_dir
    finally: os.umask(old)
    assert oct(rd.stat().st_mode & 0o777) == "0o750"
    assert {oct(p.stat().st_mode & 0o777) for p in rd.iterdir()} == {"0o640"}


def papermill(world: Path, *args):
    pm = str(Path(PY).parent / "papermill")
    cmd = [pm, "--log-level", "WARNING", "-k", "python3", str(ROOT / "nbs" / "run.ipynb"), str(world.parent / "out.ipynb"),
           "-p", "data", str(world / "data"), "-p", "pairs_per_split", "10", "-p", "stop_after", "manifest", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_papermill_run_dir_pointed_at_notes_and_data(world):
    "The reported reproduction: -p run_dir at a folder of notes, then at the data folder itself."
    before = snapshot(world)
    for target, words in [(world / "notes", "is a non-empty folder this project did not write"), (world / "data", "is the data folder")]:
        p = papermill(world, "-p", "run_dir", str(target))
        assert p.returncode != 0
        assert f"DestinationError: run_dir {target} {words}" in p.stderr, p.stderr[-2000:]
    assert snapshot(world) == before and not debris(world)


# ----------------------------------------------------------------------------------------------
# 2. No unpickling, anywhere

def test_no_unpickling_in_the_package():
    pat = re.compile(r"weights_only=False|pickle\.load|allow_pickle=True")
    hits = [f"{p.name}:{i}" for p in (ROOT / "derma_jepa").glob("*.py") for i, l in enumerate(p.read_text().splitlines(), 1)
            if pat.search(l)]
    assert hits == []


class _Payload:
    "Unpickling this writes a marker file: the proof that code from the file ran."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (Path.write_text, (Path(self.path), "code from a checkpoint ran"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"config": {}, "encoder": {"w": torch.ones(1)}, "head": _Payload(marker)}, path)
    return path


@pytest.mark.parametrize("name", ["encoder.pt", "encoder.safetensors"])
def test_malicious_ssl_checkpoint_is_refused(world, name):
    marker = world.parent / "MARKER"
    evil = _evil_checkpoint(world / name, marker)
    msg = refused(world, f"{evil}: refused: not a safetensors file nor a tensors-only torch checkpoint",
                  backbone=f"ssl:{evil}", stop_after="embed")
    assert "nothing in it was run" in msg
    assert not marker.exists()


def test_malicious_ssl_checkpoint_through_papermill(world):
    marker = world.parent / "MARKER"
    evil = _evil_checkpoint(world / "encoder.pt", marker)
    before = snapshot(world)
    p = papermill(world, "-p", "backbone", f"ssl:{evil}", "-p", "stop_after", "embed", "-p", "run_dir", str(world / "run"))
    assert p.returncode != 0 and f"{evil}: refused" in p.stderr, p.stderr[-2000:]
    assert not marker.exists() and not (world / "run").exists() and snapshot(world) == before


def test_malicious_pretraining_state_is_refused(world):
    from derma_jepa.pretrain import PretrainConfig, pretrain
    marker = world.parent / "MARKER"
    out = world / "pretrain"; out.mkdir()
    _evil_checkpoint(out / "state.safetensors", marker)
    imgs = torch.zeros((8, 3, 48, 48), dtype=torch.uint8)
    pc = PretrainConfig(objective="mae", steps=1, image_size=48, patch_size=8, batch_size=4, warmup=1)
    refused(world, "state.safetensors: refused", make=lambda: pretrain(pc, imgs, out))
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(world):
    from derma_jepa.pretrain import PretrainConfig, random_encoder
    good = random_encoder(PretrainConfig(image_size=48, patch_size=8), world / "enc.safetensors")
    good.write_bytes(good.read_bytes()[:1000])
    refused(world, "enc.safetensors", backbone=f"ssl:{good}", stop_after="embed")


def test_encoder_and_predictor_are_safetensors(world):
    from safetensors.numpy import load_file
    from derma_jepa.pretrain import PretrainConfig, random_encoder
    from derma_jepa.safety import is_safetensors
    enc = random_encoder(PretrainConfig(image_size=48, patch_size=8), world / "enc.safetensors")
    assert is_safetensors(enc)
    res = succeeds(world, stop_after="all", epochs=5, n_boot=50)
    w = load_file(res.run_dir / "predictor.safetensors")
    assert set(w) == {"W", "b"} and w["W"].shape[0] == w["W"].shape[1]


def test_legacy_tensors_only_encoder_still_loads(world):
    from derma_jepa.backbones import get_backbone
    from derma_jepa.pretrain import PretrainConfig, encoder_digest, random_encoder
    from derma_jepa.safety import load_checkpoint, tensors_under
    new = random_encoder(PretrainConfig(image_size=48, patch_size=8), world / "enc.safetensors")
    t, meta = load_checkpoint(new)
    torch.save({**meta, "encoder": tensors_under(t, "encoder"), "head": None}, world / "old.pt")
    assert encoder_digest(world / "old.pt") == encoder_digest(new)
    assert get_backbone(f"ssl:{world / 'old.pt'}").dim == 192


# ----------------------------------------------------------------------------------------------
# 3. Metadata: no silent wrong read

def test_two_columns_for_one_field(world):
    edit_csv(world, lambda d: d.assign(DX="nv"))
    refused(world, "columns 'dx', 'DX' all name the field 'dx'")


def test_alias_and_name_for_one_field(world):
    edit_csv(world, lambda d: d.assign(diagnosis=d.dx))
    refused(world, "columns 'dx', 'diagnosis' all name the field 'dx'")


def test_blank_lesion_ids_refused_under_symmetric(world):
    edit_csv(world, lambda d: d.assign(lesion_id=np.where(d.index.isin([4, 9]), "", d.lesion_id)))
    refused(world, "2 row(s) have no lesion id (rows 6, 11)")


def test_blank_lesion_ids_fall_back_under_reference_and_are_counted(world):
    edit_csv(world, lambda d: d.assign(lesion_id=np.where(d.index.isin([4, 9]), "", d.lesion_id)))
    audit = json.loads((succeeds(world, protocol="reference").run_dir / "audit.json").read_text())
    assert audit["missing_lesion_ids"]["count"] == 2 and audit["missing_lesion_ids"]["rows"] == [6, 11]


def test_blank_lesion_ids_opt_in_under_symmetric(world):
    edit_csv(world, lambda d: d.assign(lesion_id=np.where(d.index == 4, "", d.lesion_id)))
    audit = json.loads((succeeds(world, missing_lesion="fallback").run_dir / "audit.json").read_text())
    assert audit["missing_lesion_ids"]["count"] == 1


def test_csv_not_utf8(world):
    text = csv(world).read_text().splitlines()
    text[3] = text[3].replace(",back", ",\u00e9paule") if ",back" in text[3] else text[3] + "\u00e9"
    csv(world).write_bytes(("\n".join(text) + "\n").encode("latin-1"))
    refused(world, "HAM10000_metadata.csv: line 4, column")


@pytest.mark.parametrize("kw, match", [
    (dict(seed=1.5), "parameter seed=1.5 is not a valid int"),
    (dict(seed=-3), "parameter seed=-3 must be at least 0"),
    (dict(seed="2.0x"), "parameter seed='2.0x' is not a valid int"),
    (dict(pairs_per_split="10.5"), "parameter pairs_per_split='10.5' is not a valid int"),
    (dict(epochs=True), "parameter epochs=True is not a valid int"),
    (dict(rephoto="maybe"), "parameter rephoto='maybe': choose auto, on or off"),
    (dict(split_fractions="a,b,c"), "parameter split_fractions='a,b,c' is not a valid tuple"),
    (dict(backbone=2.5), "parameter backbone=2.5 is not a valid str"),
    (dict(missing_lesion="ignore"), "unknown missing_lesion 'ignore'"),
    # out of range, with the bound and its reason, before any work (these used to fail late or run for days)
    (dict(seed=2**32), "parameter seed=4294967296 must be at most 4294967295: numpy and scikit-learn take 32-bit seeds"),
    (dict(n_boot=10**9), "parameter n_boot=1000000000 must be at most 20000"),
    (dict(batch_size=10**6), "parameter batch_size=1000000 must be at most 4096"),
    (dict(image_size=10**5), "parameter image_size=100000 must be at most 1024"),
    (dict(pairs_per_split=10**7), "parameter pairs_per_split=10000000 must be at most 100000"),
    # paths that would make folders no one can type, and settings a run would record but ignore
    (dict(run_dir="run\n"), "parameter run_dir='run\\n' contains the control character '\\n'"),
    (dict(run_dir="r" * 300), "is 300 bytes, longer than a file name may be (255)"),
    (dict(data="data\t"), "contains the control character '\\t'"),
    (dict(weights="vit.safetensors"), "backbone 'color_texture' takes no weights"),
])
def test_ill_typed_configuration(world, kw, match):
    refused(world, match, make=lambda: cfg(world, **kw))


# ----------------------------------------------------------------------------------------------
# 4. Images: every Pillow mode to 8-bit RGB, checked against an independent conversion

G16 = (np.arange(48, dtype=np.uint32).reshape(6, 8) * 1365 + 7).astype(np.uint16)   # 7 .. 64162


def _write(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, **kw); return path


def _grey(a): return np.repeat(a[..., None], 3, axis=2)


MODES = {   # mode -> (image writer, expected RGB from the numbers themselves, tolerance in levels)
    "1": (lambda p: _write(p, Image.fromarray(G16 > 30000)), _grey(np.where(G16 > 30000, 255, 0)), 0),
    "L": (lambda p: _write(p, Image.fromarray((G16 >> 8).astype(np.uint8))), _grey(G16 >> 8), 0),
    "LA": (lambda p: _write(p, Image.fromarray(np.stack([(G16 >> 8), np.full_like(G16, 9)], -1).astype(np.uint8), "LA")),
           _grey(G16 >> 8), 0),
    "P": (lambda p: _write(p, Image.fromarray((G16 >> 8).astype(np.uint8)).convert("P")), _grey(G16 >> 8), 0),
    "I;16": (lambda p: _write(p, Image.fromarray(G16)), _grey(np.rint(G16 / 257)), 0),
    "I;16B": (lambda p: _write(p, Image.frombytes("I;16B", (8, 6), G16.astype(">u2").tobytes()), format="TIFF"),
              _grey(np.rint(G16 / 257)), 0),
    "I": (lambda p: _write(p, Image.fromarray(G16.astype(np.int32)), format="TIFF"), _grey(np.rint(G16 / 257)), 0),
    "F": (lambda p: _write(p, Image.fromarray((G16 / 65535).astype(np.float32)), format="TIFF"),
          _grey(np.rint((G16 / 65535).astype(np.float32).astype(np.float64) * 255)), 0),
    "RGBA": (lambda p: _write(p, Image.fromarray(np.stack([G16 >> 8, G16 >> 9, G16 >> 10, np.full_like(G16, 0)], -1)
                                                  .astype(np.uint8), "RGBA")), np.stack([G16 >> 8, G16 >> 9, G16 >> 10], -1), 0),
    "CMYK": (lambda p: _write(p, Image.fromarray(np.stack([G16 >> 8, np.zeros_like(G16), G16 >> 9, np.full_like(G16, 64)], -1)
                                                  .astype(np.uint8), "CMYK"), format="TIFF"),
             np.stack([np.rint((255 - (G16 >> 8)) * (255 - 64) / 255), np.full(G16.shape, np.rint(255 * 191 / 255)),
                       np.rint((255 - (G16 >> 9)) * 191 / 255)], -1), 1),
}


def _png16_rgb(path: Path, rgb: np.ndarray) -> Path:
    "A 16-bit RGB PNG written byte by byte (Pillow cannot write one), so the test does not trust Pillow to make it."
    import struct, zlib
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_to_8bit_rgb(tmp_path, mode):
    write, want, tol = MODES[mode]
    p = write(tmp_path / f"img_{mode.replace(';', '_')}.png")
    with Image.open(p) as im: assert im.mode == mode, im.mode
    got = np.asarray(open_rgb(p)).astype(int)
    assert got.shape == want.shape and np.abs(got - want.astype(int)).max() <= tol


def test_16bit_rgb_png(tmp_path):
    rgb = np.stack([G16, G16 // 2, 65535 - G16], -1).astype(np.uint16)
    got = np.asarray(open_rgb(_png16_rgb(tmp_path / "rgb16.png", rgb))).astype(int)
    assert np.abs(got - np.rint(rgb / 257)).max() <= 1                      # Pillow keeps the high byte


def test_16bit_grey_png_in_a_run_is_not_white(world):
    "The reported failure: a 16-bit greyscale PNG in the dataset rendered as a pure white image."
    from derma_jepa.nuisance import load_rgb, render
    rec = load_records(world / "data")
    src = Image.open(rec.path.iloc[0]).convert("L")
    wide = (np.asarray(src).astype(np.uint16) * 257)
    target = Path(rec.path.iloc[0]).with_suffix(".png")
    Path(rec.path.iloc[0]).unlink()
    Image.fromarray(wide).save(target)
    res = succeeds(world)
    rec = load_records(world / "data")
    img = np.asarray(render(load_rgb(rec.path.iloc[0]), '{"family":"none","ops":[["fit",{"size":64}]]}'))
    assert img.mean() < 250 and np.array_equal(np.asarray(load_rgb(target))[..., 0], np.asarray(src))
    assert (res.run_dir / "manifest.parquet").exists()


def test_exif_orientation_by_protocol(world):
    from derma_jepa.baselines import with_paths
    from derma_jepa.embed import sides_table
    rec = load_records(world / "data")
    ex = Image.Exif(); ex[0x0112] = 6
    with Image.open(rec.path.iloc[0]) as im: im.save(rec.path.iloc[0], exif=ex, quality=95)
    rec = load_records(world / "data")
    assert rec.orientation.iloc[0] == 6 and set(rec.orientation.iloc[1:]) == {1}
    for protocol in ("symmetric", "reference"):
        r = run(cfg(world, protocol=protocol))
        sides = sides_table(r.manifest, r.records)
        fam = sides.recipe.map(lambda s: json.loads(s)["family"])
        px = with_paths(r.manifest, r.records)
        if protocol == "symmetric":
            assert sides.exif.all() and px.context_exif.all() and px.target_exif.all()
        else:
            assert (sides.exif == (fam == "none")).all() and not px.context_exif.any() and not px.target_exif.any()
    w, h = Image.open(rec.path.iloc[0]).size
    assert open_rgb(rec.path.iloc[0], exif=True).size == (h, w)


# ----------------------------------------------------------------------------------------------
# 5. Caches heal: a bad file is named, moved aside, and its entries recomputed to the same numbers

def _full(world, cache: Path, monkeypatch, **kw):
    monkeypatch.setenv("DERMA_JEPA_CACHE", str(cache))
    return run(cfg(world, stop_after="all", epochs=5, n_boot=50, run_dir=str(world / kw.pop("name", "run")), **kw))


def _metrics(res) -> dict:
    return json.loads((res.run_dir / "metrics.json").read_text())


@pytest.mark.parametrize("damage", ["truncated", "foreign", "pickled"])
@pytest.mark.parametrize("which", ["embeddings", "pixel"])
def test_damaged_score_cache_heals(world, tmp_path_factory, monkeypatch, damage, which):
    cache = tmp_path_factory.mktemp("cache")
    clean = _metrics(_full(world, cache, monkeypatch, name="clean"))
    folder = next(d for d in (cache / "embeddings").iterdir() if d.name.startswith("pixel") == (which == "pixel"))
    shard = sorted(folder.glob("shard-*.npz"))[0]
    if damage == "truncated": shard.write_bytes(shard.read_bytes()[: len(shard.read_bytes()) // 3])
    elif damage == "foreign": np.savez(shard, keys=np.arange(4), vectors=np.zeros((4, 3)))
    else: np.savez(shard, keys=np.array([{"evil": 1}], dtype=object), vectors=np.zeros((1, 3)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        healed = _full(world, cache, monkeypatch, name="healed")
    named = [str(x.message) for x in w if issubclass(x.category, CacheWarning)]
    assert any(str(shard) in m and "moved aside" in m for m in named), named
    assert _metrics(healed) == clean
    assert (shard.parent / (shard.name + ".corrupt")).exists()


def test_damaged_audit_cache_heals(world, tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DERMA_JEPA_CACHE", str(cache))
    first = run(cfg(world)).records
    f = next((cache / "audit").glob("files-*.parquet"))
    f.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.warns(CacheWarning, match=re.escape(str(f))):
        again = run(cfg(world)).records
    pd.testing.assert_frame_equal(first, again)


def test_damaged_hash_cache_heals(tmp_path):
    from derma_jepa.audit import hash_files
    paths = list(load_records(fixture_dir(n_lesions=200, seed=1)).path[:6])
    cache = tmp_path / "hashes.parquet"
    first = hash_files(paths, cache=cache)
    cache.write_bytes(cache.read_bytes()[:50])
    with pytest.warns(CacheWarning, match="hashes.parquet"):
        again = hash_files(paths, cache=cache)
    pd.testing.assert_frame_equal(first, again)


# ----------------------------------------------------------------------------------------------
# 6. What was already handled stays handled

def test_zero_byte_and_truncated_images(world):
    imgs = sorted((world / "data" / "images").iterdir())
    imgs[3].write_bytes(b"")
    refused(world, f"is unreadable: {imgs[3]}")
    shutil.copytree(fixture_dir(n_lesions=200, seed=1) / "images", world / "data" / "images", dirs_exist_ok=True)
    imgs[5].write_bytes(imgs[5].read_bytes()[:300])
    refused(world, f"{imgs[5].name}")


def test_missing_column(world):
    edit_csv(world, lambda d: d.drop(columns="localization"))
    refused(world, "required column 'site' not found")


def test_path_like_image_id(world):
    edit_csv(world, lambda d: d.assign(image_id=np.where(d.index == 2, "../../../etc/passwd", d.image_id)))
    refused(world, "image '../../../etc/passwd' (metadata row 4) is missing")


def test_unknown_parameter(world):
    refused(world, "'seeed' is not a configuration field", make=lambda: Config.from_params({"seeed": 1}))


# ----------------------------------------------------------------------------------------------
# 7. Issue 27: metadata consistency, YAML before papermill, files named, space, lifetimes

def test_lesion_with_two_diagnoses(world):
    "A 're-photograph' pair going from nv to mel was the quiet mistake: now one line naming the lesion and its rows."
    df = pd.read_csv(csv(world), dtype=str, keep_default_na=False)
    sizes = df.lesion_id.value_counts()
    lid = sizes.index[sizes >= 3][0]                              # a majority exists: two images against one
    rows = df.index[df.lesion_id.eq(lid)]
    other = "mel" if df.dx[rows[0]] != "mel" else "nv"
    edit_csv(world, lambda d: d.assign(dx=np.where(d.index == rows[-1], other, d.dx)))
    refused(world, f"lesion {lid!r} has images with different diagnoses")
    res = succeeds(world, dx_conflict="majority")                  # the explicit opt-in, recorded in audit.json
    audit = json.loads((res.run_dir / "audit.json").read_text())
    assert audit["dx_conflicts"]["count"] == 1 and audit["dx_conflicts"]["lesions"][0]["lesion_id"] == lid
    assert res.records[res.records.lesion_id.eq(lid)].dx.nunique() == 1


def test_diagnosis_case_and_space_are_one_label(world):
    edit_csv(world, lambda d: d.assign(dx=np.where(d.dx.eq("nv") & (np.arange(len(d)) % 2 == 0), " NV ", d.dx)))
    res = succeeds(world)
    assert set(res.records.dx) <= {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert json.loads((res.run_dir / "audit.json").read_text())["dx_outside_vocabulary"]["values"] == {}


def test_diagnosis_outside_the_vocabulary_is_listed(world):
    edit_csv(world, lambda d: d.assign(dx=np.where(d.dx.eq("df"), "dermatofibroma", d.dx)))
    with pytest.warns(UserWarning, match="'dermatofibroma' x"):
        res = succeeds(world)
    assert "dermatofibroma" in json.loads((res.run_dir / "audit.json").read_text())["dx_outside_vocabulary"]["values"]


def test_lesion_id_with_the_fallback_prefix(world):
    edit_csv(world, lambda d: d.assign(lesion_id=np.where(d.index == 3, "missing_lesion::" + d.image_id, d.lesion_id)))
    refused(world, "row 5: lesion id 'missing_lesion::", protocol="reference")


def run_cli(world: Path, *args, env=None, timeout=600):
    return subprocess.run([str(Path(PY).parent / "derma_jepa_run"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("text,words", [
    ("seed: !!python/object/apply:os.system ['touch {marker}']\n", "is not accepted (plain YAML values only)"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
     "alias *a is not accepted"),
    ("- seed\n- 3\n", "expected a mapping of parameters, found a list"),
    ("seed: [1, 2\n", "line 2:"),
    ("seed: 1\nbackbone: color_texture\nseed: 2\n", "line 3: key 'seed' is given twice (first on line 1)")])
def test_yaml_is_checked_before_papermill(world, text, words):
    marker = world.parent / "MARKER"
    f = world.parent / "exp.yaml"; f.write_text(text.format(marker=marker))
    before = snapshot(world)
    p = run_cli(world, "-f", str(f), "-p", "run_dir", str(world / "run"), timeout=60)
    err = p.stderr.strip()
    assert p.returncode == 2 and words in err and str(f) in err and len(err.splitlines()) == 1, err
    assert not marker.exists() and not (world / "run").exists() and snapshot(world) == before


def test_cli_runs_a_yaml_file(world):
    f = world.parent / "exp.yaml"
    f.write_text(f"data: {world / 'data'}\npairs_per_split: 10\nstop_after: manifest\n")
    p = run_cli(world, "-f", str(f), "-p", "run_dir", str(world / "run"), "-p", "seed", "7")
    assert p.returncode == 0, p.stderr[-3000:]
    import yaml
    assert yaml.safe_load((world / "run" / "config.yaml").read_text())["seed"] == 7
    assert (world / "run" / "run.ipynb").exists()


def test_paper_set_with_malformed_yaml(tmp_path):
    p = subprocess.run([str(Path(PY).parent / "derma_jepa_paper"), "--set", "seed=[1, 2", "--runs", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    err = p.stderr.strip()
    assert p.returncode == 2 and "--set 'seed=[1, 2': line 1:" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name,content,words", [
    ("empty.safetensors", b"", "damaged safetensors file"),
    ("liar.safetensors", None, "damaged safetensors file"),
    ("other.safetensors", "other", "does not fit timm model resnet18")])
def test_timm_weights_are_named(world, name, content, words):
    from safetensors.torch import save_file
    f = world.parent / name
    if content == "other": save_file({"fc.weight": torch.zeros(2, 2)}, str(f))
    elif content is None:
        save_file({"w": torch.zeros(1000)}, str(f)); f.write_bytes(f.read_bytes()[:-100])    # the header promises more
    else: f.write_bytes(content)
    refused(world, f"{f}: {words}", backbone="timm:resnet18", weights=str(f), stop_after="embed")


def test_cache_folder_that_is_a_file(world, monkeypatch):
    f = world.parent / "cache-file"; f.write_text("not a folder")
    monkeypatch.setenv("DERMA_JEPA_CACHE", str(f))
    refused(world, f"({f} is a file, not a folder)", stop_after="embed")


def test_not_enough_space(world, monkeypatch):
    from collections import namedtuple
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, 9 << 20, 1 << 20))   # a disk with 1 MiB free
    refused(world, f"run_dir {world / 'run'}: 1 MiB free on its filesystem, and this needs about 32 MiB")


def test_killed_papermill_leaves_no_kernel(world):
    "SIGKILL the runner while its kernel works: the kernel must end too (run.ipynb calls exit_with_parent)."
    p = subprocess.Popen([str(Path(PY).parent / "papermill"), "--log-level", "WARNING", "-k", "python3", str(ROOT / "nbs" / "run.ipynb"),
                          str(world.parent / "out.ipynb"), "-p", "data", str(world / "data"), "-p", "pairs_per_split", "10",
                          "-p", "run_dir", str(world / "run"), "-p", "n_boot", "20000"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time
    kernels, t0 = [], time.time()
    while not kernels and time.time() - t0 < 120:
        time.sleep(1)
        kernels = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _ppid(d) == p.pid
                   and b"ipykernel" in _cmdline(d)]
    assert kernels, "no kernel started"
    time.sleep(8)                                                  # well into the notebook's first cells
    p.kill(); p.wait()
    t0 = time.time()
    while any(Path(f"/proc/{k}").exists() and _state(k) != "Z" for k in kernels) and time.time() - t0 < 20: time.sleep(0.5)
    alive = [k for k in kernels if Path(f"/proc/{k}").exists() and _state(k) != "Z"]
    for k in alive: os.kill(k, signal.SIGKILL)
    assert not alive, "the kernel outlived its killed papermill"


def _ppid(d: Path) -> int:
    try: return int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError): return -1


def _cmdline(d: Path) -> bytes:
    try: return (d / "cmdline").read_bytes()
    except OSError: return b""


def _state(pid: int) -> str:
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError): return "?"


def test_blank_lesion_id_under_reference_through_the_notebook(world):
    "The release's fallback, through run.ipynb end to end: the gallery cell must not ask for an opt-in the run already used."
    edit_csv(world, lambda d: d.assign(lesion_id=np.where(d.index == 4, "", d.lesion_id)))
    p = papermill(world, "-p", "protocol", "reference", "-p", "run_dir", str(world / "run"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((world / "run" / "audit.json").read_text())["missing_lesion_ids"]["count"] == 1

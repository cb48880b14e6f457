"Bad input: one clear line naming the culprit, and no run directory left behind."
import shutil

import pytest

from derma_jepa.data import DataError
from derma_jepa.experiment import Config, ConfigError, run
from derma_jepa.fixture import fixture_dir

HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


@pytest.fixture
def dataset(tmp_path):
    "A copy of a small fixture that a test may damage."
    src = fixture_dir(n_lesions=200, seed=1)
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


def _run(data, tmp_path, **kw):
    cfg = Config(data=str(data), pairs_per_split=kw.pop("pairs_per_split", 15), run_dir=str(tmp_path / "run"), **kw)
    return run(cfg)


def _fails(data, tmp_path, match, exc=DataError, **kw):
    with pytest.raises(exc) as e:
        _run(data, tmp_path, **kw)
    msg = str(e.value)
    assert match in msg, msg
    assert "\n" not in msg, "the error must be one line"
    assert not (tmp_path / "run").exists()
    return msg


def _csv(d): return d / "HAM10000_metadata.csv"


def test_good_copy_runs(dataset, tmp_path):
    assert (_run(dataset, tmp_path).run_dir / "manifest.parquet").exists()


def test_missing_required_column(dataset, tmp_path):
    lines = _csv(dataset).read_text().splitlines()
    _csv(dataset).write_text("\n".join([lines[0].replace("localization", "where")] + lines[1:]) + "\n")
    msg = _fails(dataset, tmp_path, "required column 'site' not found")
    assert "HAM10000_metadata.csv" in msg


def test_missing_image_file(dataset, tmp_path):
    victim = sorted((dataset / "images").iterdir())[5]
    victim.unlink()
    _fails(dataset, tmp_path, f"image '{victim.stem}'")


@pytest.mark.parametrize("damage", ["zero-byte", "corrupt"])
def test_unreadable_image(dataset, tmp_path, damage):
    victim = sorted((dataset / "images").iterdir())[7]
    victim.write_bytes(b"" if damage == "zero-byte" else victim.read_bytes()[:300])
    msg = _fails(dataset, tmp_path, "is unreadable")
    assert victim.name in msg


def test_duplicate_image_ids(dataset, tmp_path):
    lines = _csv(dataset).read_text().splitlines()
    _csv(dataset).write_text("\n".join(lines + [lines[3]]) + "\n")
    _fails(dataset, tmp_path, "duplicate image id")


def test_empty_csv(dataset, tmp_path):
    _csv(dataset).write_text("")
    _fails(dataset, tmp_path, "metadata CSV is empty")
    _csv(dataset).write_text(HEADER + "\n")
    _fails(dataset, tmp_path, "has a header but no rows")


def test_too_few_lesions_for_the_pairs(dataset, tmp_path):
    _fails(dataset, tmp_path, "pairs per label were requested", pairs_per_split=500)


@pytest.mark.parametrize("kw, match", [
    (dict(split_fractions=(0.7, 0.2, 0.2)), "split fractions [0.7, 0.2, 0.2] must be three non-negative numbers summing to 1"),
    (dict(train_families="strong,sepia"), "unknown nuisance family 'sepia'"),
    (dict(eval_family="sepia"), "unknown nuisance family 'sepia'"),
    (dict(preset="appendix"), "unknown nuisance preset 'appendix'"),
    (dict(protocol="leaky"), "unknown protocol 'leaky'"),
    (dict(changing_policy="nearest"), "unknown changing_policy 'nearest'"),
])
def test_bad_configuration(dataset, tmp_path, kw, match):
    _fails(dataset, tmp_path, match, exc=ConfigError, **kw)


def test_a_failed_rerun_keeps_the_previous_run(dataset, tmp_path):
    first = _run(dataset, tmp_path).run_dir
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    with pytest.raises(DataError):
        _run(dataset, tmp_path, pairs_per_split=500)
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

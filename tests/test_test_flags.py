"The flags that keep a notebook cell out of `make test` are the ones nbdev_test actually reads from settings.ini."
import os
import re

import nbformat
from nbdev.config import get_config
import nbdev.test as nbdev_test

from conftest import ROOT


def skip_flags() -> list[str]:
    "What nbdev_test skips: settings.ini's tst_flags, split as nbdev 2 splits them (on whitespace)."
    return get_config(path=ROOT).tst_flags.split()


def test_every_flag_the_notebooks_use_is_skipped():
    # `notest|slow` once read as one flag named "notest|slow": no cell was skipped and slow cells ran in every make test
    used = {m for p in (ROOT / "nbs").glob("*.ipynb") for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code"
            for m in re.findall(r"^#\|\s*(slow|notest)\s*$", c.source, re.M)}
    assert "slow" in used and used <= set(skip_flags()), (used, skip_flags())


def test_nbdev_test_skips_a_slow_cell_and_runs_the_rest(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from pathlib import Path\nPath('ran').write_text('yes')"),
        nbformat.v4.new_code_cell("#| slow\nraise RuntimeError('a slow cell ran')")])
    nbformat.write(nb, tmp_path / "flags.ipynb")
    cwd = os.getcwd()
    try: ok, _ = nbdev_test.test_nb(tmp_path / "flags.ipynb", skip_flags=skip_flags())
    finally: os.chdir(cwd)
    assert ok and (tmp_path / "ran").read_text() == "yes"
    assert not nbdev_test.test_nb(tmp_path / "flags.ipynb", skip_flags=skip_flags(), force_flags=["slow"], showerr=False)[0]

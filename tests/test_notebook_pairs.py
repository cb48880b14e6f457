"Every notebook is paired with a py:percent script, and the two say the same thing."
from pathlib import Path

import jupytext
import pytest
from jupytext.compare import compare_notebooks

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))


def test_every_notebook_has_a_pair():
    assert NOTEBOOKS, "no notebooks found"
    scripts = sorted((ROOT / "nbs").glob("*.py"))
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in scripts]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_pair_in_sync(nb: Path):
    script = nb.with_suffix(".py")
    # compare cell by cell: sources, types and the tags papermill and nbdev rely on
    compare_notebooks(jupytext.read(script), jupytext.read(nb), fmt="py:percent", allow_expected_differences=False)

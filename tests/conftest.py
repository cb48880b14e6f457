import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    "Tests share one fresh cache folder unless DERMA_JEPA_CACHE is set (CI may reuse one across runs)."
    if not os.environ.get("DERMA_JEPA_CACHE"):
        os.environ["DERMA_JEPA_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def ham_dir():
    d = os.environ.get("HAM10000_DIR")
    if not d: pytest.skip("HAM10000_DIR is not set: real-data checks need the HAM10000 copy")
    return Path(d)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end check too long for `make test`'s 10 minutes; `make test-all` runs it")

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def lab(tmp_path):
    """Namespaces, daemons and FIFOs of one system test, removed afterwards.

    System tests need root and the real tools; without them they fail (CI
    runs as root with everything installed by .ci/run), they never skip."""
    from lab import Lab

    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


#: the test layers, by directory (a marker each: ``pytest -m unit`` etc.; ``make unit``...)
LAYERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration,
          "system": pytest.mark.system, "containers": pytest.mark.containers,
          "fuzz": pytest.mark.fuzz}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for layer, mark in LAYERS.items():
            if layer in parts[-3:-1]:
                item.add_marker(mark)
                break


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("NFLOG_PIPE_"):
            monkeypatch.delenv(k)

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "system" in parts:
            item.add_marker(pytest.mark.system)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("NFLOG_PIPE_"):
            monkeypatch.delenv(k)

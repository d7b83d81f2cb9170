"""Shared test setup: fixed thread count so tensor results are bit-reproducible."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"


def pytest_configure(config):
    """Build the tiny model into a fresh per-session cache unless GRAPHRUN_CACHE is set."""
    import tempfile

    if "GRAPHRUN_CACHE" not in os.environ:
        os.environ["GRAPHRUN_CACHE"] = tempfile.mkdtemp(prefix="graphrun-test-cache-")

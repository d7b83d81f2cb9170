"""Shared test setup: fixed thread count so tensor results are bit-reproducible."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# MKL picks its vector-math code path per CPU model, which changes exp/tanh in the last bit between
# machines; its compatible path gives the same bits on every x86 CPU (set before torch loads MKL).
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def one_thread():
    """One intra-op thread for the test (bit-exact references were recorded so: the thread count changes
    the last bit of some float32 matmuls), restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def pytest_configure(config):
    """Build the tiny model into a fresh per-session cache unless GRAPHRUN_CACHE is set."""
    import tempfile

    if "GRAPHRUN_CACHE" not in os.environ:
        os.environ["GRAPHRUN_CACHE"] = tempfile.mkdtemp(prefix="graphrun-test-cache-")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say how many reference-vector checks were bit-exact on this CPU (see tests/toy_model.py)."""
    import sys

    toy = sys.modules.get("toy_model")
    if toy is None or not (toy.TALLY["exact"] or toy.TALLY["close"]):
        return
    line = (f"ComfyUI reference vectors: {toy.TALLY['exact']} checks bit-exact, {toy.TALLY['close']} within "
            f"{toy.REL:g} relative only (this CPU rounds exp/tanh differently from the reference machine)")
    terminalreporter.write_line(line)
    if toy.CLOSE_CASES:
        shown = ", ".join(toy.CLOSE_CASES[:12]) + (", ..." if len(toy.CLOSE_CASES) > 12 else "")
        terminalreporter.write_line(f"  {len(toy.CLOSE_CASES)} test(s) not bit-exact: {shown}")

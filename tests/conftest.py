from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tests use tiny tensors and some start child processes (torchrun, the Triton interpreter); one intra-op thread per
# process avoids OpenMP oversubscription on small CI machines (this is test configuration, not library behaviour).
torch.set_num_threads(1)
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test cleanly when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def benchmark_module():
    """``load(name)`` imports ``benchmarks/<name>.py`` (the scripts are not a package); skips the test cleanly when
    ``benchmarks/`` is not beside the tests (installed package)."""
    def load(name: str):
        path = REPO / "benchmarks" / f"{name}.py"
        if not path.is_file():
            pytest.skip(f"{path} not found (benchmarks/ is not beside the tests)")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

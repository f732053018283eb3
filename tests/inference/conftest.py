"""Fixtures shared by the inference tests."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest


@pytest.fixture(scope="module")
def acdc(request: pytest.FixtureRequest, shared_data: Path) -> dict[str, np.ndarray]:
    """The ACDC volumes named by the test module's ``CASES``, as (D, H, W) float32 in [0, 1] (skipped when absent)."""
    out = {}
    for case in request.module.CASES:
        src = shared_data / "acdc" / "data" / f"{case}.h5"
        if not src.is_file():
            pytest.skip(f"{src} not found")
        with h5py.File(src) as f:
            out[case] = f["image"][()]
    return out

from __future__ import annotations

from pathlib import Path

import pytest

from engine_helpers import TINY, register_tiny
from mambaseg.models import _registry


@pytest.fixture()
def tiny_model():
    """Register the tiny test model for one test, then remove it (keeps ``list_models()`` clean)."""
    register_tiny()
    yield TINY
    _registry._REGISTRY.pop(TINY, None)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """8 train + 4 val synthetic 32x32 images (shared by the engine tests; read-only)."""
    from mambaseg.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("syn")
    return make_synthetic_dataset(root / "data", n_train=8, n_val=4, size=(32, 32), seed=1)

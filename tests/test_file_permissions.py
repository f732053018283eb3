"""Files the library writes atomically are readable as the umask allows (not the 0600 of a temporary file)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from mambaseg.utils.files import atomic_path, atomic_write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_files_follow_the_umask(tmp_path, umask_022):
    atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    with atomic_path(tmp_path / "ckpt.pt") as tmp:
        torch.save({"x": 1}, tmp)
    assert _mode(tmp_path / "metrics.json") == 0o644
    assert _mode(tmp_path / "ckpt.pt") == 0o644
    os.umask(0o077)
    atomic_write_json(tmp_path / "private.json", {})
    assert _mode(tmp_path / "private.json") == 0o600


def test_training_outputs_follow_the_umask(tmp_path, umask_022):
    from mambaseg.configs import apply_overrides, load_recipe
    from mambaseg.data import make_synthetic_dataset
    from mambaseg.engine import train

    data = make_synthetic_dataset(tmp_path / "d", n_train=2, n_val=2, size=(32, 32), seed=0)
    cfg = apply_overrides(load_recipe("demo"), {"data.path": str(data), "train.out": str(tmp_path / "run"),
                                                "train.epochs": 1, "model.kwargs": {"dims": 8, "d_state": 2}})
    train(cfg)
    run = tmp_path / "run"
    files = [run / "metrics.json", run / "history.json", run / "checkpoints" / "last.pt",
             run / "checkpoints" / "best.pt", run / "checkpoints" / "best.safetensors"]
    for f in files + [p for p in [run / "progress.png"] if p.exists()]:
        assert _mode(f) == 0o644, f

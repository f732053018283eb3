"""Helpers of the engine tests: a tiny registered conv net (fast on CPU) and tiny configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mambaseg.configs import RunConfig, apply_overrides
from mambaseg.models import _registry
from mambaseg.models.base import SegmentationModel

TINY = "_engine_test_tinyconv"


class TinyConvNet(SegmentationModel):
    """Two 3x3 convs with dropout (so RNG handling matters); optionally returns NaN from the n-th forward on."""

    stride = 1

    def __init__(self, num_classes: int = 1, in_chans: int = 3, width: int = 8, nan_after: int = 0,
                 p_drop: float = 0.2) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.Dropout2d(p_drop),
                                  nn.Conv2d(width, num_classes, 3, padding=1))
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.training:
            self.calls += 1
        y = self.body(x)
        if self.nan_after and self.training and self.calls >= self.nan_after:
            y = y * float("nan")
        return y


def tinyconv(num_classes: int = 1, in_chans: int = 3, width: int = 8, nan_after: int = 0,
             p_drop: float = 0.2) -> TinyConvNet:
    """Tiny conv net used only by the engine tests."""
    return TinyConvNet(num_classes, in_chans, width, nan_after, p_drop)


def register_tiny() -> None:
    """Register the tiny model (idempotent; used by the torchrun script)."""
    if TINY not in _registry._REGISTRY:
        _registry._REGISTRY[TINY] = _registry.ModelInfo(name=TINY, fn=tinyconv, paper="test", description="test")


def tiny_config(data: Path, out: Path, **overrides: Any) -> RunConfig:
    """A seconds-long CPU run of the tiny model at 32x32."""
    sets = {
        "model.name": TINY,
        "data.path": str(data),
        "data.image_size": [32, 32],
        "data.validate": False,
        "optim.lr": 5e-3,
        "schedule.name": "cosine",
        "schedule.interval": "step",
        "schedule.t_max": None,
        "train.epochs": 3,
        "train.batch_size": 4,
        "train.val_batch_size": 4,
        "train.device": "cpu",
        "train.amp": "off",
        "train.out": str(out),
        "train.seed": 3,
        "train.log_every": 1,
    }
    sets.update(overrides)
    return apply_overrides(RunConfig(), sets)


def distinct_id_cases(root: Path, seed: int) -> Path:
    """8 train + 4 val synthetic 32x32 cases whose ids differ across train and val (val files renamed v_*), as a
    cross-validation's pool needs."""
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(root, n_train=8, n_val=4, size=(32, 32), seed=seed)
    for sub in ("images", "masks"):
        for f in sorted((data / "val" / sub).iterdir()):
            f.rename(f.parent / f"v_{f.name}")
    return data

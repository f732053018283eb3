"""Run by ``torchrun`` in test_engine_ddp.py: train the tiny test model on DATA into OUT."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_helpers import register_tiny, tiny_config  # noqa: E402

from mambaseg.engine import train  # noqa: E402

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    register_tiny()
    train(tiny_config(data, out, **{"model.kwargs": {"p_drop": 0.0}, "train.epochs": 2}))

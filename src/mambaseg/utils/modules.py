"""Small helpers on ``nn.Module`` objects that every tier may use."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["unwrap_model", "weight_dtype"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / ``torch.compile`` wrappers (``.module``, ``._orig_mod``, nested in any order)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def weight_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's inputs must have: that of its first floating-point parameter (float32 without one).

    The models' input check, the Predictor, ``predict_volume`` and the evaluator use it, so a model converted with
    ``.half()``/``.bfloat16()`` is fed and checked by one rule."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

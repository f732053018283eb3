"""Small helpers on ``nn.Module`` objects that every tier may use."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / ``torch.compile`` wrappers (``.module``, ``._orig_mod``, nested in any order)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model

"""Exponential moving average (EMA) of a model's weights, kept by the trainer when ``train.ema_decay`` is set.

After every optimizer step each floating-point parameter and buffer ``s`` of the average moves towards the live
value ``w``: ``s <- d * s + (1 - d) * w`` with ``d = min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates (the
warm-up of the decay of TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` and timm's ``ModelEma``: early
in a run the average follows the weights closely instead of remembering the random initialisation). Integer buffers
(BatchNorm's ``num_batches_tracked``) are copied.

The trainer validates the AVERAGE, selects ``best.pt`` on it and writes it as the checkpoint's ``state_dict`` of
both ``best.pt`` and ``last.pt`` (so ``mambaseg evaluate``/``predict`` and ``init_from`` see the EMA weights); the
live weights needed to continue training travel in ``last.pt["ema"]["live_state_dict"]`` with the update count, and
``--resume`` restores both (bit-identical continuation on CPU).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """The moving average of ``model``'s weights (a frozen copy of the model in eval mode).

    Args:
        model: the live model (unwrapped: no DDP / compile wrapper).
        decay: ``ema_decay`` in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (e.g. 0.999), or null for no EMA; got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def rate(self) -> float:
        """The decay applied at the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimizer step)."""
        d = self.rate()
        live = model.state_dict()
        avg, new = [], []
        for name, s in self.model.state_dict().items():
            w = live[name]
            if s.is_floating_point():
                avg.append(s)
                new.append(w.detach().to(s.dtype))
            else:
                s.copy_(w)
        if avg:  # s <- d * s + (1 - d) * w for all tensors at once (a few kernel launches, not two per tensor)
            torch._foreach_mul_(avg, d)
            torch._foreach_add_(avg, new, alpha=1.0 - d)
        self.updates += 1

    def state(self, model: nn.Module) -> dict[str, Any]:
        """What ``last.pt`` needs besides the average (held in its ``state_dict``): the live weights and counters.

        The tensors are the live ones; the trainer snapshots them when the checkpoint is written in the background."""
        return {"live_state_dict": model.state_dict(), "updates": self.updates, "decay": self.decay}

    def restore(self, model: nn.Module, checkpoint: dict[str, Any], where: Any = "") -> None:
        """Continue from a ``last.pt``: its ``state_dict`` is the average, ``ema.live_state_dict`` the live weights."""
        ema = checkpoint.get("ema")
        if not isinstance(ema, dict) or "live_state_dict" not in ema:
            raise ValueError(f"{where}: train.ema_decay is set but the checkpoint holds no EMA state (it was written "
                             "without EMA); resume it without train.ema_decay or start a new run")
        self.model.load_state_dict(checkpoint["state_dict"])
        model.load_state_dict(ema["live_state_dict"])
        self.updates = int(ema.get("updates", 0))

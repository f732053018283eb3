"""DermoMamba's Guide Fusion Loss: BCE plus a Dice term guided by a boundary-attention map.

Boundary attention of a binary target ``g`` (per image, 2-D): ``A(p) = 1 / (1 + d(p))`` where ``d(p)`` is the
Euclidean distance from pixel ``p`` to the nearest pixel of the other class (:mod:`mambaseg.losses.distance_maps`).
Pixels next to the boundary get ``A = 0.5``, far pixels tend to 0. Images with one class only have ``A = 0``.
With ``p = sigmoid(z)`` (a single sigmoid) and ``s`` the Dice smoothing:

* ``mode="intent"`` (default): per-pixel BCE plus a per-image Dice whose pixels are weighted by ``A``,

      L = mean_{b,p} BCE(z, g) + mean_b [ 1 - (2 sum_p A p g + s) / (sum_p A p + sum_p A g + s) ],

  so the Dice term concentrates on a band around the lesion boundary, per image.
* ``mode="official"``: the released scalar combination ``L = mean_p [BCE + Dice_loss * A(p)]
  = BCE + (1 - Dice) * mean(A)`` with the batch-global soft Dice ``(2 sum p g + s) / (sum p + sum g + s)``,
  ``s = 1e-3``. Not reproduced: the double sigmoid (the release fed probabilities to BCE-with-logits) and the EDT
  running across the batch and channel axes of the (B, 1, H, W) array (here it is per image).

The maps are computed on the fly from the target the loss receives (augmented masks), without gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.losses.boundary import _binary_target
from mambaseg.losses.dice import upcast
from mambaseg.losses.distance_maps import boundary_distance
from mambaseg.losses.registry import register_loss

__all__ = ["GuideFusionLoss", "boundary_attention_map"]

_MODES = ("intent", "official")


def boundary_attention_map(target: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``A = 1 / (1 + d)`` per image (zero for images without a boundary).

    Args:
        target: (B, H, W) binary mask.
        backend: EDT backend (``"auto"``, ``"scipy"``, ``"torch"``).

    Returns:
        float32 (B, H, W) attention in [0, 0.5].
    """
    dist, has_boundary = boundary_distance(target, backend=backend)
    return (1.0 / (1.0 + dist)) * has_boundary.view(-1, 1, 1).to(dist.dtype)


@register_loss("guide_fusion")
class GuideFusionLoss(nn.Module):
    """DermoMamba's Guide Fusion Loss (binary).

    Args:
        mode: ``"intent"`` (default; per-image boundary-weighted Dice) or ``"official"`` (released scalar form).
        smooth: Dice smoothing ``s`` (1e-3 as released).
        edt_backend: ``"auto"``, ``"scipy"`` or ``"torch"``.

    Call:
        ``loss(logits (B, 1, H, W), target (B, H, W) int64 in {0, 1}) -> scalar``.
    """

    binary_only = True  # one output channel (B, 1, ...): the trainer refuses it for multi-class data up front

    def __init__(self, mode: str = "intent", smooth: float = 1e-3, edt_backend: str = "auto") -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"GuideFusionLoss: mode must be one of {_MODES}, got {mode!r}")
        if smooth < 0:
            raise ValueError(f"GuideFusionLoss: smooth must be >= 0, got {smooth}")
        self.mode = mode
        self.smooth = float(smooth)
        self.edt_backend = edt_backend

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _binary_target(logits, target, "GuideFusionLoss")
        z = upcast(logits[:, 0])
        g = target.to(z.dtype)
        with torch.no_grad():
            a = boundary_attention_map(target, backend=self.edt_backend).to(z.dtype)
        bce = F.binary_cross_entropy_with_logits(z, g)
        p = torch.sigmoid(z)
        s = self.smooth
        if self.mode == "official":
            dice = (2.0 * (p * g).sum() + s) / (p.sum() + g.sum() + s)
            return bce + (1.0 - dice) * a.mean()
        inter = (a * p * g).flatten(1).sum(1)
        denom = (a * p).flatten(1).sum(1) + (a * g).flatten(1).sum(1)
        # images without a boundary have A = 0: their weighted Dice is defined as 1 (no contribution)
        safe = denom + s > 0
        dice = torch.where(safe, (2.0 * inter + s) / torch.where(safe, denom + s, torch.ones_like(denom)), 1.0)
        return bce + (1.0 - dice).mean()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, smooth={self.smooth}, edt_backend={self.edt_backend!r}"

"""BCE + Dice for binary segmentation (VM-UNet's ``BceDiceLoss``, on logits).

``loss = bce_weight * BCE + dice_weight * (1 - mean_b dice_b)`` where BCE is the mean over every pixel of
the batch (computed with ``binary_cross_entropy_with_logits``, stable for large logits) and ``dice_b`` is
the per-sample soft Dice of ``sigmoid(logits)`` with smoothing 1: ``(2 sum p*y + 1) / (sum p + sum y + 1)``
(VM-UNet's released recipe; weights 1 and 1 there). The original applies BCE to probabilities produced
by the model; here the model returns logits and the loss applies the sigmoid, which is the same function
but numerically safe.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.losses.dice import binary_target, check_logits_target, soft_dice, upcast
from mambaseg.losses.registry import register_loss

__all__ = ["BceDiceLoss"]


@register_loss("bce_dice")
class BceDiceLoss(nn.Module):
    """Binary cross-entropy + soft Dice on single-channel logits (VM-UNet ISIC recipe).

    Args:
        bce_weight: weight of the BCE term (VM-UNet: 1).
        dice_weight: weight of the Dice term (VM-UNet: 1).
        smooth: Dice smoothing (VM-UNet: 1).
        batch_dice: one Dice over the batch instead of per-sample Dice (VM-UNet: per-sample, False).
        pos_weight: optional BCE weight of positive pixels (``binary_cross_entropy_with_logits``).

    Shapes:
        logits (B, 1, *spatial); target (B, *spatial) in {0, 1} (int64, or float soft targets in [0, 1]).
        Returns a scalar.
    """

    binary_only = True  # one output channel (B, 1, ...): the trainer refuses it for multi-class data up front

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        batch_dice: bool = False,
        pos_weight: float | None = None,
    ) -> None:
        super().__init__()
        if bce_weight < 0 or dice_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got bce_weight={bce_weight}, dice_weight={dice_weight}")
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.smooth = float(smooth)
        self.batch_dice = bool(batch_dice)
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = check_logits_target(logits, target, "BceDiceLoss")
        if logits.shape[1] != 1:
            raise ValueError(
                f"BceDiceLoss expects single-channel logits (B, 1, ...) for binary segmentation, got "
                f"{logits.shape[1]} channels; use 'ce_dice' for multi-class outputs"
            )
        z = upcast(logits[:, 0])
        y = binary_target(target, "BceDiceLoss").to(z.dtype)
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=z.device, dtype=z.dtype)
        bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=pw, reduction="mean")
        dice = soft_dice(torch.sigmoid(z).unsqueeze(1), y.unsqueeze(1), smooth=self.smooth, batch_dice=self.batch_dice)
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice.mean())

    def extra_repr(self) -> str:
        return f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, smooth={self.smooth}"

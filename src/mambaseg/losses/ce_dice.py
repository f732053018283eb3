"""Cross-entropy + Dice for multi-class segmentation (Synapse/ACDC recipes), on logits.

``loss = ce_weight * CE + dice_weight * DiceLoss`` with

* CE: ``F.cross_entropy`` on the logits, mean over all pixels of the batch (optional class weights).
* Dice (defaults = the TransUNet-style ``DiceLoss`` used by MSVM-UNet, HeteroMedSeg and VM-UNet's Synapse
  recipe): softmax probabilities, one-hot target,
  per class ``1 - (2 sum p g + eps) / (sum p^2 + sum g^2 + eps)`` with ``eps = 1e-5``, squared sums,
  sums over the whole batch, averaged over ALL classes including background.

Weights: MSVM-UNet and HeteroMedSeg use ``ce_weight=0.4, dice_weight=0.6`` (the defaults here);
VM-UNet's Synapse recipe uses 1 and 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.losses.dice import DiceLoss, check_logits_target, upcast
from mambaseg.losses.registry import register_loss

__all__ = ["CeDiceLoss"]


@register_loss("ce_dice")
class CeDiceLoss(nn.Module):
    """Cross-entropy + soft Dice on multi-class logits.

    Args:
        ce_weight: weight of the CE term (default 0.4).
        dice_weight: weight of the Dice term (default 0.6).
        smooth: Dice smoothing (default 1e-5).
        squared: squared sums in the Dice denominator (default True).
        include_background: include class 0 in the Dice class mean (default True).
        batch_dice: Dice sums over the whole batch (default True) instead of per sample.
        class_weights: optional per-class CE weights (length C).

    Shapes:
        logits (B, C, *spatial) with C >= 2; target (B, *spatial) int64 in [0, C). Returns a scalar.
    """

    def __init__(
        self,
        ce_weight: float = 0.4,
        dice_weight: float = 0.6,
        smooth: float = 1e-5,
        squared: bool = True,
        include_background: bool = True,
        batch_dice: bool = True,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got ce_weight={ce_weight}, dice_weight={dice_weight}")
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.dice = DiceLoss(
            smooth=smooth, squared=squared, include_background=include_background, batch_dice=batch_dice
        )
        w = None if class_weights is None else torch.as_tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = check_logits_target(logits, target, "CeDiceLoss")
        c = logits.shape[1]
        if c < 2:
            raise ValueError(
                "CeDiceLoss expects C >= 2 logit channels (one per class incl. background); "
                "use 'bce_dice' for single-channel binary outputs"
            )
        if self.class_weights is not None and self.class_weights.numel() != c:
            raise ValueError(f"class_weights has {self.class_weights.numel()} entries but logits have {c} channels")
        if target.numel() and (target.min() < 0 or target.max() >= c):
            raise ValueError(
                f"CeDiceLoss: target class indices must be in [0, {c - 1}] for {c} output channels, got values "
                f"in [{int(target.min())}, {int(target.max())}]"
            )
        z = upcast(logits)
        w = None if self.class_weights is None else self.class_weights.to(z)
        ce = F.cross_entropy(z, target.long(), weight=w, reduction="mean")
        return self.ce_weight * ce + self.dice_weight * self.dice(z, target)

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, dice_weight={self.dice_weight}"

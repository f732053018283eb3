"""Soft Dice loss on logits, binary (one channel, sigmoid) and multi-class (softmax).

For class ``k`` with probabilities ``p`` and one-hot target ``g`` summed over a region ``R``::

    dice_k = (2 * sum_R p*g + smooth) / (sum_R p^e + sum_R g^e + smooth)      e = 2 if squared else 1
    loss   = 1 - mean over (regions, classes) of dice_k

The region is one sample (``batch_dice=False``: per-sample Dice, then the mean over samples, as VM-UNet's
``BceDiceLoss``) or the whole batch (``batch_dice=True``: one sum over all samples, as the TransUNet-style
multi-class ``DiceLoss`` used by MSVM-UNet/HeteroMedSeg/VM-UNet-Synapse). ``smooth`` keeps the ratio
defined for empty masks: with no target and no prediction the Dice of a region is 1 (loss 0).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.losses.registry import register_loss

__all__ = [
    "DiceLoss",
    "soft_dice",
    "check_logits_target",
    "check_binary_range",
    "binary_target",
    "one_hot_target",
    "upcast",
]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (losses are computed in at least single precision); others unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_logits_target(logits: torch.Tensor, target: torch.Tensor, name: str = "loss") -> torch.Tensor:
    """Validate shapes and return the target as (B, *spatial).

    Args:
        logits: (B, C, *spatial) float.
        target: (B, *spatial) or (B, 1, *spatial), integer class indices (or float in [0, 1] for C == 1).

    Raises:
        ValueError: shapes or dtypes do not fit, naming what was expected.
    """
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"{name}: logits must be a float tensor (B, C, *spatial)")
    if logits.dim() < 3:
        raise ValueError(f"{name}: logits must be (B, C, *spatial), got shape {tuple(logits.shape)}")
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"{name}: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected (B, *spatial) = {tuple(logits.shape[:1] + logits.shape[2:])}"
        )
    if target.is_floating_point() and logits.shape[1] != 1:
        raise ValueError(f"{name}: multi-class targets must be integer class indices, got {target.dtype}")
    return target


def check_binary_range(target: torch.Tensor, name: str = "loss", *, soft: bool = True) -> None:
    """Raise ``ValueError`` unless the values of a binary target lie in [0, 1] (one min/max pass).

    Integer and bool targets must hold 0/1; float targets may hold any value in [0, 1] (soft labels) when ``soft``,
    for the losses that document them. The message names the range found and, for masks read as 0/255 (8-bit PNG),
    the fix (divide by 255).
    """
    if not target.numel() or target.dtype == torch.bool:
        return
    lo, hi = torch.stack(torch.aminmax(target)).tolist()
    if lo >= 0 and hi <= 1:  # False for NaN too
        return
    if target.is_floating_point():
        want = "float targets in [0, 1] (hard 0/1 or soft labels)" if soft else "targets in {0, 1}"
        found = f"[{lo:g}, {hi:g}]"
    else:
        want, found = "targets in {0, 1}", f"[{int(lo)}, {int(hi)}]"
    msg = f"{name}: a single-channel (binary) output needs {want}, got values in {found}"
    if lo >= 0 and hi > 1 and (target.is_floating_point() or hi == 255):
        if target.is_floating_point():
            fix = "target / 255" if soft else "(target // 255).long()"
        else:
            fix = "target // 255"
        msg += (f"; masks stored as 0/255 (8-bit images) must be divided by 255 first ({fix}, or (target > 0) "
                "for any non-zero foreground)")
    elif lo >= 0 and hi > 1:
        msg += ("; a label map of several classes needs a multi-class output (num_classes >= 2, loss 'ce_dice'), "
                "or binarise it first ((target > 0).long())")
    raise ValueError(msg)


def binary_target(target: torch.Tensor, name: str = "loss") -> torch.Tensor:
    """(B, *spatial) {0, 1} (or soft [0, 1]) target as float; ``ValueError`` naming the range for values outside."""
    check_binary_range(target, name, soft=True)
    return target.to(torch.float64 if target.dtype == torch.float64 else torch.float32)


def one_hot_target(target: torch.Tensor, num_classes: int, name: str = "loss") -> torch.Tensor:
    """(B, *spatial) class indices -> (B, C, *spatial) float one-hot."""
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(
            f"{name}: target class indices must be in [0, {num_classes - 1}] for {num_classes} output channels, "
            f"got values in [{int(target.min())}, {int(target.max())}]"
        )
    oh = F.one_hot(target.long(), num_classes)  # (B, *spatial, C)
    return oh.movedim(-1, 1).float()


def soft_dice(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    squared: bool = False,
    batch_dice: bool = False,
) -> torch.Tensor:
    """Soft Dice coefficient per region and class.

    Args:
        probs: (B, K, *spatial) probabilities.
        target: (B, K, *spatial) one-hot (or soft) target of the same shape.
        smooth: added to numerator and denominator.
        squared: use squared sums in the denominator (V-Net/TransUNet form).
        batch_dice: sum over the batch too.

    Returns:
        (B, K) Dice values, or (1, K) with ``batch_dice``.
    """
    dims = tuple(range(2, probs.dim()))
    if batch_dice:
        dims = (0,) + dims
    inter = (probs * target).sum(dims)
    if squared:
        denom = (probs * probs).sum(dims) + (target * target).sum(dims)
    else:
        denom = probs.sum(dims) + target.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return dice.reshape(-1, probs.shape[1])


@register_loss("dice")
class DiceLoss(nn.Module):
    """Soft Dice loss on logits (sigmoid for one output channel, softmax for several).

    Args:
        smooth: smoothing constant (1.0 as VM-UNet; 1e-5 in the TransUNet-style multi-class form).
        squared: squared sums in the denominator.
        include_background: multi-class only: include class 0 in the class mean (TransUNet/MSVM-UNet do).
        batch_dice: one Dice over the whole batch instead of per-sample Dice averaged over samples.

    Shapes:
        logits (B, C, *spatial); target (B, *spatial) int64 class indices (binary: {0, 1}; float soft
        targets in [0, 1] are accepted for C == 1). Returns a scalar.
    """

    def __init__(
        self,
        smooth: float = 1.0,
        squared: bool = False,
        include_background: bool = True,
        batch_dice: bool = False,
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.squared = bool(squared)
        self.include_background = bool(include_background)
        self.batch_dice = bool(batch_dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = check_logits_target(logits, target, "DiceLoss")
        c = logits.shape[1]
        logits = upcast(logits)
        if c == 1:
            probs = torch.sigmoid(logits)
            tgt = binary_target(target, "DiceLoss").unsqueeze(1).to(probs.dtype)
        else:
            probs = torch.softmax(logits, dim=1)
            tgt = one_hot_target(target, c, "DiceLoss").to(probs.dtype)
            if not self.include_background:
                probs, tgt = probs[:, 1:], tgt[:, 1:]
        dice = soft_dice(probs, tgt, smooth=self.smooth, squared=self.squared, batch_dice=self.batch_dice)
        return 1.0 - dice.mean()

    def extra_repr(self) -> str:
        return (
            f"smooth={self.smooth}, squared={self.squared}, include_background={self.include_background}, "
            f"batch_dice={self.batch_dice}"
        )

"""VMB-UNet's hybrid loss: BCE + Dice plus a distance-map-weighted squared-error penalty.

For binary logits ``z`` (B, 1, H, W), target ``y`` (B, H, W) in {0, 1} and ``p = sigmoid(z)`` (one sigmoid):

    L = alpha * BceDice(z, y) + beta * mean_{b,h,w} [ W_b(h, w) * (p - y)^2 ]

``BceDice`` is the library's ``"bce_dice"`` loss (VM-UNet's 1 * BCE + 1 * Dice). The weight map comes from the
per-image distance ``d`` of every pixel to the nearest pixel of the other class (see
:mod:`mambaseg.losses.distance_maps`), normalised per image: ``D = d / max(d)`` in (0, 1].

* ``mode="boundary"`` (default, the paper's stated intent of "stronger constraints on boundary pixels"):
  ``W = 1 - D + 1 / max(d)``, i.e. 1 on the pixels next to the boundary (d = 1), falling linearly to
  ``1 / max(d)`` on the pixel farthest from it.
* ``mode="official"`` (the released map): ``W = D`` -- about 0 next to the boundary and 1 farthest from it, so errors
  far from the boundary are penalised most. The released bugs are not reproduced: the penalty uses the model's
  probabilities once (the release applied a second sigmoid to probabilities), each image is weighted by its own
  map (the release broadcast a (B, H, W) map against (B, 1, H, W) errors, mixing the maps of a batch), and the map is
  computed on the augmented target (the release loaded offline maps that were not flipped/rotated with the image).

Images containing one class only have no boundary; their weight map is zero (only the BCE + Dice term acts).
The maps are computed on the fly on the loss's target, per sample (exact EDT; scipy on CPU, torch on CUDA).
Defaults ``alpha=1, beta=0.1`` are the released configuration (the class default there was beta 0.5).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mambaseg.losses.dice import check_binary_range, upcast
from mambaseg.losses.distance_maps import boundary_distance
from mambaseg.losses.registry import create_loss, register_loss

__all__ = ["BoundaryDistanceLoss", "boundary_weight_map"]

_MODES = ("boundary", "official")


def _binary_target(logits: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"{name}: logits must be (B, 1, H, W) for binary segmentation, got {tuple(logits.shape)}")
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(
            f"{name}: target must be (B, H, W) = {(logits.shape[0],) + tuple(logits.shape[2:])}, "
            f"got {tuple(target.shape)}"
        )
    check_binary_range(target, name, soft=False)  # names the range (and the /255 fix) before the values
    if target.dtype.is_floating_point:  # float masks of hard 0/1 labels, as SMP/MONAI users pass them
        if not bool(((target == 0) | (target == 1)).all()):
            raise ValueError(f"{name}: target must hold hard labels 0 or 1 (its distance maps need a hard mask), got "
                             f"soft values of dtype {target.dtype}; threshold them first ((target > 0.5).long())")
        target = target.long()
    return target


def boundary_weight_map(target: torch.Tensor, mode: str = "boundary", backend: str = "auto") -> torch.Tensor:
    """Per-pixel weights of the distance penalty.

    Args:
        target: (B, H, W) binary mask (non-zero = foreground).
        mode: ``"boundary"`` (1 at the boundary, decreasing away from it) or ``"official"`` (normalised distance).
        backend: EDT backend, see :func:`mambaseg.losses.distance_maps.boundary_distance`.

    Returns:
        float32 (B, H, W) weights in [0, 1]; all zero for images without a boundary.
    """
    if mode not in _MODES:
        raise ValueError(f"boundary_weight_map: mode must be one of {_MODES}, got {mode!r}")
    dist, has_boundary = boundary_distance(target, backend=backend)
    dmax = dist.flatten(1).amax(dim=1).clamp_min(1.0).view(-1, 1, 1)
    norm = dist / dmax
    if mode == "official":
        w = norm
    else:
        w = 1.0 - norm + 1.0 / dmax
    return w * has_boundary.view(-1, 1, 1).to(w.dtype)


@register_loss("boundary")
class BoundaryDistanceLoss(nn.Module):
    """VMB-UNet hybrid loss ``alpha * (BCE + Dice) + beta * mean(W * (sigmoid(z) - y)^2)``.

    Args:
        alpha: weight of the BCE + Dice term.
        beta: weight of the distance-map penalty.
        mode: ``"boundary"`` (default; emphasises pixels near the boundary) or ``"official"`` (released map,
            larger far from the boundary); see the module docstring for both formulas.
        edt_backend: ``"auto"``, ``"scipy"`` or ``"torch"``.
        **base_kwargs: forwarded to ``create_loss("bce_dice", ...)`` (e.g. its BCE/Dice weights).

    Call:
        ``loss(logits (B, 1, H, W), target (B, H, W) int64 in {0, 1}) -> scalar``.
    """

    binary_only = True  # one output channel (B, 1, ...): the trainer refuses it for multi-class data up front

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.1,
        mode: str = "boundary",
        edt_backend: str = "auto",
        **base_kwargs,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"BoundaryDistanceLoss: mode must be one of {_MODES}, got {mode!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mode = mode
        self.edt_backend = edt_backend
        self.base = create_loss("bce_dice", **base_kwargs)

    def penalty(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The distance-weighted squared error ``mean(W * (sigmoid(z) - y)^2)`` (scalar)."""
        with torch.no_grad():
            w = boundary_weight_map(target, mode=self.mode, backend=self.edt_backend)
        z = upcast(logits[:, 0])
        err = torch.sigmoid(z) - target.to(z.dtype)
        return (w.to(z.dtype) * err * err).mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _binary_target(logits, target, "BoundaryDistanceLoss")
        loss = self.alpha * self.base(logits, target)
        if self.beta != 0.0:
            loss = loss + self.beta * self.penalty(logits, target)
        return loss

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, mode={self.mode!r}, edt_backend={self.edt_backend!r}"

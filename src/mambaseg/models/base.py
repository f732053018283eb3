"""Base class shared by every segmentation network: logits out, explicit input-size contract."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SegmentationModel", "nearest_valid_size"]


def nearest_valid_size(size: int, stride: int) -> int:
    """The multiple of ``stride`` closest to ``size`` (ties go up, never below ``stride``)."""
    lo = max(stride, (size // stride) * stride)
    hi = lo + stride
    return lo if size - lo < hi - size else hi


class SegmentationModel(nn.Module):
    """Base for all models: ``forward(x)`` maps (B, in_chans, H, W) to logits (B, num_classes, H, W).

    Subclasses set ``num_classes``, ``in_chans`` and ``stride`` (H and W must be multiples of it) and call
    :meth:`check_input` at the top of ``forward``. Models with a fixed input size set ``fixed_size``.
    """

    num_classes: int = 1
    in_chans: int = 3
    stride: int = 32
    fixed_size: tuple[int, int] | None = None

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with an actionable message if ``x`` is not a valid input."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects a 4-D tensor (B, C, H, W), got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} was built with in_chans={self.in_chans} but the input has {x.shape[1]} "
                "channels; rebuild with create_model(..., in_chans=...)"
            )
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if self.fixed_size is not None and (h, w) != tuple(self.fixed_size):
            raise ValueError(
                f"{type(self).__name__} was built for img_size={tuple(self.fixed_size)} (H, W) but got {(h, w)}; "
                f"resize the input or rebuild with create_model(..., img_size=({h}, {w}))"
            )
        s = self.stride
        if h % s or w % s:
            raise ValueError(
                f"{type(self).__name__} needs H and W divisible by {s}, got {(h, w)}; "
                f"nearest valid size is {(nearest_valid_size(h, s), nearest_valid_size(w, s))}"
            )

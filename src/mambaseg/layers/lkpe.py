"""LKPE / FLKPE: MSVM-UNet's patch expanding by pointwise expansion, depthwise convolution and pixel shuffle."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LKPE", "FLKPE", "pixel_shuffle_pc"]


def pixel_shuffle_pc(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Channels-first pixel shuffle whose channel index is ordered (row offset, column offset, channel).

    Args:
        x: (B, s*s*c, H, W).
        scale: s.

    Returns:
        (B, c, s*H, s*W) with ``out[b, ch, s*i + p1, s*j + p2] = x[b, (p1*s + p2)*c + ch, i, j]``. (``F.pixel_shuffle``
        orders the channels (c, p1, p2) instead.)
    """
    b, ch, h, w = x.shape
    if ch % (scale * scale):
        raise ValueError(f"channels ({ch}) must be divisible by scale**2 = {scale * scale}")
    c = ch // (scale * scale)
    x = x.view(b, scale, scale, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, c, h * scale, w * scale)


class LKPE(nn.Module):
    """Patch expanding of MSVM-UNet: 1x1 conv (dim -> out_dim*s^2, bias) -> BN -> ReLU -> depthwise k x k conv
    (bias) -> pixel shuffle x s -> LayerNorm over the out_dim channels.

    Args:
        dim: input channels.
        out_dim: output channels (default ``dim // 2``: the decoder's LKPE halves the width and doubles the size).
        scale: upsampling factor s.
        kernel_size: depthwise kernel (3 in the paper and code, despite the "large kernel" name).

    Shape:
        (B, dim, H, W) -> (B, out_dim, s*H, s*W).
    """

    def __init__(self, dim: int, out_dim: int | None = None, scale: int = 2, kernel_size: int = 3) -> None:
        super().__init__()
        out_dim = out_dim or dim // 2
        hidden = out_dim * scale * scale
        self.dim, self.out_dim, self.scale = dim, out_dim, scale
        self.expand = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=True),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=True),
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle_pc(self.expand(x), self.scale)
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.norm.normalized_shape, self.norm.weight, self.norm.bias,
                         self.norm.eps)
        return x.permute(0, 3, 1, 2)


class FLKPE(nn.Module):
    """Final LKPE: x4 expansion keeping ``dim`` channels (hidden ``16 * dim``), then a 1x1 conv classifier (bias).

    Shape:
        (B, dim, H, W) -> (B, num_classes, 4H, 4W) logits.
    """

    def __init__(self, dim: int, num_classes: int, scale: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        self.up = LKPE(dim, out_dim=dim, scale=scale, kernel_size=kernel_size)
        self.out = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(x))

"""MS-FFN: the multi-scale feed-forward network of MSVM-UNet's decoder blocks (channels-first)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from mambaseg.layers.linear2d import Linear2d

__all__ = ["MSFFN", "MultiScaleDWConv"]


class MultiScaleDWConv(nn.Module):
    """``x + sum_k DWConv_k(x)``: parallel depthwise convolutions (no bias, 'same' padding) plus identity."""

    def __init__(self, dim: int, kernel_sizes: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        for k in kernel_sizes:
            if k < 1 or k % 2 == 0:
                raise ValueError(f"kernel sizes must be odd and positive, got {tuple(kernel_sizes)}")
        self.dw_convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False)
                                      for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.dw_convs:
            if conv.kernel_size == (1, 1):
                # a 1x1 depthwise conv is a per-channel scale; the multiply avoids slow grouped-conv paths on CPU
                out = out + x * conv.weight.view(1, -1, 1, 1)
            else:
                out = out + conv(x)
        return out


class MSFFN(nn.Module):
    """Multi-scale FFN: ``fc2( MSConv( GELU( fc1(x) ) ) )`` with MSConv = identity + depthwise k x k for k in
    ``kernel_sizes`` (MSVM-UNet Eq. 4-5; default kernels {1, 3, 5}).

    Args:
        in_features: channels C.
        hidden_features: hidden width (MSVM-UNet: 4C).
        out_features: output channels (default C).
        kernel_sizes: depthwise kernel sizes.
        drop: dropout after the activation and after fc2.

    Shape:
        (B, C, H, W) -> (B, out_features, H, W).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 kernel_sizes: Sequence[int] = (1, 3, 5), drop: float = 0.0) -> None:
        super().__init__()
        hidden = hidden_features or in_features
        self.fc1 = Linear2d(in_features, hidden)
        self.act = nn.GELU()
        self.multiscale_conv = MultiScaleDWConv(hidden, kernel_sizes)
        self.fc2 = Linear2d(hidden, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        x = self.multiscale_conv(x)
        return self.drop(self.fc2(x))

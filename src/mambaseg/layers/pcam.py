"""PCAM: the channel-attention block in DermoMamba's bottleneck (released class name ``PCA``).

For an input ``x`` (B, C, H, W):

* ``c = mean_HW(x)`` (B, C), ``u = DWConv_k(x)`` (depthwise k x k, 'same' padding, bias), ``c' = mean_HW(u)``;
* ``w = sigmoid(c' * (1 + softmax_C(c' - c)))`` (B, C);
* output ``u * w`` (per-channel scaling of the depthwise-filtered input).

DermoMamba then adds the input back outside this module: ``x + PCAM(x)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PCAM"]


class PCAM(nn.Module):
    """Depthwise-conv channel attention (DermoMamba bottleneck).

    Args:
        channels: number of input (= output) channels.
        kernel_size: odd depthwise kernel size (9 in DermoMamba).

    Shapes:
        input (B, C, H, W) -> output (B, C, H, W).
    """

    def __init__(self, channels: int, kernel_size: int = 9) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"PCAM: channels must be >= 1, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"PCAM: kernel_size must be a positive odd int, got {kernel_size}")
        self.channels = channels
        self.dw = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def attention(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Channel weights ``w`` (B, C) from the input ``x`` and its filtered version ``u``."""
        c = x.mean(dim=(2, 3))
        c_f = u.mean(dim=(2, 3))
        return torch.sigmoid(c_f * (1.0 + torch.softmax(c_f - c, dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns: (B, C, H, W) = DWConv(x) scaled per channel."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"PCAM expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        u = self.dw(x)
        return u * self.attention(x, u)[:, :, None, None]

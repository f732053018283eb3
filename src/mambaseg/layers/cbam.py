"""CBAM: convolutional block attention module (channel gate, then spatial gate).

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018. Used by VMB-UNet (inside every SSC block)
and by DermoMamba (on every skip connection). The two papers' released versions differ only in small details, which
are constructor options here:

============================  ==========================  =============================
detail                        VMB-UNet (``cbam.py``)      DermoMamba (``CBAM.py``)
============================  ==========================  =============================
shared MLP bias               no (``mlp_bias=False``)     yes (``mlp_bias=True``)
BatchNorm after 7x7 conv      no (``spatial_norm=False``) yes, momentum 0.01
============================  ==========================  =============================

Math for an input ``x`` of shape (B, C, H, W), reduction ``r``:

* channel gate: ``M_c = sigmoid(MLP(maxpool_HW(x)) + MLP(avgpool_HW(x)))`` with
  ``MLP = Conv1x1(C -> C/r) -> ReLU -> Conv1x1(C/r -> C)``; ``x <- M_c * x``;
* spatial gate: ``M_s = sigmoid([BN](Conv7x7([max_C(x); mean_C(x)])))`` (2 -> 1 channels, no bias); ``x <- M_s * x``.

There is no residual connection around the module.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["CBAM"]


class CBAM(nn.Module):
    """Channel + spatial attention gate on channels-first features.

    Args:
        channels: number of input (= output) channels ``C``.
        reduction: channel reduction of the shared MLP; the hidden width is ``max(1, C // reduction)``.
        spatial_kernel: odd kernel size of the spatial-attention convolution.
        mlp_bias: bias in the two 1x1 convolutions of the shared MLP (DermoMamba: True, VMB-UNet: False).
        spatial_norm: BatchNorm2d(1) after the spatial convolution (DermoMamba: True, VMB-UNet: False).

    Shapes:
        input (B, C, H, W) -> output (B, C, H, W).

    Example:
        >>> cbam = CBAM(64)
        >>> cbam(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        spatial_kernel: int = 7,
        mlp_bias: bool = False,
        spatial_norm: bool = False,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"CBAM: channels must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"CBAM: reduction must be >= 1, got {reduction}")
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"CBAM: spatial_kernel must be a positive odd int, got {spatial_kernel}")
        self.channels = channels
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=mlp_bias),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=mlp_bias),
        )
        # named ``conv`` so VMB-UNet's released state-dict keys (``cbam.conv.weight``) load unchanged
        self.conv = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)
        self.spatial_norm = nn.BatchNorm2d(1, momentum=0.01) if spatial_norm else None

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Channel attention weights ``M_c`` of shape (B, C, 1, 1), in (0, 1)."""
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        avg = torch.mean(x, dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(mx) + self.mlp(avg))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial attention weights ``M_s`` of shape (B, 1, H, W), in (0, 1)."""
        pooled = torch.cat([torch.amax(x, dim=1, keepdim=True), torch.mean(x, dim=1, keepdim=True)], dim=1)
        s = self.conv(pooled)
        if self.spatial_norm is not None:
            s = self.spatial_norm(s)
        return torch.sigmoid(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the channel gate then the spatial gate.

        Args:
            x: features (B, C, H, W).

        Returns:
            Gated features (B, C, H, W).
        """
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"CBAM expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)

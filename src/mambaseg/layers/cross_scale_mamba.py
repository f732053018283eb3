"""Cross-Scale Mamba Block (CSMB) of DermoMamba, and its axial depthwise convolution unit.

For a block of width ``dim`` (divisible by 4) and chunk width ``d = dim / 4``:

1. split the channels into four chunks ``x1..x4``;
2. chunk ``i`` (i = 1, 2, 3) goes through an axial depthwise unit with dilation ``r_i`` (1, 2, 3):
   ``u = x + DW3x3_r(DW(7x1)_r(DW(1x7)_r(x)))`` ('same' padding, biases), then through a VSS block of width ``d``
   (LayerNorm eps 1e-6 -> SS2D -> residual). The released code uses ONE VSS block for the three chunks
   (``share_vss=True``, the default here); ``share_vss=False`` gives each chunk its own VSS block;
3. chunk 4 passes unchanged;
4. concatenate, BatchNorm(dim), ReLU.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from mambaseg.layers.vss_block import VSSBlock

__all__ = ["AxialDepthwise", "CrossScaleMambaBlock"]


class AxialDepthwise(nn.Module):
    """Axial depthwise unit: (1 x k) then (k x 1) then 3 x 3 depthwise convs, all dilated, plus identity.

    Args:
        channels: input (= output) channels.
        kernel_size: length ``k`` of the two axial kernels (7 in DermoMamba).
        dilation: dilation of all three convolutions.

    Shapes:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, kernel_size: int = 7, dilation: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"AxialDepthwise: kernel_size must be odd, got {kernel_size}")
        k, r = kernel_size, dilation
        pad = r * (k // 2)
        self.mixer_w = nn.Conv2d(channels, channels, (1, k), padding=(0, pad), dilation=r, groups=channels)
        self.mixer_h = nn.Conv2d(channels, channels, (k, 1), padding=(pad, 0), dilation=r, groups=channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=r, dilation=r, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W). Returns: (B, C, H, W)."""
        return x + self.conv(self.mixer_h(self.mixer_w(x)))


class CrossScaleMambaBlock(nn.Module):
    """DermoMamba's CSMB on channels-first features.

    Args:
        dim: channels (divisible by 4).
        dilations: dilations of the axial units of chunks 1..3 (length 3; chunk 4 is the identity).
        share_vss: one VSS block shared by the three chunks (released code) instead of one per chunk.
        d_state: SSM state size of the VSS blocks.
        kernel_size: axial kernel length.

    Shapes:
        (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(
        self,
        dim: int,
        dilations: Sequence[int] = (1, 2, 3),
        share_vss: bool = True,
        d_state: int = 16,
        kernel_size: int = 7,
    ) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"CrossScaleMambaBlock: dim must be divisible by 4, got {dim}")
        if len(dilations) != 3:
            raise ValueError(f"CrossScaleMambaBlock: need 3 dilations (chunk 4 is the identity), got {dilations}")
        self.dim = dim
        self.share_vss = share_vss
        d = dim // 4
        self.dw = nn.ModuleList(AxialDepthwise(d, kernel_size, r) for r in dilations)
        n_vss = 1 if share_vss else len(dilations)
        self.vss = nn.ModuleList(VSSBlock(d, d_state=d_state) for _ in range(n_vss))
        for blk in self.vss:
            blk.ln_1.eps = 1e-6  # DermoMamba's VSS block keeps the 1e-6 LayerNorm default
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, dim, H, W). Returns: (B, dim, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"CrossScaleMambaBlock expects (B, {self.dim}, H, W), got {tuple(x.shape)}")
        chunks = list(torch.chunk(x, 4, dim=1))
        for i, dw in enumerate(self.dw):
            vss = self.vss[0 if self.share_vss else i]
            chunks[i] = vss(dw(chunks[i]).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.act(self.bn(torch.cat(chunks, dim=1)))

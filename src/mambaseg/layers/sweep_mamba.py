"""Sweep Mamba (multi-axial Mamba) of DermoMamba's bottleneck.

For a channels-first input ``x`` (B, C, H, W) and reduced width ``c = C / ratio``:

1. channels-last; ``skip = x``; ``t = Linear_{C -> c}(LayerNorm(x))``, shape (B, H, W, c);
2. three SS2D branches sweep the three planes of the (H, W, c) feature volume, each scanning two axes and treating
   the third as SS2D channels:

   * ``b1 = SS2D_c(t)`` scans the (H, W) plane (channels = the c features);
   * ``b2``: ``t`` as (B, W, c, H) -> ``SS2D_H`` scans the (W, c) plane with the H axis as channels;
   * ``b3``: ``t`` as (B, c, H, W) -> ``SS2D_W`` scans the (c, H) plane with the W axis as channels;

   each branch is permuted back to (B, H, W, c);
3. ``g = SiLU(t)``; ``out = Linear_{c -> C}(g * b1 + g * b2 + g * b3) + s * skip`` (s a learnable scalar, init 1);
4. channels-first, BatchNorm(C), ReLU.

Because branches 2 and 3 use the spatial sizes as SS2D widths, the module is built for one bottleneck size
``(height, width)``. The released code hard-codes 6 and 8 (a 192 x 256 input at stride 32); here they are arguments.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mambaseg.layers.ss2d import SS2D

__all__ = ["SweepMamba"]


class SweepMamba(nn.Module):
    """Three-plane SS2D mixing on a (H, W, C/ratio) volume.

    Args:
        dim: input (= output) channels C.
        height: bottleneck height H the module is built for.
        width: bottleneck width W the module is built for.
        ratio: channel reduction ``C / c`` before the sweeps.
        d_state: SSM state size.

    Shapes:
        (B, dim, height, width) -> (B, dim, height, width).
    """

    def __init__(self, dim: int, height: int, width: int, ratio: int = 8, d_state: int = 16) -> None:
        super().__init__()
        if dim % ratio:
            raise ValueError(f"SweepMamba: dim={dim} must be divisible by ratio={ratio}")
        if height < 1 or width < 1:
            raise ValueError(f"SweepMamba: height and width must be >= 1, got {(height, width)}")
        self.dim = dim
        self.size = (int(height), int(width))
        c = dim // ratio
        self.ln = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, c)
        self.mamba1 = SS2D(c, d_state=d_state)
        self.mamba2 = SS2D(int(height), d_state=d_state)
        self.mamba3 = SS2D(int(width), d_state=d_state)
        self.act = nn.SiLU()
        self.proj_out = nn.Linear(c, dim)
        self.scale = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm2d(dim)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, dim, height, width). Returns: (B, dim, height, width)."""
        if x.dim() != 4 or x.shape[1] != self.dim or tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"SweepMamba was built for (B, {self.dim}, {self.size[0]}, {self.size[1]}), got {tuple(x.shape)}"
            )
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        skip = x
        t = self.proj_in(self.ln(x))  # (B, H, W, c)
        b1 = self.mamba1(t)
        b2 = self.mamba2(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, W, c, H) -> back
        b3 = self.mamba3(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, c, H, W) -> back
        g = self.act(t)
        out = self.proj_out(g * b1 + g * b2 + g * b3) + skip * self.scale
        return self.relu(self.bn(out.permute(0, 3, 1, 2)))

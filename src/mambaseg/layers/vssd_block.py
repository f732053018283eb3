"""VSSD block: conditional position encodings around an SSD mixer and an MLP (channels-last)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from mambaseg.layers.drop import DropPath
from mambaseg.layers.ssd_mixer import SSD2D

__all__ = ["VSSDBlock"]


class VSSDBlock(nn.Module):
    """``x += DWConv3x3(x)``; ``x += DropPath(SSD2D(LN(x)))``; ``x += DWConv3x3(x)``; ``x += DropPath(MLP(LN(x)))``.

    Args:
        dim: channels C.
        num_heads: attention-style heads of the block; the SSD head width is ``expand * C / num_heads``.
        mlp_ratio: MLP hidden width ratio (HeteroMedSeg: 3).
        drop_path: stochastic depth of both residual branches.
        mode: SSD mixer mode (``"noncausal"``, ``"causal"`` or ``"bidirectional"``).
        **ssd_kw: further :class:`SSD2D` options (d_state, expand, ngroups, chunk_size, ...).

    Shape:
        (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 mode: str = "noncausal", expand: float = 2.0, **ssd_kw: Any) -> None:
        super().__init__()
        d_inner = int(expand * dim)
        if d_inner % num_heads:
            raise ValueError(f"expand * dim ({d_inner}) must be divisible by num_heads ({num_heads})")
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SSD2D(dim, expand=expand, headdim=d_inner // num_heads, mode=mode, **ssd_kw)
        self.drop_path = DropPath(drop_path)
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    @staticmethod
    def _cpe(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._cpe(self.cpe1, x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self._cpe(self.cpe2, x)
        return x + self.drop_path(self.mlp(self.norm2(x)))

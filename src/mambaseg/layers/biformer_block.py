"""BiFormer block (bi-level routing attention + MLP) as used in the BRAU-Net++ / HeteroMedSeg decoder."""

from __future__ import annotations

import torch
import torch.nn as nn

from mambaseg.layers.drop import DropPath
from mambaseg.layers.routing_attention import BiLevelRoutingAttention

__all__ = ["BiFormerBlock"]


class BiFormerBlock(nn.Module):
    """BiFormer block on channels-last maps.

    ``faithful=True`` (default) reproduces the released BRAU-Net++/HeteroMedSeg block: ``t = LN1(x)``;
    ``t = t + DWConv3x3(t)``; ``t = t + DropPath(BRA(LN1(t)))``; ``t = t + DropPath(MLP(LN2(t)))`` -- the block input is
    not added back and LN1 is applied twice. ``faithful=False`` is BiFormer's own block:
    ``x = x + DWConv3x3(x)``; ``x = x + DropPath(BRA(LN1(x)))``; ``x = x + DropPath(MLP(LN2(x)))``.
    Both have the same parameters. LayerNorm eps 1e-6; MLP C -> mlp_ratio*C -> C with GELU.

    Args:
        dim: channels C.
        num_heads: attention heads.
        topk: routed regions per region.
        n_win: region grid (None: given at call time).
        mlp_ratio: MLP width ratio (HeteroMedSeg: 3).
        drop_path: stochastic depth.
        side_dwconv: LePE kernel of the attention.
        faithful: see above.

    Shape:
        (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, topk: int, n_win: int | tuple[int, int] | None = None,
                 mlp_ratio: float = 3.0, drop_path: float = 0.0, side_dwconv: int = 5, faithful: bool = True) -> None:
        super().__init__()
        self.faithful = faithful
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BiLevelRoutingAttention(dim, num_heads=num_heads, topk=topk, n_win=n_win, side_dwconv=side_dwconv)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, n_win: int | tuple[int, int] | None = None) -> torch.Tensor:
        if self.faithful:
            x = self.norm1(x)
        x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x), n_win=n_win))
        return x + self.drop_path(self.mlp(self.norm2(x)))

"""Bi-level routing attention module (BiFormer's BRA with the 'qkvo' parameterisation and LePE)."""

from __future__ import annotations

import torch
import torch.nn as nn

from mambaseg.ops.routing_attention import bi_level_routing_attention

__all__ = ["BiLevelRoutingAttention"]


class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention on channels-last maps.

    One linear layer gives per-pixel q, k (``qk_dim`` each) and v (``dim``); regions route to their ``topk`` most
    related regions (non-differentiable, values not re-weighted), pixels attend to all pixels of the routed regions,
    a depthwise ``side_dwconv`` x ``side_dwconv`` convolution of the value map (LePE) is added, then an output linear.

    Args:
        dim: channels C of the input and output.
        num_heads: attention heads.
        topk: routed regions per region; clamped to the number of regions when the map has fewer
            (then the attention is dense).
        n_win: regions per side (int or (nh, nw)); ``None`` = given at call time (see :meth:`forward`).
        qk_dim: width of q and k (default ``dim``).
        side_dwconv: LePE kernel size (0 disables it).
        scale: attention/routing logit scale, default ``qk_dim ** -0.5`` (the full width, as BiFormer).

    Shape:
        (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, topk: int, n_win: int | tuple[int, int] | None = None,
                 qk_dim: int | None = None, side_dwconv: int = 5, scale: float | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"dim ({dim}) and qk_dim ({self.qk_dim}) must be divisible by num_heads ({num_heads})")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.num_heads = num_heads
        self.topk = topk
        self.n_win = n_win
        self.scale = scale if scale is not None else self.qk_dim ** -0.5
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim)
        self.wo = nn.Linear(dim, dim)
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        )

    def forward(self, x: torch.Tensor, n_win: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Args:
            x: (B, H, W, C) map.
            n_win: region grid for this call; overrides the module's ``n_win`` (one of them must be set).
        """
        n_win = n_win if n_win is not None else self.n_win
        if n_win is None:
            raise ValueError("BiLevelRoutingAttention needs n_win (set at construction or passed to forward)")
        nh, nw = (n_win, n_win) if isinstance(n_win, int) else tuple(n_win)
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        topk = min(self.topk, nh * nw)
        out = bi_level_routing_attention(q, k, v, n_win=(nh, nw), topk=topk, num_heads=self.num_heads,
                                         scale=self.scale)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.wo(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, topk={self.topk}, n_win={self.n_win}"

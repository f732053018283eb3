"""SCSA: spatial and channel synergistic attention (shared multi-semantic spatial + progressive channel attention)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SCSA"]


class SCSA(nn.Module):
    """Spatial and channel synergistic attention (Si et al., 2024) as used on HeteroMedSeg's skip concatenations.

    1. Shared multi-semantic spatial attention: the map is averaged along W (giving a (C, H) profile) and along H
       ((C, W)); the channels are split into 4 groups, group ``i`` gets a depthwise 1-D convolution of kernel
       ``group_kernel_sizes[i]`` (the same four convolutions serve both profiles); GroupNorm(4) + sigmoid give
       per-row and per-column gates that multiply the map.
    2. Progressive channel self-attention: the gated map is average-pooled with a ``window_size`` window,
       GroupNorm(1), depthwise 1x1 q/k/v, multi-head attention BETWEEN CHANNELS (head_dim x head_dim, scale
       head_dim^-0.5), mean over positions, sigmoid -> one weight per channel that multiplies the gated map.

    Args:
        dim: channels (divisible by 4 and by ``num_heads``).
        num_heads: heads of the channel attention.
        window_size: pooling window of step 2; maps smaller than it are pooled with a window equal to their size.
        group_kernel_sizes: the four 1-D kernel sizes.
        qkv_bias: biases of the 1x1 q/k/v convolutions.

    Shape:
        (B, C, H, W) -> (B, C, H, W). No residual.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7,
                 group_kernel_sizes: Sequence[int] = (3, 5, 7, 9), qkv_bias: bool = False) -> None:
        super().__init__()
        if dim % 4 or dim % num_heads:
            raise ValueError(f"SCSA dim must be divisible by 4 and by num_heads={num_heads}, got dim={dim}")
        if len(group_kernel_sizes) != 4:
            raise ValueError(f"group_kernel_sizes must have 4 entries, got {tuple(group_kernel_sizes)}")
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.head_dim = dim // num_heads
        g = dim // 4
        self.group_chans = g
        self.dwconvs = nn.ModuleList(nn.Conv1d(g, g, k, padding=k // 2, groups=g) for k in group_kernel_sizes)
        self.norm_h = nn.GroupNorm(4, dim)
        self.norm_w = nn.GroupNorm(4, dim)
        self.norm = nn.GroupNorm(1, dim)
        self.q = nn.Conv2d(dim, dim, 1, bias=qkv_bias, groups=dim)
        self.k = nn.Conv2d(dim, dim, 1, bias=qkv_bias, groups=dim)
        self.v = nn.Conv2d(dim, dim, 1, bias=qkv_bias, groups=dim)

    def _profile_gate(self, prof: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        parts = prof.split(self.group_chans, dim=1)
        return torch.sigmoid(norm(torch.cat([conv(p) for conv, p in zip(self.dwconvs, parts)], dim=1)))

    @staticmethod
    def _pointwise(conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
        """A depthwise 1x1 conv computed as a per-channel affine map (avoids slow grouped-conv paths on CPU)."""
        out = y * conv.weight.view(1, -1, 1, 1)
        return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"SCSA expects (B, {self.dim}, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        gate_h = self._profile_gate(x.mean(dim=3), self.norm_h)  # (B, C, H)
        gate_w = self._profile_gate(x.mean(dim=2), self.norm_w)  # (B, C, W)
        x = x * gate_h[:, :, :, None] * gate_w[:, :, None, :]

        kh, kw = min(self.window_size, h), min(self.window_size, w)
        y = self.norm(F.avg_pool2d(x, (kh, kw), stride=(kh, kw)))
        m, d = self.num_heads, self.head_dim
        q = self._pointwise(self.q, y).flatten(2).view(b, m, d, -1)  # (B, m, d, N): channels are the tokens
        k = self._pointwise(self.k, y).flatten(2).view(b, m, d, -1)
        v = self._pointwise(self.v, y).flatten(2).view(b, m, d, -1)
        attn = F.scaled_dot_product_attention(q, k, v, scale=d ** -0.5)  # (B, m, d, N)
        weight = torch.sigmoid(attn.mean(-1).reshape(b, c, 1, 1))
        return x * weight

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}"

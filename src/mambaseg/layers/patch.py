"""Patch embedding, merging (downsampling) and expanding (upsampling) for channels-last maps (VMamba v0 layout)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PatchEmbed2D", "PatchMerging2D", "PatchExpand2D", "FinalPatchExpand2D"]


class PatchEmbed2D(nn.Module):
    """Conv(k=p, s=p) then LayerNorm: (B, in_chans, H, W) -> (B, H/p, W/p, embed_dim). Keys ``proj``, ``norm``."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x2 neighbourhood -> channels, LayerNorm(4C), Linear(4C -> 2C): (B, H, W, C) -> (B, H/2, W/2, 2C).

    Neighbour order (VMamba v0): (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
    Keys ``norm``, ``reduction``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:
            raise ValueError(f"PatchMerging2D needs an even map size, got {(h, w)}")
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def _pixel_shuffle_last(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, H, W, s*s*c) with channel order (p1, p2, c) -> (B, H*s, W*s, c)."""
    b, h, w, ch = x.shape
    c = ch // (scale * scale)
    x = x.view(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * scale, w * scale, c)


class PatchExpand2D(nn.Module):
    """Linear(2d -> 4d) then 2x2 pixel shuffle and LayerNorm(d): (B, H, W, 2d) -> (B, 2H, 2W, d). Keys ``expand``, ``norm``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.expand = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixel_shuffle_last(self.expand(x), 2))


class FinalPatchExpand2D(nn.Module):
    """Linear(d -> s*d) then s x s pixel shuffle and LayerNorm(d/s): (B, H, W, d) -> (B, sH, sW, d/s)."""

    def __init__(self, dim: int, scale: int = 4) -> None:
        super().__init__()
        if dim % scale:
            raise ValueError(f"FinalPatchExpand2D needs dim divisible by scale, got dim={dim}, scale={scale}")
        self.dim = dim
        self.scale = scale
        self.expand = nn.Linear(dim, scale * dim, bias=False)
        self.norm = nn.LayerNorm(dim // scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixel_shuffle_last(self.expand(x), self.scale))

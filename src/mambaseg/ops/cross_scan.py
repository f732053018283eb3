"""SS2D's four raster scan orders (cross-scan) and their exact adjoint (cross-merge).

Orders, for a map of H x W positions (L = H * W):
    0: row-major (l = h * W + w), 1: column-major (l = w * H + h), 2: reverse of 0, 3: reverse of 1.
``cross_merge`` is the adjoint (transpose) of ``cross_scan``: it maps every sequence back to row-major positions and
sums the four, so ``<cross_scan(x), y> == <x, cross_merge(y)>`` exactly.
"""

from __future__ import annotations

import torch

__all__ = ["cross_scan", "cross_merge", "RasterScan"]


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 4, D, H*W) in the four SS2D orders."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects (B, D, H, W), got {tuple(x.shape)}")
    b, d, h, w = x.shape
    row = x.flatten(2)
    col = x.transpose(2, 3).flatten(2)
    fwd = torch.stack([row, col], dim=1)  # (B, 2, D, L)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 4, D, H*W) -> (B, D, H*W): map each order back to row-major positions and sum."""
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[-1] != H * W:
        raise ValueError(f"cross_merge expects (B, 4, D, {H}*{W}), got {tuple(y.shape)}")
    b, _, d, L = y.shape
    s = y[:, 0:2] + y[:, 2:4].flip(-1)  # undo the reversal
    row = s[:, 0]
    col = s[:, 1].view(b, d, W, H).transpose(2, 3).reshape(b, d, L)
    return row + col


class RasterScan:
    """The default SS2D scan plug-in (4 raster orders), with the interface any scan pattern implements.

    Attributes:
        k: number of sequences produced per map.
    """

    k = 4

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        return cross_scan(x)

    def merge(self, y: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return cross_merge(y, H, W)

    def __repr__(self) -> str:
        return "RasterScan(k=4)"

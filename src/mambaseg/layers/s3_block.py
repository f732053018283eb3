"""S3 block (Slice Selective Scan) of SliceMamba: a VSS block whose SS2D reads the map by slicing scans.

``x <- x + DropPath(BSS(LN(x)))`` where BSS is VM-UNet's SS2D (in_proj -> depthwise conv -> SiLU -> K = 4
selective scans -> LayerNorm -> gate SiLU(z) -> out_proj) with the four raster orders replaced by the
bidirectional slicing orders of :class:`mambaseg.ops.SliceScan` (horizontal strips of ``m`` rows, vertical
strips of ``n`` columns, both directions). No MLP branch. Parameter shapes do not depend on the slice
setting, so an S3 block has exactly the parameters (and state-dict keys ``ln_1``, ``self_attention``) of a
VMamba-v0 VSS block of the same width. Maps not divisible by the slice size use the scan's ``"drop"`` padding (strips
formed on the padded grid, padded positions left out of the sequences; see :mod:`mambaseg.ops.slice_scan`).
See the SliceMamba paper, §III.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from mambaseg.layers.vss_block import VSSBlock
from mambaseg.ops.slice_scan import SLICE_CHOICES, SliceScan

__all__ = ["S3Block", "S3ChoiceBlock"]


def _slice_pair(slice_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(slice_size, int) and not isinstance(slice_size, bool):
        return slice_size, slice_size
    pair = tuple(slice_size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"slice_size must be a positive int or a pair (m, n) of positive ints, got {slice_size!r}")
    return int(pair[0]), int(pair[1])


class S3Block(VSSBlock):
    """Residual slicing-scan block on channels-last maps, (B, H, W, C) -> (B, H, W, C).

    Args:
        hidden_dim: channels C.
        drop_path: stochastic-depth probability of the residual branch.
        d_state: SSM state size.
        slice_size: ``(m, n)`` = (horizontal-strip height, vertical-strip width), or one int for both.
        **ss2d_kwargs: further :class:`mambaseg.layers.SS2D` options (``ssm_ratio``, ...).

    Example:
        >>> blk = S3Block(96, slice_size=(2, 4))
        >>> blk(torch.randn(1, 16, 16, 96)).shape
        torch.Size([1, 16, 16, 96])
    """

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        d_state: int = 16,
        slice_size: int | Sequence[int] = (4, 4),
        **ss2d_kwargs: Any,
    ) -> None:
        if "scan" in ss2d_kwargs:
            raise TypeError("S3Block sets the scan itself; pass slice_size=(m, n) instead of scan=")
        m, n = _slice_pair(slice_size)
        super().__init__(hidden_dim, drop_path=drop_path, d_state=d_state, scan=SliceScan(m, n),
                         **ss2d_kwargs)
        self.slice_size = (m, n)

    def extra_repr(self) -> str:
        return f"slice_size={self.slice_size}"


class S3ChoiceBlock(nn.Module):
    """One searchable position of the SliceMamba supernet: one S3 block per slice choice, only one runs.

    The candidate blocks share nothing (separate weights). ``choice`` selects the block that
    :meth:`forward` runs; it is set by the supernet for every forward pass.

    Args:
        hidden_dim: channels C.
        drop_path: stochastic-depth probability (the same for every candidate).
        d_state: SSM state size.
        choices: slice settings ``(m, n)`` of the candidates (default: the 4 SliceMamba choices).
        **kwargs: further :class:`S3Block` options.
    """

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        d_state: int = 16,
        choices: Sequence[Sequence[int]] = SLICE_CHOICES,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.choices = [_slice_pair(c) for c in choices]
        self.candidates = nn.ModuleList(
            [S3Block(hidden_dim, drop_path=drop_path, d_state=d_state, slice_size=c, **kwargs) for c in self.choices]
        )
        self.choice = len(self.choices) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.candidates[self.choice](x)

    def extra_repr(self) -> str:
        return f"choice={self.choice} of {self.choices}"

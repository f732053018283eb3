"""VSS block (x + DropPath(SS2D(LN(x)))) and the stages built from it (VMamba v0 keys: ``ln_1``, ``self_attention``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from mambaseg.layers.drop import DropPath
from mambaseg.layers.ss2d import SS2D

__all__ = ["VSSBlock", "VSSLayer", "VSSLayerUp"]


class VSSBlock(nn.Module):
    """Residual SS2D block on channels-last maps; no MLP branch (VMamba v0, MLP ratio 0)."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, **ss2d_kwargs: Any) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(d_model=hidden_dim, d_state=d_state, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


def _drop_list(drop_path: float | Sequence[float], depth: int) -> list[float]:
    if isinstance(drop_path, (int, float)):
        return [float(drop_path)] * depth
    dp = [float(p) for p in drop_path]
    if len(dp) != depth:
        raise ValueError(f"need {depth} drop-path rates, got {len(dp)}")
    return dp


class VSSLayer(nn.Module):
    """Encoder stage: ``depth`` VSS blocks then an optional downsample module (e.g. PatchMerging2D)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: float | Sequence[float] = 0.0,
        downsample: nn.Module | None = None,
        d_state: int = 16,
        block: type[nn.Module] = VSSBlock,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(
            [block(dim, drop_path=p, d_state=d_state, **block_kwargs) for p in _drop_list(drop_path, depth)]
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class VSSLayerUp(nn.Module):
    """Decoder stage: an optional upsample module (e.g. PatchExpand2D) then ``depth`` VSS blocks."""

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: float | Sequence[float] = 0.0,
        upsample: nn.Module | None = None,
        d_state: int = 16,
        block: type[nn.Module] = VSSBlock,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.upsample = upsample
        self.blocks = nn.ModuleList(
            [block(dim, drop_path=p, d_state=d_state, **block_kwargs) for p in _drop_list(drop_path, depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x

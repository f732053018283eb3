"""VSS block, VMamba-v2 flavour: channels-first, LayerNorm2d, SS2Dv2 mixer, MLP or MS-FFN."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from mambaseg.layers.drop import DropPath
from mambaseg.layers.linear2d import Linear2d
from mambaseg.layers.ms_ffn import MSFFN
from mambaseg.layers.norm import LayerNorm2d
from mambaseg.layers.ss2d_v2 import SS2Dv2

__all__ = ["VSSBlockV2", "Mlp2d"]


class Mlp2d(nn.Module):
    """Channels-first MLP ``fc2(drop(GELU(fc1(x))))`` with 1x1 linear layers (keys ``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear2d(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VSSBlockV2(nn.Module):
    """Pre-norm residual block: ``x + DropPath(SS2Dv2(LN(x)))`` then ``x + DropPath(FFN(LN2(x)))``.

    Keys follow VMamba-v2 (``norm``, ``op``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) so release checkpoints load.

    Args:
        hidden_dim: channels C.
        drop_path: stochastic-depth probability of both residual branches.
        mlp_ratio: FFN hidden width = mlp_ratio * C (0 disables the FFN branch).
        ffn: ``"mlp"`` (VMamba) or ``"msffn"`` (MSVM-UNet's multi-scale FFN).
        ms_kernel_sizes: depthwise kernels of the MS-FFN.
        mlp_drop: dropout inside the FFN.
        **ss2d_kw: options of :class:`SS2Dv2` (d_state, ssm_ratio, dt_rank, d_conv, conv_bias, scan, ...).

    Shape:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, ffn: str = "mlp",
                 ms_kernel_sizes: Sequence[int] = (1, 3, 5), mlp_drop: float = 0.0, **ss2d_kw: Any) -> None:
        super().__init__()
        if ffn not in ("mlp", "msffn"):
            raise ValueError(f"ffn must be 'mlp' or 'msffn', got {ffn!r}")
        self.norm = LayerNorm2d(hidden_dim)
        self.op = SS2Dv2(hidden_dim, **ss2d_kw)
        self.drop_path = DropPath(drop_path)
        self.mlp: nn.Module | None = None
        if mlp_ratio > 0:
            hidden = int(hidden_dim * mlp_ratio)
            self.norm2 = LayerNorm2d(hidden_dim)
            if ffn == "mlp":
                self.mlp = Mlp2d(hidden_dim, hidden, drop=mlp_drop)
            else:
                self.mlp = MSFFN(hidden_dim, hidden, kernel_sizes=ms_kernel_sizes, drop=mlp_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

"""SS2D, VMamba-v2 flavour (``forward_type="v05_noz"``): channels-first, no gate, LayerNorm2d output norm.

Used by MSVM-UNet's encoder (VMamba ``vssm1_tiny_0230s``) and decoder: d_state 1, ssm_ratio 1, dt_rank ceil(C/16),
depthwise 3x3 without bias. Forward on (B, C, H, W), with D = ssm_ratio * C and K scan sequences:
in_proj (1x1) -> depthwise conv -> SiLU -> K sequences -> per-direction x_proj (dt, B, C) and dt_proj -> selective scan
(softplus(dt + dt_bias), A = -exp(A_logs), D skip) -> merge -> LayerNorm2d(D) -> out_proj (1x1).
Parameter names and shapes follow VMamba's ``SS2D`` (``in_proj``, ``conv2d``, ``x_proj_weight``, ``dt_projs_weight``,
``dt_projs_bias``, ``A_logs``, ``Ds``, ``out_norm``, ``out_proj``), so release checkpoints load unchanged.
"""

from __future__ import annotations


import torch
import torch.nn as nn

from mambaseg.layers.linear2d import Linear2d
from mambaseg.layers.norm import LayerNorm2d
from mambaseg.layers.ss2d import ScanPattern, SSMScanBase

__all__ = ["SS2Dv2"]


class SS2Dv2(SSMScanBase):
    """Gate-free channels-first 2-D selective-scan mixer (VMamba v2, ``v05_noz``).

    Args:
        d_model: channels C.
        d_state: SSM state size N (VMamba-v2 tiny: 1).
        ssm_ratio: expansion, D = ssm_ratio * C (1.0: no expansion).
        dt_rank: rank of the dt projection or "auto" = ceil(C / 16).
        d_conv: depthwise conv kernel (odd; < 2 disables the conv).
        conv_bias: bias of the depthwise conv.
        bias: bias of in_proj / out_proj.
        dropout: dropout on the output.
        dt_min, dt_max, dt_init_floor: dt bias initialisation range.
        scan: scan pattern (``.k``, ``.scan``, ``.merge``); default the 4 raster orders of
            :func:`mambaseg.ops.cross_scan` / :func:`mambaseg.ops.cross_merge`.

    Shape:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        bias: bool = False,
        dropout: float = 0.0,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan: ScanPattern | None = None,
    ) -> None:
        super().__init__()
        d_inner = self.init_dims(d_model, d_state, ssm_ratio, dt_rank, scan)
        k = self.scan.k
        self.in_proj = Linear2d(d_model, d_inner, bias=bias)
        self.conv2d = (
            nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias)
            if d_conv > 1 else None
        )
        self.act = nn.SiLU()
        self.init_ssm_parameters(k, d_inner, dt_min, dt_max, dt_init_floor)
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) after conv + SiLU -> merged scan output (B, D, H, W) in x's dtype."""
        b, d, h, w = x.shape
        if self.fused_inference(x):  # CPU inference on the fused kernel: one channels-last copy, no scanned copies
            y = self.scan_merge_channels_last(x.permute(0, 2, 3, 1))
            return y.to(x.dtype).permute(0, 3, 1, 2)  # channels-last memory: LayerNorm2d reads it without a copy
        # inputs keep their dtype (the backend computes in fp32); SSM parameters enter in >= fp32
        return self.scan_merge(x, upcast_inputs=False).view(b, d, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.d_model:
            raise ValueError(f"SS2Dv2 expects (B, {self.d_model}, H, W), got {tuple(x.shape)}")
        z = self.in_proj(x)
        if self.conv2d is not None:
            z = self.conv2d(z)
        z = self.act(z)
        y = self.out_norm(self.forward_core(z).to(x.dtype))
        return self.dropout(self.out_proj(y))

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"scan={self.scan}")

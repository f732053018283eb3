"""SS2D, VMamba-v2 flavour (``forward_type="v05_noz"``): channels-first, no gate, LayerNorm2d output norm.

Used by MSVM-UNet's encoder (VMamba ``vssm1_tiny_0230s``) and decoder: d_state 1, ssm_ratio 1, dt_rank ceil(C/16),
depthwise 3x3 without bias. Forward on (B, C, H, W), with D = ssm_ratio * C and K scan sequences:
in_proj (1x1) -> depthwise conv -> SiLU -> K sequences -> per-direction x_proj (dt, B, C) and dt_proj -> selective scan
(softplus(dt + dt_bias), A = -exp(A_logs), D skip) -> merge -> LayerNorm2d(D) -> out_proj (1x1).
Parameter names and shapes follow VMamba's ``SS2D`` (``in_proj``, ``conv2d``, ``x_proj_weight``, ``dt_projs_weight``,
``dt_projs_bias``, ``A_logs``, ``Ds``, ``out_norm``, ``out_proj``), so release checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mambaseg.layers.linear2d import Linear2d
from mambaseg.layers.norm import LayerNorm2d
from mambaseg.layers.ss2d import ScanPattern, dt_bias_init
from mambaseg.ops import RasterScan, selective_scan

__all__ = ["SS2Dv2"]


class SS2Dv2(nn.Module):
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
        backend: selective-scan backend (None = context / env / auto).

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
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = d_inner = int(ssm_ratio * d_model)
        if d_inner < 1:
            raise ValueError(f"ssm_ratio * d_model must be >= 1, got {ssm_ratio} * {d_model}")
        self.dt_rank = dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan = scan if scan is not None else RasterScan()
        self.backend = backend
        k = self.scan.k
        self.in_proj = Linear2d(d_model, d_inner, bias=bias)
        self.conv2d = (
            nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias)
            if d_conv > 1 else None
        )
        self.act = nn.SiLU()
        bound = 1.0 / math.sqrt(d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        std = dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank).uniform_(-std, std))
        self.dt_projs_bias = nn.Parameter(
            torch.stack([dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor) for _ in range(k)])
        )
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.A_logs._no_weight_decay = True  # type: ignore[attr-defined]
        self.Ds._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) after conv + SiLU -> merged scan output (B, D, H, W) in float32."""
        b, d, h, w = x.shape
        k = self.scan.k
        xs = self.scan.scan(x)  # (B, K, D, L); L = H*W for permutations, more for padded scan patterns
        L = xs.shape[-1]
        # grouped per-direction projections (VMamba v05 computes them as grouped 1x1 conv1d; same maths)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight.to(xs.dtype))
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.to(dts.dtype))
        work = torch.float64 if xs.dtype == torch.float64 else torch.float32  # SSM parameters kept in >= fp32
        y = selective_scan(
            xs.reshape(b, k * d, L),
            dts.reshape(b, k * d, L),
            -torch.exp(self.A_logs.to(work)),
            Bs.contiguous(),
            Cs.contiguous(),
            self.Ds.to(work),
            delta_bias=self.dt_projs_bias.to(work).reshape(-1),
            delta_softplus=True,
            backend=self.backend,
        )
        return self.scan.merge(y.view(b, k, d, L), h, w).view(b, d, h, w)

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

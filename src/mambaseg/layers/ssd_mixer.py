"""SSD2D: the Mamba-2 (SSD) token mixer of VSSD blocks on 2-D maps (causal / non-causal / bidirectional switch)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.ops.ssd import SSD_MODES, ssd_scan

__all__ = ["SSD2D"]


class SSD2D(nn.Module):
    """Mamba-2 style mixer over the H x W tokens of a channels-last map (VSSD / HeteroMedSeg encoder).

    in_proj (no bias) -> [z (D), xBC (D + 2*G*N), dt (nheads)]; xBC -> depthwise ``d_conv`` x ``d_conv`` conv over
    (H, W) -> SiLU -> split x (D), B (G*N), C (G*N); dt = softplus(dt + dt_bias); A = -exp(A_log) per head;
    y = SSD(x, dt, A, B, C, D) over the row-major token order; y = LayerNorm(y) * z (raw z, no SiLU, as VSSD);
    out_proj (no bias). D = expand * d_model, nheads = D / headdim.

    Args:
        d_model: channels C.
        d_state: N (VSSD: 64).
        expand: D = expand * C.
        headdim: channels per SSD head (HeteroMedSeg: 64, so nheads = 2C / 64).
        ngroups: G, groups of heads sharing B and C.
        d_conv: depthwise kernel.
        conv_bias: bias of the depthwise conv.
        mode: ``"noncausal"`` (VSSD NC-SSD, default), ``"causal"`` (Mamba-2 scan, the released HeteroMedSeg code) or
            ``"bidirectional"`` (forward + backward causal scans, shared parameters); see :mod:`mambaseg.ops.ssd`.
        chunk_size: chunk length of the causal scans (memory/speed only).
        A_init_range, dt_min, dt_max, dt_init_floor: initialisation ranges (Mamba-2 defaults).

    Shape:
        (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, d_model: int, d_state: int = 64, expand: float = 2.0, headdim: int = 64, ngroups: int = 1,
                 d_conv: int = 3, conv_bias: bool = True, bias: bool = False, mode: str = "noncausal",
                 chunk_size: int = 64, A_init_range: tuple[float, float] = (1.0, 16.0), dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        if mode not in SSD_MODES:
            raise ValueError(f"mode must be one of {SSD_MODES}, got {mode!r}")
        self.d_model, self.d_state, self.ngroups = d_model, d_state, ngroups
        self.mode, self.chunk_size = mode, chunk_size
        self.d_inner = d_inner = int(expand * d_model)
        if d_inner % headdim:
            raise ValueError(f"expand * d_model ({d_inner}) must be divisible by headdim ({headdim})")
        self.headdim = headdim
        self.nheads = nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(f"nheads ({nheads}) must be divisible by ngroups ({ngroups})")
        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias)
        self.conv2d = nn.Conv2d(conv_dim, conv_dim, d_conv, padding=(d_conv - 1) // 2, groups=conv_dim, bias=conv_bias)
        self.act = nn.SiLU()
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"SSD2D expects (B, H, W, {self.d_model}), got {tuple(x.shape)}")
        b, h, w, _ = x.shape
        gn = self.ngroups * self.d_state
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)
        xbc = self.act(self.conv2d(xbc.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        xs, Bm, Cm = xbc.reshape(b, h * w, -1).split([self.d_inner, gn, gn], dim=-1)
        dt = F.softplus(dt.reshape(b, h * w, self.nheads) + self.dt_bias)
        y = ssd_scan(
            xs.reshape(b, h * w, self.nheads, self.headdim), dt, -torch.exp(self.A_log.float()),
            Bm.reshape(b, h * w, self.ngroups, self.d_state), Cm.reshape(b, h * w, self.ngroups, self.d_state),
            self.D, mode=self.mode, chunk_size=self.chunk_size,
        )
        y = self.norm(y.reshape(b, h, w, self.d_inner)) * z
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, nheads={self.nheads}, "
                f"ngroups={self.ngroups}, mode={self.mode!r}")

"""SS2D: VMamba v0's 2-D selective-scan mixer (state-dict keys kept for official checkpoints).

Forward on a channels-last map X (B, H, W, C), with D = ssm_ratio * C and K scan sequences (4 raster orders by default):
in_proj -> [x, z]; x -> depthwise 3x3 conv -> SiLU -> K sequences -> per-direction x_proj (dt, B, C) and dt_proj ->
selective scan (softplus(dt + dt_bias), A = -exp(A_logs), D skip) in float32 -> merge back -> LayerNorm(D) ->
* SiLU(z) -> out_proj.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.ops import RasterScan, selective_scan
from mambaseg.ops.selective_scan import _resolve, _tracing

__all__ = ["SS2D", "SSMScanBase", "ScanPattern"]


class ScanPattern(Protocol):
    """What SS2D needs from a scan pattern (e.g. :class:`mambaseg.ops.RasterScan`, SliceMamba's slicing scans)."""

    k: int

    def scan(self, x: torch.Tensor) -> torch.Tensor: ...  # (B, D, H, W) -> (B, K, D, L)

    def merge(self, y: torch.Tensor, H: int, W: int) -> torch.Tensor: ...  # (B, K, D, L) -> (B, D, L)


def dt_bias_init(d: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> torch.Tensor:
    """Inverse-softplus of log-uniform time steps in [dt_min, dt_max] (clamped at ``floor``)."""
    dt = torch.exp(torch.rand(d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class SSMScanBase(nn.Module):
    """Per-direction SSM parameters and the scan -> merge core shared by SS2D (v0) and SS2Dv2.

    Parameter names follow VMamba (``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``);
    subclasses call :meth:`init_dims` and then :meth:`init_ssm_parameters`.
    """

    scan: ScanPattern
    d_state: int
    dt_rank: int

    def init_dims(self, d_model: int, d_state: int, ssm_ratio: float, dt_rank: int | str,
                  scan: ScanPattern | None) -> int:
        """Set the widths and the scan pattern (default: the 4 raster orders); returns D = d_inner.

        The scan backend is not a layer setting: it is resolved per call (``mambaseg.ops.use_backend``, the
        environment, auto), so one model runs with any backend and its checkpoint records none.
        """
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = d_inner = int(ssm_ratio * d_model)
        if d_inner < 1:
            raise ValueError(f"ssm_ratio * d_model must be >= 1, got {ssm_ratio} * {d_model}")
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan = scan if scan is not None else RasterScan()
        return d_inner

    def init_ssm_parameters(
        self, k: int, d_inner: int, dt_min: float, dt_max: float, dt_init_floor: float
    ) -> None:
        """Create the stacked per-direction parameters with VMamba's initialisation."""
        dt_rank, d_state = self.dt_rank, self.d_state
        # per-direction projections stored stacked as raw parameters; default nn.Linear init
        bound = 1.0 / math.sqrt(d_inner)
        self.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        std = dt_rank**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank).uniform_(-std, std))
        self.dt_projs_bias = nn.Parameter(
            torch.stack([dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor) for _ in range(k)])
        )
        # S4D-real: A_n = -n for every channel and direction
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.A_logs._no_weight_decay = True  # type: ignore[attr-defined]
        self.Ds._no_weight_decay = True  # type: ignore[attr-defined]

    def scan_merge(self, x: torch.Tensor, upcast_inputs: bool) -> torch.Tensor:
        """(B, D, H, W) -> merged scan output (B, D, L), L = H*W.

        The SSM parameters always enter the scan in float32 (float64 for float64 inputs), and the state math runs
        in that precision. ``upcast_inputs`` (v0) asks for the scan output in that precision too; u, delta, B, C
        keep their dtype either way (e.g. bf16 under autocast: upcasting them first would give the kernel the same
        numbers but keep fp32 copies alive for the backward pass). Without it (v2) the output has u's dtype.
        """
        on_fused_cpu = not x.is_cuda and _resolve(None, False, _tracing()) == "cpu_fused"  # backend chosen per call
        if type(self.scan) is RasterScan and on_fused_cpu:
            return self._scan_merge_mirrored(x, upcast_inputs)
        b, d, h, w = x.shape
        k = self.scan.k
        xs = self.scan.scan(x)  # (B, K, D, L); L = H*W for permutations, more for padded scan patterns
        L = xs.shape[-1]
        # (K, C, D) @ (B, K, D, L): batched products whose every matrix is read along L (a multiple of 8), never along
        # C = dt_rank + 2N (odd for dt_rank 1): einsum's (B*L, C) layout made cuBLAS fall back to 1-element-aligned
        # kernels, 1.4 ms per weight gradient at DermoMamba's first stage on an H100
        x_dbl = torch.matmul(self.x_proj_weight.to(xs.dtype), xs)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight.to(dts.dtype), dts)
        f = torch.float64 if xs.dtype == torch.float64 else torch.float32
        Bs, Cs = Bs.contiguous(), Cs.contiguous()
        y = selective_scan(
            xs.reshape(b, k * d, L),
            dts.reshape(b, k * d, L),
            -torch.exp(self.A_logs.to(f)),
            Bs,
            Cs,
            self.Ds.to(f),
            delta_bias=self.dt_projs_bias.to(f).reshape(-1),
            delta_softplus=True,
            out_dtype=f if upcast_inputs else None,
        )
        return self.scan.merge(y.view(b, k, d, L), h, w)

    def fused_inference(self, x: torch.Tensor) -> bool:
        """Whether :meth:`scan_merge_channels_last` runs this call: the 4 raster orders, CPU tensors, the fused CPU
        backend chosen for this call, and nothing to differentiate (grad mode off, e.g. ``torch.inference_mode``,
        or no input or parameter requiring grad)."""
        if x.is_cuda or type(self.scan) is not RasterScan:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        return _resolve(None, False, _tracing()) == "cpu_fused"

    def scan_merge_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """Inference-only :meth:`scan_merge` for the 4 raster orders on the fused CPU kernel, channels-last in and out:
        (B, H, W, D) -> merged scan output (B, H, W, D) in float32 (float64 for float64 inputs).

        x_proj of all 4 directions is one matrix product over the positions of the map (the projection acts
        position by position, so no scanned copies are needed); the kernel (:func:`ss2d_scan_cpu`) applies dt_proj,
        reads each direction in its order by index arithmetic and adds the 4 outputs at their positions, so neither
        the cross-scan, the (4, D, L) delta and output nor the merge is materialised. The same numbers as
        :meth:`scan_merge` up to float rounding order. Check :meth:`fused_inference` first.
        """
        from mambaseg.ops.selective_scan_cpu import ss2d_scan_cpu

        d = x.shape[-1]
        x = x.contiguous()
        xdbl = F.linear(x, self.x_proj_weight.to(x.dtype).reshape(-1, d))  # (B, H, W, 4 * (R + 2N))
        f = torch.float64 if x.dtype == torch.float64 else torch.float32
        return ss2d_scan_cpu(
            x,
            xdbl,
            self.dt_projs_weight,
            -torch.exp(self.A_logs.to(f)),
            self.Ds.to(f),
            delta_bias=self.dt_projs_bias.to(f).reshape(-1),
            delta_softplus=True,
        )

    def _scan_merge_mirrored(self, x: torch.Tensor, upcast_inputs: bool) -> torch.Tensor:
        """:meth:`scan_merge` for the 4 raster orders on the fused CPU kernel, without the flipped copies.

        Orders 2 and 3 are orders 0 and 1 read backwards. The projections act position by position, so they are
        computed on the two unflipped sequences and the kernel scans the last two directions from the end
        (``mirrored=True``); its output is already in position order, so the merge needs no flips either.
        The same numbers as the generic path (up to float rounding order).
        """
        from mambaseg.ops.selective_scan_cpu import selective_scan_cpu

        b, d, h, w = x.shape
        L = h * w
        xs = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)  # (B, 2, D, L): orders 0 and 1
        c = self.x_proj_weight.shape[1]
        wx = self.x_proj_weight.to(xs.dtype).view(2, 2, c, d)  # direction k = 2 * r + j reads sequence j
        x_dbl = torch.einsum("bjdl,rjcd->brjcl", xs, wx).reshape(b, 4, c, L)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.to(dts.dtype))
        f = torch.float64 if xs.dtype == torch.float64 else torch.float32
        y = selective_scan_cpu(
            xs.reshape(b, 2 * d, L),
            dts.reshape(b, 4 * d, L),
            -torch.exp(self.A_logs.to(f)),
            Bs.contiguous(),
            Cs.contiguous(),
            self.Ds.to(f),
            delta_bias=self.dt_projs_bias.to(f).reshape(-1),
            delta_softplus=True,
            out_dtype=f if upcast_inputs else None,
            mirrored=True,
        ).view(b, 2, 2, d, L)
        s = y[:, 0] + y[:, 1]  # (B, 2, D, L): each order plus its reverse, in position order
        return s[:, 0] + s[:, 1].view(b, d, w, h).transpose(2, 3).reshape(b, d, L)


class SS2D(SSMScanBase):
    """2-D selective-scan mixer, channels-last (B, H, W, C) -> (B, H, W, C).

    Args:
        d_model: channels C.
        d_state: SSM state size N.
        ssm_ratio: expansion, D = ssm_ratio * C.
        dt_rank: rank of the dt projection or "auto" = ceil(C / 16).
        d_conv: depthwise conv kernel (odd).
        conv_bias: bias of the depthwise conv.
        bias: bias of in_proj / out_proj.
        dt_min, dt_max, dt_init_floor: dt bias initialisation range.
        scan: scan pattern object (``.k``, ``.scan``, ``.merge``); default the 4 SS2D raster orders.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan: ScanPattern | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            raise TypeError(f"SS2D got unexpected options: {sorted(unused)}")
        d_inner = self.init_dims(d_model, d_state, ssm_ratio, dt_rank, scan)
        k = self.scan.k
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias)
        self.act = nn.SiLU()
        self.init_ssm_parameters(k, d_inner, dt_min, dt_max, dt_init_floor)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) after conv+SiLU -> merged scan output (B, H, W, D) in float32 (float64 for float64 inputs)."""
        b, d, h, w = x.shape
        # the scan always runs in float32 (float64 when the module is float64), also under autocast
        y = self.scan_merge(x, upcast_inputs=True)  # (B, D, L) float32
        return y.transpose(1, 2).reshape(b, h, w, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)
        x, z = xz.chunk(2, dim=-1)
        if self.fused_inference(x):  # CPU inference on the fused kernel: channels-last end to end
            x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)))
            y = self.scan_merge_channels_last(x.permute(0, 2, 3, 1))  # (B, H, W, D) float32
        else:
            x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
            y = self.forward_core(x)
        # the float32 scan output meets the norm's own dtype: float32 for a float32 model (also under autocast,
        # where layer_norm runs in float32), bfloat16/float16 for a model converted with .bfloat16()/.half()
        y = self.out_norm(y.to(self.out_norm.weight.dtype))
        y = y * F.silu(z).to(y.dtype)
        return self.out_proj(y.to(z.dtype))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, scan={self.scan}"

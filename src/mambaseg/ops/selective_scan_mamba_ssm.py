"""Adapter to ``mamba_ssm``'s CUDA ``selective_scan_fn`` (used only when that package is importable)."""

from __future__ import annotations

import torch

__all__ = ["selective_scan_mamba_ssm"]


def selective_scan_mamba_ssm(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Call mamba_ssm's kernel with our argument convention (identical layout: grouped B/C are (b, G, N, L))."""
    from mambaseg.ops.selective_scan_ref import prepare_scan_inputs
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore[import-not-found]

    prepare_scan_inputs(u[:, :, :1], delta[:, :, :1], A, B[..., :1], C[..., :1], D, delta_bias, False)  # shape check
    y = selective_scan_fn(
        u.contiguous(),
        delta.contiguous(),
        A.float().contiguous(),
        B.float().contiguous(),
        C.float().contiguous(),
        None if D is None else D.float(),
        z=None,
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
    )
    return y.to(out_dtype or u.dtype)

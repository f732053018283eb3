"""Public selective-scan entry point dispatching to an explicitly resolved backend."""

from __future__ import annotations

import torch

from mambaseg.ops.backend import load_backend_fn, resolve_backend
from mambaseg.utils.compile import assume_constant_result

__all__ = ["selective_scan"]


@assume_constant_result
def _resolve(backend: str | None, is_cuda: bool, tracing: bool) -> str:
    """:func:`resolve_backend`; under torch.compile it runs at trace time and its answer is baked into the compiled
    graph (the dispatch code is not traceable; a later change of context or environment does not re-trace)."""
    return resolve_backend(backend, is_cuda, tracing)


def _tracing() -> bool:
    """Whether torch.compile / torch.export (incl. ONNX export) or TorchScript tracing is tracing this call."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    *,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mamba-1 selective scan as SS2D calls it.

    Args:
        u: inputs (batch, K*d_inner, L).
        delta: time steps before bias/softplus (batch, K*d_inner, L).
        A: state matrix (K*d_inner, N), real and negative.
        B: input projections, grouped (batch, K, N, L) (channel c uses group c // d_inner) or shared (batch, N, L).
        C: output projections, same layouts as ``B``.
        D: skip weights (K*d_inner,) or None.
        delta_bias: added to ``delta`` before the softplus, (K*d_inner,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: "ref", "torch", "cpu_fused", "triton", "mamba_ssm" or None (context > env
            ``MAMBASEG_SCAN_BACKEND`` > auto; auto is "cpu_fused" on CPU when its kernel builds, "torch" while
            tracing for torch.compile / export).
        out_dtype: dtype of ``y`` (default ``u``'s). With bf16 ``u``/``delta`` and ``out_dtype=torch.float32`` the
            Triton backend reads the bf16 inputs directly (and keeps them, not fp32 copies, for the backward pass)
            and writes an fp32 ``y``: the same numbers as upcasting the inputs first, with half the saved memory.

    Returns:
        y (batch, K*d_inner, L) in ``out_dtype`` (default ``u``'s dtype); state math runs in float32 (float64 for float64 inputs).

    Example:
        >>> y = selective_scan(u, dt, A, B, C, D, delta_bias=b, delta_softplus=True, backend="torch")
    """
    fn = load_backend_fn(_resolve(backend, u.is_cuda, _tracing()))
    return fn(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=delta_softplus, out_dtype=out_dtype)

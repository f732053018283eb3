"""Sequential reference of the Mamba-1 selective scan: the executable specification.

Math (per channel d, state n, position t, with h_0 = 0)::

    delta'_t[d] = softplus(delta_t[d] + delta_bias[d])   if delta_softplus else delta_t[d] + delta_bias[d]
    h_t[d, n]   = exp(delta'_t[d] * A[d, n]) * h_{t-1}[d, n] + delta'_t[d] * B_t[g(d), n] * u_t[d]
    y_t[d]      = sum_n C_t[g(d), n] * h_t[d, n] + D[d] * u_t[d]

where g(d) = d // (channels / groups) selects the B/C group ("grouped" B/C: one per SS2D scan direction).
State math runs in float32, or float64 when ``u`` is float64. Slow (a Python loop over L); use it for tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "prepare_scan_inputs", "check_scan_shapes"]


def check_scan_shapes(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ValueError with a clear message unless the shapes are those of :func:`mambaseg.ops.selective_scan`."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, channels, L); got u {tuple(u.shape)}, delta {tuple(delta.shape)}")
    batch, dim, seqlen = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (channels={dim}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = t.shape == (batch, n, seqlen)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2] == n and t.shape[3] == seqlen and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch={batch}, N={n}, L={seqlen}) or (batch, groups, N, L) with groups dividing "
                f"{dim}; got {tuple(t.shape)}"
            )
    if D is not None and D.shape != (dim,):
        raise ValueError(f"D must be ({dim},), got {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (dim,):
        raise ValueError(f"delta_bias must be ({dim},), got {tuple(delta_bias.shape)}")


def prepare_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """Validate shapes, upcast, apply bias/softplus and expand grouped B/C to (batch, groups, N, L).

    Returns (u, delta', A, B, C, compute_dtype) with B and C shaped (batch, G, N, L).
    """
    check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    cdt = torch.float64 if u.dtype == torch.float64 else torch.float32
    delta = delta.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = B.to(cdt)
    C = C.to(cdt)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    return u.to(cdt), delta, A.to(cdt), B, C, cdt


def selective_scan_ref(
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
    """Sequential selective scan (see module docstring). Shapes as :func:`mambaseg.ops.selective_scan`."""
    out_dtype = out_dtype or u.dtype
    u_, dt, A_, B_, C_, cdt = prepare_scan_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, dim, seqlen = u_.shape
    groups = B_.shape[1]
    # expand B/C groups to channels: (batch, dim, N, L)
    Bx = B_.repeat_interleave(dim // groups, dim=1) if groups > 1 else B_.expand(batch, dim, *B_.shape[2:])
    Cx = C_.repeat_interleave(dim // C_.shape[1], dim=1) if C_.shape[1] > 1 else C_.expand(batch, dim, *C_.shape[2:])
    h = u_.new_zeros(batch, dim, A_.shape[1])
    ys = []
    for t in range(seqlen):
        dA = torch.exp(dt[:, :, t, None] * A_)
        h = dA * h + (dt[:, :, t] * u_[:, :, t])[:, :, None] * Bx[:, :, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u_.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(cdt)[None, :, None] * u_
    return y.to(out_dtype)

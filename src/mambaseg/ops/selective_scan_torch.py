"""Chunked selective scan in plain PyTorch: the CPU / export default backend.

The sequence is cut into ``nc`` chunks of T positions and processed in three vectorised loops:

1. a loop over the T positions, run for all chunks at once, gives each chunk's end state started from zero;
2. a loop over the chunks carries the true state across chunk boundaries with the chunk decay
   ``exp(A * sum(delta))``;
3. a second loop over the T positions reruns every chunk from its true entering state and reads out ``y``.

Only non-positive numbers (``delta * A <= 0``) are ever exponentiated, so stiff decays underflow gracefully to zero
instead of overflowing, and the (batch, channels, L, N) state tensor is never materialised in the forward pass.
About ``2T + L/T`` Python steps instead of ``L``.
Differentiable through autograd; float64 inputs keep float64 state math (for tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mambaseg.ops.selective_scan_ref import prepare_scan_inputs

__all__ = ["selective_scan_torch", "default_chunk_size"]


def default_chunk_size(seqlen: int) -> int:
    """Chunk length that balances the two loops (about sqrt(L)), clamped to [4, 64]."""
    return int(min(64, max(4, 2 ** round(math.log2(max(1, math.isqrt(max(1, seqlen))))))))


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Chunked selective scan. Shapes as :func:`mambaseg.ops.selective_scan`."""
    out_dtype = u.dtype
    u_, dt, A_, B_, C_, cdt = prepare_scan_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, dim, seqlen = u_.shape
    n = A_.shape[1]
    if seqlen == 0:
        return u.new_zeros(u.shape)
    groups = B_.shape[1]
    cgroups = C_.shape[1]
    T = int(chunk_size) if chunk_size else default_chunk_size(seqlen)
    nc = -(-seqlen // T)
    pad = nc * T - seqlen
    x_in = dt * u_  # (b, d, L)
    if pad:
        # zero delta => decay 1 and zero input at padded positions (they only follow the real ones)
        dt = F.pad(dt, (0, pad))
        x_in = F.pad(x_in, (0, pad))
        B_ = F.pad(B_, (0, pad))
        C_ = F.pad(C_, (0, pad))
    # channels are laid out group-major (d = g * dpg + j); work on (b, g, dpg, nc, ...) views so grouped and shared
    # B/C broadcast the same way
    g = groups
    if cgroups != groups:  # unusual mixed layout: expand both to per-channel groups of equal count
        g = dim
        B_ = B_.repeat_interleave(dim // groups, dim=1)
        C_ = C_.repeat_interleave(dim // cgroups, dim=1)
    dpg = dim // g
    # time-major copies so that every step reads contiguous slabs
    dtc = dt.view(batch, g, dpg, nc, T).permute(4, 0, 1, 2, 3).contiguous()  # (T, b, g, dpg, nc)
    xc = x_in.view(batch, g, dpg, nc, T).permute(4, 0, 1, 2, 3).contiguous()
    Bc = B_.view(batch, g, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(3).contiguous()  # (T, b, g, 1, nc, n)
    Cc = C_.view(batch, g, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(3).contiguous()
    Ag = A_.view(g, dpg, n)[None, :, :, None, :]  # (1, g, dpg, 1, n)
    inplace = not torch.is_grad_enabled() or not any(
        t.requires_grad for t in (dtc, xc, Bc, Cc, Ag)
    )  # inference: update the state in place (fewer allocations); training: out-of-place for autograd
    # pass 1: chunk-end states of every chunk started from zero (all chunks at once, T steps)
    h = None
    for t in range(T):
        if h is None:
            h = xc[0, ..., None] * Bc[0]
        elif inplace:
            h.mul_(torch.exp(dtc[t, ..., None] * Ag)).addcmul_(xc[t, ..., None], Bc[t])
        else:
            h = torch.exp(dtc[t, ..., None] * Ag) * h + xc[t, ..., None] * Bc[t]
    # carry across chunks: state entering chunk c; chunk decay exp(A * sum dt) <= 1
    if nc > 1:
        chunk_decay = torch.exp(dtc.sum(0)[..., None] * Ag)  # (b, g, dpg, nc, n)
        carry = [h.new_zeros(batch, g, dpg, n)]
        for c in range(nc - 1):
            carry.append(chunk_decay[:, :, :, c] * carry[-1] + h[:, :, :, c])
        h = torch.stack(carry, dim=3)
    else:
        h = torch.zeros_like(h)
    # pass 2: rerun every chunk from its true entering state and read out y = C . h
    ys = []
    for t in range(T):
        if inplace:
            h.mul_(torch.exp(dtc[t, ..., None] * Ag)).addcmul_(xc[t, ..., None], Bc[t])
        else:
            h = torch.exp(dtc[t, ..., None] * Ag) * h + xc[t, ..., None] * Bc[t]
        ys.append((h * Cc[t]).sum(-1))
    y = torch.stack(ys, dim=-1)  # (b, g, dpg, nc, T)
    y = y.reshape(batch, dim, nc * T)[:, :, :seqlen]
    if D is not None:
        y = y + D.to(cdt)[None, :, None] * u_
    return y.to(out_dtype)

"""Chunked selective scan in plain PyTorch: the CPU / export default backend.

The sequence is cut into ``nc`` chunks of T positions and processed in three vectorised loops:

1. a loop over the T positions, run for all chunks at once, gives each chunk's end state started from zero;
2. a loop over the chunks carries the true state across chunk boundaries with the chunk decay
   ``exp(A * sum(delta))``;
3. a second loop over the T positions reruns every chunk from its true entering state and reads out ``y``.

Only non-positive numbers (``delta * A <= 0``) are ever exponentiated, so stiff decays underflow gracefully to zero
instead of overflowing, and the (batch, channels, L, N) state tensor is never materialised in the forward pass.
About ``2T + L/T`` Python steps instead of ``L``.
Differentiable: training goes through a custom autograd function that saves only the inputs and the state entering
each chunk and recomputes the rest in its backward (exact; memory O(L/T) states instead of O(L) per scan call).
Float64 inputs keep float64 state math (for tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mambaseg.ops.selective_scan_ref import prepare_scan_inputs
from mambaseg.utils.compile import assume_constant_result

__all__ = ["selective_scan_torch", "default_chunk_size"]


@assume_constant_result  # integer arithmetic on a static size: a constant for torch.compile
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
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Chunked selective scan. Shapes as :func:`mambaseg.ops.selective_scan`."""
    out_dtype = out_dtype or u.dtype
    u_, dt, A_, B_, C_, cdt = prepare_scan_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, dim, seqlen = u_.shape
    n = A_.shape[1]
    if seqlen == 0:
        return u.new_zeros(u.shape)
    groups = B_.shape[1]
    cgroups = C_.shape[1]
    T = int(chunk_size) if chunk_size else default_chunk_size(int(seqlen))  # int(): a symbolic size, specialised
    # ceil(L / T) as a floor division of non-negative numbers: the TorchScript ONNX exporter records size arithmetic
    # with ONNX's truncating integer Div, which gave -(-L // T) = floor(L / T) in the graph (a negative pad for L = 784)
    nc = (seqlen + T - 1) // T
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
    inference = not torch.is_grad_enabled() or not any(t.requires_grad for t in (dt, x_in, B_, C_, A_))
    # TorchScript tracing (ONNX export) and torch.compile need pure ops: no in-place or out= writes
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if tracing:
        inference = False
    if inference:
        # time-major, chunk-before-channel layout: the readout C . h is a batched matrix-vector product
        dtc = dt.view(batch, g, dpg, nc, T).permute(4, 0, 1, 3, 2).contiguous()  # (T, b, g, nc, dpg)
        xc = x_in.view(batch, g, dpg, nc, T).permute(4, 0, 1, 3, 2).contiguous()
        Bc = B_.view(batch, g, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(4).contiguous()  # (T, b, g, nc, 1, n)
        Cc = C_.view(batch, g, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(-1).contiguous()  # (T, b, g, nc, n, 1)
        Ag = A_.view(g, dpg, n)[None, :, None, :, :]  # (1, g, 1, dpg, n)
        y = _chunked_scan_inplace(dtc, xc, Bc, Cc, Ag)  # (T, b, g, nc, dpg)
        y = y.permute(1, 2, 4, 3, 0)
    else:
        # time-major copies so that every step reads contiguous slabs
        dtc = dt.view(batch, g, dpg, nc, T).permute(4, 0, 1, 2, 3).contiguous()  # (T, b, g, dpg, nc)
        xc = x_in.view(batch, g, dpg, nc, T).permute(4, 0, 1, 2, 3).contiguous()
        Bc = B_.view(batch, g, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(3).contiguous()  # (T, b, g, 1, nc, n)
        Cc = C_.view(batch, g, n, nc, T).permute(4, 0, 1, 3, 2).unsqueeze(3).contiguous()
        Ag = A_.view(g, dpg, n)[None, :, :, None, :]  # (1, g, dpg, 1, n)
        scan = _chunked_scan_pure if tracing else _chunked_scan_autograd
        y = scan(dtc, xc, Bc, Cc, Ag)  # (b, g, dpg, nc, T)
    y = y.reshape(batch, dim, nc * T)[:, :, :seqlen]
    if D is not None:
        y = y + D.to(cdt)[None, :, None] * u_
    return y.to(out_dtype)


def _chunked_scan_autograd(dtc, xc, Bc, Cc, Ag) -> torch.Tensor:
    """Training path. Layouts: dtc, xc (T, b, g, dpg, nc); Bc, Cc (T, b, g, 1, nc, n); Ag (1, g, dpg, 1, n).
    Returns y (b, g, dpg, nc, T).

    A custom autograd function with a hand-written backward: the forward keeps only its inputs and the state
    entering every chunk (``L / T`` states), and the backward recomputes the states of all positions from them and
    runs the adjoint recurrence in the same chunked way. Autograd through the loops would instead keep several
    (batch, channels, chunks, N) slabs for each of the ``2T`` steps: about 14 GB for VM-UNet at 256x256, batch 1.
    """
    return _ChunkedScan.apply(dtc, xc, Bc, Cc, Ag)


def _chunked_scan_pure(dtc, xc, Bc, Cc, Ag) -> torch.Tensor:
    """Out-of-place path for TorchScript tracing (ONNX export) and torch.compile (no in-place or ``out=`` writes).
    Layouts: dtc, xc (T, b, g, dpg, nc); Bc, Cc (T, b, g, 1, nc, n); Ag (1, g, dpg, 1, n). Returns y (b, g, dpg, nc, T).
    """
    T, batch, g, dpg, nc = dtc.shape
    n = Ag.shape[-1]
    # pass 1: chunk-end states of every chunk started from zero (all chunks at once, T steps)
    h = xc[0, ..., None] * Bc[0]
    for t in range(1, T):
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
        h = torch.exp(dtc[t, ..., None] * Ag) * h + xc[t, ..., None] * Bc[t]
        ys.append((h * Cc[t]).sum(-1))
    return torch.stack(ys, dim=-1)


def _entering_states(dtc, xc, Bc, Ag) -> torch.Tensor:
    """State entering every chunk (b, g, dpg, nc, n): a zero-started pass over all chunks, then the carry."""
    T, batch, g, dpg, nc = dtc.shape
    h = xc[0, ..., None] * Bc[0]
    for t in range(1, T):
        h = torch.exp(dtc[t, ..., None] * Ag).mul_(h).addcmul_(xc[t, ..., None], Bc[t])
    entering = [torch.zeros_like(h[:, :, :, 0])]
    if nc > 1:
        chunk_decay = torch.exp(dtc.sum(0)[..., None] * Ag)  # (b, g, dpg, nc, n), every entry <= 1
        for c in range(nc - 1):  # a list, not writes into slices of one buffer: torch.compile traces it
            entering.append(torch.addcmul(h[:, :, :, c], chunk_decay[:, :, :, c], entering[-1]))
    return torch.stack(entering, dim=3)


class _ChunkedScan(torch.autograd.Function):
    """Chunked scan whose backward recomputes the states from the chunk-entering ones (exact, O(L/T) saved)."""

    @staticmethod
    def forward(ctx, dtc, xc, Bc, Cc, Ag):  # type: ignore[override]
        H = _entering_states(dtc, xc, Bc, Ag)
        T = dtc.shape[0]
        y = torch.empty(dtc.shape[1:] + (T,), dtype=H.dtype, device=H.device)  # (b, g, dpg, nc, T)
        h = H.clone()
        for t in range(T):
            h = torch.exp(dtc[t, ..., None] * Ag).mul_(h).addcmul_(xc[t, ..., None], Bc[t])
            torch.sum(h * Cc[t], -1, out=y[..., t])
        ctx.save_for_backward(dtc, xc, Bc, Cc, Ag, H)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        dtc, xc, Bc, Cc, Ag, H = ctx.saved_tensors
        T, batch, g, dpg, nc = dtc.shape
        gyt = gy.permute(4, 0, 1, 2, 3)[..., None]  # (T, b, g, dpg, nc, 1)
        # states of every position, recomputed from the chunk-entering ones
        hs = torch.empty((T,) + tuple(H.shape), dtype=H.dtype, device=H.device)
        h = H
        for t in range(T):
            h = torch.exp(dtc[t, ..., None] * Ag).mul_(h).addcmul_(xc[t, ..., None], Bc[t])
            hs[t] = h
        # adjoint entering the last position of every chunk from the chunk after it:
        # G[c-1] = a[c, 0] * gh[c, 0] = a[c, 0] * l[c, 0] + chunk_decay[c] * G[c], G[nc-1] = 0, where l is the
        # adjoint of chunk c started from zero at its end
        G = torch.zeros_like(H)
        if nc > 1:
            l = Cc[T - 1] * gyt[T - 1]
            for t in range(T - 2, -1, -1):
                l = torch.exp(dtc[t + 1, ..., None] * Ag).mul_(l).addcmul_(Cc[t], gyt[t])
            a0l = torch.exp(dtc[0, ..., None] * Ag).mul_(l)
            chunk_decay = torch.exp(dtc.sum(0)[..., None] * Ag)
            for c in range(nc - 1, 0, -1):
                torch.addcmul(a0l[:, :, :, c], chunk_decay[:, :, :, c], G[:, :, :, c], out=G[:, :, :, c - 1])
        gdt = torch.empty_like(dtc)
        gx = torch.empty_like(xc)
        gB = torch.empty_like(Bc)
        gC = torch.empty_like(Cc)
        gA = torch.zeros_like(Ag)
        carry = G
        for t in range(T - 1, -1, -1):
            gh = carry.addcmul(Cc[t], gyt[t])  # adjoint of h_t
            a = torch.exp(dtc[t, ..., None] * Ag)
            h_prev = hs[t - 1] if t > 0 else H
            torch.sum(gyt[t] * hs[t], 2, keepdim=True, out=gC[t])
            torch.sum(gh * Bc[t], -1, out=gx[t])
            torch.sum(gh * xc[t, ..., None], 2, keepdim=True, out=gB[t])
            gz = gh * a
            carry = gz  # a_t * gh_t: the adjoint reaching h_{t-1}
            gz = gz * h_prev  # gradient of the exponent dt_t * A
            torch.sum(gz * Ag, -1, out=gdt[t])
            gA += (gz * dtc[t, ..., None]).sum((0, 3), keepdim=True)
        return gdt, gx, gB, gC, gA


def _chunked_scan_inplace(dtc, xc, Bc, Cc, Ag) -> torch.Tensor:
    """Inference path: the same three loops with a preallocated buffer and in-place state updates (no autograd).

    Layouts: dtc, xc (T, b, g, nc, dpg); Bc (T, b, g, nc, 1, n); Cc (T, b, g, nc, n, 1); Ag (1, g, 1, dpg, n).
    Returns y (T, b, g, nc, dpg).
    """
    T, batch, g, nc, dpg = dtc.shape
    buf = torch.empty(torch.broadcast_shapes(dtc.shape[1:] + (1,), Ag.shape), dtype=dtc.dtype, device=dtc.device)
    h = xc[0, ..., None] * Bc[0]  # (b, g, nc, dpg, n)
    for t in range(1, T):
        torch.mul(dtc[t, ..., None], Ag, out=buf).exp_()
        h.mul_(buf).addcmul_(xc[t, ..., None], Bc[t])
    H = torch.empty_like(h)
    H[:, :, 0].zero_()
    if nc > 1:
        chunk_decay = torch.exp(dtc.sum(0)[..., None] * Ag)
        for c in range(nc - 1):
            torch.addcmul(h[:, :, c], chunk_decay[:, :, c], H[:, :, c], out=H[:, :, c + 1])
    h = H
    y = torch.empty((T,) + tuple(h.shape[:-1]) + (1,), dtype=h.dtype, device=h.device)
    use_matmul = nc >= 32  # batched mat-vec pays off with many chunks; otherwise multiply and reduce
    for t in range(T):
        torch.mul(dtc[t, ..., None], Ag, out=buf).exp_()
        h.mul_(buf).addcmul_(xc[t, ..., None], Bc[t])
        if use_matmul:
            torch.matmul(h, Cc[t], out=y[t])
        else:
            torch.sum(torch.mul(h, Cc[t].transpose(-1, -2), out=buf), -1, keepdim=True, out=y[t])
    return y.squeeze(-1)

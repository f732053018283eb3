"""Triton kernels of the selective scan (forward and backward).

This module imports :mod:`triton` at import time; the public entry point
:mod:`mambaseg.ops.selective_scan_triton` imports it lazily so that the package works
without Triton installed.

Kernel organisation (see ``docs/triton_kernel.md``):

* One program owns a block of ``BLOCK_D`` channels of one (batch, group) pair and all
  ``N`` states, and walks the sequence in chunks of ``BLOCK_L`` positions.
* Per chunk the decays ``exp(delta * A)`` and inputs ``delta * B * u`` live in registers as a
  ``(BLOCK_D, BLOCK_N, BLOCK_L)`` tile; ``tl.associative_scan`` over (decay, input) pairs gives the
  chunk-local states, the state carried from the previous chunk is added with one FMA, and
  ``y = sum_n C * h`` is reduced over the state axis before the (BLOCK_D, BLOCK_L) store.
  The (batch, channels, L, N) state tensor never exists in memory.
* The forward pass optionally stores the state at the end of every chunk, (batch, channels,
  n_chunks, N) in fp32: that is all the backward pass needs to recompute the states.
* The backward pass walks the chunks in reverse order, recomputes the forward states of the
  chunk from the stored boundary state, runs a reverse associative scan of the adjoint
  ``x_t = C_t dy_t + exp(delta_{t+1} A) x_{t+1}`` and forms every gradient in registers.
  B/C gradients are reduced over the program's channels and added atomically (fp32) into a
  (batch, groups, N, L) buffer; A, D and delta_bias gradients are per-(batch, channel) partials
  summed on the host side.
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 (earlier) with h -> a2 h + b2 (later)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    """Numerically stable softplus in fp32 (log1p branch for large negative x)."""
    e = tl.exp(-tl.abs(x))
    lp = tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
    return tl.maximum(x, 0.0) + lp


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    return tl.where(x >= 0, r, e * r)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    bias_ptr,
    y_ptr,
    states_ptr,
    KD,
    L,
    G,
    Dg,
    n_dblocks,
    n_chunks,
    N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_d = pid % n_dblocks
    pid_bg = pid // n_dblocks
    g = pid_bg % G

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dg
    ch = g * Dg + offs_d
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_c = tl.arange(0, BLOCK_L)
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A2 = tl.load(A_ptr + ch[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)

    row = (pid_bg // G).to(tl.int64) * KD + ch.to(tl.int64)  # (BLOCK_D,) row index into (B*KD, L)
    ud_base = row[:, None] * L
    bc_base = (pid_bg.to(tl.int64) * N + offs_n.to(tl.int64))[:, None] * L
    st_base = (row[:, None] * n_chunks) * N + offs_n[None, :]

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(0, n_chunks):
        offs_l = c * BLOCK_L + offs_c
        mask_l = offs_l < L
        m2 = mask_d[:, None] & mask_l[None, :]
        mbc = mask_n[:, None] & mask_l[None, :]
        u = tl.load(u_ptr + ud_base + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + ud_base + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        Bm = tl.load(B_ptr + bc_base + offs_l[None, :], mask=mbc, other=0.0).to(tl.float32)
        Cm = tl.load(C_ptr + bc_base + offs_l[None, :], mask=mbc, other=0.0).to(tl.float32)

        dA = tl.exp2(dt[:, None, :] * A2[:, :, None])
        dBu = (dt * u)[:, None, :] * Bm[None, :, :]
        a_s, b_s = tl.associative_scan((dA, dBu), axis=2, combine_fn=_scan_combine)
        hs = a_s * h[:, :, None] + b_s
        y = tl.sum(hs * Cm[None, :, :], axis=1)
        if HAS_D:
            y = y + Dv[:, None] * u
        tl.store(y_ptr + ud_base + offs_l[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where((offs_c == BLOCK_L - 1)[None, None, :], hs, 0.0), axis=2)
        if STORE_STATES:
            tl.store(states_ptr + st_base + c * N, h, mask=mask_dn)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    bias_ptr,
    dy_ptr,
    states_ptr,
    du_ptr,
    ddelta_ptr,
    dA_ptr,
    dB_ptr,
    dC_ptr,
    dD_ptr,
    dbias_ptr,
    KD,
    L,
    G,
    Dg,
    n_dblocks,
    n_chunks,
    N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_d = pid % n_dblocks
    pid_bg = pid // n_dblocks
    g = pid_bg % G

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dg
    ch = g * Dg + offs_d
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_c = tl.arange(0, BLOCK_L)
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A = tl.load(A_ptr + ch[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)

    row = (pid_bg // G).to(tl.int64) * KD + ch.to(tl.int64)
    ud_base = row[:, None] * L
    bc_base = (pid_bg.to(tl.int64) * N + offs_n.to(tl.int64))[:, None] * L
    st_base = (row[:, None] * n_chunks) * N + offs_n[None, :]

    x_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        offs_l = c * BLOCK_L + offs_c
        mask_l = offs_l < L
        m2 = mask_d[:, None] & mask_l[None, :]
        mbc = mask_n[:, None] & mask_l[None, :]
        offs_l1 = offs_l + 1
        m2n = mask_d[:, None] & (offs_l1 < L)[None, :]

        u = tl.load(u_ptr + ud_base + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        xdt = tl.load(delta_ptr + ud_base + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        xdt1 = tl.load(delta_ptr + ud_base + offs_l1[None, :], mask=m2n, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + ud_base + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            xdt = xdt + bias[:, None]
            xdt1 = xdt1 + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(xdt)
            dt1 = _softplus(xdt1)
        else:
            dt = xdt
            dt1 = xdt1
        dt = tl.where(m2, dt, 0.0)
        dt1 = tl.where(m2n, dt1, 0.0)
        Bm = tl.load(B_ptr + bc_base + offs_l[None, :], mask=mbc, other=0.0).to(tl.float32)
        Cm = tl.load(C_ptr + bc_base + offs_l[None, :], mask=mbc, other=0.0).to(tl.float32)
        h0 = tl.load(states_ptr + st_base + (c - 1) * N, mask=mask_dn & (c > 0), other=0.0)

        # recompute the forward states of this chunk
        dA = tl.exp2(dt[:, None, :] * A2[:, :, None])
        dtu = dt * u
        dBu = dtu[:, None, :] * Bm[None, :, :]
        a_s, b_s = tl.associative_scan((dA, dBu), axis=2, combine_fn=_scan_combine)
        hs = a_s * h0[:, :, None] + b_s
        # adjoint: x_t = C_t dy_t + exp(dt_{t+1} A) x_{t+1}
        alpha = tl.exp2(dt1[:, None, :] * A2[:, :, None])
        cdy = Cm[None, :, :] * dy[:, None, :]
        ra, rb = tl.associative_scan((alpha, cdy), axis=2, combine_fn=_scan_combine, reverse=True)
        xs = ra * x_carry[:, :, None] + rb

        # gradients
        dC_part = tl.sum(hs * dy[:, None, :], axis=0)
        dB_part = tl.sum(xs * dtu[:, None, :], axis=0)
        tl.atomic_add(dC_ptr + bc_base + offs_l[None, :], dC_part, mask=mbc)
        tl.atomic_add(dB_ptr + bc_base + offs_l[None, :], dB_part, mask=mbc)
        xdec = xs * (hs - dBu)  # x_t * exp(dt_t A) h_{t-1}
        xB = tl.sum(xs * Bm[None, :, :], axis=1)
        ddt = xB * u + tl.sum(xdec * A[:, :, None], axis=1)
        dA_acc += tl.sum(xdec * dt[:, None, :], axis=2)
        du = xB * dt
        if HAS_D:
            du = du + Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddt = ddt * _sigmoid(xdt)
        ddt = tl.where(m2, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + ud_base + offs_l[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + ud_base + offs_l[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        x_carry = tl.sum(tl.where((offs_c == 0)[None, None, :], xs, 0.0), axis=2)

    tl.store(dA_ptr + row[:, None] * N + offs_n[None, :], dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + row, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + row, dbias_acc, mask=mask_d)

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

Compilation: arguments that only count programs, chunks or segments (``G``, ``n_dblocks``, ``n_seg``, ...) are
``do_not_specialize``: Triton would otherwise compile one variant per value class (== 1, divisible by 16, other),
e.g. a separate kernel for VM-UNet's last stage (one segment), which cost about 1 s of cold start each. Lengths and
channel counts that enter addresses (``L``, ``KD``, ``Dg``) keep their divisibility specialisation (aligned loads).
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 (earlier) with h -> a2 h + b2 (later)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _chunk_map(a, b, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The composition, in position order along axis 0, of a chunk's maps h -> a_t h + b_t: ``(a, b)`` of the map
    from the state entering the chunk to the state leaving it.

    ``tl.reduce`` composes in any order (it needs a commutative combine, triton-lang/triton#4962), and
    :func:`_scan_combine` is not commutative: it is exact only while the whole axis 0 sits in each thread (the
    one-warp program's 32 lanes taken by BLOCK_N x BLOCK_D >= 32 states and channels). Otherwise lanes
    split the positions and the compiled reduction mixed their order (wrong states on an H100, e.g. N = 2 with the
    backward's 8 channels); then the order-keeping scan's last row is taken instead."""
    if BLOCK_N * BLOCK_D >= 32:
        a_t, b_t = tl.reduce((a, b), axis=0, combine_fn=_scan_combine)
    else:
        a_s, b_s = tl.associative_scan((a, b), axis=0, combine_fn=_scan_combine)
        last = (tl.arange(0, BLOCK_L) == BLOCK_L - 1)[:, None, None]
        a_t = tl.sum(tl.where(last, a_s, -0.0), axis=0)  # -0.0: the sums fold away (x + -0.0 == x)
        b_t = tl.sum(tl.where(last, b_s, -0.0), axis=0)
    return a_t, b_t


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
def _load_chunk_fwd(u_ptr, delta_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c, BLOCK_L: tl.constexpr):
    """Raw (input dtype) u, delta (BLOCK_L, BLOCK_D) and B, C (BLOCK_L, BLOCK_N) tiles of chunk ``c`` (zeros
    outside [0, L))."""
    offs_l = c * BLOCK_L + offs_c
    mask_l = (offs_l < L) & (offs_l >= 0)
    m2 = mask_l[:, None] & mask_d[None, :]
    mbc = mask_l[:, None] & mask_n[None, :]
    u = tl.load(u_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0)
    dt = tl.load(delta_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0)
    Bm = tl.load(B_ptr + bc_base + offs_l[:, None], mask=mbc, other=0.0)
    Cm = tl.load(C_ptr + bc_base + offs_l[:, None], mask=mbc, other=0.0)
    return u, dt, Bm, Cm


@triton.jit
def _load_chunk_bwd(
    u_ptr, delta_ptr, dy_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c, BLOCK_L: tl.constexpr,
):
    """Raw tiles of chunk ``c`` for the backward pass: u, delta, delta shifted by one position, dy, B, C
    (zeros outside [0, L))."""
    offs_l = c * BLOCK_L + offs_c
    mask_l = (offs_l < L) & (offs_l >= 0)
    m2 = mask_l[:, None] & mask_d[None, :]
    mbc = mask_l[:, None] & mask_n[None, :]
    m2n = ((offs_l + 1 < L) & (offs_l >= 0))[:, None] & mask_d[None, :]
    u = tl.load(u_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0)
    xdt = tl.load(delta_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0)
    xdt1 = tl.load(delta_ptr + ud_base + offs_l[:, None] + 1, mask=m2n, other=0.0)
    dy = tl.load(dy_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0)
    Bm = tl.load(B_ptr + bc_base + offs_l[:, None], mask=mbc, other=0.0)
    Cm = tl.load(C_ptr + bc_base + offs_l[:, None], mask=mbc, other=0.0)
    return u, xdt, xdt1, dy, Bm, Cm


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_chunks', 'n_seg'])
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
    n_seg,
    N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    STORE_EVERY: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr,
):
    """Forward scan over (BLOCK_L, BLOCK_N, BLOCK_D) register tiles (see the module docstring)."""
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
    mask_nd = mask_n[:, None] & mask_d[None, :]

    A2 = tl.load(A_ptr + ch[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32) * _LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)

    row = (pid_bg // G).to(tl.int64) * KD + ch.to(tl.int64)  # row of the (batch * KD, L) views
    ud_base = row[None, :] * L  # (1, BLOCK_D)
    bc_base = (pid_bg.to(tl.int64) * N + offs_n.to(tl.int64))[None, :] * L  # (1, BLOCK_N)
    st_base = (row[None, :] * n_seg) * N + offs_n[:, None]  # (BLOCK_N, BLOCK_D)

    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    # software pipelining by hand: the loads of chunk c + 1 are issued before chunk c is computed
    u_n, dt_n, B_n, C_n = _load_chunk_fwd(u_ptr, delta_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, 0, BLOCK_L)
    for c in range(0, n_chunks):
        offs_l = c * BLOCK_L + offs_c
        mask_l = offs_l < L
        m2 = mask_l[:, None] & mask_d[None, :]  # (BLOCK_L, BLOCK_D)
        u = u_n.to(tl.float32)
        dt = dt_n.to(tl.float32)
        Bm = B_n.to(tl.float32)
        Cm = C_n.to(tl.float32)
        u_n, dt_n, B_n, C_n = _load_chunk_fwd(
            u_ptr, delta_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c + 1, BLOCK_L
        )
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)  # padded positions: decay 1, input 0 -> the state passes through

        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])  # (BLOCK_L, BLOCK_N, BLOCK_D)
        dBu = (dt * u)[:, None, :] * Bm[:, :, None]
        a_s, b_s = tl.associative_scan((dA, dBu), axis=0, combine_fn=_scan_combine)
        hs = a_s * h[None, :, :] + b_s
        y = tl.sum(hs * Cm[:, :, None], axis=1)  # (BLOCK_L, BLOCK_D)
        if HAS_D:
            y = y + Dv[None, :] * u
        tl.store(y_ptr + ud_base + offs_l[:, None], y.to(y_ptr.dtype.element_ty), mask=m2)
        # -0.0 filler: x + (-0.0) == x folds away, so picking the last row costs no arithmetic
        h = tl.sum(tl.where((offs_c == BLOCK_L - 1)[:, None, None], hs, -0.0), axis=0)
        if STORE_STATES:
            if (c + 1) % STORE_EVERY == 0:
                tl.store(states_ptr + st_base + ((c + 1) // STORE_EVERY - 1) * N, h, mask=mask_nd)


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_seg', 'R'])
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
    scratch_ptr,
    du_ptr,
    ddelta_ptr,
    grad_ptr,
    KD,
    L,
    G,
    Dg,
    n_dblocks,
    n_seg,
    R,
    BGNL,
    N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    """Backward pass over segments of ``R`` chunks of ``BLOCK_L`` positions, last segment first.

    ``states`` holds the state at the end of every segment (row-major (batch * KD, n_seg, N)). For each
    segment a forward sweep recomputes the state entering each of its chunks into this program's slice of
    ``scratch`` (R, BLOCK_N, BLOCK_D), then the chunks are processed in reverse order.

    ``grad`` (fp32, zeroed) receives every gradient summed over programs, atomically: [dB | dC | dA | dD | dbias]
    with dB, dC of ``BGNL`` = batch * G * N * L floats each, dA of KD * N, dD and dbias of KD."""
    dB_ptr = grad_ptr
    dC_ptr = dB_ptr + BGNL
    dA_ptr = dC_ptr + BGNL
    pid = tl.program_id(0)
    pid_d = pid % n_dblocks
    pid_bg = pid // n_dblocks
    g = pid_bg % G

    offs_d_loc = tl.arange(0, BLOCK_D)
    offs_d = pid_d * BLOCK_D + offs_d_loc
    mask_d = offs_d < Dg
    ch = g * Dg + offs_d
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_c = tl.arange(0, BLOCK_L)
    mask_nd = mask_n[:, None] & mask_d[None, :]

    A = tl.load(A_ptr + ch[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)
    A2 = A * _LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)

    row = (pid_bg // G).to(tl.int64) * KD + ch.to(tl.int64)
    ud_base = row[None, :] * L
    bc_base = (pid_bg.to(tl.int64) * N + offs_n.to(tl.int64))[None, :] * L
    st_base = (row[None, :] * n_seg) * N + offs_n[:, None]
    scr_base = scratch_ptr + pid.to(tl.int64) * R * (BLOCK_N * BLOCK_D) + offs_n[:, None] * BLOCK_D + offs_d_loc[None, :]

    x_carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # adjoint at the first position of the next chunk
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    # software pipelining by hand: the loads of chunk c - 1 are issued before chunk c is computed
    u_n, xdt_n, xdt1_n, dy_n, B_n, C_n = _load_chunk_bwd(
        u_ptr, delta_ptr, dy_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, n_seg * R - 1, BLOCK_L
    )
    for s_i in range(0, n_seg):
        s = n_seg - 1 - s_i
        # forward sweep: the state entering every chunk of the segment, from the stored segment boundary
        has_prev = (offs_n[:, None] * 0 + s) > 0
        h = tl.load(states_ptr + st_base + (s - 1) * N, mask=mask_nd & has_prev, other=0.0)
        tl.store(scr_base, h)
        for r in range(0, R - 1):  # the last chunk's end state is not needed
            offs_l = (s * R + r) * BLOCK_L + offs_c
            m2 = (offs_l < L)[:, None] & mask_d[None, :]
            mbc = (offs_l < L)[:, None] & mask_n[None, :]
            u = tl.load(u_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0).to(tl.float32)
            Bm = tl.load(B_ptr + bc_base + offs_l[:, None], mask=mbc, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias[None, :]
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m2, dt, 0.0)
            dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
            dBu = (dt * u)[:, None, :] * Bm[:, :, None]
            a_t, b_t = _chunk_map(dA, dBu, BLOCK_L, BLOCK_N, BLOCK_D)
            h = a_t * h + b_t
            tl.store(scr_base + (r + 1) * (BLOCK_N * BLOCK_D), h)
        tl.debug_barrier()  # scratch written by the sweep is read back in other threads' layout

        for r_i in range(0, R):
            r = R - 1 - r_i
            c = s * R + r
            offs_l = c * BLOCK_L + offs_c
            mask_l = offs_l < L
            m2 = mask_l[:, None] & mask_d[None, :]
            mbc = mask_l[:, None] & mask_n[None, :]
            m2n = (offs_l + 1 < L)[:, None] & mask_d[None, :]
            u = u_n.to(tl.float32)
            xdt = xdt_n.to(tl.float32)
            xdt1 = xdt1_n.to(tl.float32)
            dy = dy_n.to(tl.float32)
            Bm = B_n.to(tl.float32)
            Cm = C_n.to(tl.float32)
            h0 = tl.load(scr_base + r * (BLOCK_N * BLOCK_D))
            u_n, xdt_n, xdt1_n, dy_n, B_n, C_n = _load_chunk_bwd(
                u_ptr, delta_ptr, dy_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c - 1, BLOCK_L
            )
            if HAS_BIAS:
                xdt = xdt + bias[None, :]
                xdt1 = xdt1 + bias[None, :]
            if SOFTPLUS:
                dt = _softplus(xdt)
                dt1 = _softplus(xdt1)
            else:
                dt = xdt
                dt1 = xdt1
            dt = tl.where(m2, dt, 0.0)
            dt1 = tl.where(m2n, dt1, 0.0)

            # recompute the states of this chunk from the state entering it
            dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
            dtu = dt * u
            dBu = dtu[:, None, :] * Bm[:, :, None]
            a_s, b_s = tl.associative_scan((dA, dBu), axis=0, combine_fn=_scan_combine)
            hs = a_s * h0[None, :, :] + b_s
            # adjoint of the states: x_t = C_t dy_t + exp(dt_{t+1} A) x_{t+1}
            # (Triton lowers reverse=True scans with cross-lane shuffles even when the axis is inside the
            # thread, so the reverse scan runs as a forward scan over flipped tiles; in-thread flips are free.)
            alpha = tl.exp2(tl.flip(dt1, 0)[:, None, :] * A2[None, :, :])
            cdy = tl.flip(Cm, 0)[:, :, None] * tl.flip(dy, 0)[:, None, :]
            ra, rb = tl.associative_scan((alpha, cdy), axis=0, combine_fn=_scan_combine)
            xs = tl.flip(ra * x_carry[None, :, :] + rb, 0)

            dC_part = tl.sum(hs * dy[:, None, :], axis=2)  # (BLOCK_L, BLOCK_N)
            dB_part = tl.sum(xs * dtu[:, None, :], axis=2)
            tl.atomic_add(dC_ptr + bc_base + offs_l[:, None], dC_part, mask=mbc, sem="relaxed")
            tl.atomic_add(dB_ptr + bc_base + offs_l[:, None], dB_part, mask=mbc, sem="relaxed")
            xdec = xs * (hs - dBu)  # x_t * exp(dt_t A) * h_{t-1}
            xB = tl.sum(xs * Bm[:, :, None], axis=1)  # (BLOCK_L, BLOCK_D)
            ddt = xB * u + tl.sum(xdec * A[None, :, :], axis=1)
            dA_acc += tl.sum(xdec * dt[:, None, :], axis=0)
            du = xB * dt
            if HAS_D:
                du = du + Dv[None, :] * dy
                dD_acc += tl.sum(dy * u, axis=0)
            if SOFTPLUS:
                ddt = ddt * _sigmoid(xdt)
            ddt = tl.where(m2, ddt, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + ud_base + offs_l[:, None], du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddelta_ptr + ud_base + offs_l[:, None], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
            x_carry = tl.sum(tl.where((offs_c == 0)[:, None, None], xs, -0.0), axis=0)
        tl.debug_barrier()  # all reads of this segment's scratch precede the next sweep's writes

    # this program's share of the sums over the batch
    tl.atomic_add(dA_ptr + ch[None, :] * N + offs_n[:, None], dA_acc, mask=mask_nd, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dA_ptr + KD * N + ch, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dA_ptr + KD * (N + 1) + ch, dbias_acc, mask=mask_d, sem="relaxed")


# ------------------------------------------------------------------------------------------------------------------
# N = 1: the sequence split into segments that run in parallel (the state is one number per channel, so a program
# per (channel block, segment) is cheap, and the channels alone give too few programs to keep an H100 busy).
#
# Each program owns a (BLOCK_D channels, SEG positions) tile, positions across the lanes (coalesced loads), and
# scans it with cross-lane associative scans. A segment is summarised by the affine map it applies to the state
# (forward: h_out = P h_in + H; backward adjoint: x_in = X + Q x_out); a first kernel writes every segment's map,
# the main kernel folds the maps of the segments before (forward) or after (backward) its own and then runs its
# segment exactly. The forward pass keeps the state entering every segment (one float per channel and segment)
# for the backward pass.
# ------------------------------------------------------------------------------------------------------------------


@triton.jit
def _seg1_setup(pid_rb, n_dblocks, G, Dg, KD, L, BLOCK_D: tl.constexpr):
    """Channel offsets/masks and base offsets of row block ``pid_rb`` (one (batch, group) pair, BLOCK_D channels)."""
    pid_d = pid_rb % n_dblocks
    pid_bg = pid_rb // n_dblocks
    g = pid_bg % G
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < Dg
    ch = g * Dg + offs_d
    row = (pid_bg // G).to(tl.int64) * KD + ch.to(tl.int64)
    return pid_bg, ch, mask_d, row


@triton.jit
def _seg1_prologue(A_ptr, bias_ptr, n_dblocks, G, Dg, KD, L, BLOCK_D: tl.constexpr, SEG: tl.constexpr,
                   HAS_BIAS: tl.constexpr):
    """What every segment-parallel program starts with: its (batch, group), channels, rows, segment, positions,
    and the channels' A (natural and log2-scaled) and delta_bias."""
    s = tl.program_id(1)
    pid_bg, ch, mask_d, row = _seg1_setup(tl.program_id(0), n_dblocks, G, Dg, KD, L, BLOCK_D)
    offs_l = s * SEG + tl.arange(0, SEG)
    A = tl.load(A_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    A2 = A * _LOG2E
    bias = _seg1_bias(bias_ptr, ch, mask_d, A2, HAS_BIAS)
    return s, pid_bg, ch, mask_d, row, offs_l, A, A2, bias


@triton.jit
def _seg1_bias(bias_ptr, ch, mask_d, like, HAS_BIAS: tl.constexpr):
    """delta_bias of the block's channels (``like``, unused, when there is none)."""
    if HAS_BIAS:
        out = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    else:
        out = like
    return out


@triton.jit
def _seg1_delta(delta_ptr, ud_off, m2, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(raw + bias, processed) time steps of a tile; processed steps are 0 outside the mask (decay 1, input 0)."""
    xdt = tl.load(delta_ptr + ud_off, mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        xdt = xdt + bias[:, None]
    dt = xdt
    if SOFTPLUS:
        dt = _softplus(xdt)
    return xdt, tl.where(m2, dt, 0.0)


@triton.jit
def _seg1_state_scan(u_ptr, delta_ptr, B_ptr, row, pid_bg, mask_d, offs_l, L, A2, bias,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """The tile of a segment (masks, offsets, u, time steps, B) and the scan of its state map from a zero state:
    (a_s, b_s) with h_t = a_s[t] h_start + b_s[t]; b = delta' u B is the input term of every position."""
    mask_l = offs_l < L
    m2 = mask_d[:, None] & mask_l[None, :]
    ud_off = row[:, None] * L + offs_l[None, :]
    bc_off = pid_bg.to(tl.int64) * L + offs_l
    u = tl.load(u_ptr + ud_off, mask=m2, other=0.0).to(tl.float32)
    xdt, dt = _seg1_delta(delta_ptr, ud_off, m2, bias, HAS_BIAS, SOFTPLUS)
    Bv = tl.load(B_ptr + bc_off, mask=mask_l, other=0.0).to(tl.float32)
    b = dt * u * Bv[None, :]
    a_s, b_s = tl.associative_scan((tl.exp2(dt * A2[:, None]), b), axis=1, combine_fn=_scan_combine)
    return mask_l, m2, ud_off, bc_off, u, xdt, dt, Bv, b, a_s, b_s


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_seg'])
def _selective_scan1_fwd_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, sums_ptr,
    KD, L, G, Dg, n_dblocks, n_seg,
    BLOCK_D: tl.constexpr, SEG: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Map of every segment on the state: h_end = P h_start + H (``sums``: (rows, n_seg, 2) holding (P, H))."""
    s, pid_bg, ch, mask_d, row, offs_l, _, A2, bias = _seg1_prologue(A_ptr, bias_ptr, n_dblocks, G, Dg, KD, L,
                                                                     BLOCK_D, SEG, HAS_BIAS)
    _, _, _, _, _, _, _, _, _, a_s, b_s = _seg1_state_scan(u_ptr, delta_ptr, B_ptr, row, pid_bg, mask_d, offs_l, L,
                                                           A2, bias, HAS_BIAS, SOFTPLUS)
    last = (offs_l == s * SEG + SEG - 1)[None, :]
    P = tl.sum(tl.where(last, a_s, 0.0), axis=1)
    H = tl.sum(tl.where(last, b_s, 0.0), axis=1)
    tl.store(sums_ptr + (row * n_seg + s) * 2, P, mask=mask_d)
    tl.store(sums_ptr + (row * n_seg + s) * 2 + 1, H, mask=mask_d)


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_seg'])
def _selective_scan1_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, sums_ptr, states_ptr,
    KD, L, G, Dg, n_dblocks, n_seg,
    BLOCK_D: tl.constexpr, SEG: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr,
):
    """y of one segment: the state entering it from the maps of the segments before, then an exact scan."""
    s, pid_bg, ch, mask_d, row, offs_l, _, A2, bias = _seg1_prologue(A_ptr, bias_ptr, n_dblocks, G, Dg, KD, L,
                                                                     BLOCK_D, SEG, HAS_BIAS)
    h = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s2 in range(0, s):
        P = tl.load(sums_ptr + (row * n_seg + s2) * 2, mask=mask_d, other=1.0)
        H = tl.load(sums_ptr + (row * n_seg + s2) * 2 + 1, mask=mask_d, other=0.0)
        h = P * h + H
    if STORE_STATES:
        tl.store(states_ptr + row * n_seg + s, h, mask=mask_d)
    mask_l, m2, ud_off, bc_off, u, _, _, _, _, a_s, b_s = _seg1_state_scan(
        u_ptr, delta_ptr, B_ptr, row, pid_bg, mask_d, offs_l, L, A2, bias, HAS_BIAS, SOFTPLUS
    )
    Cv = tl.load(C_ptr + bc_off, mask=mask_l, other=0.0).to(tl.float32)
    hs = a_s * h[:, None] + b_s
    y = hs * Cv[None, :]
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
        y = y + Dv[:, None] * u
    tl.store(y_ptr + ud_off, y.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _seg1_adjoint_inputs(delta_ptr, dy_ptr, C_ptr, row, pid_bg, mask_d, offs_l, L, A2, bias,
                         HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """alpha_t = exp(dt'_{t+1} A) (1 past the end) and C_t dy_t of a tile: x_t = C_t dy_t + alpha_t x_{t+1}."""
    mask_l = offs_l < L
    m2 = mask_d[:, None] & mask_l[None, :]
    m2n = mask_d[:, None] & (offs_l + 1 < L)[None, :]
    ud_off = row[:, None] * L + offs_l[None, :]
    _, dt1 = _seg1_delta(delta_ptr, ud_off + 1, m2n, bias, HAS_BIAS, SOFTPLUS)
    dy = tl.load(dy_ptr + ud_off, mask=m2, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_bg.to(tl.int64) * L + offs_l, mask=mask_l, other=0.0).to(tl.float32)
    alpha = tl.exp2(dt1 * A2[:, None])
    return alpha, Cv[None, :] * dy, dy, Cv


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_seg'])
def _selective_scan1_bwd_summary_kernel(
    delta_ptr, dy_ptr, A_ptr, C_ptr, bias_ptr, sums_ptr,
    KD, L, G, Dg, n_dblocks, n_seg,
    BLOCK_D: tl.constexpr, SEG: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Map of every segment on the adjoint: x_start = X + Q x_after (x_after: adjoint at the next segment's start;
    ``sums``: (rows, n_seg, 2) holding (X, Q))."""
    s, pid_bg, ch, mask_d, row, offs_l, _, A2, bias = _seg1_prologue(A_ptr, bias_ptr, n_dblocks, G, Dg, KD, L,
                                                                     BLOCK_D, SEG, HAS_BIAS)
    alpha, cdy, _, _ = _seg1_adjoint_inputs(delta_ptr, dy_ptr, C_ptr, row, pid_bg, mask_d, offs_l, L, A2, bias,
                                            HAS_BIAS, SOFTPLUS)
    ra, rb = tl.associative_scan((alpha, cdy), axis=1, combine_fn=_scan_combine, reverse=True)
    first = (offs_l == s * SEG)[None, :]
    tl.store(sums_ptr + (row * n_seg + s) * 2, tl.sum(tl.where(first, rb, 0.0), axis=1), mask=mask_d)
    tl.store(sums_ptr + (row * n_seg + s) * 2 + 1, tl.sum(tl.where(first, ra, 0.0), axis=1), mask=mask_d)


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_seg'])
def _selective_scan1_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, states_ptr, sums_ptr,
    du_ptr, ddelta_ptr, grad_ptr,
    KD, L, G, Dg, n_dblocks, n_seg, BGL,
    BLOCK_D: tl.constexpr, SEG: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    """Every gradient of one segment: the adjoint entering from the maps of the later segments, the state from
    the forward pass; every sum over programs added atomically to ``grad`` (fp32, zeroed): [dB | dC | dA | dD |
    dbias] with dB, dC of ``BGL`` = batch * G * L floats each (N = 1) and dA, dD, dbias of KD."""
    dB_ptr = grad_ptr
    dC_ptr = dB_ptr + BGL
    dA_ptr = dC_ptr + BGL
    s, pid_bg, ch, mask_d, row, offs_l, A, A2, bias = _seg1_prologue(A_ptr, bias_ptr, n_dblocks, G, Dg, KD, L,
                                                                     BLOCK_D, SEG, HAS_BIAS)
    x_after = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s_i in range(0, n_seg - 1 - s):
        s2 = n_seg - 1 - s_i
        X = tl.load(sums_ptr + (row * n_seg + s2) * 2, mask=mask_d, other=0.0)
        Q = tl.load(sums_ptr + (row * n_seg + s2) * 2 + 1, mask=mask_d, other=1.0)
        x_after = X + Q * x_after
    h = tl.load(states_ptr + row * n_seg + s, mask=mask_d, other=0.0)
    # states h_t of the segment, recomputed from the state entering it
    mask_l, m2, ud_off, bc_off, u, xdt, dt, Bv, b, a_s, b_s = _seg1_state_scan(
        u_ptr, delta_ptr, B_ptr, row, pid_bg, mask_d, offs_l, L, A2, bias, HAS_BIAS, SOFTPLUS
    )
    hs = a_s * h[:, None] + b_s
    dtu = dt * u
    alpha, cdy, dy, _ = _seg1_adjoint_inputs(delta_ptr, dy_ptr, C_ptr, row, pid_bg, mask_d, offs_l, L, A2, bias,
                                             HAS_BIAS, SOFTPLUS)
    # adjoint x_t = C_t dy_t + exp(dt'_{t+1} A) x_{t+1}
    ra, rb = tl.associative_scan((alpha, cdy), axis=1, combine_fn=_scan_combine, reverse=True)
    xs = ra * x_after[:, None] + rb
    tl.atomic_add(dC_ptr + bc_off, tl.sum(hs * dy, axis=0), mask=mask_l, sem="relaxed")
    tl.atomic_add(dB_ptr + bc_off, tl.sum(xs * dtu, axis=0), mask=mask_l, sem="relaxed")
    xdec = xs * (hs - b)  # x_t exp(dt'_t A) h_{t-1}
    xB = xs * Bv[None, :]
    ddt = xB * u + A[:, None] * xdec
    du = xB * dt
    tl.atomic_add(dA_ptr + ch, tl.sum(xdec * dt, axis=1), mask=mask_d, sem="relaxed")
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
        du = du + Dv[:, None] * dy
        tl.atomic_add(dA_ptr + KD + ch, tl.sum(dy * u, axis=1), mask=mask_d, sem="relaxed")
    if SOFTPLUS:
        ddt = ddt * _sigmoid(xdt)
    ddt = tl.where(m2, ddt, 0.0)
    if HAS_BIAS:
        tl.atomic_add(dA_ptr + 2 * KD + ch, tl.sum(ddt, axis=1), mask=mask_d, sem="relaxed")
    tl.store(du_ptr + ud_off, du.to(du_ptr.dtype.element_ty), mask=m2)
    tl.store(ddelta_ptr + ud_off, ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------------------------------------------------------
# N >= 2: the sequence split into segments that run in parallel, for calls with few (batch, channel) rows (e.g.
# DermoMamba's first stage: 128 rows of 49152 positions), where the kernels above give one warp per (batch, channel
# block) for the whole sequence and leave most of the GPU idle.
#
# The tiles and the chunk loop are those of the kernels above; a program owns (BLOCK_D channels, one segment of
# ``cps`` chunks) instead of (BLOCK_D channels, the whole sequence). Three launches per pass:
#
# 1. summary: every segment's affine map on the state from a zero state (forward: h_end = P h_start + H; backward,
#    on the adjoint: x_start = X + Q x_after), per (row, state), written to ``sums``;
# 2. carry: per (row, state) a scan of those maps over the segments, in blocks of CARRY_S segments in registers,
#    giving the state entering every segment (forward) or the adjoint after every segment (backward);
# 3. main: the segment run exactly from that state, as in the kernels above (y and the stored states; or every
#    gradient).
#
# ``sums`` is fp32 (3, n_seg, rows * N): [first component of the maps | second component | carried value], with
# rows = batch * KD and the element (row, n) at row * N + n.
# ------------------------------------------------------------------------------------------------------------------


@triton.jit
def _segn_setup(pid_rb, n_dblocks, G, Dg, KD, L, N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Channels, states, masks and base offsets of row block ``pid_rb`` (one (batch, group) pair, BLOCK_D channels):
    ud_base (1, BLOCK_D) into u-shaped tensors, bc_base (1, BLOCK_N) into B/C, rn (BLOCK_N, BLOCK_D) the
    (row, state) element index of ``sums``."""
    pid_d = pid_rb % n_dblocks
    pid_bg = pid_rb // n_dblocks
    g = pid_bg % G
    offs_d_loc = tl.arange(0, BLOCK_D)
    offs_d = pid_d * BLOCK_D + offs_d_loc
    mask_d = offs_d < Dg
    ch = g * Dg + offs_d
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    row = (pid_bg // G).to(tl.int64) * KD + ch.to(tl.int64)
    ud_base = row[None, :] * L
    bc_base = (pid_bg.to(tl.int64) * N + offs_n.to(tl.int64))[None, :] * L
    rn = row[None, :] * N + offs_n[:, None]
    return offs_d_loc, ch, mask_d, offs_n, mask_n, mask_nd, row, ud_base, bc_base, rn


@triton.jit
def _load_chunk_state(u_ptr, delta_ptr, B_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c, BLOCK_L: tl.constexpr):
    """Raw u, delta (BLOCK_L, BLOCK_D) and B (BLOCK_L, BLOCK_N) tiles of chunk ``c`` (zeros outside [0, L))."""
    offs_l = c * BLOCK_L + offs_c
    mask_l = (offs_l < L) & (offs_l >= 0)
    m2 = mask_l[:, None] & mask_d[None, :]
    u = tl.load(u_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0)
    dt = tl.load(delta_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0)
    Bm = tl.load(B_ptr + bc_base + offs_l[:, None], mask=mask_l[:, None] & mask_n[None, :], other=0.0)
    return u, dt, Bm


@triton.jit
def _load_chunk_adj(delta_ptr, dy_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c, BLOCK_L: tl.constexpr):
    """Raw delta shifted by one position, dy (BLOCK_L, BLOCK_D) and C (BLOCK_L, BLOCK_N) tiles of chunk ``c``
    (zeros outside [0, L)): what the adjoint recurrence reads."""
    offs_l = c * BLOCK_L + offs_c
    mask_l = (offs_l < L) & (offs_l >= 0)
    m2n = ((offs_l + 1 < L) & (offs_l >= 0))[:, None] & mask_d[None, :]
    xdt1 = tl.load(delta_ptr + ud_base + offs_l[:, None] + 1, mask=m2n, other=0.0)
    dy = tl.load(dy_ptr + ud_base + offs_l[:, None], mask=mask_l[:, None] & mask_d[None, :], other=0.0)
    Cm = tl.load(C_ptr + bc_base + offs_l[:, None], mask=mask_l[:, None] & mask_n[None, :], other=0.0)
    return xdt1, dy, Cm


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_seg', 'cps'])
def _selective_scanN_seg_fwd_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, sums_ptr,
    KD, L, G, Dg, n_dblocks, n_seg, cps, RN,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Map of segment ``program_id(1)`` (of ``cps`` chunks) on the state: h_end = P h_start + H, into ``sums``
    (the last segment's map is never needed: the grid stops before it)."""
    s = tl.program_id(1)
    _, ch, mask_d, offs_n, mask_n, mask_nd, _, ud_base, bc_base, rn = _segn_setup(
        tl.program_id(0), n_dblocks, G, Dg, KD, L, N, BLOCK_D, BLOCK_N
    )
    offs_c = tl.arange(0, BLOCK_L)
    A2 = tl.load(A_ptr + ch[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32) * _LOG2E
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    P = tl.full((BLOCK_N, BLOCK_D), 1.0, dtype=tl.float32)
    H = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    c0 = s * cps
    u_n, dt_n, B_n = _load_chunk_state(u_ptr, delta_ptr, B_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c0,
                                       BLOCK_L)
    for c in range(c0, c0 + cps):
        offs_l = c * BLOCK_L + offs_c
        m2 = (offs_l < L)[:, None] & mask_d[None, :]
        u = u_n.to(tl.float32)
        dt = dt_n.to(tl.float32)
        Bm = B_n.to(tl.float32)
        u_n, dt_n, B_n = _load_chunk_state(u_ptr, delta_ptr, B_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L,
                                           c + 1, BLOCK_L)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
        dBu = (dt * u)[:, None, :] * Bm[:, :, None]
        a_t, b_t = _chunk_map(dA, dBu, BLOCK_L, BLOCK_N, BLOCK_D)
        H = a_t * H + b_t
        P = P * a_t
    off = s.to(tl.int64) * RN + rn
    tl.store(sums_ptr + off, P, mask=mask_nd)
    tl.store(sums_ptr + n_seg.to(tl.int64) * RN + off, H, mask=mask_nd)


@triton.jit(do_not_specialize=['n_seg'])
def _selective_scanN_seg_carry_kernel(
    sums_ptr, n_seg, RN,
    CARRY_S: tl.constexpr, CARRY_E: tl.constexpr, REVERSE: tl.constexpr,
):
    """Per (row, state) element: fold the segment maps (first, second) of ``sums`` in segment order (REVERSE: last
    segment first) and write into the third slab the value entering every segment: forward, the state before
    segment s (h -> first * h + second per segment, 0 before segment 0); backward, the adjoint at the first position
    after segment s (x -> second + first * x per segment, 0 after the last one). Segment maps are taken CARRY_S at a
    time and scanned in registers; the map of the segment processed last is not read (never written)."""
    offs_e = tl.program_id(0) * CARRY_E + tl.arange(0, CARRY_E)
    mask_e = offs_e < RN
    offs_o = tl.arange(0, CARRY_S)
    out_ptr = sums_ptr + 2 * n_seg.to(tl.int64) * RN
    first_s = n_seg - 1 if REVERSE else 0
    tl.store(out_ptr + first_s.to(tl.int64) * RN + offs_e, tl.zeros((CARRY_E,), dtype=tl.float32), mask=mask_e)
    h = tl.zeros((CARRY_E,), dtype=tl.float32)
    for o0 in range(0, n_seg - 1, CARRY_S):
        o = o0 + offs_o  # order of processing
        if REVERSE:
            s = n_seg - 1 - o
            dest = s - 1
        else:
            s = o
            dest = s + 1
        m = (o < n_seg - 1)[:, None] & mask_e[None, :]
        off = s.to(tl.int64)[:, None] * RN + offs_e[None, :]
        a = tl.load(sums_ptr + off, mask=m, other=1.0)
        b = tl.load(sums_ptr + n_seg.to(tl.int64) * RN + off, mask=m, other=0.0)
        a_s, b_s = tl.associative_scan((a, b), axis=0, combine_fn=_scan_combine)
        incl = a_s * h[None, :] + b_s
        tl.store(out_ptr + dest.to(tl.int64)[:, None] * RN + offs_e[None, :], incl, mask=m)
        h = tl.sum(tl.where((offs_o == CARRY_S - 1)[:, None], incl, 0.0), axis=0)


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_chunks', 'n_sub', 'n_seg', 'cps'])
def _selective_scanN_seg_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, sums_ptr, states_ptr,
    KD, L, G, Dg, n_dblocks, n_chunks, n_sub, n_seg, cps, RN,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    STORE_EVERY: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr,
):
    """y of segment ``program_id(1)``: its entering state from the carry slab of ``sums``, then the chunk loop of
    :func:`_selective_scan_fwd_kernel` over its ``cps`` chunks, storing the state at the end of every
    ``STORE_EVERY`` chunks (global chunk count) into ``states`` (batch * KD, n_sub, N)."""
    s = tl.program_id(1)
    _, ch, mask_d, offs_n, mask_n, mask_nd, row, ud_base, bc_base, rn = _segn_setup(
        tl.program_id(0), n_dblocks, G, Dg, KD, L, N, BLOCK_D, BLOCK_N
    )
    offs_c = tl.arange(0, BLOCK_L)
    A2 = tl.load(A_ptr + ch[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32) * _LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    st_base = (row[None, :] * n_sub) * N + offs_n[:, None]

    h = tl.load(sums_ptr + (2 * n_seg + s).to(tl.int64) * RN + rn, mask=mask_nd, other=0.0)
    c0 = s * cps
    c_end = tl.minimum(c0 + cps, n_chunks)
    u_n, dt_n, B_n, C_n = _load_chunk_fwd(u_ptr, delta_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L,
                                          c0, BLOCK_L)
    for c in range(c0, c_end):
        offs_l = c * BLOCK_L + offs_c
        m2 = (offs_l < L)[:, None] & mask_d[None, :]
        u = u_n.to(tl.float32)
        dt = dt_n.to(tl.float32)
        Bm = B_n.to(tl.float32)
        Cm = C_n.to(tl.float32)
        u_n, dt_n, B_n, C_n = _load_chunk_fwd(
            u_ptr, delta_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c + 1, BLOCK_L
        )
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(m2, dt, 0.0)
        dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
        dBu = (dt * u)[:, None, :] * Bm[:, :, None]
        a_s, b_s = tl.associative_scan((dA, dBu), axis=0, combine_fn=_scan_combine)
        hs = a_s * h[None, :, :] + b_s
        y = tl.sum(hs * Cm[:, :, None], axis=1)
        if HAS_D:
            y = y + Dv[None, :] * u
        tl.store(y_ptr + ud_base + offs_l[:, None], y.to(y_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where((offs_c == BLOCK_L - 1)[:, None, None], hs, -0.0), axis=0)
        if STORE_STATES:
            if (c + 1) % STORE_EVERY == 0:
                tl.store(states_ptr + st_base + ((c + 1) // STORE_EVERY - 1) * N, h, mask=mask_nd)


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_seg', 'cps'])
def _selective_scanN_seg_bwd_summary_kernel(
    delta_ptr, dy_ptr, A_ptr, C_ptr, bias_ptr, sums_ptr,
    KD, L, G, Dg, n_dblocks, n_seg, cps, RN,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Map of segment ``program_id(1) + 1`` (of ``cps`` chunks) on the adjoint: x_start = X + Q x_after, with
    x_after the adjoint at the first position after the segment, into ``sums`` as (Q, X) (the first segment's map
    is never needed: the grid starts after it)."""
    s = tl.program_id(1) + 1
    _, ch, mask_d, offs_n, mask_n, mask_nd, _, ud_base, bc_base, rn = _segn_setup(
        tl.program_id(0), n_dblocks, G, Dg, KD, L, N, BLOCK_D, BLOCK_N
    )
    offs_c = tl.arange(0, BLOCK_L)
    A2 = tl.load(A_ptr + ch[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32) * _LOG2E
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    Q = tl.full((BLOCK_N, BLOCK_D), 1.0, dtype=tl.float32)
    X = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    c_last = (s + 1) * cps - 1
    xdt1_n, dy_n, C_n = _load_chunk_adj(delta_ptr, dy_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c_last,
                                        BLOCK_L)
    for c_i in range(0, cps):
        c = c_last - c_i
        offs_l = c * BLOCK_L + offs_c
        m2n = (offs_l + 1 < L)[:, None] & mask_d[None, :]
        xdt1 = xdt1_n.to(tl.float32)
        dy = dy_n.to(tl.float32)
        Cm = C_n.to(tl.float32)
        xdt1_n, dy_n, C_n = _load_chunk_adj(delta_ptr, dy_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L,
                                            c - 1, BLOCK_L)
        if HAS_BIAS:
            xdt1 = xdt1 + bias[None, :]
        if SOFTPLUS:
            xdt1 = _softplus(xdt1)
        dt1 = tl.where(m2n, xdt1, 0.0)
        # in flipped (reversed-time) order the adjoint is a forward recurrence x' -> alpha' x' + (C dy)'
        alpha = tl.exp2(tl.flip(dt1, 0)[:, None, :] * A2[None, :, :])
        cdy = tl.flip(Cm, 0)[:, :, None] * tl.flip(dy, 0)[:, None, :]
        q_t, x_t = _chunk_map(alpha, cdy, BLOCK_L, BLOCK_N, BLOCK_D)
        X = q_t * X + x_t
        Q = Q * q_t
    off = s.to(tl.int64) * RN + rn
    tl.store(sums_ptr + off, Q, mask=mask_nd)
    tl.store(sums_ptr + n_seg.to(tl.int64) * RN + off, X, mask=mask_nd)


@triton.jit(do_not_specialize=['G', 'n_dblocks', 'n_sub', 'n_seg', 'spg', 'R'])
def _selective_scanN_seg_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, states_ptr, sums_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, grad_ptr,
    KD, L, G, Dg, n_dblocks, n_sub, n_seg, spg, R, RN, BGNL,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Every gradient of segment ``program_id(1)``: the sub-segments (``R`` chunks each, ``spg`` per segment, with
    the stored states ``states`` (batch * KD, n_sub, N) at their ends) of :func:`_selective_scan_bwd_kernel`, last
    first, starting from the adjoint after the segment (carry slab of ``sums``). Gradient buffer as there."""
    dB_ptr = grad_ptr
    dC_ptr = dB_ptr + BGNL
    dA_ptr = dC_ptr + BGNL
    s = tl.program_id(1)
    offs_d_loc, ch, mask_d, offs_n, mask_n, mask_nd, row, ud_base, bc_base, rn = _segn_setup(
        tl.program_id(0), n_dblocks, G, Dg, KD, L, N, BLOCK_D, BLOCK_N
    )
    offs_c = tl.arange(0, BLOCK_L)
    A = tl.load(A_ptr + ch[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)
    A2 = A * _LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    st_base = (row[None, :] * n_sub) * N + offs_n[:, None]
    pid = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
    scr_base = scratch_ptr + pid * R * (BLOCK_N * BLOCK_D) + offs_n[:, None] * BLOCK_D + offs_d_loc[None, :]

    x_carry = tl.load(sums_ptr + (2 * n_seg + s).to(tl.int64) * RN + rn, mask=mask_nd, other=0.0)
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    j0 = s * spg
    j_end = tl.minimum(j0 + spg, n_sub)
    u_n, xdt_n, xdt1_n, dy_n, B_n, C_n = _load_chunk_bwd(
        u_ptr, delta_ptr, dy_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, j_end * R - 1, BLOCK_L
    )
    for j_i in range(0, j_end - j0):
        j = j_end - 1 - j_i
        # forward sweep: the state entering every chunk of sub-segment j, from the stored state before it
        has_prev = (offs_n[:, None] * 0 + j) > 0
        h = tl.load(states_ptr + st_base + (j - 1) * N, mask=mask_nd & has_prev, other=0.0)
        tl.store(scr_base, h)
        for r in range(0, R - 1):
            offs_l = (j * R + r) * BLOCK_L + offs_c
            m2 = (offs_l < L)[:, None] & mask_d[None, :]
            mbc = (offs_l < L)[:, None] & mask_n[None, :]
            u = tl.load(u_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + ud_base + offs_l[:, None], mask=m2, other=0.0).to(tl.float32)
            Bm = tl.load(B_ptr + bc_base + offs_l[:, None], mask=mbc, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias[None, :]
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m2, dt, 0.0)
            dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
            dBu = (dt * u)[:, None, :] * Bm[:, :, None]
            a_t, b_t = _chunk_map(dA, dBu, BLOCK_L, BLOCK_N, BLOCK_D)
            h = a_t * h + b_t
            tl.store(scr_base + (r + 1) * (BLOCK_N * BLOCK_D), h)
        tl.debug_barrier()

        for r_i in range(0, R):
            r = R - 1 - r_i
            c = j * R + r
            offs_l = c * BLOCK_L + offs_c
            mask_l = offs_l < L
            m2 = mask_l[:, None] & mask_d[None, :]
            mbc = mask_l[:, None] & mask_n[None, :]
            m2n = (offs_l + 1 < L)[:, None] & mask_d[None, :]
            u = u_n.to(tl.float32)
            xdt = xdt_n.to(tl.float32)
            xdt1 = xdt1_n.to(tl.float32)
            dy = dy_n.to(tl.float32)
            Bm = B_n.to(tl.float32)
            Cm = C_n.to(tl.float32)
            h0 = tl.load(scr_base + r * (BLOCK_N * BLOCK_D))
            u_n, xdt_n, xdt1_n, dy_n, B_n, C_n = _load_chunk_bwd(
                u_ptr, delta_ptr, dy_ptr, B_ptr, C_ptr, ud_base, bc_base, offs_c, mask_d, mask_n, L, c - 1, BLOCK_L
            )
            if HAS_BIAS:
                xdt = xdt + bias[None, :]
                xdt1 = xdt1 + bias[None, :]
            if SOFTPLUS:
                dt = _softplus(xdt)
                dt1 = _softplus(xdt1)
            else:
                dt = xdt
                dt1 = xdt1
            dt = tl.where(m2, dt, 0.0)
            dt1 = tl.where(m2n, dt1, 0.0)

            dA = tl.exp2(dt[:, None, :] * A2[None, :, :])
            dtu = dt * u
            dBu = dtu[:, None, :] * Bm[:, :, None]
            a_s, b_s = tl.associative_scan((dA, dBu), axis=0, combine_fn=_scan_combine)
            hs = a_s * h0[None, :, :] + b_s
            alpha = tl.exp2(tl.flip(dt1, 0)[:, None, :] * A2[None, :, :])
            cdy = tl.flip(Cm, 0)[:, :, None] * tl.flip(dy, 0)[:, None, :]
            ra, rb = tl.associative_scan((alpha, cdy), axis=0, combine_fn=_scan_combine)
            xs = tl.flip(ra * x_carry[None, :, :] + rb, 0)

            dC_part = tl.sum(hs * dy[:, None, :], axis=2)
            dB_part = tl.sum(xs * dtu[:, None, :], axis=2)
            tl.atomic_add(dC_ptr + bc_base + offs_l[:, None], dC_part, mask=mbc, sem="relaxed")
            tl.atomic_add(dB_ptr + bc_base + offs_l[:, None], dB_part, mask=mbc, sem="relaxed")
            xdec = xs * (hs - dBu)
            xB = tl.sum(xs * Bm[:, :, None], axis=1)
            ddt = xB * u + tl.sum(xdec * A[None, :, :], axis=1)
            dA_acc += tl.sum(xdec * dt[:, None, :], axis=0)
            du = xB * dt
            if HAS_D:
                du = du + Dv[None, :] * dy
                dD_acc += tl.sum(dy * u, axis=0)
            if SOFTPLUS:
                ddt = ddt * _sigmoid(xdt)
            ddt = tl.where(m2, ddt, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + ud_base + offs_l[:, None], du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddelta_ptr + ud_base + offs_l[:, None], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
            x_carry = tl.sum(tl.where((offs_c == 0)[:, None, None], xs, -0.0), axis=0)
        tl.debug_barrier()

    tl.atomic_add(dA_ptr + ch[None, :] * N + offs_n[:, None], dA_acc, mask=mask_nd, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dA_ptr + KD * N + ch, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dA_ptr + KD * (N + 1) + ch, dbias_acc, mask=mask_d, sem="relaxed")

"""State-space duality (SSD, Mamba-2) scans in plain PyTorch: causal, non-causal and bidirectional.

Notation (Mamba-2): a sequence of length ``L`` with ``nheads`` heads of ``headdim`` channels each, a scalar decay per
head and token ``dA_t = dt_t * A`` (``A < 0``), input/output projections ``B_t, C_t`` of size ``d_state`` shared by the
heads of a group (``ngroups`` divides ``nheads``; head ``h`` uses group ``h // (nheads // ngroups)``).

* causal (Mamba-2 SSD):   ``S_t = exp(dA_t) S_{t-1} + dt_t B_t x_t^T``,  ``y_t = C_t^T S_t + D x_t``.
* non-causal (VSSD NC-SSD): no decay, one global state ``S = sum_s a_s B_s x_s^T`` with ``a_s = -dt_s * A > 0`` (the
  magnitude of the decay), ``y_t = C_t^T S + D x_t`` -- linear attention with ``Q = C``, ``K = B``, ``V = a * x``.
* bidirectional: the causal scan plus the causal scan of the reversed sequence (same parameters), ``D x_t`` counted
  once. (The released HeteroMedSeg code has an unused path that splits the heads in two halves instead; it cannot run
  with one B/C group or an odd head count, e.g. the 3 heads of the first stage.)

:func:`ssd_scan` is the fast chunked closed form (what models call); :func:`ssd_scan_ref` is the step-by-step
recurrence used as the specification in tests (float64-capable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ssd_scan", "ssd_scan_ref", "SSD_MODES"]

SSD_MODES = ("causal", "noncausal", "bidirectional")


def _check(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
           D: torch.Tensor | None, mode: str) -> tuple[int, int, int, int, int, int]:
    if mode not in SSD_MODES:
        raise ValueError(f"mode must be one of {SSD_MODES}, got {mode!r}")
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, L, nheads, headdim), got shape {tuple(x.shape)}")
    b, L, h, p = x.shape
    if dt.shape != (b, L, h):
        raise ValueError(f"dt must be (batch, L, nheads) = {(b, L, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be (nheads,) = ({h},), got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, L) or C.shape != B.shape:
        raise ValueError(
            f"B and C must both be (batch, L, ngroups, d_state) with batch={b}, L={L}; got B {tuple(B.shape)}, "
            f"C {tuple(C.shape)}"
        )
    g, n = B.shape[2], B.shape[3]
    if h % g:
        raise ValueError(f"nheads ({h}) must be divisible by ngroups ({g})")
    if D is not None and D.shape != (h,):
        raise ValueError(f"D must be (nheads,) = ({h},), got {tuple(D.shape)}")
    return b, L, h, p, g, n


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """(b, L, g, n) -> (b, L, h, n) by repeating each group for its nheads // ngroups heads."""
    g = t.shape[2]
    return t if g == h else t.repeat_interleave(h // g, dim=2)


def _causal_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    chunk_size: int) -> torch.Tensor:
    """Causal SSD without the D term, chunked closed form. Shapes as in :func:`ssd_scan`; B, C per head."""
    b, L, h, p = x.shape
    n = B.shape[-1]
    T = min(chunk_size, L)
    pad = (-L) % T
    if pad:
        # padded tokens have dt = 0 and x = 0: no input and no decay, so earlier outputs are unchanged
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    nc = (L + pad) // T
    x = x.reshape(b, nc, T, h, p)
    dt = dt.reshape(b, nc, T, h)
    B = B.reshape(b, nc, T, h, n)
    C = C.reshape(b, nc, T, h, n)
    dA = dt * A  # (b, nc, T, h), <= 0
    cum = torch.cumsum(dA, dim=2)  # inclusive cumulative decay inside each chunk

    # 1) within a chunk: y_t = sum_{s<=t} (C_t.B_s) exp(cum_t - cum_s) dt_s x_s
    seg = cum.unsqueeze(3) - cum.unsqueeze(2)  # (b, nc, t, s, h)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    decay = torch.where(causal[None, None, :, :, None], seg, torch.full_like(seg, float("-inf"))).exp()
    cb = torch.einsum("bctHn,bcsHn->bctsH", C, B)
    xdt = x * dt.unsqueeze(-1)
    y = torch.einsum("bctsH,bcsHp->bctHp", cb * decay, xdt)

    # 2) state left by each chunk: sum_s exp(cum_last - cum_s) dt_s B_s x_s^T  -> (b, nc, h, n, p)
    to_end = torch.exp(cum[:, :, -1:, :] - cum)  # (b, nc, T, h)
    states = torch.einsum("bcsHn,bcsH,bcsHp->bcHnp", B, to_end, xdt)

    # 3) state entering chunk c: sum_{c'<c} exp(sum of chunk decays strictly between c' and c, plus chunk c'+1..c-1)
    chunk_decay = cum[:, :, -1, :]  # (b, nc, h): total log-decay of each chunk
    ccum = torch.cumsum(chunk_decay, dim=1)
    # entering chunk c from chunk c' < c: exp(ccum_{c-1} - ccum_{c'})
    cseg = ccum.unsqueeze(2) - ccum.unsqueeze(1)  # (b, c, c', h) = ccum_c - ccum_c'
    cseg = cseg - chunk_decay.unsqueeze(2)  # ccum_{c-1} - ccum_{c'}
    strict = torch.ones(nc, nc, dtype=torch.bool, device=x.device).tril(-1)
    cdecay = torch.where(strict[None, :, :, None], cseg, torch.full_like(cseg, float("-inf"))).exp()
    entering = torch.einsum("bcdH,bdHnp->bcHnp", cdecay, states)

    # 4) contribution of the entering state: C_t^T entering * exp(cum_t)
    y = y + torch.einsum("bctHn,bcHnp,bctH->bctHp", C, entering, cum.exp())
    return y.reshape(b, nc * T, h, p)[:, :L]


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None = None, *, mode: str = "causal", chunk_size: int = 64) -> torch.Tensor:
    """SSD scan (Mamba-2 mixer core) in plain PyTorch.

    Args:
        x: (batch, L, nheads, headdim) inputs (the "values").
        dt: (batch, L, nheads) positive step sizes (softplus already applied).
        A: (nheads,) negative decay rates (``-exp(A_log)``).
        B: (batch, L, ngroups, d_state) input projections ("keys").
        C: (batch, L, ngroups, d_state) output projections ("queries").
        D: optional (nheads,) skip weights.
        mode: ``"causal"`` (Mamba-2), ``"noncausal"`` (VSSD NC-SSD) or ``"bidirectional"`` (see module docstring).
        chunk_size: chunk length of the causal closed form (memory ~ chunk_size per token); no effect on the result.

    Returns:
        y: (batch, L, nheads, headdim) in ``x``'s dtype (computed in float32 for half inputs).
    """
    _check(x, dt, A, B, C, D, mode)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h = x.shape[2]
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xw, dtw, Aw = x.to(work), dt.to(work), A.to(work)
    Bh, Ch = _heads(B.to(work), h), _heads(C.to(work), h)
    if mode == "noncausal":
        a = -dtw * Aw  # (b, L, h) > 0
        state = torch.einsum("blHn,blH,blHp->bHnp", Bh, a, xw)
        y = torch.einsum("blHn,bHnp->blHp", Ch, state)
    elif mode == "causal":
        y = _causal_chunked(xw, dtw, Aw, Bh, Ch, chunk_size)
    else:
        fwd = _causal_chunked(xw, dtw, Aw, Bh, Ch, chunk_size)
        bwd = _causal_chunked(xw.flip(1), dtw.flip(1), Aw, Bh.flip(1), Ch.flip(1), chunk_size).flip(1)
        y = fwd + bwd
    if D is not None:
        y = y + xw * D.to(work)[:, None]
    return y.to(out_dtype)


def ssd_scan_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None = None, *, mode: str = "causal") -> torch.Tensor:
    """Step-by-step reference of :func:`ssd_scan` (slow; the specification used by tests).

    The causal mode runs the recurrence token by token; the non-causal mode builds the full (L x L) attention-like
    matrix ``M[t, s] = (C_t . B_s) a_s`` (independent of the factorised form). Same arguments and shapes as
    :func:`ssd_scan`; computes in the input dtype (use float64 for tight comparisons).
    """
    b, L, h, p, g, n = _check(x, dt, A, B, C, D, mode)
    Bh, Ch = _heads(B, h), _heads(C, h)

    def causal(xx: torch.Tensor, dd: torch.Tensor, bb: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
        state = xx.new_zeros(b, h, n, p)
        ys = []
        for t in range(L):
            decay = torch.exp(dd[:, t] * A)  # (b, h)
            state = state * decay[:, :, None, None] + torch.einsum(
                "bHn,bHp->bHnp", bb[:, t], xx[:, t] * dd[:, t, :, None]
            )
            ys.append(torch.einsum("bHn,bHnp->bHp", cc[:, t], state))
        return torch.stack(ys, dim=1)

    if mode == "causal":
        y = causal(x, dt, Bh, Ch)
    elif mode == "bidirectional":
        y = causal(x, dt, Bh, Ch) + causal(x.flip(1), dt.flip(1), Bh.flip(1), Ch.flip(1)).flip(1)
    else:
        a = -dt * A  # (b, L, h)
        m = torch.einsum("btHn,bsHn->bHts", Ch, Bh) * a.permute(0, 2, 1)[:, :, None, :]
        y = torch.einsum("bHts,bsHp->btHp", m, x)
    if D is not None:
        y = y + x * D[:, None]
    return y

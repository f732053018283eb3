"""Bi-level routing attention (BiFormer) as a pure function, plus a dense masked reference.

The map is cut into ``nh x nw`` regions. Region-level queries/keys are the means of the pixel queries/keys of each
region; every region routes to the ``topk`` regions with the largest region-to-region affinity (a hard,
non-differentiable choice), and each pixel query then attends to all pixels of those ``topk`` regions (token-to-token
attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["region_routing", "bi_level_routing_attention", "bi_level_routing_attention_dense"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_win: tuple[int, int], num_heads: int) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "q and k must be (B, H, W, C_qk) and v (B, H, W, C_v) with the same B, H, W; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    _, H, W, cqk = q.shape
    nh, nw = n_win
    if nh < 1 or nw < 1 or H % nh or W % nw:
        raise ValueError(f"the map size {(H, W)} must be divisible by the region grid n_win={n_win}")
    if cqk % num_heads or v.shape[-1] % num_heads:
        raise ValueError(f"channels (qk {cqk}, v {v.shape[-1]}) must be divisible by num_heads={num_heads}")


def _to_regions(x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nh*nw, rh*rw, C), regions in row-major order, pixels row-major inside a region."""
    b, H, W, c = x.shape
    rh, rw = H // nh, W // nw
    return x.view(b, nh, rh, nw, rw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, rh * rw, c)


def _from_regions(x: torch.Tensor, nh: int, nw: int, H: int, W: int) -> torch.Tensor:
    b, _, _, c = x.shape
    rh, rw = H // nh, W // nw
    return x.view(b, nh, nw, rh, rw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, H, W, c)


def region_routing(q: torch.Tensor, k: torch.Tensor, n_win: tuple[int, int], topk: int,
                   scale: float) -> torch.Tensor:
    """Indices of the ``topk`` routed regions per region.

    Args:
        q, k: (B, H, W, C_qk) pixel queries and keys (detached inside: routing carries no gradient).
        n_win: (nh, nw) regions per side.
        topk: regions kept per query region (1 <= topk <= nh*nw).
        scale: multiplier of the region affinities (only matters for ties; kept for fidelity).

    Returns:
        (B, nh*nw, topk) int64 indices into the row-major region list.
    """
    nh, nw = n_win
    if not 1 <= topk <= nh * nw:
        raise ValueError(f"topk must be in [1, {nh * nw}] for n_win={n_win}, got {topk}")
    q_r = _to_regions(q.detach(), nh, nw).mean(2)  # (B, S, C)
    k_r = _to_regions(k.detach(), nh, nw).mean(2)
    logits = (q_r * scale) @ k_r.transpose(-2, -1)  # (B, S, S)
    return torch.topk(logits, k=topk, dim=-1).indices


def bi_level_routing_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n_win: int | tuple[int, int],
                               topk: int, num_heads: int, scale: float | None = None) -> torch.Tensor:
    """Bi-level routing attention (region routing, then token attention inside the routed regions).

    Args:
        q, k: (B, H, W, C_qk) pixel queries and keys.
        v: (B, H, W, C_v) pixel values.
        n_win: regions per side, an int or (nh, nw); H and W must be divisible by it.
        topk: number of routed regions per query region.
        num_heads: attention heads (C_qk and C_v divisible by it).
        scale: logit scale of both routing and token attention; default ``C_qk ** -0.5`` (BiFormer uses the FULL
            qk width, not the per-head width).

    Returns:
        (B, H, W, C_v) attention output (no output projection, no positional term).
    """
    n_win = (n_win, n_win) if isinstance(n_win, int) else tuple(n_win)
    _check(q, k, v, n_win, num_heads)
    b, H, W, cqk = q.shape
    cv = v.shape[-1]
    nh, nw = n_win
    scale = cqk ** -0.5 if scale is None else scale
    idx = region_routing(q, k, n_win, topk, scale)  # (B, S, topk)
    S = nh * nw
    q_r = _to_regions(q, nh, nw)  # (B, S, w2, C)
    k_r = _to_regions(k, nh, nw)
    v_r = _to_regions(v, nh, nw)
    w2 = q_r.shape[2]
    bidx = torch.arange(b, device=q.device).view(b, 1, 1)
    k_sel = k_r[bidx, idx].reshape(b, S, topk * w2, cqk)  # (B, S, topk*w2, C)
    v_sel = v_r[bidx, idx].reshape(b, S, topk * w2, cv)
    m = num_heads
    qh = q_r.reshape(b * S, w2, m, cqk // m).transpose(1, 2)  # (B*S, m, w2, d)
    kh = k_sel.reshape(b * S, topk * w2, m, cqk // m).transpose(1, 2)
    vh = v_sel.reshape(b * S, topk * w2, m, cv // m).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)  # (B*S, m, w2, dv)
    out = out.transpose(1, 2).reshape(b, S, w2, cv)
    return _from_regions(out, nh, nw, H, W)


def bi_level_routing_attention_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                     n_win: int | tuple[int, int], topk: int, num_heads: int,
                                     scale: float | None = None) -> torch.Tensor:
    """Reference: full (HW x HW) attention with a mask that keeps only keys in the routed regions (slow)."""
    n_win = (n_win, n_win) if isinstance(n_win, int) else tuple(n_win)
    _check(q, k, v, n_win, num_heads)
    b, H, W, cqk = q.shape
    cv = v.shape[-1]
    nh, nw = n_win
    scale = cqk ** -0.5 if scale is None else scale
    idx = region_routing(q, k, n_win, topk, scale)  # (B, S, topk)
    rows = torch.arange(H, device=q.device) // (H // nh)
    cols = torch.arange(W, device=q.device) // (W // nw)
    region_of = (rows[:, None] * nw + cols[None, :]).reshape(-1)  # (HW,)
    allowed = torch.zeros(b, nh * nw, nh * nw, dtype=torch.bool, device=q.device)
    allowed.scatter_(2, idx, True)  # (B, S_query, S_key)
    mask = allowed[:, region_of][:, :, region_of]  # (B, HW, HW)
    m = num_heads
    qh = q.reshape(b, H * W, m, cqk // m).transpose(1, 2)
    kh = k.reshape(b, H * W, m, cqk // m).transpose(1, 2)
    vh = v.reshape(b, H * W, m, cv // m).transpose(1, 2)
    logits = (qh @ kh.transpose(-2, -1)) * scale  # (B, m, HW, HW)
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    out = logits.softmax(-1) @ vh
    return out.transpose(1, 2).reshape(b, H, W, cv)

"""Shared set-up of the throwaway parity runs (official network on CPU vs our converted model).

Each ``<family>_parity.py`` imports an official repository checked out OUTSIDE this repo (``--repo``), swaps its
CUDA/Triton-only kernels for the small float32 reference functions below, fills the official ``state_dict`` with the
deterministic values of ``tests/models/_synth_checkpoint.py``, records the official logits of a seeded input, then
converts the state dict with our converter and compares our logits. ``--write`` stores the fixture the replay tests
use. Nothing from the official repositories is copied into this repo.

The optional ``--shim`` folder only has to provide the few ``timm`` / ``fvcore`` / ``fairscale`` names the official
files import (``DropPath``, ``trunc_normal_``, ``to_2tuple``, ``register_model``, FLOP counters, a checkpoint
wrapper); installed packages work too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "models"))

import _synth_checkpoint as synth  # noqa: E402

__all__ = ["ROOT", "synth", "parse_args", "ref_selective_scan", "ref_ssd_causal", "state_entries", "fill_official",
           "compare", "fixture_record"]


def parse_args(default_repo: str, extra: list[tuple[str, dict[str, Any]]] = ()) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=default_repo, help="checkout of the official repository (outside this repo)")
    ap.add_argument("--shim", default="", help="folder put first on the import path (stand-ins for the timm / "
                    "fvcore / fairscale helpers the official files import); empty: the installed packages")
    ap.add_argument("--write", action="store_true", help="write the fixture JSON under tests/models/fixtures")
    for name, kw in extra:
        ap.add_argument(name, **kw)
    args = ap.parse_args()
    for p in (args.shim, args.repo):
        if p:
            sys.path.insert(0, p)
    return args


def ref_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, *_, **__):
    """Mamba-1 selective scan, sequential in float32 (B, C either (b, N, L) or grouped (b, G, N, L))."""
    u32, dt = u.float(), delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    b, d, L = u32.shape
    A = A.float()

    def per_channel(M):
        M = M.float()
        if M.dim() == 3:
            return M[:, None].expand(b, d, M.shape[1], L)
        return M.repeat_interleave(d // M.shape[1], dim=1)

    Bc, Cc = per_channel(B), per_channel(C)
    h = u32.new_zeros(b, d, A.shape[1])
    out = []
    for t in range(L):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u32[:, :, t])[:, :, None] * Bc[..., t]
        out.append((h * Cc[..., t]).sum(-1))
    y = torch.stack(out, -1)
    if D is not None:
        y = y + D.float()[None, :, None] * u32
    return y


def ref_ssd_causal(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")), z=None,
                   **_: Any):
    """Mamba-2 SSD (causal) sequentially, the semantics of ``mamba_chunk_scan_combined``.

    x (b, L, h, p), dt (b, L, h), A (h,), B/C (b, L, g, n), D (h,) or (h, p); returns (b, L, h, p).
    """
    x, dt, A, B, C = x.float(), dt.float(), A.float(), B.float(), C.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit != (0.0, float("inf")):
        dt = dt.clamp(dt_limit[0], dt_limit[1])
    b, L, h, p = x.shape
    g = B.shape[2]
    Bh = B.repeat_interleave(h // g, dim=2)
    Ch = C.repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        state = state * decay[:, :, None, None] + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + (D.float()[:, None] if D.dim() == 1 else D.float()) * x
    if z is not None:
        y = y * F.silu(z.float())
    return y


def state_entries(module: torch.nn.Module) -> list[list[Any]]:
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in module.state_dict().items()]


def fill_official(module: torch.nn.Module, base_seed: int = 0) -> tuple[list[list[Any]], dict[str, torch.Tensor]]:
    entries = state_entries(module)
    sd = synth.synth_state_dict(entries, base_seed)
    module.load_state_dict(sd, strict=True)
    return entries, sd


def compare(name: str, ours: torch.Tensor, official: torch.Tensor) -> float:
    if ours.shape != official.shape:
        raise SystemExit(f"{name}: shape {tuple(ours.shape)} vs official {tuple(official.shape)}")
    diff = (ours.double() - official.double()).abs().max().item()
    scale = official.abs().max().item()
    print(f"{name}: max |ours - official| = {diff:.3e} (max |official| = {scale:.3e})")
    return diff


def fixture_record(*, source: str, converter: str, options: dict[str, Any], entries: list[list[Any]],
                   sd: dict[str, torch.Tensor], input_shape: list[int], input_seed: int, logits: torch.Tensor,
                   max_abs_diff: float, stride: tuple[int, int] = (1, 1), notes: str = "") -> dict[str, Any]:
    """The replayable fixture: key list, checksums of a few synthesized tensors, logits (strided if large)."""
    picks = [entries[i][0] for i in sorted({0, len(entries) // 3, 2 * len(entries) // 3, len(entries) - 1})]
    sub = logits if tuple(stride) == (1, 1) else logits[..., :: stride[0], :: stride[1]]
    return {
        "source": source, "converter": converter, "options": options, "base_seed": 0, "notes": notes,
        "input": {"shape": input_shape, "seed": input_seed},
        "logits_stride": list(stride),
        "logits_checksum": synth.checksum(logits),
        "logits": synth.encode_tensor(sub),
        "parity_max_abs_diff": max_abs_diff,
        "checksums": {k: synth.checksum(sd[k]) for k in picks},
        "state_dict": entries,
    }

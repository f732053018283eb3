"""Core VMamba-v0 layers: shapes, key names, initialisation and a float64 SS2D reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambaseg.layers import (
    SS2D,
    DropPath,
    FinalPatchExpand2D,
    LayerNorm2d,
    PatchEmbed2D,
    PatchExpand2D,
    PatchMerging2D,
    VSSBlock,
    VSSLayer,
)
from mambaseg.ops import selective_scan_ref


def test_patch_merging_neighbour_order():
    m = PatchMerging2D(1).double()
    with torch.no_grad():
        m.norm.weight.fill_(1), m.norm.bias.zero_()
    x = torch.arange(16, dtype=torch.float64).view(1, 4, 4, 1)
    gathered = {}
    m.norm.register_forward_hook(lambda mod, inp, out: gathered.setdefault("x", inp[0]))
    out = m(x)
    assert out.shape == (1, 2, 2, 2)
    # top-left 2x2 block holds 0, 1, 4, 5 -> order (even,even), (odd,even), (even,odd), (odd,odd)
    assert gathered["x"][0, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]


def test_patch_expand_places_channels_row_major():
    m = PatchExpand2D(2)
    with torch.no_grad():
        m.expand.weight.copy_(torch.eye(8, 4))
    m.norm = torch.nn.Identity()
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4)  # 2d = 4 channels
    y = m(x)
    assert y.shape == (1, 2, 2, 2)
    # channel groups (p1, p2, c): p1 slowest -> y[0, p1, p2, c] = expanded[(p1 * 2 + p2) * 2 + c]
    e = torch.cat([x[0, 0, 0], torch.zeros(4)])
    for p1 in range(2):
        for p2 in range(2):
            assert y[0, p1, p2].tolist() == e[(p1 * 2 + p2) * 2:(p1 * 2 + p2) * 2 + 2].tolist()


def test_patch_shapes():
    assert PatchEmbed2D(4, 5, 16)(torch.randn(2, 5, 32, 48)).shape == (2, 8, 12, 16)
    assert FinalPatchExpand2D(16, 4)(torch.randn(1, 3, 5, 16)).shape == (1, 12, 20, 4)
    with pytest.raises(ValueError, match="even"):
        PatchMerging2D(4)(torch.randn(1, 3, 4, 4))
    ln = LayerNorm2d(6)
    x = torch.randn(2, 6, 3, 3)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,)).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), ref, atol=1e-6)


def test_droppath_train_eval():
    dp = DropPath(0.5)
    x = torch.ones(1000, 4)
    dp.train()
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.4 < kept < 0.6 and torch.allclose(y[y != 0], torch.full_like(y[y != 0], 2.0))
    dp.eval()
    assert torch.equal(dp(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_ss2d_parameter_shapes_and_init():
    m = SS2D(96, d_state=16)
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert sd["in_proj.weight"] == (384, 96)
    assert sd["conv2d.weight"] == (192, 1, 3, 3)
    assert sd["x_proj_weight"] == (4, 6 + 32, 192)
    assert sd["dt_projs_weight"] == (4, 192, 6)
    assert sd["dt_projs_bias"] == (4, 192)
    assert sd["A_logs"] == (768, 16)
    assert sd["Ds"] == (768,)
    assert sd["out_proj.weight"] == (96, 192)
    assert torch.allclose(m.A_logs[5], torch.log(torch.arange(1, 17).float()))
    assert torch.equal(m.Ds, torch.ones(768))
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6


def _ss2d_reference(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """Direction-by-direction SS2D written from the spec, with the sequential scan."""
    b, H, W, C = x.shape
    xz = x @ m.in_proj.weight.T
    xi, z = xz.chunk(2, dim=-1)
    xi = F.silu(F.conv2d(xi.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=1, groups=m.d_inner))
    D = m.d_inner
    seqs = []
    for k in range(4):
        if k % 2 == 0:
            s = xi.flatten(2)
        else:
            s = xi.transpose(2, 3).flatten(2)
        if k >= 2:
            s = s.flip(-1)
        seqs.append(s)
    out = torch.zeros(b, D, H, W, dtype=x.dtype)
    A = -torch.exp(m.A_logs).view(4, D, -1)
    for k, s in enumerate(seqs):
        proj = torch.einsum("bdl,cd->bcl", s, m.x_proj_weight[k])
        dt, Bk, Ck = proj.split([m.dt_rank, m.d_state, m.d_state], dim=1)
        dt = torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k])
        y = selective_scan_ref(s, dt, A[k], Bk, Ck, m.Ds.view(4, D)[k], delta_bias=m.dt_projs_bias[k],
                               delta_softplus=True)
        if k >= 2:
            y = y.flip(-1)
        if k % 2 == 0:
            out += y.view(b, D, H, W)
        else:
            out += y.view(b, D, W, H).transpose(2, 3)
    y = F.layer_norm(out.permute(0, 2, 3, 1), (D,), m.out_norm.weight, m.out_norm.bias)
    y = y * F.silu(z)
    return y @ m.out_proj.weight.T


def test_ss2d_matches_direction_by_direction_reference():
    torch.manual_seed(0)
    m = SS2D(8, d_state=4).double()
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    assert torch.allclose(m(x), _ss2d_reference(m, x), atol=1e-10)


def test_vss_block_and_layer_grad_and_keys():
    blk = VSSBlock(16, drop_path=0.1, d_state=4)
    assert {"ln_1.weight", "self_attention.in_proj.weight"} <= set(blk.state_dict())
    layer = VSSLayer(16, 2, drop_path=[0.0, 0.1], downsample=PatchMerging2D(16), d_state=4)
    x = torch.randn(2, 8, 8, 16, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 4, 4, 32)
    y.square().mean().backward()
    assert all(p.grad is not None for p in layer.parameters())
    with pytest.raises(ValueError, match="drop-path rates"):
        VSSLayer(16, 2, drop_path=[0.1], d_state=4)
    with pytest.raises(TypeError, match="unexpected"):
        SS2D(8, bogus=1)


def test_ss2d_dt_rank_auto():
    assert SS2D(96).dt_rank == 6 and SS2D(768, d_state=1).dt_rank == 48 and SS2D(20).dt_rank == math.ceil(20 / 16)

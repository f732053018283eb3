from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambaseg.layers.ss2d_v2 import SS2Dv2
from mambaseg.layers.vss_block_v2 import VSSBlockV2
from mambaseg.ops import use_backend


def _orders(h: int, w: int) -> list[torch.Tensor]:
    pos = torch.arange(h * w).view(h, w)
    row, col = pos.reshape(-1), pos.t().reshape(-1)
    return [row, col, row.flip(0), col.flip(0)]


def _reference(m: SS2Dv2, x: torch.Tensor) -> torch.Tensor:
    """Direct per-token recurrence of the gate-free SS2D (independent of the ops used by the module)."""
    b, c, h, w = x.shape
    u = F.conv2d(x, m.in_proj.weight[:, :, None, None])
    u = F.silu(F.conv2d(u, m.conv2d.weight, padding=1, groups=m.d_inner)).flatten(2)  # (B, D, L)
    d, n, r = m.d_inner, m.d_state, m.dt_rank
    A = -torch.exp(m.A_logs).view(4, d, n)
    Ds = m.Ds.view(4, d)
    y = torch.zeros(b, d, h * w, dtype=x.dtype)
    for k, order in enumerate(_orders(h, w)):
        state = torch.zeros(b, d, n, dtype=x.dtype)
        for pos in order.tolist():
            ut = u[:, :, pos]  # (B, D)
            proj = ut @ m.x_proj_weight[k].t()  # (B, R + 2N)
            dt = F.softplus(proj[:, :r] @ m.dt_projs_weight[k].t() + m.dt_projs_bias[k])  # (B, D)
            Bt, Ct = proj[:, r:r + n], proj[:, r + n:]
            state = torch.exp(dt[..., None] * A[k]) * state + (dt * ut)[..., None] * Bt[:, None, :]
            y[:, :, pos] += (state * Ct[:, None, :]).sum(-1) + Ds[k] * ut
    y = y.view(b, d, h, w).permute(0, 2, 3, 1)
    y = F.layer_norm(y, (d,), m.out_norm.weight, m.out_norm.bias, m.out_norm.eps).permute(0, 3, 1, 2)
    return F.conv2d(y, m.out_proj.weight[:, :, None, None])


@pytest.mark.parametrize("backend", ["ref", "torch"])
@pytest.mark.parametrize("d_state,ratio", [(1, 1.0), (3, 2.0)])
def test_matches_direct_recurrence(backend, d_state, ratio):
    torch.manual_seed(0)
    m = SS2Dv2(8, d_state=d_state, ssm_ratio=ratio).double()
    with torch.no_grad():
        m.out_norm.weight.uniform_(0.5, 1.5)
        m.A_logs.uniform_(-1, 1)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64, requires_grad=True)
    with use_backend(backend):  # the backend is a runtime choice applied around the layer
        out = m(x)
    ref = _reference(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    gw = torch.randn_like(out)
    params = [m.x_proj_weight, m.dt_projs_bias, m.A_logs, m.Ds]
    g = torch.autograd.grad((out * gw).sum(), [x, *params])
    g_ref = torch.autograd.grad((ref * gw).sum(), [x, *params])
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-8)


def test_vmamba_parameter_shapes():
    m = SS2Dv2(96)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (96, 96), "conv2d.weight": (96, 1, 3, 3), "x_proj_weight": (4, 8, 96),
        "dt_projs_weight": (4, 96, 6), "dt_projs_bias": (4, 96), "A_logs": (384, 1), "Ds": (384,),
        "out_norm.weight": (96,), "out_norm.bias": (96,), "out_proj.weight": (96, 96),
    }
    assert m.dt_rank == math.ceil(96 / 16)


def test_block_keys_and_shapes():
    b = VSSBlockV2(16, ffn="msffn")
    keys = set(b.state_dict())
    assert {"norm.weight", "op.x_proj_weight", "norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight",
            "mlp.multiscale_conv.dw_convs.2.weight"} <= keys
    x = torch.randn(1, 16, 4, 4)
    assert b(x).shape == x.shape
    with pytest.raises(ValueError, match="ffn"):
        VSSBlockV2(16, ffn="conv")
    with pytest.raises(ValueError, match="SS2Dv2 expects"):
        b.op(torch.randn(1, 4, 4, 16))

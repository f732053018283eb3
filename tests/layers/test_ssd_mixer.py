from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambaseg.layers.ssd_mixer import SSD2D
from mambaseg.layers.vssd_block import VSSDBlock
from mambaseg.ops.ssd import ssd_scan_ref


def _reference(m: SSD2D, x: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = x.shape
    gn = m.ngroups * m.d_state
    zxbcdt = x @ m.in_proj.weight.t()
    z, xbc, dt = zxbcdt.split([m.d_inner, m.d_inner + 2 * gn, m.nheads], -1)
    xbc = F.silu(F.conv2d(xbc.permute(0, 3, 1, 2), m.conv2d.weight, m.conv2d.bias, padding=1,
                          groups=xbc.shape[-1])).permute(0, 2, 3, 1).reshape(b, h * w, -1)
    xs, Bm, Cm = xbc.split([m.d_inner, gn, gn], -1)
    dt = F.softplus(dt.reshape(b, h * w, -1) + m.dt_bias)
    y = ssd_scan_ref(xs.reshape(b, h * w, m.nheads, m.headdim), dt, -torch.exp(m.A_log),
                     Bm.reshape(b, h * w, m.ngroups, m.d_state), Cm.reshape(b, h * w, m.ngroups, m.d_state), m.D,
                     mode=m.mode)
    y = F.layer_norm(y.reshape(b, h, w, -1), (m.d_inner,), m.norm.weight, m.norm.bias) * z
    return y @ m.out_proj.weight.t()


@pytest.mark.parametrize("mode", ["noncausal", "causal", "bidirectional"])
def test_mixer_matches_reference(mode):
    torch.manual_seed(0)
    m = SSD2D(16, d_state=4, headdim=8, mode=mode, chunk_size=5).double()
    x = torch.randn(2, 3, 4, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), _reference(m, x), rtol=1e-9, atol=1e-9)


def test_modes_differ_and_params_match_vssd():
    torch.manual_seed(0)
    blocks = {mode: VSSDBlock(96, num_heads=3, mlp_ratio=3, mode=mode, d_state=64) for mode in
              ("noncausal", "causal", "bidirectional")}
    sd = blocks["noncausal"].state_dict()
    for b in blocks.values():
        b.load_state_dict(sd)
    x = torch.randn(1, 4, 4, 96)
    outs = {k: b(x) for k, b in blocks.items()}
    assert not torch.allclose(outs["noncausal"], outs["causal"])
    assert not torch.allclose(outs["causal"], outs["bidirectional"])
    # VSSD block at C=96, 3 heads, d_state 64 (spec count): 129,449 parameters
    assert sum(p.numel() for p in blocks["causal"].parameters()) == 129449
    assert blocks["causal"].attn.nheads == 3 and blocks["causal"].attn.headdim == 64


def test_bad_configs():
    with pytest.raises(ValueError, match="mode"):
        SSD2D(16, mode="forward")
    with pytest.raises(ValueError, match="headdim"):
        SSD2D(16, headdim=7)
    with pytest.raises(ValueError, match="expects"):
        SSD2D(16, headdim=8)(torch.randn(1, 16, 4, 4))

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambaseg.layers.scsa import SCSA


def _reference(m: SCSA, x: torch.Tensor) -> torch.Tensor:
    """Independent straightforward SCSA: explicit per-group convs, explicit softmax attention."""
    b, c, h, w = x.shape
    g = c // 4

    def gate(prof, norm):
        parts = []
        for i, conv in enumerate(m.dwconvs):
            ks = conv.kernel_size[0]
            parts.append(F.conv1d(prof[:, i * g:(i + 1) * g], conv.weight, conv.bias, padding=ks // 2, groups=g))
        return torch.sigmoid(F.group_norm(torch.cat(parts, 1), 4, norm.weight, norm.bias, norm.eps))

    xs = x * gate(x.mean(3), m.norm_h)[..., None] * gate(x.mean(2), m.norm_w)[:, :, None, :]
    ws = min(m.window_size, h), min(m.window_size, w)
    y = F.group_norm(F.avg_pool2d(xs, ws, ws), 1, m.norm.weight, m.norm.bias, m.norm.eps)
    q = F.conv2d(y, m.q.weight, groups=c)
    k = F.conv2d(y, m.k.weight, groups=c)
    v = F.conv2d(y, m.v.weight, groups=c)
    hd = c // m.num_heads
    q, k, v = (t.reshape(b, m.num_heads, hd, -1) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-2, -1) * hd ** -0.5, dim=-1) @ v
    return xs * torch.sigmoid(attn.reshape(b, c, -1).mean(-1))[..., None, None]


@pytest.mark.parametrize("size", [(14, 14), (9, 20), (4, 4)])
def test_matches_reference(size):
    m = SCSA(32, num_heads=4).double()
    for p in m.parameters():  # non-trivial affine parameters
        torch.nn.init.normal_(p, 0.5, 0.3)
    x = torch.randn(2, 32, *size, dtype=torch.float64, requires_grad=True)
    out, ref = m(x), _reference(m, x)
    torch.testing.assert_close(out, ref)
    gw = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad((out * gw).sum(), x)[0], torch.autograd.grad((ref * gw).sum(), x)[0])


def test_parameter_count_is_16_dim():
    for dim, heads in [(768, 16), (384, 12), (192, 8)]:
        assert sum(p.numel() for p in SCSA(dim, heads).parameters()) == 16 * dim


def test_bad_dims():
    with pytest.raises(ValueError, match="divisible"):
        SCSA(30, num_heads=4)
    with pytest.raises(ValueError, match="expects"):
        SCSA(32, num_heads=4)(torch.randn(1, 16, 8, 8))

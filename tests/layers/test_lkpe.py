from __future__ import annotations

import torch
from einops import rearrange

from mambaseg.layers.lkpe import FLKPE, LKPE, pixel_shuffle_pc


def test_pixel_shuffle_channel_order():
    x = torch.randn(2, 4 * 3, 5, 6)
    ref = rearrange(x, "b (p1 p2 c) h w -> b c (h p1) (w p2)", p1=2, p2=2)
    torch.testing.assert_close(pixel_shuffle_pc(x, 2), ref)
    x = torch.randn(1, 16 * 2, 3, 3)
    torch.testing.assert_close(pixel_shuffle_pc(x, 4), rearrange(x, "b (p1 p2 c) h w -> b c (h p1) (w p2)", p1=4, p2=4))


def test_lkpe_shapes_and_params():
    m = LKPE(8)
    assert m(torch.randn(2, 8, 5, 7)).shape == (2, 4, 10, 14)
    # 1x1 conv 8->16 (+bias), BN(16), dw3x3 on 16 (+bias), LN(4)
    assert sum(p.numel() for p in m.parameters()) == 8 * 16 + 16 + 32 + 16 * 9 + 16 + 8
    f = FLKPE(8, num_classes=3)
    assert f(torch.randn(2, 8, 4, 4)).shape == (2, 3, 16, 16)


def test_lkpe_layernorm_over_channels():
    m = LKPE(8).eval()
    y = m(torch.randn(2, 8, 3, 3))
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 6, 6), atol=1e-5, rtol=0)

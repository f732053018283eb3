from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambaseg.layers.ms_ffn import MSFFN, MultiScaleDWConv


def test_multiscale_dwconv_is_identity_plus_depthwise_convs():
    m = MultiScaleDWConv(6, (1, 3, 5)).double()
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    ref = x + sum(F.conv2d(x, c.weight, padding=c.kernel_size[0] // 2, groups=6) for c in m.dw_convs)
    torch.testing.assert_close(m(x), ref)


def test_msffn_forward_and_params():
    m = MSFFN(8, 32).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    h = F.gelu(F.conv2d(x, m.fc1.weight[:, :, None, None], m.fc1.bias))
    h = h + sum(F.conv2d(h, c.weight, padding=c.kernel_size[0] // 2, groups=32) for c in m.multiscale_conv.dw_convs)
    ref = F.conv2d(h, m.fc2.weight[:, :, None, None], m.fc2.bias)
    torch.testing.assert_close(m(x), ref)
    # fc1 8*32+32, dw 1+9+25 per channel, fc2 32*8+8
    assert sum(p.numel() for p in m.parameters()) == 8 * 32 + 32 + 32 * 35 + 32 * 8 + 8


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="odd"):
        MultiScaleDWConv(4, (2,))

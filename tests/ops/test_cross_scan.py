from __future__ import annotations

import torch

from mambaseg.ops import RasterScan, cross_merge, cross_scan


def test_orders_match_index_formulas():
    H, W = 3, 5
    x = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W)
    s = cross_scan(x)[0, :, 0]
    row = [h * W + w for h in range(H) for w in range(W)]
    col = [h * W + w for w in range(W) for h in range(H)]
    assert s[0].tolist() == row
    assert s[1].tolist() == col
    assert s[2].tolist() == row[::-1]
    assert s[3].tolist() == col[::-1]


def test_merge_is_exact_adjoint_and_round_trip():
    g = torch.Generator().manual_seed(0)
    H, W = 4, 6
    x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
    y = torch.randn(2, 4, 3, H * W, generator=g, dtype=torch.float64)
    lhs = (cross_scan(x) * y).sum()
    rhs = (x.flatten(2) * cross_merge(y, H, W)).sum()
    assert torch.allclose(lhs, rhs, rtol=0, atol=1e-12)
    # every order is a permutation, so merging the scan counts each position 4 times
    assert torch.equal(cross_merge(cross_scan(x), H, W), 4 * x.flatten(2))


def test_gradients_flow_through_scan_and_merge():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cross_merge(cross_scan(t) * 1.5, 3, 4), (x,))
    assert RasterScan().k == 4

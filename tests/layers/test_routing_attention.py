from __future__ import annotations

import pytest
import torch

from mambaseg.layers.biformer_block import BiFormerBlock
from mambaseg.layers.routing_attention import BiLevelRoutingAttention
from mambaseg.ops.routing_attention import (
    bi_level_routing_attention,
    bi_level_routing_attention_dense,
    region_routing,
)


def _qkv(b=2, h=8, w=12, cqk=8, cv=12, requires_grad=False):
    g = torch.Generator().manual_seed(3)
    ts = [torch.randn(b, h, w, c, generator=g, dtype=torch.float64) for c in (cqk, cqk, cv)]
    return [t.requires_grad_(requires_grad) for t in ts]


@pytest.mark.parametrize("n_win,topk,heads", [((2, 3), 2, 2), ((4, 4), 3, 4), ((1, 1), 1, 1), ((2, 2), 4, 2)])
def test_matches_dense_masked_attention(n_win, topk, heads):
    q, k, v = _qkv(requires_grad=True)
    out = bi_level_routing_attention(q, k, v, n_win=n_win, topk=topk, num_heads=heads)
    ref = bi_level_routing_attention_dense(q, k, v, n_win=n_win, topk=topk, num_heads=heads)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(out)
    g = torch.autograd.grad((out * w).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


def test_all_regions_routed_equals_full_attention():
    q, k, v = _qkv()
    out = bi_level_routing_attention(q, k, v, n_win=2, topk=4, num_heads=2)
    b, h, w, c = q.shape
    qh = q.reshape(b, h * w, 2, 4).transpose(1, 2)
    kh = k.reshape(b, h * w, 2, 4).transpose(1, 2)
    vh = v.reshape(b, h * w, 2, 6).transpose(1, 2)
    full = ((qh @ kh.transpose(-2, -1)) * c ** -0.5).softmax(-1) @ vh
    torch.testing.assert_close(out, full.transpose(1, 2).reshape(b, h, w, 12))


def test_routing_picks_the_most_similar_regions():
    # 2 x 2 regions of 1 pixel: region 0 query aligns with region 3 key, etc.
    q = torch.zeros(1, 2, 2, 2)
    k = torch.zeros(1, 2, 2, 2)
    q[0, 0, 0] = torch.tensor([1.0, 0.0])
    k[0, 1, 1] = torch.tensor([5.0, 0.0])
    k[0, 0, 1] = torch.tensor([2.0, 0.0])
    idx = region_routing(q, k, (2, 2), topk=2, scale=1.0)
    assert idx[0, 0].tolist() == [3, 1]


def test_bad_arguments():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="divisible by the region grid"):
        bi_level_routing_attention(q, k, v, n_win=5, topk=1, num_heads=2)
    with pytest.raises(ValueError, match="topk"):
        bi_level_routing_attention(q, k, v, n_win=2, topk=5, num_heads=2)
    with pytest.raises(ValueError, match="num_heads"):
        bi_level_routing_attention(q, k, v, n_win=2, topk=1, num_heads=5)


def test_module_shapes_params_and_topk_clamp():
    m = BiLevelRoutingAttention(32, num_heads=4, topk=8)
    # qkv (32 -> 96, bias), wo (32 -> 32, bias), LePE dw 5x5 (bias)
    assert sum(p.numel() for p in m.parameters()) == 32 * 96 + 96 + 32 * 32 + 32 + 25 * 32 + 32
    x = torch.randn(2, 8, 8, 32)
    assert m(x, n_win=2).shape == x.shape  # 4 regions < topk 8: clamped, dense attention
    with pytest.raises(ValueError, match="n_win"):
        m(x)


def test_biformer_block_variants_share_parameters_and_differ():
    torch.manual_seed(0)
    a = BiFormerBlock(16, num_heads=2, topk=2, n_win=2, faithful=True)
    b = BiFormerBlock(16, num_heads=2, topk=2, n_win=2, faithful=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 8, 16) * 3 + 1
    ya, yb = a(x), b(x)
    assert ya.shape == yb.shape == x.shape
    assert not torch.allclose(ya, yb)
    # the non-faithful block is x + residuals: for zeroed branches it is the identity; the faithful one is LN(x)
    for blk in (a, b):
        for p in list(blk.attn.parameters()) + list(blk.mlp.parameters()) + list(blk.pos_embed.parameters()):
            torch.nn.init.zeros_(p)
    torch.testing.assert_close(b(x), x)
    torch.testing.assert_close(a(x), torch.nn.functional.layer_norm(x, (16,), a.norm1.weight, a.norm1.bias, 1e-6))

from __future__ import annotations

import json

import pytest
import torch

from mambaseg import create_model
from mambaseg.layers.s3_block import S3Block
from mambaseg.models.slicemamba import SliceMamba, arch_slices, num_positions, parse_arch
from mambaseg.ops.slice_scan import SLICE_CHOICES, SliceScan


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parse_arch_forms(tmp_path):
    genes = [0, 1, 2, 3] * 5 + [2, 1]
    assert parse_arch(None) == (3,) * 22
    assert parse_arch(genes) == tuple(genes)
    assert parse_arch(tuple(genes)) == tuple(genes)
    assert parse_arch([list(SLICE_CHOICES[g]) for g in genes]) == tuple(genes)
    assert parse_arch({"arch": genes, "fitness": {"iou": 0.5}}) == tuple(genes)
    assert parse_arch(",".join(map(str, genes))) == tuple(genes)
    p = tmp_path / "arch.json"
    p.write_text(json.dumps({"arch": genes}))
    assert parse_arch(str(p)) == tuple(genes) and parse_arch(p) == tuple(genes)
    assert arch_slices((0, 3)) == [(2, 2), (4, 4)]
    assert num_positions() == 22 and num_positions((1, 1), (1,)) == 3


@pytest.mark.parametrize(
    "bad,match",
    [([3] * 21, "22 genes"), ([4] + [3] * 21, r"arch\[0\]"), ([[3, 3]] + [3] * 21, "slice"),
     ({"genes": [3] * 22}, "'arch'"), ("missing.json", "arch.json"), (3.5, "expected")],
)
def test_parse_arch_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_arch(bad)


def test_blocks_follow_genes_in_order():
    genes = (0, 1, 2, 3, 3, 2, 1, 0)
    m = create_model("slicemamba_tiny", arch=list(genes))
    assert m.arch == genes
    blocks = m.blocks()
    assert len(blocks) == 8 and all(isinstance(b, S3Block) for b in blocks)
    assert [b.slice_size for b in blocks] == arch_slices(genes)
    assert [b.self_attention.scan for b in blocks] == [SliceScan(*SLICE_CHOICES[g]) for g in genes]
    # encoder blocks first (stage widths 16, 32, 64, 128), then decoder (128, 64, 32, 16)
    assert [b.ln_1.normalized_shape[0] for b in blocks] == [16, 32, 64, 128, 128, 64, 32, 16]


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_tiny_forward_backward_logits(size):
    # 96 input -> stage maps 24, 12, 6, 3: 6 and 3 are not divisible by 4 -> padded slicing
    m = create_model("slicemamba_tiny", num_classes=2, arch=[3, 2, 1, 0, 3, 3, 1, 2])
    x = torch.randn(2, 3, *size)
    y = m(x)
    assert y.shape == (2, 2, *size)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert y.min() < 0 < y.max()  # logits, not probabilities
    y.square().mean().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(b.self_attention.x_proj_weight.grad.abs().sum() > 0 for b in m.blocks())


def test_arch_changes_output_but_not_parameters():
    torch.manual_seed(0)
    a = create_model("slicemamba_tiny", arch=[3] * 8)
    b = create_model("slicemamba_tiny", arch=[0] * 8)
    b.load_state_dict(a.state_dict())  # identical keys and shapes whatever the genes
    x = torch.randn(1, 3, 64, 64)
    a.eval(), b.eval()
    assert not torch.allclose(a(x), b(x))
    c = create_model("slicemamba_tiny", arch=[3] * 8).eval()
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), c(x))


def test_param_count_equals_vmunet_same_depths():
    kw = dict(depths=[2, 2, 9, 2], depths_decoder=[2, 2, 2, 1], dims=24, d_state=4)
    s = create_model("slicemamba", arch=[0, 1, 2, 3] * 5 + [0, 1], **kw)
    v = create_model("vmunet", **kw)
    assert n_params(s) == n_params(v)
    assert {k: t.shape for k, t in s.state_dict().items()} == {k: t.shape for k, t in v.state_dict().items()}
    assert len(s.blocks()) == 22


def test_input_checks():
    m = create_model("slicemamba_tiny")
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="in_chans"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(TypeError):
        SliceMamba(block=S3Block)


def test_registered_with_spec():
    m = create_model("slicemamba_tiny", arch={"arch": [1] * 8})
    assert m.mambaseg_spec["name"] == "slicemamba_tiny" and m.arch == (1,) * 8


@pytest.mark.slow
def test_full_size_256_224_and_param_count():
    m = create_model("slicemamba", num_classes=1).eval()
    v = create_model("vmunet", depths=[2, 2, 9, 2], depths_decoder=[2, 2, 2, 1])
    assert n_params(m) == n_params(v) == 35_797_993
    with torch.no_grad():
        for s in (256, 224):
            assert m(torch.randn(1, 3, s, s)).shape == (1, 1, s, s)


def test_s3_block_matches_raster_ss2d_when_one_strip_covers_the_map():
    """Reference check of the BSS plumbing: with m = H and n = W there is a single horizontal strip (read
    column-major) and a single vertical strip (read row-major), i.e. SS2D's raster orders in another order.
    With the per-direction parameters permuted accordingly the S3 block must equal the VSS block."""
    from mambaseg.layers import VSSBlock

    torch.manual_seed(0)
    h, w, c = 4, 6, 8
    vss = VSSBlock(c, d_state=4).double()
    s3 = S3Block(c, d_state=4, slice_size=(h, w)).double()
    perm = [1, 3, 0, 2]  # slice sequence k <-> raster sequence perm[k] (raster: row, col, rev row, rev col)
    sd = vss.state_dict()
    d_inner = vss.self_attention.d_inner
    for key in ("x_proj_weight", "dt_projs_weight", "dt_projs_bias"):
        full = f"self_attention.{key}"
        sd[full] = sd[full][perm]
    for key in ("A_logs", "Ds"):
        full = f"self_attention.{key}"
        sd[full] = sd[full].view(4, d_inner, *sd[full].shape[1:])[perm].reshape(sd[full].shape)
    s3.load_state_dict(sd)
    x = torch.randn(2, h, w, c, dtype=torch.float64)
    torch.testing.assert_close(s3(x), vss(x))
    # and a genuinely different slicing changes the result
    s3b = S3Block(c, d_state=4, slice_size=(2, 2)).double()
    s3b.load_state_dict(sd)
    assert not torch.allclose(s3b(x), vss(x))

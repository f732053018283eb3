"""VMB-UNet: parameter counts of both variants, wiring, dead modules, and its layers (CBAM, BCA, BSF)."""

from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.layers.boundary_attention import BoundaryAttentionGate, BoundaryCrossAttention
from mambaseg.layers.boundary_skip_fusion import BoundarySkipFusion
from mambaseg.layers.cbam import CBAM

TINY = dict(dims=16, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4, drop_path_rate=0.0)


def _count(model: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_parameter_counts_of_both_variants():
    paper = mambaseg.create_model("vmbunet", num_classes=1)
    official = mambaseg.create_model("vmbunet", num_classes=1, variant="official")
    n_paper, n_official = _count(paper), _count(official)
    assert abs(n_official - 45.62e6) / 45.62e6 < 0.001, n_official  # spec §3.10 count of the released code
    # the difference is exactly: the dead BSF(384) and the dead query/key projections of the four BCAs,
    # minus the BSF(96) (with its 192 -> 96 alignment conv) that the paper wiring adds at up3
    dead_bsf = _count(official, "layers_up.1.bsf.")
    assert dead_bsf == 11_951_616
    qk = sum(2 * c * c + 2 * c for c in (96, 192, 192, 96))
    bsf96 = _count(paper, "layers_up.3.bsf.")
    assert n_official - n_paper == dead_bsf + qk - bsf96
    assert n_paper == 34_246_409


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_tiny_forward_and_gradients(variant):
    model = mambaseg.create_model("vmbunet", num_classes=2, in_chans=3, variant=variant, **TINY)
    x = torch.randn(2, 3, 32, 64)
    y = model(x)
    assert y.shape == (2, 2, 32, 64)
    (y.square().mean() + y.mean()).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    if variant == "paper":
        assert not no_grad
        # the boundary modules are all in use (a CBAM MLP of hidden width 1 may have a dead ReLU, so only these)
        zero = [
            n
            for n, p in model.named_parameters()
            if ("bsf" in n or "boundary_attention" in n) and p.grad.abs().sum() == 0
        ]
        assert not zero, zero[:5]
    else:
        # as released: the BSF at up1 is built but never called
        assert no_grad and all(n.startswith("layers_up.1.bsf.") for n in no_grad)
        assert "layers_up.3.bsf" not in dict(model.named_modules())
        # the single-key attention's query/key rows never get a gradient
        w = model.layers[0].boundary_attention.cross_attn.in_proj_weight
        c = w.shape[1]
        qk, v = w.grad[: 2 * c].abs().sum(), w.grad[2 * c :].abs().sum()
        assert v > 0 and qk < 1e-6 * v  # zero up to softmax round-off


def test_paper_wiring_fuses_encoder_skips_at_up2_and_up3():
    model = mambaseg.create_model("vmbunet", variant="paper", **TINY)
    seen = {}

    def hook(name):
        def f(mod, args, out):
            seen[name] = [tuple(a.shape) for a in args]

        return f

    model.layers_up[2].bsf.register_forward_hook(hook("up2"))
    model.layers_up[3].bsf.register_forward_hook(hook("up3"))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    # up2: decoder 32-wide at 1/8, encoder S2 (64 ch, 1/16), boundary map of encoder stage 1 (1/8)
    assert seen["up2"] == [(1, 32, 8, 8), (1, 64, 4, 4), (1, 1, 8, 8)]
    # up3: decoder 16-wide at 1/4, encoder S1 (32 ch, 1/8), boundary map of encoder stage 0 (1/4)
    assert seen["up3"] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 1, 16, 16)]


def test_official_state_dict_names():
    keys = set(mambaseg.create_model("vmbunet", variant="official", **TINY).state_dict())
    for k in (
        "patch_embed.proj.weight",
        "layers.0.blocks.0.ln_1.weight",
        "layers.0.blocks.0.self_attention.x_proj_weight",
        "layers.0.blocks.0.cbam.mlp.0.weight",
        "layers.0.blocks.0.cbam.mlp.2.weight",
        "layers.0.blocks.0.cbam.conv.weight",
        "layers.0.boundary_attention.cross_attn.in_proj_weight",
        "layers.0.boundary_attention.cross_attn.out_proj.weight",
        "layers.1.boundary_attention.BAG.convs.4.0.weight",
        "layers.1.boundary_attention.BAG.conv_out.weight",
        "layers.2.downsample.reduction.weight",
        "layers_up.1.bsf.fusion_conv.3.weight",
        "layers_up.2.bsf.channel_adjust_64_to_32.weight",
        "layers_up.2.upsample.expand.weight",
        "layers_up.3.boundary_attention.norm2.weight",
        "final_up.expand.weight",
        "final_conv.weight",
    ):
        assert k in keys, k
    assert not any(k.startswith("layers.2.boundary_attention") or k.startswith("layers_up.1.boundary") for k in keys)


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        mambaseg.create_model("vmbunet", variant="v2", **TINY)
    with pytest.raises(ValueError, match="4 encoder"):
        mambaseg.create_model("vmbunet", dims=16, depths=(1, 1, 1))
    model = mambaseg.create_model("vmbunet", **TINY)
    with pytest.raises(ValueError, match="nearest valid size"):
        model(torch.randn(1, 3, 48, 64))


# ---------------------------------------------------------------- layers


def test_cbam_matches_hand_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    for mlp_bias, norm in ((False, False), (True, True)):
        m = CBAM(32, mlp_bias=mlp_bias, spatial_norm=norm).double().eval()
        if norm:
            m.spatial_norm.running_mean.fill_(0.3)
            m.spatial_norm.running_var.fill_(2.0)
        w1, w2 = m.mlp[0].weight[:, :, 0, 0], m.mlp[2].weight[:, :, 0, 0]
        b1 = m.mlp[0].bias if mlp_bias else 0
        b2 = m.mlp[2].bias if mlp_bias else 0

        def mlp(v):
            return torch.relu(v @ w1.T + b1) @ w2.T + b2

        mc = torch.sigmoid(mlp(x.amax(dim=(2, 3))) + mlp(x.mean(dim=(2, 3))))
        x1 = x * mc[:, :, None, None]
        pooled = torch.stack([x1.amax(1), x1.mean(1)], dim=1)
        s = torch.nn.functional.conv2d(pooled, m.conv.weight, padding=3)
        if norm:
            s = (s - 0.3) / torch.sqrt(torch.tensor(2.0 + m.spatial_norm.eps)) * m.spatial_norm.weight + m.spatial_norm.bias
        expected = x1 * torch.sigmoid(s)
        torch.testing.assert_close(m(x), expected)


def test_bca_context_equals_single_key_attention():
    torch.manual_seed(0)
    mha = BoundaryCrossAttention(16, num_heads=8, attention="mha").eval()
    ctx = BoundaryCrossAttention(16, attention="context").eval()
    sd = {k: v for k, v in mha.state_dict().items() if not k.startswith("cross_attn")}
    ctx.load_state_dict(sd, strict=False)
    c = 16
    with torch.no_grad():
        ctx.context_value.weight.copy_(mha.cross_attn.in_proj_weight[2 * c :])
        ctx.context_value.bias.copy_(mha.cross_attn.in_proj_bias[2 * c :])
        ctx.context_out.weight.copy_(mha.cross_attn.out_proj.weight)
        ctx.context_out.bias.copy_(mha.cross_attn.out_proj.bias)
    x = torch.randn(2, 16, 6, 5)
    (ya, wa), (yb, wb) = mha(x), ctx(x)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-5)
    assert wa.shape == (2, 1, 6, 5)


def test_boundary_gate_output_is_x_times_one_plus_w():
    gate = BoundaryAttentionGate(8).eval()
    x = torch.randn(2, 8, 7, 7)
    y, w = gate(x)
    assert w.shape == (2, 1, 7, 7) and (w > 0).all() and (w < 1).all()
    torch.testing.assert_close(y, x * (1 + w))


def test_bsf_aligns_shapes_and_ignores_encoder_where_boundary_is_zero():
    torch.manual_seed(0)
    bsf = BoundarySkipFusion(8, enc_dim=16).eval()
    assert hasattr(bsf, "channel_adjust_16_to_8")
    dec = torch.randn(2, 8, 12, 10)
    enc = torch.randn(2, 16, 6, 5)
    out = bsf(dec, enc, torch.rand(2, 1, 12, 10))
    assert out.shape == dec.shape
    zero = torch.zeros(2, 1, 6, 5)  # resized to 12 x 10 inside
    a = bsf(dec, enc, zero)
    b = bsf(dec, torch.randn_like(enc), zero)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="enc must be"):
        bsf(dec, torch.randn(2, 8, 6, 5), zero)


@pytest.mark.slow
@pytest.mark.parametrize("variant,size", [("paper", 256), ("official", 128)])
def test_full_width(variant, size):
    """Default widths; the paper variant at its 256 x 256 (about 15 GB of CPU memory with the torch scan)."""
    model = mambaseg.create_model("vmbunet", num_classes=1, variant=variant).eval()  # eval: no drop-path
    y = model(torch.randn(1, 3, size, size))
    assert y.shape == (1, 1, size, size)
    y.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    if variant == "paper":
        assert not missing
    else:
        assert missing and all(n.startswith("layers_up.1.bsf.") for n in missing)


@pytest.mark.parametrize("recipe", ["vmbunet_isic17", "vmbunet_isic18", "vmbunet_ph2"])
def test_recipes_load_and_build(recipe):
    from mambaseg.configs import load_recipe
    from mambaseg.losses import create_loss

    cfg = load_recipe(recipe)
    assert cfg.model.name == "vmbunet" and cfg.loss.name == "boundary"
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 1e-3 and cfg.schedule.t_max == 50
    assert cfg.train.batch_size == 8 and cfg.train.epochs == 300 and list(cfg.data.image_size) == [256, 256]
    loss = create_loss(cfg.loss.name, **cfg.loss.kwargs)
    assert (loss.alpha, loss.beta, loss.mode) == (1.0, 0.1, "boundary")
    model = mambaseg.create_model(cfg.model.name, **{**cfg.model.kwargs, **TINY})
    assert model.variant == "paper"

"""DermoMamba: parameter count, size contract, bottleneck widths, and its layers (CSMB, PCAM, Sweep Mamba)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mambaseg
from mambaseg.layers.cross_scale_mamba import AxialDepthwise, CrossScaleMambaBlock
from mambaseg.layers.pcam import PCAM
from mambaseg.layers.sweep_mamba import SweepMamba

SMALL = dict(channels=(8, 8, 16, 16, 32, 64), d_state=4)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_matches_paper():
    m = mambaseg.create_model("dermomamba", num_classes=1)
    assert _count(m) == 4_953_425  # paper 4.95 M; spec A6 count of the released code
    assert m.img_size == (192, 256) and m.fixed_size == (192, 256)
    # the sweep widths are derived from the input size: 192/32 = 6 and 256/32 = 8 as hard-coded in the release
    assert (m.sweep.mamba2.d_model, m.sweep.mamba3.d_model) == (6, 8)
    m256 = mambaseg.create_model("dermomamba", num_classes=1, img_size=(256, 256))
    assert (m256.sweep.mamba2.d_model, m256.sweep.mamba3.d_model) == (8, 8)
    # one VSS block per CSMB branch instead of the shared one
    unshared = mambaseg.create_model("dermomamba", share_vss=False)
    vss = sum(_count(enc.resmamba.block.vss[0]) for enc in m.encoder)
    assert _count(unshared) == _count(m) + 2 * vss


def test_small_forward_any_multiple_of_32_and_gradients():
    m = mambaseg.create_model("dermomamba", num_classes=1, in_chans=3, img_size=(32, 64), **SMALL)
    x = torch.randn(2, 3, 32, 64)
    y = m(x)
    assert y.shape == (2, 1, 32, 64)
    (y.square().mean() + y.mean()).backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]
    # every block is in use (CBAM MLPs of hidden width 1 may have a dead ReLU at this tiny width, so skip those)
    zero = [n for n, p in m.named_parameters() if ".mlp." not in n and p.grad.abs().sum() == 0]
    assert not zero, zero


def test_size_contract_errors_name_the_expected_size():
    m = mambaseg.create_model("dermomamba", img_size=(64, 96), **SMALL).eval()
    with pytest.raises(ValueError, match=r"img_size=\(64, 96\)"):
        m(torch.randn(1, 3, 96, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        mambaseg.create_model("dermomamba", img_size=(200, 256))
    with pytest.raises(ValueError, match="divisible by 4"):
        mambaseg.create_model("dermomamba", channels=(6, 8, 16, 16, 32, 64))
    # an int means a square input
    assert mambaseg.create_model("dermomamba", img_size=64, **SMALL).img_size == (64, 64)


def test_create_model_records_img_size():
    m = mambaseg.create_model("dermomamba", img_size=(64, 64), **SMALL)
    assert m.mambaseg_spec["kwargs"]["img_size"] == (64, 64)


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_axial_depthwise_matches_same_padding_reference(dilation):
    torch.manual_seed(0)
    m = AxialDepthwise(4, 7, dilation).double()
    x = torch.randn(1, 4, 11, 13, dtype=torch.float64)
    ref = F.conv2d(x, m.mixer_w.weight, m.mixer_w.bias, padding="same", dilation=dilation, groups=4)
    ref = F.conv2d(ref, m.mixer_h.weight, m.mixer_h.bias, padding="same", dilation=dilation, groups=4)
    ref = F.conv2d(ref, m.conv.weight, m.conv.bias, padding="same", dilation=dilation, groups=4)
    torch.testing.assert_close(m(x), x + ref)


def test_csmb_shared_vss_and_identity_chunk():
    torch.manual_seed(0)
    shared = CrossScaleMambaBlock(16, d_state=4).eval()
    assert len(shared.vss) == 1 and len(CrossScaleMambaBlock(16, share_vss=False, d_state=4).vss) == 3
    x = torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        y = shared(x)
        # chunk 4 is passed through: before BN+ReLU it equals x[:, 12:]
        bn = shared.bn
        pre = x[:, 12:]
        ref = torch.relu((pre - bn.running_mean[12:, None, None]) / torch.sqrt(bn.running_var[12:, None, None] + bn.eps)
                         * bn.weight[12:, None, None] + bn.bias[12:, None, None])
    torch.testing.assert_close(y[:, 12:], ref)
    with pytest.raises(ValueError, match="divisible by 4"):
        CrossScaleMambaBlock(10)


def test_pcam_matches_hand_computation():
    torch.manual_seed(0)
    m = PCAM(6, kernel_size=3).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    u = F.conv2d(x, m.dw.weight, m.dw.bias, padding=1, groups=6)
    c, cu = x.mean(dim=(2, 3)), u.mean(dim=(2, 3))
    w = torch.sigmoid(cu * (1 + torch.softmax(cu - c, dim=1)))
    torch.testing.assert_close(m(x), u * w[:, :, None, None])


def test_sweep_mamba_branches_use_the_three_planes():
    torch.manual_seed(0)
    m = SweepMamba(32, height=3, width=5, ratio=8, d_state=4).eval()
    assert (m.mamba1.d_model, m.mamba2.d_model, m.mamba3.d_model) == (4, 3, 5)
    x = torch.randn(2, 32, 3, 5)
    assert m(x).shape == x.shape
    with pytest.raises(ValueError, match="built for"):
        m(torch.randn(2, 32, 5, 3))


@pytest.mark.slow
def test_full_size_paper_and_square():
    m = mambaseg.create_model("dermomamba", num_classes=1).eval()
    y = m(torch.randn(1, 3, 192, 256))
    assert y.shape == (1, 1, 192, 256)
    y.mean().backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]
    m = mambaseg.create_model("dermomamba", num_classes=1, img_size=(256, 256)).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 256, 256)).shape == (1, 1, 256, 256)


@pytest.mark.parametrize("recipe", ["dermomamba_isic18", "dermomamba_ph2"])
def test_recipes_load_and_build(recipe):
    from mambaseg.configs import load_recipe
    from mambaseg.losses import create_loss

    cfg = load_recipe(recipe)
    assert cfg.model.name == "dermomamba" and list(cfg.data.image_size) == [192, 256]
    assert cfg.optim.name == "adam" and cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.0
    assert cfg.schedule.name == "plateau" and cfg.schedule.factor == 0.5 and cfg.schedule.patience == 5
    assert cfg.train.batch_size == 4 and cfg.train.epochs == 200 and cfg.train.best_metric == "dice"
    assert create_loss(cfg.loss.name, **cfg.loss.kwargs).mode == "intent"
    m = mambaseg.create_model(cfg.model.name, img_size=tuple(cfg.data.image_size), **{**cfg.model.kwargs, **SMALL})
    assert m.img_size == (192, 256)

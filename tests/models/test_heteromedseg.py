from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.layers.vssd_block import VSSDBlock
from mambaseg.models.heteromedseg import HeteroMedSeg

# a narrow configuration with the same structure, for behavioural tests (the full model is built once)
TINY = dict(embed_dim=(32, 64, 128, 256), decoder_depths=(1, 1, 1), scsa_heads=(8, 4, 2), d_state=8)


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def model9() -> HeteroMedSeg:
    torch.manual_seed(0)
    return mambaseg.create_model("heteromedseg", num_classes=9, in_chans=1)


def test_parameter_counts(model9):
    n = _count(model9)
    assert abs(n - 23.43e6) / 23.43e6 < 0.01, n
    assert n == 23_438_334  # analytic count of the released executed graph (spec B5)
    # bottleneck=True adds the released model's unused 4th stage: 2 VSSD blocks at 768 (2 x 7,235,912 parameters)
    bottleneck = [VSSDBlock(768, num_heads=24, mlp_ratio=3, d_state=64) for _ in range(2)]
    assert sum(_count(b) for b in bottleneck) == 14_471_824
    tiny = HeteroMedSeg(**TINY)
    tiny_b = HeteroMedSeg(bottleneck=True, **TINY)
    assert _count(tiny_b) - _count(tiny) == sum(_count(b) for b in tiny_b.stages[3])


def test_224_single_channel_to_9_classes(model9):
    model9.eval()
    assert model9.region_grid(224, 224) == (7, 7) and model9.region_grid(256, 256) == (8, 8)
    with torch.no_grad():
        y = model9(torch.randn(1, 1, 224, 224))
    assert y.shape == (1, 9, 224, 224) and torch.isfinite(y).all()


def test_released_decoder_configuration(model9):
    assert [len(s.blocks) for s in model9.decoder] == [8, 2, 2]
    assert [s.blocks[0].attn.topk for s in model9.decoder] == [8, 4, 2]
    assert [s.blocks[0].attn.num_heads for s in model9.decoder] == [12, 6, 3]
    assert [s.scsa.dim for s in model9.decoder] == [768, 384, 192]
    assert len(model9.stages) == 3 and [st[0].attn.nheads for st in model9.stages] == [3, 6, 12]
    assert model9.stages[0][0].attn.mode == "noncausal"


def test_n_win_from_img_size_or_given():
    assert mambaseg.create_model("heteromedseg", img_size=256, **TINY).n_win == 8
    assert mambaseg.create_model("heteromedseg", img_size=224, **TINY).n_win == 7
    m = mambaseg.create_model("heteromedseg", n_win=3, **TINY)
    assert m.stride == 96  # lcm(32, 16 * n_win): a whole H/32 map and an H/16 map divisible by n_win
    for bad in (48, 64, 144):  # 48 and 144 are multiples of 16 * n_win but not of 32: clear error, not a crash inside
        with pytest.raises(ValueError, match="divisible by 96"):
            m(torch.randn(1, 3, bad, bad))
    assert m(torch.randn(1, 3, 96, 96)).shape == (1, 1, 96, 96)
    seven = mambaseg.create_model("heteromedseg", n_win=7, **TINY).eval()
    assert seven.stride == 224 and seven.valid_size(112, 112) == (224, 224)
    with pytest.raises(ValueError, match="divisible by 224"):
        seven(torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError, match="img_size"):
        mambaseg.create_model("heteromedseg", img_size=100, **TINY)


@pytest.mark.parametrize("mixer", ["noncausal", "bidirectional", "causal"])
def test_mixers_and_bottleneck_run(mixer):
    torch.manual_seed(0)
    m = HeteroMedSeg(num_classes=3, mixer=mixer, bottleneck=True, **TINY)
    y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 3, 64, 64)
    y.mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert {blk.attn.mode for st in m.stages for blk in st} == {mixer}


def test_mixer_changes_the_function_not_the_parameters():
    torch.manual_seed(0)
    a = HeteroMedSeg(num_classes=2, mixer="noncausal", **TINY).eval()
    b = HeteroMedSeg(num_classes=2, mixer="causal", **TINY).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
    with pytest.raises(ValueError, match="mode"):
        HeteroMedSeg(mixer="sideways", **TINY)


@pytest.mark.parametrize("name,classes", [("heteromedseg_acdc", 4), ("heteromedseg_synapse", 9)])
def test_recipes(name, classes):
    from mambaseg.configs import load_recipe

    cfg = load_recipe(name)
    assert cfg.model.name == "heteromedseg" and cfg.model.num_classes == classes
    assert cfg.model.kwargs == {"n_win": 7, "mixer": "noncausal"}
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 1e-2
    assert (cfg.schedule.name, cfg.schedule.interval, cfg.schedule.t_max, cfg.schedule.t_mult) == (
        "cosine_restarts", "step", 50, 2)
    assert cfg.loss.name == "ce_dice" and cfg.loss.kwargs == {"ce_weight": 0.4, "dice_weight": 0.6}
    m = mambaseg.create_model(cfg.model.name, num_classes=classes, in_chans=1, **dict(cfg.model.kwargs, **TINY))
    assert m.n_win == 7 and m.stride == 224


def test_vmunet_synapse_recipe():
    from mambaseg.configs import load_recipe

    cfg = load_recipe("vmunet_synapse")
    assert (cfg.model.name, cfg.model.num_classes, cfg.optim.lr, cfg.schedule.t_max) == ("vmunet", 9, 1e-3, 100)
    assert cfg.loss.kwargs == {"ce_weight": 1.0, "dice_weight": 1.0}


def test_final_expand_x4_matches_rearrange():
    from einops import rearrange

    from mambaseg.models.heteromedseg import _FinalExpandX4

    m = _FinalExpandX4(8)
    x = torch.randn(2, 3, 5, 8)
    t = rearrange(m.expand(x), "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=4, p2=4)
    torch.testing.assert_close(m(x), torch.nn.functional.layer_norm(t, (8,), m.norm.weight, m.norm.bias))
    assert m(x).shape == (2, 12, 20, 8)

from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.models.msvmunet import MSVMUNet, convert_vmamba_checkpoint


@pytest.fixture(scope="module")
def model9() -> MSVMUNet:
    torch.manual_seed(0)
    return mambaseg.create_model("msvmunet", num_classes=9, in_chans=1)


def test_parameter_count_matches_paper(model9):
    n = sum(p.numel() for p in model9.parameters())
    assert abs(n - 35.93e6) / 35.93e6 < 0.01, n


def test_224_single_channel_to_9_classes(model9):
    model9.eval()
    with torch.no_grad():
        y = model9(torch.randn(1, 1, 224, 224))
    assert y.shape == (1, 9, 224, 224) and torch.isfinite(y).all()


def test_one_channel_input_is_repeated_to_rgb():
    torch.manual_seed(0)
    m1 = MSVMUNet(num_classes=2, in_chans=1, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1)).eval()
    m3 = MSVMUNet(num_classes=2, in_chans=3, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1)).eval()
    m3.load_state_dict(m1.state_dict())
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m1(x), m3(x.repeat(1, 3, 1, 1)))


def test_encoder_features_and_architecture(model9):
    enc = model9.encoder
    assert [len(layer.blocks) for layer in enc.layers] == [2, 2, 8, 2]
    feats = enc(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    blk = enc.layers[0].blocks[0]
    assert blk.op.d_state == 1 and blk.op.d_inner == 96 and blk.op.conv2d.bias is None
    dec_rates = [b.drop_path.p for up in model9.decoder.layers for b in up.vss_layer.blocks]
    assert dec_rates == pytest.approx([0.2, 0.16, 0.12, 0.08, 0.04, 0.0])
    enc_rates = [b.drop_path.p for layer in enc.layers for b in layer.blocks]
    assert enc_rates == pytest.approx(torch.linspace(0, 0.2, 14).tolist())


def _vmamba_release_keys(model: MSVMUNet) -> dict[str, torch.Tensor]:
    """The key layout of VMamba's vssm1 release checkpoints (model entry), built by hand from the encoder."""
    sd = {}
    for k, v in model.encoder.state_dict().items():
        sd[k] = v.clone() + 1.0 if v.is_floating_point() else v.clone()
    sd["classifier.norm.weight"] = torch.ones(768)
    sd["classifier.norm.bias"] = torch.zeros(768)
    sd["classifier.head.weight"] = torch.zeros(1000, 768)
    sd["classifier.head.bias"] = torch.zeros(1000)
    return sd


def test_vmamba_checkpoint_maps_onto_encoder(model9):
    ckpt = {"model": _vmamba_release_keys(model9)}
    # spot-check names/shapes of the release layout (e.g. the [4, 8, 96] x_proj of stage 0)
    m = ckpt["model"]
    assert tuple(m["layers.0.blocks.0.op.x_proj_weight"].shape) == (4, 8, 96)
    assert tuple(m["patch_embed.0.weight"].shape) == (48, 3, 3, 3)
    assert tuple(m["layers.2.downsample.1.weight"].shape) == (768, 384, 3, 3)
    assert "layers.1.blocks.1.mlp.fc2.weight" in m and "layers.3.blocks.1.norm2.bias" in m
    # older spelling of the block keys is accepted too
    m["layers.0.blocks.0.ln_1.weight"] = m.pop("layers.0.blocks.0.norm.weight")
    converted = convert_vmamba_checkpoint(ckpt)
    target = MSVMUNet(num_classes=9, in_chans=1)
    missing, unexpected = target.load_state_dict(converted, strict=False)
    assert not unexpected
    assert missing and all(k.startswith("decoder.") for k in missing)
    torch.testing.assert_close(target.encoder.layers[3].blocks[1].op.A_logs,
                               model9.encoder.layers[3].blocks[1].op.A_logs + 1.0)


def test_size_errors_and_img_size():
    m = mambaseg.create_model("msvmunet", num_classes=2, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1))
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="img_size"):
        mambaseg.create_model("msvmunet", img_size=100)


def test_freeze_encoder():
    m = MSVMUNet(num_classes=2, depths=(1, 1, 1, 1), decoder_depths=(1, 1, 1))
    m.freeze_encoder()
    assert not any(p.requires_grad for p in m.encoder.parameters())
    assert all(p.requires_grad for p in m.decoder.parameters())
    m.freeze_encoder(False)
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("name,classes,wd", [("msvmunet_acdc", 4, 1e-4), ("msvmunet_synapse", 9, 1e-3)])
def test_recipes(name, classes, wd):
    from mambaseg.configs import load_recipe
    from mambaseg.losses import create_loss

    cfg = load_recipe(name)
    assert cfg.model.name == "msvmunet" and cfg.model.num_classes == classes and cfg.model.in_chans == 1
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 5e-4 and cfg.optim.weight_decay == wd
    assert cfg.schedule.name == "cosine" and cfg.schedule.t_max == 300 and cfg.schedule.eta_min == 1e-6
    assert cfg.loss.name == "ce_dice" and cfg.loss.kwargs == {"ce_weight": 0.4, "dice_weight": 0.6}
    assert cfg.train.best_metric == "dice" and cfg.data.image_size == [224, 224]
    loss = create_loss(cfg.loss.name, **cfg.loss.kwargs)
    logits = torch.zeros(2, classes, 8, 8, requires_grad=True)
    target = torch.randint(0, classes, (2, 8, 8))
    assert torch.isfinite(loss(logits, target))

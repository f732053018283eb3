"""Replay of the DermoMamba parity run (``benchmarks/parity/dermomamba_parity.py``): the official-format state dict
is regenerated from the fixture, converted and loaded with the report, and our logits are compared with the ones
the official code produced."""

from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.models._convert.dermomamba import convert_dermomamba_official
from mambaseg.models._pretrained import load_weights

from _synth_checkpoint import checksum, decode_tensor, load_fixture, seeded_input, synth_state_dict

TOL = 1e-4


@pytest.fixture(scope="module")
def official_sd() -> dict[str, torch.Tensor]:
    fx = load_fixture("dermomamba", "dermomamba_official")
    sd = synth_state_dict(fx["state_dict"], fx["base_seed"])
    for key, expected in fx["checksums"].items():
        assert checksum(sd[key]) == pytest.approx(expected, rel=1e-9, abs=1e-9), f"synthesized {key} changed"
    return sd


def test_dermomamba_official_replay(official_sd):
    fx = load_fixture("dermomamba", "dermomamba_official")
    conv = convert_dermomamba_official(dict(official_sd))
    assert conv.model_name == "dermomamba"
    assert conv.model_kwargs == {"num_classes": 1, "in_chans": 3, "img_size": (192, 256)}
    model = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
    report = load_weights(model, conv.state_dict, strict=True, dropped=conv.dropped)
    assert report.missing == [] and report.unexpected == [] and not report.mismatched
    assert sorted(report.reshaped) == sorted(f"skips.{i}.mlp.{j}.weight" for i in range(5) for j in (0, 2))
    x = seeded_input(fx["input"]["shape"], fx["input"]["seed"])
    with torch.no_grad():
        y = model(x)
    sy, sx = fx["logits_stride"]
    assert (y[..., ::sy, ::sx] - decode_tensor(fx["logits"])).abs().max().item() <= TOL
    assert checksum(y) == pytest.approx(fx["logits_checksum"], abs=5e-2)


def test_key_mapping(official_sd):
    conv = convert_dermomamba_official({"state_dict": {"model." + k: v for k, v in official_sd.items()}})
    sd = conv.state_dict
    assert sd["decoder.0.pw.weight"] is official_sd["d5.pw.weight"]
    assert sd["decoder.4.pw2.weight"] is official_sd["d1.pw2.weight"]
    assert sd["encoder.2.resmamba.block.dw.1.mixer_h.weight"] is official_sd["e3.resmamba.block.dw2.mixer_h.weight"]
    assert sd["encoder.0.resmamba.block.vss.0.self_attention.A_logs"] is \
        official_sd["e1.resmamba.block.vss.self_attention.A_logs"]
    assert sd["skips.4.spatial_norm.running_var"] is official_sd["s5.SpatialGate.spatial.bn.running_var"]
    assert sd["sweep.mamba2.in_proj.weight"] is official_sd["b1.mamba2.in_proj.weight"]
    assert sd["pcam.dw.weight"] is official_sd["b2.dw.weight"]
    assert conv.dropped == [] and len(sd) == len(official_sd)


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="pw_in.weight"):
        convert_dermomamba_official({"conv_out.weight": torch.ones(1, 16, 1, 1)})
    with pytest.raises(TypeError, match="unknown options"):
        convert_dermomamba_official({}, img_size=128)


def test_lightning_file_through_convert_checkpoint(official_sd, tmp_path):
    """An official Lightning checkpoint file -> ``mambaseg.convert_checkpoint`` -> ``create_model(pretrained=)``."""
    fx = load_fixture("dermomamba", "dermomamba_official")
    src = tmp_path / "epoch=12-val_dice=0.9.ckpt"
    torch.save({"epoch": 12, "state_dict": {"model." + k: v for k, v in official_sd.items()}}, src)
    out = tmp_path / "dermomamba_isic.pt"
    report = mambaseg.convert_checkpoint(src, "dermomamba_official", out)
    assert report.missing == [] and report.unexpected == [] and len(report.reshaped) == 10
    model = mambaseg.create_model("dermomamba", pretrained=out).eval()
    x = seeded_input(fx["input"]["shape"], fx["input"]["seed"])
    with torch.no_grad():
        y = model(x)
    sy, sx = fx["logits_stride"]
    assert (y[..., ::sy, ::sx] - decode_tensor(fx["logits"])).abs().max().item() <= TOL

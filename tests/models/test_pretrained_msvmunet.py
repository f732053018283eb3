"""Replay of the MSVM-UNet / VMamba-v2 parity runs (``benchmarks/parity/msvmunet_parity.py``,
``vmamba_v2_parity.py``): the official-format state dict is regenerated from the fixture, converted, and our logits
(or encoder features) are compared with the ones the official code produced."""

from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.models._convert.msvmunet import convert_msvmunet_official, convert_vmamba_v2, vmamba_v2_config

from _synth_checkpoint import checksum, decode_tensor, load_fixture, seeded_input, synth_state_dict

TOL = 1e-4


def _official_sd(fx: dict) -> dict[str, torch.Tensor]:
    sd = synth_state_dict(fx["state_dict"], fx["base_seed"])
    for key, (s, a) in fx["checksums"].items():
        got = checksum(sd[key])
        assert got == pytest.approx([s, a], rel=1e-9, abs=1e-9), f"synthesized {key} changed: {got} vs {[s, a]}"
    return sd


def test_msvmunet_official_replay():
    fx = load_fixture("msvmunet", "msvmunet_official_tiny_0230s")
    conv = convert_msvmunet_official(_official_sd(fx), **fx["options"])
    assert conv.model_name == "msvmunet" and conv.model_kwargs["num_classes"] == 2
    assert conv.expected_missing == [] and conv.dropped == []
    torch.manual_seed(0)
    model = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
    model.load_state_dict(conv.state_dict, strict=True)
    x = seeded_input(fx["input"]["shape"], fx["input"]["seed"])
    with torch.no_grad():
        y = model(x)
    ref = decode_tensor(fx["logits"])
    assert (y - ref).abs().max().item() <= TOL
    assert checksum(y) == pytest.approx(fx["logits_checksum"], abs=1e-2)


@pytest.mark.parametrize("variant", ["vmamba_tiny_s1l8", "vmamba_tiny_s2l5", "vmamba_base_s1l20"])
def test_vmamba_v2_encoder_replay(variant):
    fx = load_fixture("msvmunet", f"vmamba_v2_{variant}")
    conv = convert_vmamba_v2(_official_sd(fx), **fx["options"])
    assert conv.expected_missing == ["decoder."]
    assert sorted(conv.dropped) == ["classifier.head.bias", "classifier.head.weight", "classifier.norm.bias",
                                    "classifier.norm.weight"]
    model = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
    missing, unexpected = model.load_state_dict(conv.state_dict, strict=False)
    assert unexpected == [] and missing and all(k.startswith("decoder.") for k in missing)
    x = seeded_input(fx["input"]["shape"], fx["input"]["seed"])
    with torch.no_grad():
        feats = model.encoder(x)
    assert [list(f.shape) for f in feats] == fx["feature_shapes"]
    got = torch.cat([f[:, :: fx["channel_stride"]].flatten() for f in feats])
    assert (got - decode_tensor(fx["logits"])).abs().max().item() <= TOL


def test_lightning_checkpoint_is_unwrapped():
    fx = load_fixture("msvmunet", "msvmunet_official_tiny_0230s")
    sd = _official_sd(fx)
    wrapped = {"epoch": 3, "state_dict": {"_model." + k: v for k, v in sd.items()}}
    a = convert_msvmunet_official(wrapped, in_chans=1)
    b = convert_msvmunet_official(sd)
    assert a.model_kwargs["in_chans"] == 1 and sorted(a.state_dict) == sorted(b.state_dict)
    assert "encoder.patch_embed.5.weight" in a.state_dict and "decoder.head.out.weight" in a.state_dict
    assert "encoder.layers.2.downsample.1.weight" in a.state_dict


def test_sizes_read_from_the_weights():
    fx = load_fixture("msvmunet", "vmamba_v2_vmamba_base_s1l20")
    cfg = vmamba_v2_config(_official_sd(fx))
    assert (cfg["name"], cfg["dims"], cfg["depths"], cfg["ssm_ratio"]) == ("vssm1_base_0229s", 128, (2, 2, 20, 2), 1.0)


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="decoder.out_layers.0.out.weight"):
        convert_msvmunet_official({"encoder.layers.0.blocks.0.norm.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="deep supervision"):
        convert_msvmunet_official({"decoder.out_layers.0.0.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="4 stages"):
        convert_vmamba_v2({"patch_embed.0.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="state_dict"):
        convert_vmamba_v2([1, 2])
    with pytest.raises(TypeError, match="unknown options"):
        convert_vmamba_v2({}, variant="x")


def test_sized_formats_check_the_size():
    from mambaseg.models._convert import get_converter, list_converters

    sd = _official_sd(load_fixture("msvmunet", "vmamba_v2_vmamba_tiny_s1l8"))
    conv = get_converter("vmamba_v2_tiny_0230s")(sd)
    assert conv.model_kwargs["depths"] == (2, 2, 8, 2) and conv.model_kwargs["ssm_ratio"] == 1.0
    with pytest.raises(ValueError, match="expected vssm1_base_0229s but the weights are vssm1_tiny_0230s"):
        get_converter("vmamba_v2_base_0229s")(sd)
    names = {c.name for c in list_converters()}
    assert {"msvmunet_official", "vmamba_v2", "vmamba_v2_tiny_0230", "vmamba_v2_small_0229s"} <= names

"""Replay of the HeteroMedSeg parity run (``benchmarks/parity/heteromedseg_parity.py``): the official trained network
and the official ``load_from`` of a BiFormer-Base checkpoint on top of it, regenerated from the fixtures, converted,
loaded with the report, and compared with the logits the official code produced (224 x 224, n_win 7)."""

from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.models._convert.heteromedseg import convert_biformer, convert_heteromedseg_official, convert_vssd
from mambaseg.models._pretrained import load_weights

from _synth_checkpoint import checksum, decode_tensor, load_fixture, seeded_input, synth_state_dict

TOL = 1e-4


def _synth(fx: dict) -> dict[str, torch.Tensor]:
    sd = synth_state_dict(fx["state_dict"], fx["base_seed"])
    for key, expected in fx["checksums"].items():
        assert checksum(sd[key]) == pytest.approx(expected, rel=1e-9, abs=1e-9), f"synthesized {key} changed"
    return sd


def _close(y: torch.Tensor, fx: dict) -> float:
    sy, sx = fx["logits_stride"]
    return (y[..., ::sy, ::sx] - decode_tensor(fx["logits"])).abs().max().item()


@pytest.fixture(scope="module")
def converted_model():
    fx = load_fixture("heteromedseg", "heteromedseg_official")
    official = _synth(fx)
    conv = convert_heteromedseg_official(official)
    torch.manual_seed(0)
    model = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
    report = load_weights(model, conv.state_dict, strict=True, dropped=conv.dropped)
    return fx, official, conv, model, report


def test_heteromedseg_official_replay(converted_model):
    fx, official, conv, model, report = converted_model
    assert conv.model_kwargs["mixer"] == "causal" and conv.model_kwargs["bottleneck"] is False
    assert conv.model_kwargs["num_classes"] == 2 and conv.model_kwargs["decoder_depths"] == (8, 2, 2)
    assert report.missing == [] and report.unexpected == [] and not report.reshaped
    # the never-executed 4th VSSD stage is the only thing left out
    assert conv.dropped and all(k.startswith("bra_unet.stages.3.") for k in conv.dropped)
    x = seeded_input(fx["input"]["shape"], fx["input"]["seed"])
    with torch.no_grad():
        y = model(x)
    assert _close(y, fx) <= TOL
    assert checksum(y) == pytest.approx(fx["logits_checksum"], abs=5e-2)


def test_biformer_base_replay_matches_official_load_from(converted_model):
    _, _, _, model, _ = converted_model
    fx = load_fixture("heteromedseg", "biformer_base")
    bconv = convert_biformer(_synth(fx), **fx["options"])
    rep = load_weights(model, bconv.state_dict, strict=True, partial=True, expected_missing=bconv.expected_missing)
    assert len(rep.loaded) == 59 and rep.unexpected == [] and rep.undocumented_missing == []
    assert {k.split(".")[0] for k in rep.loaded} == {"downsample_layers", "stages"}
    x = seeded_input(fx["input"]["shape"], fx["input"]["seed"])
    with torch.no_grad():
        y = model(x)
    assert _close(y, fx) <= TOL


def test_official_key_mapping(converted_model):
    _, official, conv, _, _ = converted_model
    sd = conv.state_dict
    assert sd["decoder.0.scsa.dwconvs.3.weight"] is official["bra_unet.sccsa3.global_dwc_l.weight"]
    assert sd["decoder.2.scsa.q.weight"] is official["bra_unet.sccsa1.q.weight"]
    assert sd["decoder.0.blocks.7.attn.qkv.weight"] is official["bra_unet.layers_up.1.blocks.7.attn.qkv.qkv.weight"]
    assert sd["decoder.2.blocks.1.mlp.2.bias"] is official["bra_unet.layers_up.3.blocks.1.mlp.3.bias"]
    assert sd["decoder.1.upsample.expand.weight"] is official["bra_unet.layers_up.2.upsample.expand.weight"]
    assert sd["decoder.1.concat_back_dim.weight"] is official["bra_unet.concat_back_dim.2.weight"]
    assert sd["expand_bottleneck.expand.weight"] is official["bra_unet.layers_up.0.expand.weight"]
    assert sd["stages.1.0.mlp.0.weight"] is official["bra_unet.stages.1.0.mlp.fc1.weight"]


def test_vssd_base_blocks_replay():
    fx = load_fixture("heteromedseg", "vssd_base")
    conv = convert_vssd(_synth(fx), **fx["options"])
    assert conv.model_kwargs["mixer"] == "noncausal" and conv.model_kwargs["mlp_ratio"] == 4.0
    model = mambaseg.create_model(conv.model_name, **conv.model_kwargs).eval()
    rep = load_weights(model, conv.state_dict, strict=True, partial=True, expected_missing=conv.expected_missing)
    assert len(rep.loaded) == 126 and rep.unexpected == [] and rep.undocumented_missing == []
    h, w = fx["token_map"]
    outs = []
    for i in range(3):
        c = 96 * 2**i
        x = seeded_input([1, h * w, c], fx["input"]["seed"] + i)
        with torch.no_grad():
            outs.append(model.stages[i](x.view(1, h, w, c)).reshape(1, h * w, c)[..., :: fx["channel_stride"]])
    got = torch.cat([o.flatten() for o in outs])
    assert (got - decode_tensor(fx["logits"])).abs().max().item() <= TOL


def test_vssd_narrow_variants_are_refused_with_the_reason():
    sd = {f"layers.{i}.blocks.0.norm1.weight": torch.ones(64 * 2**i) for i in range(3)}
    sd.update({f"layers.{i}.blocks.0.attn.A_log": torch.ones(2 * 2**i) for i in range(3)})
    sd.update({"layers.0.blocks.0.attn.conv2d.weight": torch.ones(256, 1, 3, 3),
               "layers.0.blocks.0.mlp.fc1.weight": torch.ones(256, 64)})
    with pytest.raises(ValueError, match="only VSSD-Base matches"):
        convert_vssd(sd)


def test_biformer_tiny_small_are_refused_with_the_reason():
    sd = {"downsample_layers.0.3.weight": torch.zeros(64, 32, 3, 3)}
    sd.update({f"downsample_layers.{i}.0.weight": torch.zeros(64 * 2**i, 32 * 2**i, 3, 3) for i in range(1, 4)})
    with pytest.raises(ValueError, match="nothing of this checkpoint"):
        convert_biformer(sd)


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="output.weight"):
        convert_heteromedseg_official({"bra_unet.stages.0.0.norm1.weight": torch.ones(96)})
    with pytest.raises(ValueError, match="downsample_layers"):
        convert_biformer({"head.weight": torch.ones(2, 2)})
    with pytest.raises(TypeError, match="unknown options"):
        convert_heteromedseg_official({}, mixer="causal")

"""Pretrained weights: replay of the VMamba-v0 family parity runs, the load report, fine-tuning adaptation, the safe
reader, the pretrained folder and ``mambaseg convert``.

The replay tests regenerate each official state dict from its fixture (``benchmarks/parity/vmamba_v0_parity.py``
wrote them from the official code), convert it through the same path as ``mambaseg convert`` and compare our logits
with the official ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mambaseg
from mambaseg.checkpoint import save_checkpoint
from mambaseg.convert import convert_weights
from mambaseg.models._convert import get_converter, list_converters
from mambaseg.models._convert.vmamba_v0 import collapse_prefixes, normalize_v0_keys
from mambaseg.models._pretrained import PretrainedError, adapt_input_conv, read_weights

from _synth_checkpoint import checksum, decode_tensor, load_fixture, seeded_input, synth_state_dict, synth_tensor

TOL = 1e-4
TRAINED = ["vmunet", "vmbunet", "slicemamba", pytest.param("slicemamba_supernet", marks=pytest.mark.slow)]
ENCODERS = ["vmamba_v0_tiny", "vmamba_v0_tiny_vmbunet", "vmamba_v0_tiny_slicemamba",
            pytest.param("vmamba_v0_small", marks=pytest.mark.slow),
            pytest.param("vmamba_v0_base", marks=pytest.mark.slow)]


def _official_sd(fx: dict) -> dict[str, torch.Tensor]:
    sd = synth_state_dict(fx["state_dict"], fx["base_seed"])
    for key, (s, a) in fx["checksums"].items():
        assert checksum(sd[key]) == pytest.approx([s, a], rel=1e-9, abs=1e-9), f"synthesized {key} changed"
    return sd


def _logits(model: torch.nn.Module, fx: dict) -> torch.Tensor:
    x = seeded_input(fx["input"]["shape"], fx["input"]["seed"])
    with torch.no_grad():
        y = model.eval()(x)
    sh, sw = fx["logits_stride"]
    return y[..., ::sh, ::sw]


@pytest.mark.parametrize("name", TRAINED)
def test_trained_network_replay(name, tmp_path):
    fx = load_fixture("vmamba_v0", name)
    path = tmp_path / "official.pth"
    torch.save(_official_sd(fx), path)
    model, report = convert_weights(path, fx["converter"], **fx["options"])
    assert report.missing == [] and report.unexpected == [] and report.mismatched == {}
    assert len(report.loaded) == len(model.state_dict())
    ref = decode_tensor(fx["logits"])
    assert (_logits(model, fx) - ref).abs().max().item() <= TOL
    assert fx["parity_max_abs_diff"] <= TOL


@pytest.mark.parametrize("name", ENCODERS)
def test_imagenet_encoder_replay(name, tmp_path):
    """The official wrappers' load_from (VM-UNet's, copied by VMB-UNet and SliceMamba): encoder by name + decoder
    mirrored; the gaps are the documented ones."""
    fx = load_fixture("vmamba_v0", name)
    path = tmp_path / "encoder.pth"
    torch.save({"model": _official_sd(fx), "epoch": 238}, path)
    with pytest.raises(PretrainedError, match="--partial"):
        convert_weights(path, fx["converter"], **fx["options"])
    model, report = convert_weights(path, fx["converter"], partial=True, **fx["options"])
    gaps = fx["gaps"]
    assert report.expected_missing == gaps["expected_missing"] and len(report.loaded) == gaps["loaded"]
    assert report.unexpected == [] and report.undocumented_missing == []
    assert "norm." in report.dropped and "head." in report.dropped  # the ImageNet classifier
    with torch.no_grad():
        for key in report.missing:
            t = model.state_dict()[key]
            t.copy_(synth_tensor(gaps["key_prefix"] + key, tuple(t.shape), base_seed=gaps["base_seed"]))
    ref = decode_tensor(fx["logits"])
    assert (_logits(model, fx) - ref).abs().max().item() <= TOL


def test_mirror_matches_vmunet_load_from_counts():
    """VMamba-S into VM-UNet [2,2,2,2]/[2,2,2,1]: 117 encoder tensors by name (the official log says so) + mirror."""
    fx = load_fixture("vmamba_v0", "vmamba_v0_small")
    sd = _official_sd(fx)
    conv = get_converter("vmamba_v0_small")(sd)
    enc = [k for k in conv.state_dict if not k.startswith("layers_up.")]
    dec = [k for k in conv.state_dict if k.startswith("layers_up.")]
    assert len(sd) == 446 and len(enc) == 117
    assert len(dec) == 7 * 13  # decoder blocks 2 + 2 + 2 + 1, 13 tensors each
    assert torch.equal(conv.state_dict["layers_up.2.blocks.1.self_attention.A_logs"],
                       sd["layers.1.blocks.1.self_attention.A_logs"])
    assert "layers_up.3.blocks.1.ln_1.weight" not in conv.state_dict  # decoder stage 3 has one block
    assert torch.equal(conv.state_dict["layers_up.0.blocks.0.ln_1.weight"], sd["layers.3.blocks.0.ln_1.weight"])
    assert conv.expected_missing == ["final_conv.", "final_up.", "layers_up.1.upsample.", "layers_up.2.upsample.",
                                     "layers_up.3.upsample."]


def test_later_vmamba_key_spelling_is_accepted():
    fx = load_fixture("vmamba_v0", "vmamba_v0_tiny")
    sd = _official_sd(fx)
    renamed = {}
    for k, v in sd.items():
        k2 = k.replace("patch_embed.proj.", "patch_embed.0.").replace("patch_embed.norm.", "patch_embed.2.")
        k2 = k2.replace(".ln_1.", ".norm.").replace(".self_attention.", ".op.")
        if k2.startswith(("norm.", "head.")):
            k2 = "classifier." + k2
        renamed[k2] = v
    back, n = normalize_v0_keys(renamed)
    unchanged = [k for k in sd if ".downsample." in k]  # PatchMerging2D keys are spelled alike in both
    assert n == len(sd) - len(unchanged) and back.keys() == sd.keys()
    a, b = get_converter("vmamba_v0")(renamed), get_converter("vmamba_v0_tiny")(sd)
    assert a.state_dict.keys() == b.state_dict.keys() and any("renamed" in n for n in a.notes)


def test_wrong_format_errors_name_what_was_expected(tmp_path):
    fx = load_fixture("vmamba_v0", "vmunet")
    sd = _official_sd(fx)
    with pytest.raises(ValueError, match="'vmbunet.'"):
        get_converter("vmbunet")(sd)
    with pytest.raises(ValueError, match="arch="):
        get_converter("slicemamba")({"smunet." + k[len("vmunet."):]: v for k, v in sd.items()})
    with pytest.raises(ValueError, match="trained segmentation network"):
        get_converter("vmamba_v0_tiny")(sd)
    enc = _official_sd(load_fixture("vmamba_v0", "vmamba_v0_tiny"))
    with pytest.raises(ValueError, match="vmamba_v0_small expects embed dim 96 and depths \\[2, 2, 27, 2\\]"):
        get_converter("vmamba_v0_small")(enc)
    with pytest.raises(ValueError, match="VMamba ImageNet encoder"):
        get_converter("vmunet")(enc)
    with pytest.raises(ValueError, match="unknown checkpoint format 'nope'"):
        get_converter("nope")
    with pytest.raises(PretrainedError, match="does not exist"):
        read_weights(tmp_path / "missing.pth")
    assert {"vmunet", "vmbunet", "slicemamba", "slicemamba_supernet", "vmamba_v0_small"} <= {
        c.name for c in list_converters()}


def test_encoder_into_vmbunet_and_slicemamba():
    sd = _official_sd(load_fixture("vmamba_v0", "vmamba_v0_tiny"))
    conv = get_converter("vmamba_v0_tiny")(sd, target="vmbunet")
    assert conv.model_kwargs["variant"] == "official"
    assert "layers.0.blocks.0.cbam." in conv.expected_missing and "layers_up.1.bsf." in conv.expected_missing
    assert torch.equal(conv.state_dict["layers_up.3.blocks.1.ln_1.weight"], sd["layers.0.blocks.1.ln_1.weight"])
    arch = [3] * 22
    conv = get_converter("vmamba_v0_tiny")(sd, target="slicemamba", arch=arch)
    assert conv.model_kwargs["arch"] == arch
    assert sum(k.startswith("layers.2.blocks.") for k in conv.state_dict) == 9 * 13  # all 9 tiny blocks of stage 2


# ---------------------------------------------------------------------------------------------------------------------
# fine-tuning: num_classes / in_chans adaptation, init_from


def _write_ckpt(model: torch.nn.Module, path: Path) -> Path:
    return save_checkpoint(path, {"model": model.mambaseg_spec, "state_dict": model.state_dict()})


def test_finetune_1_class_to_3_classes_keeps_every_encoder_weight(tmp_path):
    torch.manual_seed(1)
    src = mambaseg.create_model("vmunet_tiny", num_classes=1)
    ckpt = _write_ckpt(src, tmp_path / "one_class.pt")
    torch.manual_seed(2)
    dst = mambaseg.create_model("vmunet_tiny", num_classes=3)
    fresh_head = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("final_conv.")}
    report = mambaseg.init_from(dst, ckpt)
    assert report.reinitialized == ["final_conv.weight", "final_conv.bias"]
    assert report.missing == [] and report.unexpected == [] and report.mismatched == {}
    assert any("1 -> 3 classes" in n for n in report.notes)
    src_sd = src.state_dict()
    for key, value in dst.state_dict().items():
        if key.startswith("final_conv."):
            assert torch.equal(value, fresh_head[key])  # re-initialised: the new model's own init
        else:
            assert torch.equal(value, src_sd[key]), key  # every encoder (and decoder) weight kept
    assert dst(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    # the same through create_model(pretrained=): num_classes given -> the head only is re-initialised
    m = mambaseg.create_model("vmunet_tiny", num_classes=3, pretrained=ckpt)
    assert m.pretrained_report.reinitialized == ["final_conv.weight", "final_conv.bias"]
    assert torch.equal(m.state_dict()["layers.0.blocks.0.self_attention.A_logs"],
                       src_sd["layers.0.blocks.0.self_attention.A_logs"])


def test_init_from_refuses_weights_of_another_network(tmp_path):
    # a VM-UNet checkpoint into vmunet_tiny: one tensor fits by accident; a fine-tuning start from it is a fresh init
    torch.manual_seed(4)
    ckpt = _write_ckpt(mambaseg.create_model("vmunet", num_classes=1), tmp_path / "vmunet.pt")
    dst = mambaseg.create_model("vmunet_tiny", num_classes=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(PretrainedError, match=r"fill only .*% of .*at least 10% needed.*not weights of this network"):
        mambaseg.init_from(dst, ckpt)
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())  # nothing copied
    report = mambaseg.init_from(dst, ckpt, min_loaded=0)  # asked for: loaded as before, every gap reported
    assert 0 < len(report.loaded) < 5 and report.unexpected and report.missing
    # the floor counts weights, not tensors: an encoder-only file (the decoder's tensors left out) still loads
    src = mambaseg.create_model("vmunet_tiny", num_classes=1)
    enc = {k: v for k, v in src.state_dict().items() if k.startswith(("patch_embed.", "layers."))}
    share = sum(v.numel() for v in enc.values()) / sum(v.numel() for v in src.state_dict().values())
    assert 0.1 < share < 0.9
    path = save_checkpoint(tmp_path / "enc.pt", {"model": src.mambaseg_spec, "state_dict": enc})
    report = mambaseg.init_from(mambaseg.create_model("vmunet_tiny", num_classes=1), path)
    assert len(report.loaded) == len(enc) and report.missing


def test_one_channel_stem_sum_equals_the_official_grey_repeat(tmp_path):
    torch.manual_seed(3)
    rgb = mambaseg.create_model("vmunet_tiny", num_classes=2).eval()
    ckpt = _write_ckpt(rgb, tmp_path / "rgb.pt")
    grey = mambaseg.create_model("vmunet_tiny", num_classes=2, in_chans=1, pretrained=ckpt).eval()
    r = grey.pretrained_report
    assert list(r.reshaped) == ["patch_embed.proj.weight"] and "summed" in r.reshaped["patch_embed.proj.weight"]
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_adapt_input_conv_modes():
    w = torch.randn(8, 3, 4, 4)
    assert torch.allclose(adapt_input_conv(w, 1)[0], w.sum(1, keepdim=True))
    assert torch.allclose(adapt_input_conv(w, 1, "mean")[0], w.mean(1, keepdim=True))
    rep, how = adapt_input_conv(w, 4)
    assert rep.shape == (8, 4, 4, 4) and torch.allclose(rep[:, 3], w[:, 0] * 0.75) and "repeated" in how
    two, _ = adapt_input_conv(w, 2, "sum")
    assert torch.allclose(two.sum(1), w.sum(1))
    with pytest.raises(PretrainedError, match="stem adaptation must be one of"):
        adapt_input_conv(w, 1, "median")


def test_strict_load_reports_undocumented_gaps(tmp_path):
    model = mambaseg.create_model("vmunet_tiny")
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("layers_up.0.")}
    sd["extra.weight"] = torch.ones(1)
    from mambaseg.models._pretrained import load_weights

    with pytest.raises(PretrainedError, match="missing keys .*unexpected keys"):
        load_weights(model, sd)
    report = load_weights(model, sd, strict=False)
    assert report.unexpected == ["extra.weight"] and all(k.startswith("layers_up.0.") for k in report.missing)
    assert "unexpected  1" in report.summary()


# ---------------------------------------------------------------------------------------------------------------------
# reading files safely, the pretrained folder, the command line

_CALLS: list[str] = []


def _record(tag: str) -> str:
    _CALLS.append(tag)
    return tag


class _Config:
    """Stands for a pickled training config (e.g. VMamba's yacs node): must never be rebuilt by the reader."""

    def __reduce__(self):
        return (_record, ("config code ran",))


def test_reader_never_runs_pickled_code(tmp_path):
    model = mambaseg.create_model("vmunet_tiny")
    path = tmp_path / "vmamba_like.pth"
    torch.save({"model": {"vmunet." + k: v for k, v in model.state_dict().items()}, "config": _Config(),
                "epoch": 3}, path)
    _CALLS.clear()
    wf = read_weights(path)
    assert _CALLS == [] and wf.container == "model" and any(p.endswith("_record") for p in wf.placeholders)
    assert sorted(wf.other_keys) == ["config", "epoch"]
    m, report = convert_weights(path, "vmunet")
    assert _CALLS == [] and report.missing == [] and any("not executed" in n for n in report.notes)


def test_save_pretrained_folder_round_trip(tmp_path):
    torch.manual_seed(4)
    model = mambaseg.create_model("slicemamba_tiny", num_classes=2, arch=[0, 1, 2, 3, 3, 2, 1, 0]).eval()
    card = {"training_data": "PH2 dev split (20 images)", "metrics": {"dice": 0.91}, "datasets": ["ph2"],
            "command": "mambaseg train --model slicemamba_tiny --data ../shared/data/ph2_dev --epochs 1"}
    d = mambaseg.save_pretrained(model, tmp_path / "sm", card=card)
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_name"] == "slicemamba_tiny" and cfg["model_kwargs"]["arch"] == [0, 1, 2, 3, 3, 2, 1, 0]
    readme = (d / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: mambaseg") and "| dice | 0.91 |" in readme
    assert card["command"] in readme
    back = mambaseg.from_pretrained(d)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert back.arch == model.arch
    again = mambaseg.create_model("slicemamba_tiny", pretrained=d)  # arch and classes come from the folder
    assert again.num_classes == 2 and again.arch == model.arch
    with pytest.raises(PretrainedError, match="unknown model-card fields"):
        mambaseg.save_pretrained(model, tmp_path / "x", card={"accuracy": 1})


def test_cli_convert_writes_a_loadable_checkpoint(tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    torch.manual_seed(5)
    model = mambaseg.create_model("vmunet_tiny", num_classes=2).eval()
    src = tmp_path / "best.pth"
    torch.save({"vmunet." + k: v for k, v in model.state_dict().items()}, src)
    out = tmp_path / "converted.pt"
    res = CliRunner().invoke(app, ["convert", "--from", "vmunet", str(src), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["missing"] == [] and rep["unexpected"] == [] and len(rep["loaded"]) == len(model.state_dict())
    back = mambaseg.create_model("vmunet", pretrained=out).eval()  # depths/width/d_state come from the checkpoint
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back(x), model(x), atol=1e-6)
    from mambaseg.checkpoint import build_model, load_checkpoint

    ckpt = load_checkpoint(out)  # our self-describing format: the trainer's reader rebuilds it too
    assert ckpt["pretrained"]["format"] == "vmunet" and build_model(ckpt).num_classes == 2
    bad = CliRunner().invoke(app, ["convert", "--from", "vmbunet", str(src), "--out", str(tmp_path / "b.pt")])
    assert bad.exit_code == 1 and "'vmbunet.'" in bad.output
    lst = CliRunner().invoke(app, ["convert", "--list"])
    assert lst.exit_code == 0 and "vmamba_v0_small" in lst.output


def test_collapse_prefixes():
    keys = ["a.b.w", "a.b.b", "a.c.w", "d.w", "d.x.w"]
    assert collapse_prefixes(["a.b.w", "a.b.b"], keys) == ["a.b."]
    assert collapse_prefixes(["a.b.w", "a.b.b", "a.c.w"], keys) == ["a."]
    assert collapse_prefixes(["d.w"], keys) == ["d.w"]

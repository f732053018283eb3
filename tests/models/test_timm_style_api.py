"""What a timm / SMP user does through the Python API: ``pretrained=False/True``, ``torch.compile`` wrappers handed to
``save_pretrained`` / ``init_from``, and size hints that can be followed as given."""

from __future__ import annotations

import ast
import re

import pytest
import torch
from safetensors import safe_open

import mambaseg
from mambaseg.checkpoint import save_checkpoint
from mambaseg.models._pretrained import PretrainedError, load_pretrained

SMALL = dict(channels=(8, 8, 16, 16, 32, 64), d_state=4)  # a small DermoMamba


# ---------------------------------------------------------------- pretrained=False / True


def test_pretrained_false_is_a_random_init_like_none():
    torch.manual_seed(0)
    a = mambaseg.create_model("vmunet_tiny", pretrained=False)
    torch.manual_seed(0)
    b = mambaseg.create_model("vmunet_tiny", pretrained=None)
    assert not hasattr(a, "pretrained_report")
    assert a.mambaseg_spec == b.mambaseg_spec
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretrained_true_says_no_weights_are_hosted_and_what_to_pass():
    with pytest.raises(PretrainedError) as exc:
        mambaseg.create_model("vmunet_tiny", pretrained=True)
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError)  # not the TypeError of os.fspath(True)
    assert "pretrained=True" in msg and "hosts no weights" in msg
    for what in ("mambaseg convert --from FORMAT", "--partial", "convert_checkpoint", "save_pretrained",
                 "pretrained_format=FORMAT", "pretrained=False"):
        assert what in msg, what


# ---------------------------------------------------------------- torch.compile wrappers


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``: the lazy wrapper only (never called here, so nothing is compiled)."""
    wrapped = torch.compile(model)
    assert wrapped is not model and all(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    return wrapped


def test_save_pretrained_of_a_compiled_model_round_trips(tmp_path):
    torch.manual_seed(3)
    model = mambaseg.create_model("vmunet_tiny", num_classes=2).eval()
    d = mambaseg.save_pretrained(_compiled(model), tmp_path / "compiled")
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(model.state_dict())  # the model's own key names, no '_orig_mod.'
    back = mambaseg.from_pretrained(d)
    assert back.num_classes == 2
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_init_from_and_load_pretrained_into_a_compiled_model(tmp_path):
    torch.manual_seed(5)
    src = mambaseg.create_model("vmunet_tiny", num_classes=1)
    ckpt = save_checkpoint(tmp_path / "src.pt", {"model": src.mambaseg_spec, "state_dict": src.state_dict()})
    for load in (mambaseg.init_from, load_pretrained):
        torch.manual_seed(6)
        dst = mambaseg.create_model("vmunet_tiny", num_classes=1)
        report = load(_compiled(dst), ckpt)  # before: 'fill only 0.0% of OptimizedModule's weights'
        assert len(report.loaded) == len(src.state_dict()) and not report.missing and not report.unexpected
        for key, value in src.state_dict().items():
            assert torch.equal(dst.state_dict()[key], value), key  # copied into the wrapped model


# ---------------------------------------------------------------- DermoMamba's size hints


def _suggested_img_size(message: str) -> tuple[int, int]:
    m = re.search(r"img_size=(\(\d+, \d+\))\)", message) or re.search(r"nearest valid size is (\(\d+, \d+\))", message)
    assert m, message
    return ast.literal_eval(m.group(1))


@pytest.mark.parametrize("size", [(65, 64), (64, 65), (100, 33), (96, 64)])
def test_dermomamba_input_size_error_suggests_a_size_it_can_be_built_for(size):
    model = mambaseg.create_model("dermomamba", img_size=(64, 96), **SMALL).eval()
    with pytest.raises(ValueError, match=r"img_size=\(64, 96\)") as exc:
        model(torch.randn(1, 3, *size))
    suggested = _suggested_img_size(str(exc.value))
    assert all(s % 32 == 0 and abs(s - v) <= 16 for s, v in zip(suggested, size))  # the nearest multiple of 32
    rebuilt = mambaseg.create_model("dermomamba", img_size=suggested, **SMALL).eval()  # the advice works as given
    with torch.no_grad():
        assert rebuilt(torch.randn(1, 3, *suggested)).shape == (1, 1, *suggested)


def test_dermomamba_img_size_error_suggests_the_nearest_valid_size():
    with pytest.raises(ValueError, match="multiples of 32") as exc:
        mambaseg.create_model("dermomamba", img_size=(200, 250), **SMALL)
    suggested = _suggested_img_size(str(exc.value))
    assert suggested == (192, 256)
    assert mambaseg.create_model("dermomamba", img_size=suggested, **SMALL).img_size == (192, 256)


def test_converting_a_mambaseg_state_dict_says_it_needs_no_conversion(tmp_path):
    # the error suggested the ImageNet-encoder format for a whole network's keys (audit)
    model = mambaseg.create_model("vmunet_tiny")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError) as e:
        mambaseg.convert_checkpoint(tmp_path / "sd.pt", "vmunet", tmp_path / "o.pt")
    msg = " ".join(str(e.value).split())
    assert "a mambaseg model's own state_dict needs no conversion (model.load_state_dict(state_dict))" in msg
    assert "ImageNet encoder" not in msg

"""One tester for every registered model (SMP/timm style): shapes, logits, gradients, channels, size errors, determinism.

Models are built with their registered defaults; only the spatial size is kept small (two strides, or the model's own
minimum). Models that need to know the input size at construction accept ``img_size`` (forwarded by create_model).
"""

from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.models.base import SegmentationModel

MODELS = mambaseg.list_models()


def _size(model) -> int:
    s = int(getattr(model, "stride", 32))
    return max(64, 2 * s)


_CACHE: dict = {}


def _build(name, num_classes=1, in_chans=3):
    """Build (once per configuration; models are large) at a small test size."""
    key = (name, num_classes, in_chans)
    if key not in _CACHE:
        torch.manual_seed(0)
        probe = mambaseg.create_model(name, num_classes=num_classes, in_chans=in_chans)
        size = _size(probe)
        if getattr(probe, "fixed_size", None) is not None:
            probe = mambaseg.create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=(size, size))
        _CACHE[key] = (probe, size)
    model, size = _CACHE[key]
    model.zero_grad(set_to_none=True)
    return model, size


@pytest.fixture(scope="module", params=MODELS)
def name(request):
    """One model name at a time; module scope makes pytest run all tests of a model together (cache hits)."""
    yield request.param
    for key in [k for k in _CACHE if k[0] == request.param]:
        del _CACHE[key]


def test_registry_lists_and_rejects_unknown():
    assert "vmunet" in MODELS and "vmunet_tiny" in MODELS
    assert mambaseg.list_models("vmunet*")[0].startswith("vmunet")
    with pytest.raises(ValueError, match="valid names: .*vmunet"):
        mambaseg.create_model("no_such_model")
    with pytest.raises(ValueError, match="num_classes"):
        mambaseg.create_model("vmunet_tiny", num_classes=0)


def test_vmunet_parameter_count_matches_spec():
    n = sum(p.numel() for p in mambaseg.create_model("vmunet", num_classes=1).parameters())
    assert abs(n - 27.43e6) / 27.43e6 < 0.002, n
    n = sum(p.numel() for p in mambaseg.create_model("vmunet_code_default", num_classes=1).parameters())
    assert abs(n - 44.27e6) / 44.27e6 < 0.002, n
    assert sum(p.numel() for p in mambaseg.create_model("vmunet_tiny").parameters()) < 2_000_000


def test_forward_backward_logits(name):
    model, size = _build(name, num_classes=1)
    assert isinstance(model, SegmentationModel)
    assert model.mambaseg_spec["name"] == name
    model.train()
    x = torch.randn(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, 1, size, size)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    # logits, never probabilities: negative values exist and nothing squashes into [0, 1]
    assert (y < 0).any() or (y > 1).any()
    (y.float().square().mean() + y.float().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad


def test_odd_channels_and_classes(name):
    model, size = _build(name, num_classes=3, in_chans=1)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size)).shape == (1, 3, size, size)
        with pytest.raises(ValueError, match="in_chans"):
            model(torch.randn(1, 3, size, size))


def test_wrong_size_is_a_clear_error(name):
    model, size = _build(name)
    stride = int(getattr(model, "stride", 32))
    bad = size + stride // 2 if stride > 1 else size + 1
    with pytest.raises(ValueError, match=r"nearest valid size|img_size|divisible"):
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, bad, bad))


def test_eval_is_deterministic(name):
    model, size = _build(name)
    model.eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_reduced_precision_weights_and_input_dtype_errors(name):
    """A model converted with .bfloat16() runs on bfloat16 input (on CPU it failed inside layer_norm: the float32
    scan output met bfloat16 norm weights) close to the float32 model; an input of another dtype, or an integer
    image, is refused naming both dtypes (it failed inside torch)."""
    import copy

    model, size = _build(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = model.eval()(x)
        half = copy.deepcopy(model).bfloat16()
        y = half(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    rel = float((y.float() - ref).norm() / ref.norm())
    assert rel < 0.05, rel
    with pytest.raises(ValueError, match=r"torch\.bfloat16 weights but the input is torch\.float32"):
        half(x)
    with pytest.raises(ValueError, match="floating-point input"):
        model(torch.zeros(1, 3, size, size, dtype=torch.uint8))


def test_img_size_goes_only_to_models_that_take_it():
    m = mambaseg.create_model("vmunet_tiny", img_size=(64, 64))
    assert "img_size" not in m.mambaseg_spec["kwargs"]
    with pytest.raises(TypeError):
        mambaseg.create_model("vmunet_tiny", no_such_option=1)


@pytest.mark.slow
def test_traces_into_one_graph_for_torch_compile(name):
    """torch.compile sees the whole model as one graph (CPU, torch scan backend): train.compile then compiles
    forward and backward without graph breaks."""
    model, size = _build(name)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.train())(torch.randn(1, 3, size, size))
    reasons = sorted({b.reason.splitlines()[0] for b in explanation.break_reasons})
    assert explanation.graph_break_count == 0, reasons

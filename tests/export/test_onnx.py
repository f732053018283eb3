"""ONNX export: the traced graph (torch scan backend) matches eager within 1e-4 under onnxruntime."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx", reason="the [onnx] extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnxruntime", reason="the [onnx] extra (onnx, onnxruntime) is not installed")

from mambaseg.export import export_onnx, load_for_export  # noqa: E402


def test_vmunet_tiny_onnx_parity(tmp_path):
    model, shape, _ = load_for_export("vmunet_tiny", num_classes=2, size=(64, 64))
    assert shape == (1, 3, 64, 64)
    report = export_onnx(model, tmp_path / "m.onnx", shape, check=True, repeats=1, threads=1)
    assert (tmp_path / "m.onnx").stat().st_size == report.bytes > 0
    assert report.max_abs_diff < 1e-4
    assert report.max_abs_diff_auto < 1e-4  # also against the model as it runs eagerly here (fused CPU scan if built)
    assert report.eager_ms > 0 and report.onnxruntime_ms > 0
    import onnx

    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_slicemamba_tiny_onnx_parity(tmp_path):
    """SliceMamba's slicing orders trace (the map size enters as a constant of the exported graph)."""
    model, shape, _ = load_for_export("slicemamba_tiny", num_classes=1, size=(64, 64))
    report = export_onnx(model, tmp_path / "s.onnx", shape, check=True, repeats=1, threads=1)
    assert report.max_abs_diff < 1e-4


def test_export_cli_checkpoint(tmp_path):
    """``mambaseg export --checkpoint C --format onnx --out F --check`` on a saved checkpoint, JSON report."""
    from typer.testing import CliRunner

    from mambaseg.cli import app
    from mambaseg.checkpoint import save_checkpoint
    from mambaseg.models import create_model

    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=1)
    ckpt_path = tmp_path / "best.pt"
    save_checkpoint(ckpt_path, {"model": model.mambaseg_spec, "state_dict": model.state_dict(), "image_size": [64, 64]})
    res = CliRunner().invoke(app, ["export", "--checkpoint", str(ckpt_path), "--format", "onnx", "--out",
                                   str(tmp_path / "c.onnx"), "--check", "--repeats", "1", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output[res.output.index("{"):])
    assert info["input_shape"] == [1, 3, 64, 64]
    assert info["max_abs_diff"] < 1e-4


def test_export_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from mambaseg.cli import app

    res = CliRunner().invoke(app, ["export", "--model", "vmunet_tiny", "--format", "tflite", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code != 0 and "only format is onnx" in res.output
    res = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code != 0 and "exactly one of --model or --checkpoint" in res.output


def test_torchscript_export_of_a_padded_scan_loads_and_matches(tmp_path):
    """A scan whose length is not a multiple of the chunk (28 x 28 = 784 = 24.5 chunks of 32, as MSVM-UNet's second
    stage at 224 x 224): the TorchScript graph must pad, not crop (ceil(L / T) recorded as ONNX integer division)."""
    from mambaseg.layers import SS2Dv2

    torch.manual_seed(0)
    layer = SS2Dv2(8, d_state=1).eval()
    report = export_onnx(layer, tmp_path / "s.onnx", (1, 8, 28, 28), exporter="torchscript", check=True, repeats=1,
                         threads=1)
    assert report.exporter == "torchscript"
    assert report.max_abs_diff < 1e-4 and report.max_abs_diff_auto < 1e-4


def test_tracer_warnings_become_one_note_and_other_warnings_pass(tmp_path):
    """The tracer's shape warnings (hundreds per model) are summed up in one report note, counted by place; any
    other warning raised during the export still reaches the caller unchanged."""
    import warnings

    model, shape, _ = load_for_export("vmunet_tiny", num_classes=1, size=(64, 64))

    class Noisy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            warnings.warn("a warning of the model's own", UserWarning)
            return self.inner(x)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = export_onnx(Noisy(model), tmp_path / "n.onnx", shape, check=False, metadata={})
    assert not [w for w in seen if issubclass(w.category, torch.jit.TracerWarning)]
    assert any(str(w.message) == "a warning of the model's own" for w in seen)
    note = next(n for n in report.notes if "tracer warned" in n)
    count = int(note.split("tracer warned ")[1].split()[0])
    assert count > 10 and "base.py:" in note and "[1, 3, 64, 64]" in note

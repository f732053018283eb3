"""``mambaseg train --set model.kwargs.X=...`` with an unknown X: the error names the model, not an inner block."""

from __future__ import annotations

from typer.testing import CliRunner

from mambaseg.cli import app


def test_train_unknown_model_kwarg_names_the_model(tmp_path):
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=(32, 32), seed=0)
    r = CliRunner().invoke(app, ["train", "--model", "vmunet", "--data", str(data), "--epochs", "1", "--image-size",
                                 "32", "--out", str(tmp_path / "RUN"), "--device", "cpu", "--no-progress",
                                 "--set", "data.num_workers=0", "--set", "model.kwargs.foo=1"])
    text = " ".join(r.output.split())
    assert r.exit_code != 0
    assert "model 'vmunet' takes no keyword 'foo'" in text and "model.kwargs" in text and "VMUNet takes: d_state" in text, text
    assert "SS2D" not in text

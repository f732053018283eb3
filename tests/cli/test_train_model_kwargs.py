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


def test_fold_without_folds_is_refused_and_the_header_keeps_its_brackets(tmp_path):
    from mambaseg.data import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=4, n_val=2, size=(32, 32), seed=0)
    base = ["train", "--model", "vmunet_tiny", "--data", str(data), "--epochs", "1", "--image-size", "32",
            "--batch-size", "2", "--device", "cpu", "--no-progress", "--set", "data.num_workers=0"]
    # --fold alone trained an ordinary train/val run without a word
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "F"), "--fold", "2"])
    assert r.exit_code != 0 and "--fold 2 applies to cross-validation" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "F").exists()
    # the run header's data description ([folder2d: {...}]) was eaten as console markup
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "R")])
    assert r.exit_code == 0, r.output
    assert "[folder2d: {" in r.output, r.output
    assert "(train 4 images, val 2 images)" in " ".join(r.output.split()), r.output  # what the n_* count

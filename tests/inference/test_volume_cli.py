"""End to end on a tiny synthetic ACDC tree: train (per-volume val metrics), evaluate --split test, predict NIfTI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_acdc import make_acdc  # noqa: E402

from mambaseg.cli import app  # noqa: E402


def test_train_evaluate_predict_volumes(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc", n_train=2)
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, [
        "train", "--model", "vmunet_tiny", "--data", str(root), "--epochs", "1", "--max-steps", "1",
        "--batch-size", "2", "--image-size", "32", "--out", str(run), "--device", "cpu", "--no-progress",
        "--set", "loss.name=ce_dice",
    ])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["data"]["layout"] == "acdc" and m["n_volumes"] == 2
    assert m["empty_policy"] == "transunet" and m["hd95_units"] == "voxels"
    assert set(m["classes"]) == {"RV", "Myo", "LV"}
    for c in m["classes"].values():
        assert 0.0 <= c["dice"] <= 1.0 and c["hd95"] is not None
    assert set(m["policies"]) == {"transunet", "nan"}
    assert m["dice"] == pytest.approx(np.mean([c["dice"] for c in m["classes"].values()]))
    assert [r["id"] for r in m["per_volume"]] == ["patient002_frame01", "patient002_frame02"]

    ev = tmp_path / "ev"
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--split", "test",
                              "--out", str(ev), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    t = json.loads((ev / "metrics.json").read_text())
    assert t["split"] == "test" and t["n_volumes"] == 1 and set(t["classes"]) == {"RV", "Myo", "LV"}

    nib = pytest.importorskip("nibabel")
    img = np.random.default_rng(0).random((26, 30, 3)).astype(np.float32)
    aff = np.diag([1.5, 1.5, 8.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), str(tmp_path / "vol.nii.gz"))
    res = runner.invoke(app, ["predict", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                              "--input", str(tmp_path / "vol.nii.gz"), "--out", str(tmp_path / "pred"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    out = nib.load(str(tmp_path / "pred" / "vol_pred.nii.gz"))
    assert out.shape == (26, 30, 3)
    np.testing.assert_allclose(out.affine, aff)
    assert set(np.unique(np.asanyarray(out.dataobj)).tolist()) <= {0, 1, 2, 3}

    # a folder of volumes with a stray text file: the volumes are predicted (other kinds of files are left alone)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    nib.save(nib.Nifti1Image(img, aff), str(mixed / "a.nii.gz"))
    (mixed / "notes.txt").write_text("not an input")
    res = runner.invoke(app, ["predict", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--input", str(mixed),
                              "--out", str(tmp_path / "pred_mixed"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pred_mixed" / "a_pred.nii.gz").is_file()
    # two volumes and --out naming one file: refused (it was read as the folder holding that name)
    nib.save(nib.Nifti1Image(img, aff), str(mixed / "c.nii.gz"))
    res = runner.invoke(app, ["predict", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--input", str(mixed),
                              "--out", str(tmp_path / "multi" / "out.nii.gz"), "--device", "cpu"])
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "names one volume file, but 2 volumes are predicted" in text, text
    assert not (tmp_path / "multi").exists()
    # volumes and images in one folder: refused naming both (before, the volume was skipped without a word)
    from PIL import Image

    Image.fromarray((img[..., 0] * 255).astype(np.uint8)).save(mixed / "b.png")
    res = runner.invoke(app, ["predict", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--input", str(mixed),
                              "--out", str(tmp_path / "pred_mixed2"), "--device", "cpu"])
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and "2 volume file(s) (e.g. a.nii.gz) and 1 image file(s) (e.g. b.png)" in text, text
    assert not (tmp_path / "pred_mixed2").exists() or not any((tmp_path / "pred_mixed2").rglob("*.png"))

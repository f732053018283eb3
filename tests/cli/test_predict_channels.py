"""``mambaseg predict`` with a checkpoint of an nnU-Net dataset of two channels on an imagesTs-style folder of real
ACDC volumes written as NIfTI channel files: one prediction per case."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mambaseg.checkpoint import save_checkpoint
from mambaseg.cli import app
from mambaseg.models import create_model

nib = pytest.importorskip("nibabel")


def test_predict_groups_nnunet_channel_files_by_case(shared_data: Path, tmp_path: Path) -> None:
    cases = ("patient001_frame01", "patient002_frame01")
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    for case in cases:
        src = shared_data / "acdc" / "data" / f"{case}.h5"
        if not src.is_file():
            pytest.skip(f"{src} not found")
        with h5py.File(src) as f:
            xyz = f["image"][()].transpose(2, 1, 0)
        for c, arr in enumerate((xyz, 1.0 - xyz)):
            nib.save(nib.Nifti1Image(np.ascontiguousarray(arr), affine), str(folder / f"{case}_{c:04d}.nii.gz"))
    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=4, in_chans=2)
    ckpt = tmp_path / "best.pt"
    # what training on an nnU-Net dataset of two channels records (mambaseg.engine.trainer)
    save_checkpoint(ckpt, {"model": model.mambaseg_spec, "state_dict": model.state_dict(), "image_size": [32, 32],
                           "label_map": {"background": 0, "RV": 1, "Myo": 2, "LV": 3},
                           "task": {"layout": "nnunet", "num_classes": 4, "in_chans": 2,
                                    "channel_names": ["cineMRI", "inverted"]}})
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "-k", str(ckpt), "-i", str(folder), "-o", str(tmp_path / "pred"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [f"{c}_pred.nii.gz" for c in cases]
    for case in cases:
        out = nib.load(str(tmp_path / "pred" / f"{case}_pred.nii.gz"))
        assert out.shape == nib.load(str(folder / f"{case}_0000.nii.gz")).shape
        np.testing.assert_allclose(out.affine, affine)
        assert set(np.unique(np.asanyarray(out.dataobj)).tolist()) <= {0, 1, 2, 3}
    # a case without its second channel file: an error naming the case and the channel, nothing written
    (folder / f"{cases[1]}_0001.nii.gz").unlink()
    res = runner.invoke(app, ["predict", "-k", str(ckpt), "-i", str(folder), "-o", str(tmp_path / "pred2"),
                              "--device", "cpu"])
    text = " ".join(res.output.split())
    assert res.exit_code != 0 and f"case '{cases[1]}': channel 1 is missing" in text, text
    assert not (tmp_path / "pred2").exists()

"""``mambaseg predict`` on inputs it cannot predict: a folder with neither images nor volumes (the message names
every type it reads), and nnU-Net channel files of a channel a one-channel checkpoint does not take (real ACDC
volumes; refused before anything is written)."""

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


def _checkpoint(tmp_path: Path, in_chans: int = 3, num_classes: int = 1) -> Path:
    torch.manual_seed(0)
    model = create_model("vmunet_tiny", num_classes=num_classes, in_chans=in_chans, dims=8, d_state=2)
    return save_checkpoint(tmp_path / "best.pt", {"model": model.mambaseg_spec, "state_dict": model.state_dict(),
                                                  "image_size": [32, 32]})


def test_folder_without_images_or_volumes_names_every_readable_type(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("no image here")
    (tmp_path / "notes.csv").write_text("a,b")
    runner = CliRunner()
    for given in (folder, tmp_path / "notes.csv"):
        res = runner.invoke(app, ["predict", "-k", str(ckpt), "-i", str(given), "-o", str(tmp_path / "out"),
                                  "--device", "cpu"])
        text = " ".join(res.output.split())
        assert res.exit_code != 0, text
        for suffix in (".png", ".jpg", ".nii.gz", ".nii", ".h5", ".npz", ".npy"):
            assert suffix in text, (suffix, text)
        assert str(given.name) in text
        assert not (tmp_path / "out").exists()


def test_channel_files_of_an_untrained_channel_are_refused(shared_data: Path, tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    src = shared_data / "acdc" / "data" / "patient001_frame01.h5"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    with h5py.File(src) as f:
        xyz = np.ascontiguousarray(f["image"][()].transpose(2, 1, 0))
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    for c, arr in enumerate((xyz, 1.0 - xyz)):
        nib.save(nib.Nifti1Image(arr, affine), str(folder / f"patient001_frame01_{c:04d}.nii.gz"))
    ckpt = _checkpoint(tmp_path, in_chans=1, num_classes=4)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", "-k", str(ckpt), "-i", str(folder), "-o", str(tmp_path / "pred"),
                              "--device", "cpu"])
    text = " ".join(res.output.split())
    assert res.exit_code != 0, text
    assert "patient001_frame01_0001.nii.gz (channel 1 of case 'patient001_frame01')" in text
    assert "trained on 1 channel" in text
    assert not (tmp_path / "pred").exists()
    (folder / "patient001_frame01_0001.nii.gz").unlink()
    res = runner.invoke(app, ["predict", "-k", str(ckpt), "-i", str(folder), "-o", str(tmp_path / "pred"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "pred").iterdir()] == ["patient001_frame01_pred.nii.gz"]

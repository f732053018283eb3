"""nnU-Net channel files of a channel the checkpoint does not take are refused before anything is written; the h5/npz
predictions' axis order (label/spacing (D, H, W), affine NIfTI (x, y, z)) and the documented recipe that rebuilds the
NIfTI prediction from them, on real ACDC volumes written as NIfTI with an oblique affine."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn

from mambaseg.data import DatasetError
from mambaseg.inference import Predictor, volume
from mambaseg.inference.volume import write_prediction

nib = pytest.importorskip("nibabel")

CASES = ("patient001_frame01", "patient001_frame02")  # 10 slices of 256 x 216 each


def _oblique_affine() -> np.ndarray:
    """Rotated (30 degrees about z, 20 about x), anisotropic (1.37, 1.56, 10 mm), a flipped x axis and an origin."""
    a, b = np.deg2rad(30.0), np.deg2rad(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    out = np.eye(4)
    out[:3, :3] = rz @ rx @ np.diag([-1.37, 1.56, 10.0])
    out[:3, 3] = [112.5, -87.0, 31.25]
    return out


AFFINE = _oblique_affine()


class Brighter(nn.Module):
    """Class 1 where the (one-channel) input is above 0.3: a non-trivial label map that follows the image."""

    num_classes = 2
    in_chans = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x[:, :1] - 0.3) * 20.0
        return torch.cat([-d, d], dim=1)


def _save(path: Path, dhw: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(dhw.transpose(2, 1, 0)), AFFINE), str(path))
    return path


def _predictor(task: dict | None = None) -> Predictor:
    return Predictor(Brighter(), image_size=(256, 216), label_map={"background": 0, "fg": 1}, device="cpu",
                     info={"training": {"task": task or {}}})


@pytest.mark.parametrize("task", [None, {"layout": "nnunet", "channel_names": ["cineMRI"]}])
def test_channel_files_beyond_the_checkpoint_channels_are_refused(tmp_path: Path, acdc: dict[str, np.ndarray],
                                                                  task: dict | None) -> None:
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for case, img in acdc.items():
        _save(folder / f"{case}_0000.nii.gz", img)
        _save(folder / f"{case}_0001.nii.gz", 1.0 - img)  # a second channel: not a case of its own
    pred = _predictor(task)
    out = tmp_path / "pred"
    with pytest.raises(DatasetError) as info:
        pred.predict_path(folder, out)
    text = str(info.value)
    assert "2 input file(s) of 2 case(s)" in text and "it was trained on 1 channel (<case>_0000 files only)" in text
    for case in CASES:
        assert f"{folder / f'{case}_0001.nii.gz'} (channel 1 of case {case!r})" in text
    assert not out.exists()  # refused before anything was written
    # one such file given alone: refused as well
    with pytest.raises(DatasetError, match=rf"{CASES[0]}_0001\.nii\.gz \(channel 1 of case '{CASES[0]}'\)"):
        pred.predict_path(folder / f"{CASES[0]}_0001.nii.gz", out)
    assert not out.exists()
    # the <case>_0000 files alone are predicted as before: one prediction per case, named <case>_pred
    for f in folder.glob("*_0001.nii.gz"):
        f.unlink()
    written = pred.predict_path(folder, out)
    assert written == [out / f"{c}_pred.nii.gz" for c in CASES]
    assert pred.predict_path(folder / f"{CASES[0]}_0000.nii.gz", tmp_path / "one") == \
        [tmp_path / "one" / f"{CASES[0]}_pred.nii.gz"]


def test_volumes_whose_names_are_not_all_channel_files_are_predicted_one_by_one(tmp_path: Path,
                                                                                 acdc: dict[str, np.ndarray]) -> None:
    folder = tmp_path / "vols"
    folder.mkdir()
    _save(folder / f"{CASES[0]}.nii.gz", acdc[CASES[0]])
    _save(folder / "scan_0001.nii.gz", acdc[CASES[1]])  # not an nnU-Net folder: every file is a volume of its own
    written = _predictor().predict_path(folder, tmp_path / "pred")
    assert sorted(p.name for p in written) == sorted([f"{CASES[0]}_pred.nii.gz", "scan_0001_pred.nii.gz"])


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_array_predictions_rebuild_the_nifti_prediction(tmp_path: Path, acdc: dict[str, np.ndarray],
                                                        suffix: str) -> None:
    src = _save(tmp_path / f"{CASES[0]}.nii.gz", acdc[CASES[0]])
    pred = _predictor()
    nii = nib.load(str(pred.predict_path(src, tmp_path / "pred.nii.gz")[0]))
    arr = pred.predict_path(src, tmp_path / f"pred{suffix}")[0]
    if suffix == ".h5":
        with h5py.File(arr) as f:
            d = {k: f[k][()] for k in f}
    else:
        with np.load(arr) as z:
            d = {k: z[k] for k in z.files}
    label, affine = d["label"], d["affine"]
    want = np.asanyarray(nii.dataobj)
    assert 0.05 < want.mean() < 0.95  # a label map that follows the image
    # the stored layout: label and spacing (D, H, W) = (Z, Y, X), affine the source's NIfTI (x, y, z) matrix
    assert label.shape == acdc[CASES[0]].shape == want.shape[::-1]
    np.testing.assert_allclose(affine, AFFINE, atol=1e-6)
    np.testing.assert_allclose(d["spacing"], np.asarray(nii.header.get_zooms()[:3])[::-1], rtol=1e-6)
    # the documented recipe gives the NIfTI prediction's data and affine
    rebuilt = nib.Nifti1Image(label.transpose(2, 1, 0), affine)
    np.testing.assert_array_equal(np.asanyarray(rebuilt.dataobj), want)
    np.testing.assert_allclose(rebuilt.affine, nii.affine, atol=1e-5)
    # as the docstrings say, the label array itself is not in the affine's (x, y, z) order
    assert nib.Nifti1Image(label, affine).shape != nii.shape


def test_the_axis_order_and_the_recipe_are_documented() -> None:
    recipe = "nib.Nifti1Image(label.transpose(2, 1, 0), affine)"
    for doc in (volume.__doc__, write_prediction.__doc__):
        assert recipe in " ".join(doc.split())
        assert "(D, H, W)" in doc and "(x, y, z)" in doc

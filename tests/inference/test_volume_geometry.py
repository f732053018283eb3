"""The geometry of predicted volumes on a real ACDC volume written as NIfTI: 4-D inputs with a singleton channel
axis, the qform/sform codes of the input, and the affine of NIfTI inputs predicted to h5/npz."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn

from mambaseg.data import DatasetError
from mambaseg.inference.volume import predict_volume_file, read_label_volume, read_volume

nib = pytest.importorskip("nibabel")

#: an oblique voxel-to-world matrix (axes permuted, one flipped, shifted origin): any axis mix-up shows
AFFINE = np.array([[0.0, 0.0, -10.0, 30.0], [1.4, 0.0, 0.0, -4.0], [0.0, 1.4, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


class Bright(nn.Module):
    """Class 1 where the slice is brighter than 0.3, else 0 (deterministic, no weights)."""

    in_chans = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.3 - x, x - 0.3], dim=1)


@pytest.fixture(scope="module")
def acdc_xyz(shared_data: Path) -> np.ndarray:
    """The ACDC volume patient001_frame01 as a NIfTI array (X, Y, Z) = (216, 256, 10), intensities in [0, 1]."""
    src = shared_data / "acdc" / "data" / "patient001_frame01.h5"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    with h5py.File(src) as f:
        return np.ascontiguousarray(f["image"][()].transpose(2, 1, 0))


def _save(path: Path, data: np.ndarray, *, qcode: int = 1, scode: int = 2) -> Path:
    img = nib.Nifti1Image(data, AFFINE)
    img.set_qform(AFFINE, qcode)
    img.set_sform(AFFINE, scode)
    nib.save(img, str(path))
    return path


def test_4d_singleton_input_gives_a_3d_label_map_with_its_affine(tmp_path: Path, acdc_xyz: np.ndarray) -> None:
    # (X, Y, Z, 1), as some converters write single-channel volumes: read as 3-D, written as a 3-D (X, Y, Z) label map
    # with the input's spatial affine, codes and voxel sizes (nnU-Net and MONAI write it so), same labels as 3-D
    four = _save(tmp_path / "four.nii.gz", acdc_xyz[..., None])
    three = _save(tmp_path / "three.nii.gz", acdc_xyz)
    assert nib.load(str(four)).shape == (216, 256, 10, 1)
    out4 = predict_volume_file(Bright(), four, tmp_path / "o", image_size=(64, 64))
    out3 = predict_volume_file(Bright(), three, tmp_path / "o", image_size=(64, 64))
    res = nib.load(str(out4))
    assert res.shape == (216, 256, 10) and int(res.header["dim"][0]) == 3
    np.testing.assert_allclose(res.affine, AFFINE, atol=1e-5)
    assert res.header.get_zooms() == pytest.approx((1.4, 1.4, 10.0))
    assert (int(res.header["qform_code"]), int(res.header["sform_code"])) == (1, 2)
    labels = np.asanyarray(res.dataobj)
    np.testing.assert_array_equal(labels, np.asanyarray(nib.load(str(out3)).dataobj))
    assert 0.05 < (labels == 1).mean() < 0.95


def test_4d_input_of_several_channels_is_refused_naming_the_file(tmp_path: Path, acdc_xyz: np.ndarray) -> None:
    # a genuine (X, Y, Z, 2) volume for a one-channel model: an error naming the file, nothing written
    two = _save(tmp_path / "two.nii.gz", np.stack([acdc_xyz, 1.0 - acdc_xyz], axis=-1))
    with pytest.raises(DatasetError, match=r"two\.nii\.gz: expected a 3-D volume, got shape \(216, 256, 10, 2\)"):
        predict_volume_file(Bright(), two, tmp_path / "o", image_size=(64, 64))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("qcode, scode", [(1, 0), (0, 2), (1, 2), (2, 1)])
def test_prediction_keeps_the_qform_and_sform_codes_of_the_input(tmp_path: Path, acdc_xyz: np.ndarray, qcode: int,
                                                                  scode: int) -> None:
    # a qform-only input (scanner NIfTI, ITK/nnU-Net round trips) gave a prediction with an sform (code 2) added
    src = _save(tmp_path / "case.nii.gz", acdc_xyz, qcode=qcode, scode=scode)
    out = predict_volume_file(Bright(), src, tmp_path / "o", image_size=(64, 64))
    res = nib.load(str(out))
    assert (int(res.header["qform_code"]), int(res.header["sform_code"])) == (qcode, scode)
    np.testing.assert_allclose(res.affine, AFFINE, atol=1e-5)
    if qcode:
        np.testing.assert_allclose(res.get_qform(), AFFINE, atol=1e-5)
    if scode:
        np.testing.assert_allclose(res.get_sform(), AFFINE, atol=1e-5)


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_array_prediction_of_a_nifti_keeps_its_affine(tmp_path: Path, acdc_xyz: np.ndarray, suffix: str) -> None:
    # NIfTI in, h5/npz out: the affine is stored beside the spacing (it was lost) and read back as the geometry
    src = _save(tmp_path / "case.nii.gz", acdc_xyz)
    out = predict_volume_file(Bright(), src, tmp_path / f"pred{suffix}", image_size=(64, 64))
    if suffix == ".h5":
        with h5py.File(out) as f:
            labels, spacing, affine = f["label"][()], f["spacing"][()], f["affine"][()]
    else:
        with np.load(out) as z:
            labels, spacing, affine = z["label"], z["spacing"], z["affine"]
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
    assert tuple(spacing) == pytest.approx((10.0, 1.4, 1.4)) and labels.shape == (10, 256, 216)
    lab, sp = read_label_volume(out)
    np.testing.assert_array_equal(lab, labels)
    assert sp == pytest.approx((10.0, 1.4, 1.4))
    # an array file with the affine only: the spacing (D, H, W) comes from it
    only = tmp_path / f"only{suffix}"
    if suffix == ".h5":
        with h5py.File(only, "w") as f:
            f["label"], f["affine"] = labels, affine
    else:
        np.savez(only, label=labels, affine=affine)
    assert read_label_volume(only)[1] == pytest.approx((10.0, 1.4, 1.4))
    # an array image with the stored geometry: read back as its affine, so its NIfTI prediction is placed as the source
    image = tmp_path / f"image{suffix}"
    if suffix == ".h5":
        with h5py.File(image, "w") as f:
            f["image"], f["spacing"], f["affine"] = acdc_xyz.transpose(2, 1, 0), spacing, affine
    else:
        np.savez(image, image=acdc_xyz.transpose(2, 1, 0), spacing=spacing, affine=affine)
    vol = read_volume(image)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-5)
    res = nib.load(str(predict_volume_file(Bright(), image, tmp_path / "back.nii.gz", image_size=(64, 64))))
    np.testing.assert_allclose(res.affine, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(res.dataobj), np.asanyarray(nib.load(str(
        predict_volume_file(Bright(), src, tmp_path / "direct.nii.gz", image_size=(64, 64)))).dataobj))
    # a malformed affine is refused naming the file
    bad = tmp_path / f"bad{suffix}"
    if suffix == ".h5":
        with h5py.File(bad, "w") as f:
            f["image"], f["affine"] = acdc_xyz.transpose(2, 1, 0), np.eye(3)
    else:
        np.savez(bad, image=acdc_xyz.transpose(2, 1, 0), affine=np.eye(3))
    with pytest.raises(DatasetError, match=rf"bad\{suffix}: .*'affine' of shape \(3, 3\); expected a finite 4x4"):
        read_volume(bad)

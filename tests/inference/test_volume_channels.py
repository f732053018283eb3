"""Multi-channel nnU-Net volumes (``<case>_0000``, ``<case>_0001``, ... one file per channel) predicted per case, on
real ACDC volumes written as NIfTI channel files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from mambaseg.data import DatasetError
from mambaseg.data.nnunet import scale_intensity
from mambaseg.inference import Predictor
from mambaseg.inference.volume import predict_volume_file

nib = pytest.importorskip("nibabel")

AFFINE = np.array([[0.0, 0.0, -10.0, 30.0], [1.4, 0.0, 0.0, -4.0], [0.0, 1.4, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
CASES = ("patient001_frame01", "patient001_frame02")  # one in-plane size (256 x 216): the network runs at it


class FirstBrighter(nn.Module):
    """Class 1 where channel 0 is brighter than channel 1: swapped or mis-scaled channels change every label."""

    def __init__(self, in_chans: int = 2) -> None:
        super().__init__()
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[:, :1] - x[:, -1:]
        return torch.cat([-d, d], dim=1)


def _predictor(model: nn.Module, channel_names: list[str]) -> Predictor:
    return Predictor(model, image_size=(256, 216), label_map={"background": 0, "fg": 1}, device="cpu",
                     info={"training": {"task": {"layout": "nnunet", "channel_names": channel_names}}})


def _save(path: Path, dhw: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.ascontiguousarray(dhw.transpose(2, 1, 0)), affine), str(path))
    return path


def _channels(folder: Path, acdc: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """imagesTs-style channel files: 0 = CT (Hounsfield units), 1 = T2 (arbitrary units); their raw arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = {}
    for case, img in acdc.items():
        ct = np.rint(img * 1000.0 - 200.0).astype(np.int16)
        t2 = (img[:, ::-1] * 255.0).astype(np.float32)  # another picture than channel 0
        _save(folder / f"{case}_0000.nii.gz", ct)
        _save(folder / f"{case}_0001.nii.gz", t2)
        raw[case] = (ct, t2)
    return raw


def test_channel_files_are_predicted_per_case(tmp_path: Path, acdc: dict[str, np.ndarray]) -> None:
    raw = _channels(tmp_path / "imagesTs", acdc)
    predictor = _predictor(FirstBrighter(), ["CT", "T2"])
    written = predictor.predict_path(tmp_path / "imagesTs", tmp_path / "pred")
    assert written == [tmp_path / "pred" / f"{c}_pred.nii.gz" for c in CASES]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [f"{c}_pred.nii.gz" for c in CASES]
    for case, out in zip(CASES, written):
        ct, t2 = raw[case]
        # channels in file order, each scaled as training scaled it (CT window for CT, min-max for the other)
        want = (scale_intensity(ct, "CT") > scale_intensity(t2, "T2")).astype(np.uint8)
        assert 0.05 < want.mean() < 0.95
        res = nib.load(str(out))
        assert res.shape == ct.shape[::-1]
        np.testing.assert_allclose(res.affine, AFFINE, atol=1e-5)
        np.testing.assert_array_equal(np.asanyarray(res.dataobj).transpose(2, 1, 0), want)
    # one channel file stands for its case: its other channels come from its folder
    one = predictor.predict_path(tmp_path / "imagesTs" / f"{CASES[1]}_0001.nii.gz", tmp_path / "one")
    assert one == [tmp_path / "one" / f"{CASES[1]}_pred.nii.gz"]
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(one[0])).dataobj),
                                  np.asanyarray(nib.load(str(written[1])).dataobj))
    # and the files of one case given in Python
    direct = predict_volume_file(FirstBrighter(), [tmp_path / "imagesTs" / f"{CASES[0]}_{c:04d}.nii.gz"
                                                   for c in (0, 1)], tmp_path / "direct", image_size=(256, 216),
                                 scale=["ct", "minmax"])
    assert direct == tmp_path / "direct" / f"{CASES[0]}_pred.nii.gz"
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(direct)).dataobj),
                                  np.asanyarray(nib.load(str(written[0])).dataobj))


def test_channel_file_errors_name_the_case_and_the_files(tmp_path: Path, acdc: dict[str, np.ndarray]) -> None:
    folder = tmp_path / "imagesTs"
    raw = _channels(folder, acdc)
    predictor = _predictor(FirstBrighter(), ["CT", "T2"])
    missing = folder / f"{CASES[1]}_0001.nii.gz"
    missing.unlink()
    with pytest.raises(DatasetError, match=rf"case '{CASES[1]}': channel 1 is missing \(.*{CASES[1]}_0001\.nii\.gz "
                                           "not found"):
        predictor.predict_path(folder, tmp_path / "pred")
    assert not (tmp_path / "pred").exists()  # refused before the first case is written
    ct, t2 = raw[CASES[1]]
    bad_geometry = [
        (t2[:, :, :200], r"shape \(D, H, W\) \(10, 256, 200\) vs \(10, 256, 216\)"),
        (t2, r"axis directions \(affine columns\)", AFFINE @ np.diag([1.0, -1.0, 1.0, 1.0])),  # flipped, as resampled
    ]
    for k, (arr, message, *affine) in enumerate(bad_geometry):
        _save(missing, arr, *affine)
        with pytest.raises(DatasetError, match=rf"{CASES[1]}_0001\.nii\.gz: its geometry differs from .*"
                                               rf"{CASES[1]}_0000\.nii\.gz, another channel of the same case: "
                                               f"{message}"):
            predictor.predict_path(folder, tmp_path / f"pred{k}")
    # another origin alone: voxels still pair by index, so a warning naming both files (as training and nnU-Net)
    _save(missing, t2, AFFINE + np.pad([[5.0]], ((2, 1), (3, 0))))
    with pytest.warns(UserWarning, match=rf"{CASES[1]}_0001\.nii\.gz: origin \(30, -4, 12\) mm vs channel 0's .* mm of .*"
                                         rf"{CASES[1]}_0000\.nii\.gz"):
        written = predictor.predict_path(folder, tmp_path / "pred_origin")
    assert len(written) == len(CASES)


def test_single_channel_checkpoints_predict_each_file_as_before(tmp_path: Path, acdc: dict[str, np.ndarray]) -> None:
    # one channel: every file is its own case, <case>_0000 written as <case>_pred, scaled as the channel's name says
    folder = tmp_path / "imagesTs"
    _channels(folder, acdc)
    for f in folder.glob("*_0001.nii.gz"):
        f.unlink()
    model = FirstBrighter(in_chans=1)  # one channel: class 1 nowhere, the names and the geometry are what is checked
    written = _predictor(model, ["CT"]).predict_path(folder, tmp_path / "pred")
    assert written == [tmp_path / "pred" / f"{c}_pred.nii.gz" for c in CASES]
    res = nib.load(str(written[0]))
    assert res.shape == acdc[CASES[0]].shape[::-1]
    np.testing.assert_allclose(res.affine, AFFINE, atol=1e-5)

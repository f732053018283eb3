"""Slice-wise volume inference and volume file input/output."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from mambaseg.data import Normalization, Volume
from mambaseg.inference.volume import (
    predict_volume,
    predict_volume_file,
    read_label_volume,
    read_volume,
    volume_output_path,
    write_prediction,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # the data tests' fixture builders


class NearestCentre(nn.Module):
    """Logits -(x - c_k)^2 per class: argmax = the class whose centre is nearest to the pixel value."""

    def __init__(self, centres=(0.0, 0.5, 1.0), in_chans: int = 1) -> None:
        super().__init__()
        self.register_buffer("c", torch.tensor(centres).view(1, -1, 1, 1))
        self.in_chans = in_chans
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return -((x.mean(1, keepdim=True) - self.c) ** 2)


def _volume(seed: int = 0, shape=(5, 37, 29)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int64)
    lab[:, 6:20, 5:18] = 1
    lab[1:4, 22:33, 10:26] = 2
    img = np.choose(lab, [0.0, 0.5, 1.0]).astype(np.float32) + rng.normal(0, 0.02, shape).astype(np.float32)
    return img, lab


def _reference(model: nn.Module, img: np.ndarray, size: tuple[int, int], norm: Normalization | None) -> np.ndarray:
    """Independent slice loop with direct scipy calls."""
    out = np.zeros(img.shape, np.int64)
    for z in range(img.shape[0]):
        s = ndimage.zoom(img[z], (size[0] / img.shape[1], size[1] / img.shape[2]), order=3)
        if norm is not None:
            s = (s - norm.mean[0]) / norm.std[0]
        with torch.no_grad():
            lab = model(torch.from_numpy(s[None, None].astype(np.float32))).argmax(1)[0].numpy()
        out[z] = ndimage.zoom(lab, (img.shape[1] / size[0], img.shape[2] / size[1]), order=0)
    return out


def test_matches_reference_and_batching() -> None:
    img, lab = _volume()
    model = NearestCentre()
    norm = Normalization((0.0,), (1.0,))
    ref = _reference(model, img, (32, 32), norm)
    for bs in (1, 2, 8):
        model.calls.clear()
        pred = predict_volume(model, img, image_size=32, normalization=norm, batch_size=bs)
        np.testing.assert_array_equal(pred, ref)
        assert [c[0] for c in model.calls] == [min(bs, 5 - i) for i in range(0, 5, bs)]
        assert all(c[1:] == (1, 32, 32) for c in model.calls)
    assert pred.shape == lab.shape and (pred == lab).mean() > 0.97


def test_normalisation_applied_and_channels_repeated() -> None:
    img, lab = _volume(1)
    # centres in normalised units: (x - 0.5) / 0.5 maps {0, .5, 1} to {-1, 0, 1}
    model = NearestCentre((-1.0, 0.0, 1.0), in_chans=3)
    norm = Normalization((0.5,) * 3, (0.5,) * 3)
    pred = predict_volume(model, Volume("v", img), image_size=(40, 24), normalization=norm)
    assert all(c[1] == 3 for c in model.calls)
    assert (pred == lab).mean() > 0.97


def test_binary_single_channel_model() -> None:
    class Sign(nn.Module):
        def forward(self, x):
            return x - 0.25

    img, lab = _volume(2)
    pred = predict_volume(Sign(), img, image_size=32, normalization=None, device="cpu")
    assert set(np.unique(pred).tolist()) == {0, 1}
    assert ((pred > 0) == (lab > 0)).mean() > 0.97


def test_nifti_in_nifti_out_keeps_geometry(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    img, lab = _volume(3)
    aff = np.array([[0.0, 0.0, -1.2, 30.0], [0.9, 0.0, 0.0, -4.0], [0.0, 2.5, 0.0, 7.0], [0, 0, 0, 1.0]])
    src = nib.Nifti1Image((img * 1000).astype(np.int16).transpose(2, 1, 0), aff)
    src.set_qform(aff, 1)
    src.set_sform(aff, 2)
    nib.save(src, str(tmp_path / "ct.nii.gz"))
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert vol.image.shape == img.shape and vol.spacing == pytest.approx((1.2, 2.5, 0.9))  # (Z, Y, X) voxel sizes
    out = predict_volume_file(NearestCentre(), tmp_path / "ct.nii.gz", tmp_path / "out", image_size=32,
                              label_values=[0, 10, 20])
    assert out == tmp_path / "out" / "ct_pred.nii.gz"
    # an nnU-Net channel file <case>_0000 is predicted as its case, the name `score` pairs with labelsTr/<case>
    assert volume_output_path(tmp_path / "patient001_frame01_0000.nii.gz", tmp_path / "o") == \
        tmp_path / "o" / "patient001_frame01_pred.nii.gz"
    assert volume_output_path(tmp_path / "_0000.nii.gz", tmp_path / "o") == tmp_path / "o" / "_0000_pred.nii.gz"
    res = nib.load(str(out))
    np.testing.assert_allclose(res.affine, aff)
    assert int(res.header["sform_code"]) == 2 and int(res.header["qform_code"]) == 1
    data = np.asanyarray(res.dataobj).transpose(2, 1, 0)
    assert data.dtype == np.uint8 and set(np.unique(data).tolist()) <= {0, 10, 20}
    assert ((data // 10) == lab).mean() > 0.97


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".npy"])
def test_array_formats(tmp_path: Path, suffix: str) -> None:
    img, lab = _volume(4)
    src = tmp_path / f"vol{suffix}"
    if suffix == ".h5":
        with h5py.File(src, "w") as f:
            f["image"] = img
            f["label"] = lab
    elif suffix == ".npz":
        np.savez(src, img=img)
    else:
        np.save(src, img)
    vol = read_volume(src, label_key="label" if suffix == ".h5" else None)
    assert vol.image.shape == img.shape and vol.spacing is None
    out = predict_volume_file(NearestCentre(), src, tmp_path / "o", image_size=32, scale="none")
    assert out.name == f"vol_pred{suffix}"
    if suffix == ".h5":
        with h5py.File(out) as f:
            got = f["label"][()]
    elif suffix == ".npz":
        got = np.load(out)["label"]
    else:
        got = np.load(out)
    assert got.shape == lab.shape and (got == lab).mean() > 0.97


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_array_formats_keep_their_spacing(tmp_path: Path, suffix: str) -> None:
    # a `spacing` entry (D, H, W) is read with the image and written with the prediction, so `score` measures in mm
    img, _ = _volume(4)
    src = tmp_path / f"vol{suffix}"
    if suffix == ".h5":
        with h5py.File(src, "w") as f:
            f["image"], f["spacing"] = img, np.array([5.0, 0.8, 0.7])
    else:
        np.savez(src, image=img, spacing=np.array([5.0, 0.8, 0.7]))
    assert read_volume(src).spacing == pytest.approx((5.0, 0.8, 0.7))
    out = predict_volume_file(NearestCentre(), src, tmp_path / "o", image_size=32, scale="none")
    lab, spacing = read_label_volume(out)
    assert lab.shape == img.shape and spacing == pytest.approx((5.0, 0.8, 0.7))
    bad = tmp_path / f"bad{suffix}"
    if suffix == ".h5":
        with h5py.File(bad, "w") as f:
            f["image"], f["spacing"] = img, np.array([5.0, 0.8])
    else:
        np.savez(bad, image=img, spacing=np.array([5.0, 0.8]))
    with pytest.raises(ValueError, match=r"bad.*'spacing' = \[5\.0, 0\.8\]; expected 3 positive"):
        read_volume(bad)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"flat\.npy.*3-D"):
        read_volume(tmp_path / "flat.npy")
    with pytest.raises(ValueError, match="unsupported"):
        write_prediction(tmp_path / "x.png", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="channel"):
        predict_volume(NearestCentre(in_chans=2), np.zeros((3, 2, 8, 8), np.float32), image_size=8)


def test_single_channel_not_repeated_for_multimodal_models() -> None:
    with pytest.raises(ValueError, match="repeated only for 3-channel"):
        predict_volume(NearestCentre(in_chans=2), np.zeros((2, 8, 8), np.float32), image_size=8)


def test_intensity_for_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("nibabel")
    from test_nnunet import make_nnunet

    from mambaseg.inference.volume import intensity_for_checkpoint

    ct = make_nnunet(tmp_path / "ct", n_cases=2)
    mr = make_nnunet(tmp_path / "mr", channels=("T1",), n_cases=2)
    assert intensity_for_checkpoint({"task": {"layout": "nnunet"}, "config": {"data": {"path": str(ct)}}}) == "ct"
    assert intensity_for_checkpoint({"task": {"layout": "nnunet"}, "config": {"data": {"path": str(mr)}}}) == "minmax"
    # recorded channel names decide, wherever the dataset is (checkpoints written since they are recorded)
    assert intensity_for_checkpoint({"task": {"layout": "nnunet", "channel_names": ["CT"]},
                                     "config": {"data": {"path": "/gone"}}}) == "ct"
    assert intensity_for_checkpoint({"task": {"layout": "nnunet", "channel_names": ["T2", "ADC"]}}) == "minmax"
    # neither recorded nor readable: an error saying what to pass (it silently min-max scaled, wrong for CT)
    with pytest.raises(ValueError, match=r"/gone cannot be read.*--intensity ct.*--intensity minmax"):
        intensity_for_checkpoint({"task": {"layout": "nnunet"}, "config": {"data": {"path": "/gone"}}})
    assert intensity_for_checkpoint({"task": {"layout": "acdc"}}) == "auto"


def test_saved_probabilities_are_the_softmax_the_labels_come_from(tmp_path: Path) -> None:
    """predict_volume_file(save_probabilities=True): probabilities/<id>.npz beside the label volume, (C, D, h, w)
    float16 at the network size; the saved labels are these probabilities by the one rule, zoomed back."""
    img, lab = _volume(5)
    src = tmp_path / "vol.npy"
    np.save(src, img)
    model = NearestCentre()
    out = predict_volume_file(model, src, tmp_path / "o", image_size=32, scale="none", save_probabilities=True)
    saved = np.load(tmp_path / "o" / "probabilities" / "vol.npz")
    probs, shape = saved["probabilities"], tuple(saved["shape"])
    assert probs.dtype == np.float16 and probs.shape == (3, 5, 32, 32) and shape == img.shape
    # each slice's softmax of the model's logits, computed here directly
    x = torch.from_numpy(np.stack([ndimage.zoom(s, (32 / 37, 32 / 29), order=3) for s in img])[:, None])
    with torch.no_grad():
        want = torch.softmax(model(x), dim=1).numpy()
    np.testing.assert_allclose(probs.astype(np.float32), np.moveaxis(want, 0, 1), atol=2e-3)
    from mambaseg.data.volumetric import zoom_labels

    labels = np.stack([zoom_labels(z, img.shape[1:]) for z in probs.astype(np.float32).argmax(0)])
    sure = np.sort(probs.astype(np.float32), axis=0)
    margin = np.stack([zoom_labels(((sure[-1] - sure[-2]) > 2e-3).astype(np.int64)[z], img.shape[1:])
                       for z in range(5)]).astype(bool)  # float16 ties aside
    assert np.array_equal(np.load(out)[margin], labels[margin])
    # the label folder keeps only label volumes (what mambaseg score reads)
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_file()) == ["vol_pred.npy"]

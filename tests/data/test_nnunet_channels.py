"""nnU-Net raw datasets of several channels, built from real ACDC volumes: every channel file has channel 0's
geometry (as predict requires), channel files dataset.json does not declare are refused, and the channel names that
name an nnU-Net normalisation scheme we do not implement warn (the scaling itself is unchanged)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
h5py = pytest.importorskip("h5py")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_nnunet import _save  # noqa: E402

from mambaseg.data import DatasetError, NnUNetRaw, nnunet_volumes  # noqa: E402

#: (X, Y, Z) voxel size in mm written into the NIfTI files (ACDC's h5 copies carry none)
ACDC_ZOOMS = (1.5, 1.5, 10.0)
ACDC_LABELS = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}


def acdc_xyz(shared_data: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32, in [0, 1]) and label (uint8) of a real ACDC volume in NIfTI's (X, Y, Z) order."""
    src = shared_data / "acdc" / "data" / f"{case}.h5"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    with h5py.File(src) as f:
        return (np.ascontiguousarray(f["image"][()].transpose(2, 1, 0)),
                np.ascontiguousarray(f["label"][()].transpose(2, 1, 0)))


def make_acdc_nnunet(root: Path, shared_data: Path, cases: tuple[str, ...], *,
                     channels: tuple[str, ...] = ("cineMRI", "inverted"), folds: list | None = None) -> Path:
    """An nnU-Net raw folder of real ACDC volumes: channel 0 the cine-MRI volume, channel 1 (when declared) its
    inverse 1 - x, labelsTr the expert labels; every file on one voxel grid; ``folds``: a splits_final.json."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in cases:
        image, label = acdc_xyz(shared_data, case)
        for c in range(len(channels)):
            _save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", image if c == 0 else (1.0 - image), zooms=ACDC_ZOOMS)
        _save(root / "labelsTr" / f"{case}.nii.gz", label, zooms=ACDC_ZOOMS)
    meta = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": ACDC_LABELS,
            "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    if folds is not None:
        (root / "splits_final.json").write_text(json.dumps(folds))
    return root


def rewrite(path: Path, affine: np.ndarray, *, flip_x: bool = False, data: np.ndarray | None = None) -> Path:
    """Write ``path`` again with another affine (optionally its voxels mirrored along x, or other voxels)."""
    arr = np.asanyarray(nib.load(str(path)).dataobj) if data is None else data
    if flip_x:
        arr = arr[::-1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr), affine), str(path))
    return path


def flip_channel(root: Path, case: str, c: int = 1) -> Path:
    """Channel ``c`` of ``case`` stored with x running the other way from the other end: the same world positions
    (a viewer overlays it), its voxel array mirrored against channel 0's."""
    f = root / "imagesTr" / f"{case}_{c:04d}.nii.gz"
    img = nib.load(str(f))
    aff = img.affine.copy()
    aff[:, 0] *= -1
    aff[0, 3] += ACDC_ZOOMS[0] * (img.shape[0] - 1)
    return rewrite(f, aff, flip_x=True)


CASES = ("patient002_frame01", "patient002_frame02", "patient019_frame01")


@pytest.fixture()
def acdc2(shared_data: Path, tmp_path: Path) -> Path:
    return make_acdc_nnunet(tmp_path / "Dataset027_ACDC", shared_data, CASES)


# 1. every channel file of a case lies on channel 0's voxel grid


def test_real_two_channel_cases_read_as_written(acdc2: Path, shared_data: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        raw = NnUNetRaw(acdc2)
        vol = raw.load_case("patient019_frame01")
    image, label = acdc_xyz(shared_data, "patient019_frame01")
    assert vol.image.shape == (2, 11, 256, 216) and vol.spacing == (10.0, 1.5, 1.5)
    lo, hi = image.min(), image.max()
    np.testing.assert_allclose(vol.image[0], ((image - lo) / (hi - lo)).transpose(2, 1, 0), atol=1e-6)
    np.testing.assert_array_equal(vol.label, label.transpose(2, 1, 0))


def test_channel_with_a_flipped_axis_is_refused_naming_both_files(acdc2: Path) -> None:
    from mambaseg.inference.volume import read_channels

    f1 = flip_channel(acdc2, "patient019_frame01")
    raw = NnUNetRaw(acdc2)
    with pytest.raises(DatasetError, match=r"imagesTr/patient019_frame01_0001\.nii\.gz: geometry of channel 1 "
                                           r"\(inverted\) differs from channel 0 .*imagesTr/patient019_frame01_0000"
                                           r"\.nii\.gz of case 'patient019_frame01': axis directions \(affine "
                                           r"columns\) \[\[-1\.0, 0\.0, 0\.0\].* vs channel 0's \[\[1\.0, 0\.0, "
                                           r"0\.0\].*resample them onto channel 0's grid"):
        raw.load_case("patient019_frame01")
    with pytest.raises(DatasetError, match="patient019_frame01_0001"):  # evaluation volumes read the same way
        nnunet_volumes(raw, ["patient019_frame01"])[0]
    with pytest.raises(DatasetError, match="axis directions"):  # predict refuses the same files (same helpers)
        read_channels(raw.image_files("patient019_frame01"))
    assert f1.is_file() and raw.load_case("patient002_frame01").image.shape[0] == 2


def test_channel_with_another_spacing_is_refused_and_another_origin_warns(acdc2: Path) -> None:
    aff = nib.load(str(acdc2 / "imagesTr" / "patient002_frame01_0000.nii.gz")).affine.copy()
    coarse = aff.copy()
    coarse[2, 2] = 5.0
    rewrite(acdc2 / "imagesTr" / "patient002_frame01_0001.nii.gz", coarse)
    shifted = aff.copy()
    shifted[:3, 3] += (0.0, 3.0, 0.0)
    rewrite(acdc2 / "imagesTr" / "patient002_frame02_0001.nii.gz", shifted)
    raw = NnUNetRaw(acdc2)
    with pytest.raises(DatasetError, match=r"patient002_frame01_0001\.nii\.gz: geometry of channel 1 \(inverted\) "
                                           r"differs from channel 0 .*patient002_frame01_0000\.nii\.gz of case "
                                           r"'patient002_frame01': voxel spacing \(D, H, W\) \(5, 1\.5, 1\.5\) vs "
                                           r"channel 0's \(10, 1\.5, 1\.5\)"):
        raw.load_case("patient002_frame01")
    # another origin alone: voxels still pair index by index; a warning, as for a label
    with pytest.warns(UserWarning, match=r"patient002_frame02_0001\.nii\.gz: origin \(10, -17, 5\) mm vs channel 0's "
                                         r"\(10, -20, 5\) mm of .*patient002_frame02_0000\.nii\.gz \(channel 1 "
                                         r"\(inverted\) of case 'patient002_frame02'\)"):
        vol = raw.load_case("patient002_frame02")
    assert vol.image.shape[0] == 2 and any("origin" in n for n in raw.notes)


def test_channel_geometry_within_float_rounding_is_accepted(acdc2: Path) -> None:
    f = acdc2 / "imagesTr" / "patient002_frame01_0001.nii.gz"
    aff = nib.load(str(f)).affine.copy()
    aff[:3, :] += 1e-6  # float32 header rounding
    rewrite(f, aff)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert NnUNetRaw(acdc2).load_case("patient002_frame01").image.shape == (2, 10, 256, 232)


def test_channel_of_another_shape_names_both_files_and_the_case(acdc2: Path) -> None:
    f = acdc2 / "imagesTr" / "patient019_frame01_0001.nii.gz"
    img = nib.load(str(f))
    rewrite(f, img.affine, data=np.asanyarray(img.dataobj)[:200])
    # shapes in the files' (X, Y, Z) order, as nibabel shows them (they were the reversed (D, H, W))
    assert img.shape == (216, 256, 11)
    with pytest.raises(DatasetError, match=r"patient019_frame01_0001\.nii\.gz: shape \(X, Y, Z\) = \(200, 256, 11\) "
                                           r"of channel 1 \(inverted\) differs from channel 0 .*patient019_frame01_0000"
                                           r"\.nii\.gz \(X, Y, Z\) = \(216, 256, 11\) of case 'patient019_frame01'$"):
        NnUNetRaw(acdc2).load_case("patient019_frame01")


# 2. channel files dataset.json does not declare


def test_channel_files_dataset_json_does_not_declare_are_refused(shared_data: Path, tmp_path: Path) -> None:
    root = make_acdc_nnunet(tmp_path / "ds", shared_data, CASES[:2])  # two channel files per case ...
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "cineMRI"}  # ... one declared
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as exc:
        NnUNetRaw(root)
    msg = str(exc.value)
    assert msg.startswith(f"{root / 'imagesTr' / 'patient002_frame01_0001.nii.gz'} (and 1 more): channel file(s) of "
                          f"a channel that {root / 'dataset.json'} does not declare: its 'channel_names' is "
                          '{"0": "cineMRI"} (1 channel(s), files \'<case>_0000.nii.gz\' only)'), msg
    assert 'declare the channel in dataset.json (e.g. "channel_names": {"0": "cineMRI", "1": "<name>"})' in msg
    assert f"or remove the file(s) from {root / 'imagesTr'}" in msg
    # either way out opens the dataset
    meta["channel_names"] = {"0": "cineMRI", "1": "inverted"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert NnUNetRaw(root).channel_names == ["cineMRI", "inverted"]
    meta["channel_names"] = {"0": "cineMRI"}
    (root / "dataset.json").write_text(json.dumps(meta))
    for f in (root / "imagesTr").glob("*_0001.nii.gz"):
        f.unlink()
    assert NnUNetRaw(root).load_case(CASES[0]).image.ndim == 3


def test_undeclared_third_channel_of_a_v1_dataset_names_modality(shared_data: Path, tmp_path: Path) -> None:
    root = make_acdc_nnunet(tmp_path / "ds", shared_data, CASES[:1])
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = meta.pop("channel_names")
    (root / "dataset.json").write_text(json.dumps(meta))
    image, _ = acdc_xyz(shared_data, CASES[0])
    _save(root / "imagesTr" / f"{CASES[0]}_0002.nii.gz", image, zooms=ACDC_ZOOMS)
    with pytest.raises(DatasetError, match=r"patient002_frame01_0002\.nii\.gz: .*its 'modality' is \{\"0\": "
                                           r"\"cineMRI\", \"1\": \"inverted\"\} \(2 channel\(s\), files "
                                           r"'<case>_0000\.nii\.gz' \.\. '<case>_0001\.nii\.gz' only\)"):
        NnUNetRaw(root)


def test_channel_file_of_a_case_without_channel_0_is_refused(acdc2: Path) -> None:
    # a stray <case>_0001 whose <case>_0000 is missing was ignored silently (cases are found by their _0000 file)
    src = next((acdc2 / "imagesTr").glob("*_0001.nii.gz"))
    stray = acdc2 / "imagesTr" / "patient999_frame01_0001.nii.gz"
    stray.write_bytes(src.read_bytes())
    with pytest.raises(DatasetError, match=r"patient999_frame01_0001\.nii\.gz: channel file of case "
                                           r"'patient999_frame01', whose channel 0 file .*patient999_frame01_0000"
                                           r"\.nii\.gz is not there"):
        NnUNetRaw(acdc2)


# 4. channel names: "CT" has its window, every other name is min-max scaled; unimplemented nnU-Net schemes warn


def _with_channels(root: Path, names: dict[str, str]) -> Path:
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = names
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("name,scheme,what", [("zscore", "zscore", "per-volume z-scoring"),
                                              ("noNorm", "noNorm", "no scaling at all"),
                                              ("RGB_to_0_1", "rgb_to_0_1", "division by 255")])
def test_unimplemented_nnunet_scheme_warns_once_per_open_and_is_min_max_scaled(
        acdc2: Path, shared_data: Path, name: str, scheme: str, what: str) -> None:
    from mambaseg.configs import RunConfig, apply_overrides
    from mambaseg.engine import open_data

    _with_channels(acdc2, {"0": "cineMRI", "1": name})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        raw = NnUNetRaw(acdc2)
        vol = raw.load_case("patient019_frame01")
        raw.splits(val_fraction=0.5, seed=0)
    got = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert got == [f"{acdc2 / 'dataset.json'}: channel 1 is named {name!r}, nnU-Net's {scheme!r} normalisation "
                   f"({what}), which is not implemented here: the channel is min-max scaled to [0, 1] per volume "
                   "instead (only 'CT' has a scaling of its own, the fixed window [-125, 275] HU; every other name is "
                   "min-max scaled)"]
    assert raw.notes == got
    # the scaling is unchanged: per-volume min-max of the file, as for any name but CT
    image, _ = acdc_xyz(shared_data, "patient019_frame01")
    inv = 1.0 - image
    np.testing.assert_allclose(vol.image[1], ((inv - inv.min()) / (inv.max() - inv.min())).transpose(2, 1, 0),
                               atol=1e-6)
    # training and evaluation record it with the task's warnings
    cfg = apply_overrides(RunConfig(), ["data.image_size=[16,16]"])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        task = open_data(acdc2, cfg, splits=("train", "val"))
    assert got[0] in task.info["warnings"]


@pytest.mark.parametrize("name", ["rescale_to_0_1", "MRI", "ct", "T2"])
def test_implemented_and_other_channel_names_do_not_warn(acdc2: Path, name: str) -> None:
    _with_channels(acdc2, {"0": "cineMRI", "1": name})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        raw = NnUNetRaw(acdc2)
        vol = raw.load_case("patient002_frame01")
    assert raw.notes == []
    if name == "ct":  # the fixed CT window [-125, 275]: values in [0, 1] of the file map into [0.3125, 0.315]
        assert 0.3125 <= vol.image[1].min() and vol.image[1].max() <= 0.315 + 1e-6
    else:  # per-volume min-max (nnU-Net's rescale_to_0_1 is the same)
        assert vol.image[1].min() == 0.0 and vol.image[1].max() == 1.0

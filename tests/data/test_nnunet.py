"""nnU-Net raw reader (dataset.json + NIfTI) with geometry, channels, label names and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from mambaseg.data import DatasetError, NnUNetRaw, nnunet_slices, nnunet_volumes, read_nifti, write_nifti  # noqa: E402


def _save(path: Path, arr: np.ndarray, zooms=(0.8, 0.9, 2.5)) -> np.ndarray:
    aff = np.diag([zooms[0], zooms[1], zooms[2], 1.0])
    aff[:3, 3] = (10.0, -20.0, 5.0)
    img = nib.Nifti1Image(arr, aff)
    img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return aff


def make_nnunet(root: Path, *, channels=("CT",), n_cases: int = 3, v1: bool = False) -> Path:
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        case = f"case_{i:03d}"
        shape = (24, 20, 4 + i)  # (X, Y, Z)
        for c in range(len(channels)):
            _save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", (rng.normal(0, 200, shape)).astype(np.int16))
        lab = np.zeros(shape, np.uint8)
        lab[4:12, 5:10, :] = 1
        lab[14:20, 2:8, 1:] = 2
        _save(root / "labelsTr" / f"{case}.nii.gz", lab)
    if v1:
        meta = {"modality": {str(i): c for i, c in enumerate(channels)},
                "labels": {"0": "background", "1": "liver", "2": "tumour"}, "numTraining": n_cases}
    else:
        meta = {"channel_names": {str(i): c for i, c in enumerate(channels)},
                "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": n_cases,
                "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("v1", [False, True])
def test_reads_cases_with_geometry(tmp_path: Path, v1: bool) -> None:
    raw = NnUNetRaw(make_nnunet(tmp_path / "ds", v1=v1))
    assert raw.cases == ["case_000", "case_001", "case_002"]
    assert raw.label_names == {1: "liver", 2: "tumour"} and raw.num_classes == 3
    v = raw.load_case("case_001")
    assert v.image.shape == (5, 20, 24) and v.label.shape == (5, 20, 24)  # (Z, Y, X)
    assert v.spacing == pytest.approx((2.5, 0.9, 0.8))
    assert v.affine[0, 3] == pytest.approx(10.0) and v.source_format == "nifti"
    assert 0.0 <= v.image.min() and v.image.max() <= 1.0  # CT window scaled
    src = np.asanyarray(nib.load(str(raw.label_file("case_001"))).dataobj)
    np.testing.assert_array_equal(v.label, src.transpose(2, 1, 0))


def test_multichannel_slices_and_splits(tmp_path: Path) -> None:
    raw = NnUNetRaw(make_nnunet(tmp_path / "ds", channels=("T1", "T2"), n_cases=4))
    sp = raw.splits(val_fraction=0.25, seed=1)
    assert len(sp["val"]) == 1 and sorted(sp["train"] + sp["val"]) == raw.cases
    assert raw.splits(val_fraction=0.25, seed=1) == sp
    ds = nnunet_slices(raw, sp["train"], image_size=16, augment=True, seed=0)
    assert len(ds) == sum(raw.load_case(c).image.shape[1] for c in sp["train"])
    item = ds[0]
    assert item["image"].shape == (2, 16, 16) and int(item["mask"].max()) <= 2
    vols = nnunet_volumes(raw, sp["val"])
    assert vols[0].image.ndim == 4 and vols[0].image.shape[0] == 2
    (raw.root / "splits_final.json").write_text(json.dumps([{"train": raw.cases[:3], "val": raw.cases[3:]}]))
    assert raw.splits() == {"train": raw.cases[:3], "val": raw.cases[3:]}


def test_nifti_roundtrip_keeps_geometry(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    arr, sp, aff, hdr = read_nifti(root / "labelsTr" / "case_000.nii.gz")
    out = write_nifti(tmp_path / "o.nii.gz", arr, affine=aff, header=hdr)
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, aff)
    assert back.header.get_zooms()[:3] == pytest.approx((0.8, 0.9, 2.5))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj).transpose(2, 1, 0), arr)


def test_errors(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds")
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case_002\.nii\.gz.*not found"):
        NnUNetRaw(root)
    root = make_nnunet(tmp_path / "ds2")
    lab = np.zeros((24, 20, 4), np.uint8)
    lab[0, 0, 0] = 9
    _save(root / "labelsTr" / "case_000.nii.gz", lab)
    raw = NnUNetRaw(root)
    with pytest.raises(ValueError, match=r"case_000\.nii\.gz.*\[9\]"):
        raw.load_case("case_000")
    _save(root / "labelsTr" / "case_001.nii.gz", np.zeros((24, 20, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"case_001\.nii\.gz: label shape \(X, Y, Z\) = \(24, 20, 3\) differs from "
                                           r"image shape \(X, Y, Z\) = \(24, 20, 5\)"):
        raw.load_case("case_001")
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 7
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="numTraining is 7"):
        NnUNetRaw(root)
    meta["numTraining"] = 3
    meta["labels"] = {"background": 0, "organ": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="region-based"):
        NnUNetRaw(root)


def test_missing_nibabel_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from mambaseg.data import nnunet

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "nibabel":
            raise ImportError("no nibabel")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"pip install 'mambaseg\[medical\]'"):
        nnunet.require_nibabel()


def test_layout_dispatch(tmp_path: Path) -> None:
    from mambaseg.configs import RunConfig, apply_overrides
    from mambaseg.engine import DataTaskError, detect_layout, open_data

    root = make_nnunet(tmp_path / "ds", n_cases=3)
    assert detect_layout(root) == "nnunet"
    cfg = apply_overrides(RunConfig(), ["data.image_size=[16,16]"])
    task = open_data(root, cfg, splits=("train", "val"))
    assert task.label_map == {"background": 0, "liver": 1, "tumour": 2} and task.num_classes == 3
    assert len(task.datasets["val"]) == 1 and task.datasets["val"][0].spacing == pytest.approx((2.5, 0.9, 0.8))
    with pytest.raises(DataTaskError, match="imagesTs has no labels"):
        open_data(root, cfg, splits=("test",))
    (root / "labelsTs").mkdir()  # users add one; the error then says how to score the test cases
    with pytest.raises(DataTaskError, match=r"labelsTs is not part of nnU-Net's format; score the test cases with "
                                            r"`mambaseg predict .*imagesTs --out PRED` then `mambaseg score PRED "):
        open_data(root, cfg, splits=("test",))


def test_datasets_pickle(tmp_path: Path) -> None:
    import pickle

    raw = NnUNetRaw(make_nnunet(tmp_path / "ds", n_cases=2))
    sl = pickle.loads(pickle.dumps(nnunet_slices(raw, raw.cases, image_size=16, augment=False)))
    assert sl[3]["mask"].shape == (16, 16)
    vols = pickle.loads(pickle.dumps(nnunet_volumes(raw, raw.cases)))
    assert vols[1].id == "case_001"

"""ACDC SSL4MIS h5 reader: 2-D item contract, volumes, clear errors; plus a real-data smoke test."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mambaseg.data import ACDC_LABELS, DatasetError, acdc_slices, acdc_volumes


def make_acdc(root: Path, *, n_train: int = 4, shape=(30, 26), seed: int = 0) -> Path:
    """Tiny synthetic ACDC tree: train slices of one patient, 2 val volumes, 1 test volume."""
    rng = np.random.default_rng(seed)
    (root / "data" / "slices").mkdir(parents=True)

    def blob(d: int | None) -> tuple[np.ndarray, np.ndarray]:
        full = (d, *shape) if d else shape
        img = rng.random(full).astype(np.float32)
        lab = np.zeros(full, np.uint8)
        sl = (slice(None),) if d else ()
        lab[sl + (slice(5, 20), slice(4, 18))] = 2
        lab[sl + (slice(8, 16), slice(7, 14))] = 3
        lab[sl + (slice(20, 26), slice(4, 12))] = 1
        return img, lab

    names = []
    for i in range(n_train):
        img, lab = blob(None)
        name = f"patient001_frame01_slice_{i}"
        with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
            f["image"], f["label"] = img, lab
        names.append(name)
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    for split, vols in (("val", ["patient002_frame01", "patient002_frame02"]), ("test", ["patient003_frame01"])):
        for v in vols:
            img, lab = blob(5)
            with h5py.File(root / "data" / f"{v}.h5", "w") as f:
                f["image"], f["label"] = img, lab
        (root / f"{split}.list").write_text("\n".join(vols) + "\n")
    return root


def test_slices_follow_2d_contract(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    ds = acdc_slices(root, image_size=(32, 48), augment=False)
    assert len(ds) == 4 and ds.num_classes == 4 and ds.label_names == ACDC_LABELS
    item = ds[1]
    assert set(item) == {"image", "mask", "id", "orig_size", "path"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 32, 48)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (32, 48)
    assert set(item["mask"].unique().tolist()) == {0, 1, 2, 3}
    assert item["orig_size"] == (30, 26) and item["path"].endswith("patient001_frame01_slice_1.h5")
    # paper normalisation (x - 0.5) / 0.5 of a cubic zoom of values in [0, 1]
    assert -2.0 < float(item["image"].min()) and float(item["image"].max()) < 2.0
    with h5py.File(item["path"]) as f:
        raw = f["image"][()]
    from mambaseg.data.volumetric import zoom_image

    expect = (zoom_image(raw[..., None], (32, 48))[..., 0] - 0.5) / 0.5
    np.testing.assert_allclose(item["image"][0].numpy(), expect, rtol=1e-5, atol=1e-6)


def test_augmentation_seeded_and_label_safe(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    a = acdc_slices(root, image_size=32, augment=True, seed=3)
    b = acdc_slices(root, image_size=32, augment=True, seed=3)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
        assert set(x["mask"].unique().tolist()) <= {0, 1, 2, 3}
    a.set_epoch(1)
    changed = any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    assert changed


def test_volumes(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    val = acdc_volumes(root, "val")
    assert val.ids == ["patient002_frame01", "patient002_frame02"]
    v = val[0]
    assert v.image.shape == (5, 30, 26) and v.image.dtype == np.float32
    assert v.label.shape == (5, 30, 26) and v.spacing is None and v.source_format == "h5"
    assert val.label_map["names"] == {"0": "background", "1": "RV", "2": "Myo", "3": "LV"}
    assert len(acdc_volumes(root, "test")) == 1


def test_errors_name_the_file(tmp_path: Path) -> None:
    root = make_acdc(tmp_path / "acdc")
    (root / "val.list").write_text("patient002_frame01\npatient099_frame01\n")
    with pytest.raises(DatasetError, match="patient099_frame01.h5"):
        acdc_volumes(root, "val")
    bad = root / "data" / "slices" / "patient001_frame01_slice_0.h5"
    with h5py.File(bad, "r+") as f:
        lab = f["label"][()]
        lab[0, 0] = 7
        del f["label"]
        f["label"] = lab
    ds = acdc_slices(root, image_size=32, augment=False)
    with pytest.raises(ValueError, match=r"slice_0\.h5.*\[7\].*label map"):
        ds[0]
    with h5py.File(bad, "r+") as f:
        del f["label"]
        f["label"] = np.zeros((10, 10), np.uint8)
    with pytest.raises(DatasetError, match=r"slice_0\.h5.*differs from label shape"):
        ds[0]
    with pytest.raises(DatasetError, match="nope.list"):
        acdc_slices(root, "nope.list")


def test_real_acdc_files(shared_data: Path) -> None:
    root = shared_data / "acdc"
    if not root.is_dir():
        pytest.skip("acdc not in shared data")
    ds = acdc_slices(root, image_size=64, augment=True, seed=0)
    assert len(ds) == 658
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and int(item["mask"].max()) <= 3
    test = acdc_volumes(root, "test")
    assert len(test) == 40
    v = test[0]
    assert v.image.ndim == 3 and v.label.shape == v.image.shape and 0.0 <= float(v.image.min())
    assert set(np.unique(v.label).tolist()) <= {0, 1, 2, 3}


def test_datasets_pickle_for_spawned_workers(tmp_path: Path) -> None:
    import pickle

    root = make_acdc(tmp_path / "acdc")
    ds = pickle.loads(pickle.dumps(acdc_slices(root, image_size=16, augment=False)))
    assert ds[0]["image"].shape == (1, 16, 16)
    vols = pickle.loads(pickle.dumps(acdc_volumes(root, "val")))
    assert vols[1].id == "patient002_frame02"

"""TransUNet Synapse layout reader on a tiny synthetic tree."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mambaseg.data import SYNAPSE_LABELS, DatasetError, synapse_slices, synapse_volumes
from mambaseg.data.synapse import is_synapse_root, synapse_train_cases, synapse_volumes_from_slices


def make_synapse(root: Path, *, nested_lists: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    lists = root / "lists" / ("lists_Synapse" if nested_lists else "")
    lists.mkdir(parents=True, exist_ok=True)
    names = []
    for case in ("case0005", "case0006", "case0007"):
        for k in range(3):
            img = rng.random((20, 24)).astype(np.float32)
            lab = np.zeros((20, 24), np.uint8)
            lab[2:8, 3:9] = 1 + k
            lab[10:15, 12:20] = 8
            name = f"{case}_slice{k:03d}"
            np.savez(root / "train_npz" / f"{name}.npz", image=img, label=lab)
            names.append(name)
    (lists / "train.txt").write_text("\n".join(names) + "\n")
    for case in ("case0001", "case0002"):
        lab = np.zeros((4, 20, 24), np.float32)  # TransUNet volumes store float labels
        lab[:, 5:12, 6:14] = 5
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"] = rng.random((4, 20, 24)).astype(np.float32)
            f["label"] = lab
    (lists / "test_vol.txt").write_text("case0001\ncase0002\n")
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_slices_and_volumes(tmp_path: Path, nested: bool) -> None:
    root = make_synapse(tmp_path / "syn", nested_lists=nested)
    assert is_synapse_root(root)
    ds = synapse_slices(root, image_size=32, augment=False)
    assert len(ds) == 9 and ds.num_classes == 9 and ds.label_names == SYNAPSE_LABELS
    it = ds[2]
    assert it["image"].shape == (1, 32, 32) and it["mask"].dtype == torch.int64
    assert set(it["mask"].unique().tolist()) == {0, 3, 8} and it["orig_size"] == (20, 24)
    vols = synapse_volumes(root)
    v = vols[1]
    assert v.id == "case0002" and v.image.shape == (4, 20, 24) and v.label.shape == (4, 20, 24)
    assert SYNAPSE_LABELS[5] == "liver" and vols.label_map["names"]["8"] == "stomach"


def test_held_out_cases_become_volumes(tmp_path: Path) -> None:
    root = make_synapse(tmp_path / "syn")
    assert synapse_train_cases(root) == ["case0005", "case0006", "case0007"]
    tr = synapse_slices(root, exclude_cases=["case0006"], image_size=16, augment=False)
    assert len(tr) == 6 and not any(i.startswith("case0006") for i in tr.ids)
    val = synapse_volumes_from_slices(root, ["case0006"])
    v = val[0]
    assert v.image.shape == (3, 20, 24)
    assert [int(v.label[k, 4, 4]) for k in range(3)] == [1, 2, 3]  # stacked in slice order


def test_errors(tmp_path: Path) -> None:
    root = make_synapse(tmp_path / "syn")
    (root / "lists" / "test_vol.txt").write_text("case0001\ncase0042\n")
    with pytest.raises(DatasetError, match="case0042"):
        synapse_volumes(root)
    np.savez(root / "train_npz" / "case0005_slice001.npz", image=np.zeros((20, 24), np.float32),
             label=np.full((20, 24), 12, np.uint8))
    ds = synapse_slices(root, image_size=16, augment=False)
    with pytest.raises(ValueError, match=r"case0005_slice001\.npz.*\[12\]"):
        ds[1]
    np.savez(root / "train_npz" / "case0005_slice002.npz", img=np.zeros((20, 24), np.float32))
    with pytest.raises(DatasetError, match=r"case0005_slice002\.npz.*'image' and 'label'"):
        ds[2]
    with pytest.raises(DatasetError, match="val_vol.txt"):
        synapse_volumes(root, "val_vol.txt")


def test_layout_dispatch_holds_out_training_cases_for_val(tmp_path: Path) -> None:
    from mambaseg.configs import RunConfig, apply_overrides
    from mambaseg.engine import detect_layout, open_data

    root = make_synapse(tmp_path / "syn")
    assert detect_layout(root) == "synapse"
    cfg = apply_overrides(RunConfig(), ["data.image_size=[16,16]", "data.val_fraction=0.3", "data.split_seed=0"])
    task = open_data(root, cfg, splits=("train", "val", "test"))
    assert task.num_classes == 9 and task.in_chans == 1 and task.label_map["stomach"] == 8
    val_ids = task.datasets["val"].ids
    assert len(val_ids) == 1 and not any(i.startswith(val_ids[0]) for i in task.datasets["train"].ids)
    assert len(task.datasets["train"]) == 6 and task.datasets["test"].ids == ["case0001", "case0002"]
    (root / "lists" / "val_vol.txt").write_text("case0002\n")
    task = open_data(root, cfg, splits=("train", "val"))
    assert task.datasets["val"].ids == ["case0002"] and len(task.datasets["train"]) == 9


def test_datasets_pickle(tmp_path: Path) -> None:
    import pickle

    root = make_synapse(tmp_path / "syn")
    for ds in (synapse_slices(root, image_size=16, augment=False), synapse_volumes(root),
               synapse_volumes_from_slices(root, ["case0007"])):
        back = pickle.loads(pickle.dumps(ds))
        assert len(back) == len(ds)
        a, b = back[0], ds[0]
        if isinstance(a, dict):
            assert torch.equal(a["mask"], b["mask"])
        else:
            np.testing.assert_array_equal(a.label, b.label)

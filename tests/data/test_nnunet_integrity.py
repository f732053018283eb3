"""nnU-Net raw integrity: patient-grouped default split, label geometry, splits_final.json checks, classes no label
holds, label files without an image (and the Synapse carve, which groups by the same rule)."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_nnunet import _save, make_nnunet  # noqa: E402

from mambaseg.data import DatasetError, NnUNetRaw  # noqa: E402
from mambaseg.data.folds import case_group, resolve_folds  # noqa: E402


def make_acdc_like(root: Path, n_patients: int = 6) -> Path:
    """An nnU-Net raw folder of ``patientXXX_frame01``/``_frame12`` cases (two cardiac phases per patient)."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(1, n_patients + 1) for f in (1, 12)]
    for case in cases:
        _save(root / "imagesTr" / f"{case}_0000.nii.gz", rng.normal(0, 1, (8, 8, 3)).astype(np.float32))
        lab = np.zeros((8, 8, 3), np.uint8)
        lab[1:4, 1:4, :] = 1
        _save(root / "labelsTr" / f"{case}.nii.gz", lab)
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "LV": 1}, "numTraining": len(cases),
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# 1. the default train/val split holds out whole patients, as --folds does


def test_default_split_never_puts_one_phase_in_train_and_the_other_in_val(tmp_path: Path) -> None:
    raw = NnUNetRaw(make_acdc_like(tmp_path / "ds"))
    for seed in range(20):
        sp = raw.splits(val_fraction=0.3, seed=seed)
        assert sorted(sp["train"] + sp["val"]) == raw.cases and sp["val"]
        shared = {case_group(c) for c in sp["train"]} & {case_group(c) for c in sp["val"]}
        assert not shared, f"seed {seed}: patients {sorted(shared)} are in both train and val"
        assert len({case_group(c) for c in sp["val"]}) == 2  # round(0.3 * 6 patients)


def test_default_split_of_ungrouped_cases_is_the_per_case_carve(tmp_path: Path) -> None:
    raw = NnUNetRaw(make_nnunet(tmp_path / "ds", n_cases=5))
    for seed in range(5):  # same cases as the per-case carve: splits of existing runs do not move
        order = np.random.default_rng(seed).permutation(5)
        assert raw.splits(val_fraction=0.4, seed=seed)["val"] == sorted(raw.cases[i] for i in order[:2])


def test_carve_needs_two_patients(tmp_path: Path) -> None:
    from mambaseg.data.folds import carve_groups

    with pytest.raises(DatasetError, match=r"DS: the 2 labelled cases are one patient \('patient001'"):
        carve_groups(["patient001_frame01", "patient001_frame12"], 0.5, 0, where="DS")
    with pytest.raises(ValueError, match="val_fraction"):
        carve_groups(["a", "b"], 1.0, 0)


def test_synapse_carve_holds_out_whole_patients(tmp_path: Path) -> None:
    from mambaseg.data.synapse import _held_out_cases

    root = tmp_path / "syn"
    (root / "train_npz").mkdir(parents=True)
    (root / "lists").mkdir()
    names = []
    for p in range(1, 7):
        for f in (1, 12):
            name = f"patient{p:03d}_frame{f:02d}_slice000"
            np.savez(root / "train_npz" / f"{name}.npz", image=np.zeros((4, 4), np.float32),
                     label=np.zeros((4, 4), np.uint8))
            names.append(name)
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    for seed in range(20):
        val = _held_out_cases(root, SimpleNamespace(data=SimpleNamespace(split_seed=seed, val_fraction=0.3)))
        groups = {case_group(c) for c in val}
        assert val and sorted(val) == sorted(f"{g}_frame{f:02d}" for g in groups for f in (1, 12)), seed


# 2. a label must lie on its image's voxel grid


def _relabel(root: Path, case: str, affine: np.ndarray, flip_x: bool = False) -> Path:
    lf = root / "labelsTr" / f"{case}.nii.gz"
    img = nib.load(str(lf))
    data = np.asanyarray(img.dataobj)
    if flip_x:
        data = data[::-1]
    out = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    nib.save(out, str(lf))
    return lf


def test_label_with_a_flipped_axis_and_compensating_affine_is_refused(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    aff = nib.load(str(root / "imagesTr" / "case_000_0000.nii.gz")).affine.copy()
    aff[:, 0] *= -1  # x runs the other way...
    aff[0, 3] += 0.8 * 23  # ...from the other end: the same world positions, voxel arrays mirrored
    _relabel(root, "case_000", aff, flip_x=True)
    with pytest.raises(DatasetError, match=r"labelsTr/case_000\.nii\.gz: label geometry differs from its image "
                                           r".*imagesTr/case_000_0000\.nii\.gz: axis directions"):
        NnUNetRaw(root).load_case("case_000")


def test_label_with_another_spacing_is_refused_and_another_origin_warns(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=3)
    aff = nib.load(str(root / "imagesTr" / "case_000_0000.nii.gz")).affine.copy()
    coarse = aff.copy()
    coarse[2, 2] = 5.0
    _relabel(root, "case_000", coarse)
    shifted = aff.copy()
    shifted[:3, 3] += (0.0, 3.0, 0.0)
    _relabel(root, "case_001", shifted)
    raw = NnUNetRaw(root)
    with pytest.raises(DatasetError, match=r"case_000\.nii\.gz.*case_000_0000\.nii\.gz: voxel spacing "
                                           r"\(D, H, W\) \(5, 0\.9, 0\.8\) vs the image's \(2\.5, 0\.9, 0\.8\)"):
        raw.load_case("case_000")
    # another origin alone: the voxel grids still pair index by index; a warning, as nnU-Net gives
    with pytest.warns(UserWarning, match=r"case_001\.nii\.gz: origin \(10, -17, 5\) mm vs the image's "
                                         r"\(10, -20, 5\) mm"):
        assert raw.load_case("case_001").label is not None
    assert any("origin" in n for n in raw.notes)
    assert raw.load_case("case_002").label is not None


def test_label_geometry_within_float_rounding_is_accepted(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    aff = nib.load(str(root / "imagesTr" / "case_000_0000.nii.gz")).affine.copy()
    aff[:3, :] += 1e-6  # float32 header rounding
    _relabel(root, "case_000", aff)
    vol = NnUNetRaw(root).load_case("case_000")
    assert vol.label.shape == vol.image.shape


# 3. fold 0 of a dataset's splits_final.json is checked whenever it is used


def test_splits_final_with_a_case_in_train_and_val_is_refused(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=4)
    cases = NnUNetRaw(root).cases
    (root / "splits_final.json").write_text(json.dumps([{"train": cases[:3], "val": cases[2:]}]))
    with pytest.raises(DatasetError, match=r"splits_final\.json: fold 0 lists 1 case\(s\) in both 'train' and "
                                           r"'val': \['case_002'\]"):
        NnUNetRaw(root).splits()
    (root / "splits_final.json").write_text(json.dumps([{"train": cases, "val": []}]))
    with pytest.raises(DatasetError, match=r"splits_final\.json: fold 0 has an empty 'val' list"):
        NnUNetRaw(root).splits()


def test_splits_final_that_leaves_cases_out_warns(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=4)
    cases = NnUNetRaw(root).cases
    (root / "splits_final.json").write_text(json.dumps([{"train": cases[:2], "val": cases[2:3]}]))
    raw = NnUNetRaw(root)
    with pytest.warns(UserWarning, match=r"splits_final\.json: fold 0 leaves 1 of the 4 labelled cases out of both "
                                         r"'train' and 'val' \(case_003\)"):
        assert raw.splits() == {"train": cases[:2], "val": cases[2:3]}
    assert len(raw.notes) == 1 and "case_003" in raw.notes[0]


def test_cross_validation_on_a_one_fold_file_does_not_suggest_folds_1(tmp_path: Path) -> None:
    pool = ["a", "b", "c", "d"]
    one = [{"train": ["a", "b"], "val": ["c", "d"]}]
    with pytest.raises(DatasetError, match="holds 1 fold, too few to cross-validate") as exc:
        resolve_folds(tmp_path / "cv", pool, k=2, seed=0, data="DS", given=one)
    assert "--folds 1" not in str(exc.value)
    both = [{"train": ["a", "b", "c"], "val": ["c", "d"]}, {"train": ["c", "d"], "val": ["a", "b"]}]
    with pytest.raises(DatasetError, match=r"DS/splits_final\.json: fold 0 lists 1 case\(s\) in both train and val: "
                                           r"\['c'\]"):
        resolve_folds(tmp_path / "cv2", pool, k=2, seed=0, data="DS", given=both)


# 4. a class of dataset.json that no label file holds is a warning


def _open(root: Path, splits=("train", "val")):
    from mambaseg.configs import RunConfig, apply_overrides
    from mambaseg.engine import open_data

    return open_data(root, apply_overrides(RunConfig(), ["data.image_size=[16,16]"]), splits=splits)


def test_declared_class_in_no_label_file_warns(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=3)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["cyst"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        task = _open(root)
    got = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert len(got) == 2 and got == task.info["warnings"]
    assert re.search(r"ds/dataset\.json: class 'cyst' \(label 3\) occurs in none of the 2 train label file\(s\) in "
                     r"labelsTr: it is never learned, and its Dice is meaningless", got[0])
    assert "class 'cyst' (label 3) occurs in none of the 1 val label file(s)" in got[1]


def test_dataset_whose_labels_hold_every_class_opens_without_warnings(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        task = _open(root)
    assert "warnings" not in task.info


# 5. a label file in labelsTr without an image in imagesTr


def test_label_without_an_image_is_refused(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    _save(root / "labelsTr" / "case_009.nii.gz", np.zeros((24, 20, 4), np.uint8))
    (root / "labelsTr" / ".case_x.nii.gz").write_bytes(b"")  # hidden files (macOS ._*) are not cases
    with pytest.raises(DatasetError, match=r"labelsTr/case_009\.nii\.gz: label file\(s\) without an image; expected "
                                           r".*imagesTr/case_009_0000\.nii\.gz"):
        NnUNetRaw(root)

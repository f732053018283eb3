"""Class 4, late failure: everything checkable before the first optimizer step is checked there; a failed start
writes nothing (no config.yaml, no checkpoint)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import acdc_config, checksums, cli, make_acdc
from engine_helpers import tiny_config

from mambaseg.data import DatasetError
from mambaseg.engine import TrainHooks, train


class _CountSteps(TrainHooks):
    def __init__(self) -> None:
        self.steps = 0

    def before_step(self, model, step):
        self.steps += 1


def _nothing_written(out) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("layout", ["folder", "acdc"])
def test_best_metric_typo_fails_before_the_first_step(layout, syn_data, tmp_path):
    out = tmp_path / "r"
    if layout == "folder":
        cfg = tiny_config(syn_data, out, **{"train.best_metric": "dcie"})
    else:
        cfg = acdc_config(make_acdc(tmp_path / "acdc"), out, **{"train.best_metric": "dcie"})
    hooks = _CountSteps()
    with pytest.raises(KeyError) as exc:
        train(cfg, hooks=hooks, show_progress=False)
    assert "dcie" in str(exc.value) and "available" in str(exc.value) and "dice" in str(exc.value)
    assert hooks.steps == 0 and _nothing_written(out)


def test_best_metric_typo_via_cli(syn_data, tmp_path):
    code, text = cli("train", "-m", "_engine_test_tinyconv", "-d", syn_data, "-o", tmp_path / "r", "--epochs", "1",
                     "--image-size", "32", "--device", "cpu", "--set", "train.best_metric=pooled.dcs",
                     "--no-progress")
    assert code == 1 and "train.best_metric='pooled.dcs'" in text and "pooled.dsc" in text


def _damage_h5(path, *, image=None, label=None):
    with h5py.File(path, "r+") as f:
        if image is not None:
            del f["image"]
            f["image"] = image
        if label is not None:
            del f["label"]
            f["label"] = label


@pytest.mark.parametrize(
    "fault",
    ["val_label_out_of_range", "val_shape_mismatch", "val_missing_key", "train_slice_corrupt",
     "train_slice_bad_label", "val_volume_truncated"],
)
def test_broken_samples_are_found_before_the_first_step(fault, tmp_path):
    root = make_acdc(tmp_path / "acdc")
    vol = root / "data" / "patient002_frame02.h5"
    sl = root / "data" / "slices" / "patient001_frame01_slice_2.h5"
    if fault == "val_label_out_of_range":
        lab = np.zeros((3, 24, 20), np.uint8)
        lab[0, 0, 0] = 9
        _damage_h5(vol, label=lab)
        bad, needle = vol, "outside the label map"
    elif fault == "val_shape_mismatch":
        _damage_h5(vol, label=np.zeros((3, 24, 21), np.uint8))
        bad, needle = vol, "differs from label shape"
    elif fault == "val_missing_key":
        with h5py.File(vol, "r+") as f:
            del f["label"]
        bad, needle = vol, "missing dataset 'label'"
    elif fault == "train_slice_corrupt":
        sl.write_bytes(b"garbage")
        bad, needle = sl, "HDF5"
    elif fault == "train_slice_bad_label":
        lab = np.zeros((24, 20), np.uint8)
        lab[3, 3] = 5
        _damage_h5(sl, label=lab)
        bad, needle = sl, "outside the label map"
    else:
        vol.write_bytes(vol.read_bytes()[:300])
        bad, needle = vol, "HDF5"
    out = tmp_path / "r"
    before = checksums(root)
    hooks = _CountSteps()
    with pytest.raises((DatasetError, ValueError)) as exc:
        train(acdc_config(root, out), hooks=hooks, show_progress=False)
    msg = str(exc.value)
    assert str(bad) in msg and needle in msg
    assert hooks.steps == 0 and _nothing_written(out) and checksums(root) == before


def test_every_broken_sample_is_listed_at_once(tmp_path):
    root = make_acdc(tmp_path / "acdc")
    broken = [root / "data" / "slices" / "patient001_frame01_slice_0.h5", root / "data" / "patient002_frame01.h5"]
    for p in broken:
        p.write_bytes(b"junk")
    with pytest.raises(DatasetError) as exc:
        train(acdc_config(root, tmp_path / "r"), show_progress=False)
    assert "2 problem(s)" in str(exc.value) and all(str(p) in str(exc.value) for p in broken)


def test_skip_bad_lists_the_skipped_files_on_the_console(data_copy, tmp_path):
    bad = data_copy / "train" / "images" / "syn_0003.png"
    bad.write_bytes(b"broken")
    code, text = cli("train", "-m", "_engine_test_tinyconv", "-d", data_copy, "-o", tmp_path / "r", "--epochs", "1",
                     "--image-size", "32", "--device", "cpu", "--set", "data.skip_bad=true", "--no-progress")
    assert code == 0, text
    assert "data.skip_bad: left out 1 problem file(s)" in " ".join(text.split()) and "syn_0003.png" in text


def test_label_map_that_does_not_fit_the_classes_is_refused(syn_data, tmp_path):
    out = tmp_path / "r"
    cfg = tiny_config(syn_data, out, **{"data.binary": False, "data.label_values": [0, 255],
                                        "model.num_classes": None, "loss.name": "ce_dice"})
    from mambaseg.engine.preflight import check_label_map

    with pytest.raises(ValueError, match="label map"):
        check_label_map({"background": 0}, 2, syn_data)
    train(cfg, show_progress=False)  # a consistent multi-class label map passes

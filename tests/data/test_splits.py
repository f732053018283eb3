from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaseg.data import DatasetError, resolve_splits
from mambaseg.data.splits import default_split_file


def _touch_pairs(root: Path, split: str, ids):
    for i in ids:
        for sub in ("images", "masks"):
            p = root / split / sub / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)


def test_folders_define_splits_including_test(tmp_path):
    _touch_pairs(tmp_path, "train", ["b", "a"])
    _touch_pairs(tmp_path, "val", ["c"])
    _touch_pairs(tmp_path, "test", ["d"])
    s = resolve_splits(tmp_path)
    assert dict(s) == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    assert s.source == "folders" and s.path is None
    assert not list(tmp_path.glob("*.json"))


def test_carve_is_seeded_saved_and_reused(tmp_path):
    ids = [f"x{i:03d}" for i in range(25)]
    _touch_pairs(tmp_path, "train", ids)
    _touch_pairs(tmp_path, "test", ["t1", "t2"])
    s = resolve_splits(tmp_path, val_fraction=0.2, seed=3)
    assert s.source == "carved" and s.path == default_split_file(tmp_path, val_fraction=0.2, seed=3)
    assert len(s["val"]) == 5 and len(s["train"]) == 20
    assert sorted(s["train"] + s["val"]) == ids
    assert s["test"] == ["t1", "t2"]  # never carved from
    assert not set(s["test"]) & set(s["train"] + s["val"])
    again = resolve_splits(tmp_path, val_fraction=0.2, seed=3)
    assert again.source == "file" and dict(again) == dict(s)
    other = resolve_splits(tmp_path, val_fraction=0.2, seed=4)
    assert other.path != s.path and other["val"] != s["val"]
    # identical carve from a fresh folder with the same seed
    (s.path).unlink()
    assert dict(resolve_splits(tmp_path, val_fraction=0.2, seed=3)) == dict(s)
    rec = json.loads(s.path.read_text())
    assert rec["seed"] == 3 and rec["val_fraction"] == 0.2 and rec["val"] == s["val"]


def test_explicit_split_file_and_mismatch(tmp_path):
    _touch_pairs(tmp_path, "train", ["a", "b", "c", "d"])
    f = tmp_path / "runs" / "split.json"
    s = resolve_splits(tmp_path, split_file=f)
    assert s.path == f and f.is_file() and len(s["val"]) == 1
    _touch_pairs(tmp_path, "train", ["e"])  # the data changed: the saved split no longer fits
    with pytest.raises(DatasetError, match="does not match the training images"):
        resolve_splits(tmp_path, split_file=f)
    f.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot be read as JSON"):
        resolve_splits(tmp_path, split_file=f)
    f.write_text(json.dumps({"train": ["a", "b", "c"], "val": ["c", "d", "e"]}))
    with pytest.raises(DatasetError, match="both train and val"):
        resolve_splits(tmp_path, split_file=f)


def test_split_file_with_existing_val_folder_pools_both(tmp_path):
    _touch_pairs(tmp_path, "train", ["a", "b", "c"])
    _touch_pairs(tmp_path, "val", ["d"])
    s = resolve_splits(tmp_path, split_file=tmp_path / "custom.json", val_fraction=0.5)
    assert sorted(s["train"] + s["val"]) == ["a", "b", "c", "d"] and len(s["val"]) == 2


def test_errors(tmp_path):
    with pytest.raises(DatasetError, match="no 'train' split folder"):
        resolve_splits(tmp_path)
    _touch_pairs(tmp_path, "train", ["only"])
    with pytest.raises(DatasetError, match="at least 2"):
        resolve_splits(tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        resolve_splits(tmp_path, val_fraction=1.0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_root_names_the_fix(tmp_path):
    _touch_pairs(tmp_path, "train", ["a", "b", "c"])
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DatasetError, match="pass split_file"):
            resolve_splits(tmp_path)
    finally:
        tmp_path.chmod(0o755)

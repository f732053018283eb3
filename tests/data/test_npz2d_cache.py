"""Hand-made ``npz2d`` caches are checked on open: image dtype/shape, mask dtype and values per split key, named
with the .npz file, the key, the values and the first cases (not met later as a loss error)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mambaseg.configs import RunConfig, apply_overrides
from mambaseg.data.files import DatasetError
from mambaseg.data.layouts import open_task


def _cfg() -> RunConfig:
    return apply_overrides(RunConfig(), ["data.image_size=[8,8]", "data.augment=false"])


def _write(path, *, images=None, masks=None, val_masks=None, meta=None):
    rng = np.random.default_rng(0)
    train_masks = np.zeros((4, 8, 8), np.uint8)
    train_masks[:, 2:5, 2:5] = 1
    arrays = {
        "train_images": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8) if images is None else images,
        "train_masks": train_masks if masks is None else masks,
        "train_ids": np.asarray([f"t{i}" for i in range(4)]),
        "val_images": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        "val_masks": train_masks[:2] if val_masks is None else val_masks,
        "val_ids": np.asarray(["v0", "v1"]),
    }
    if meta is not None:
        arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)
    return path


def test_a_valid_hand_made_cache_opens(tmp_path):
    task = open_task(_write(tmp_path / "ok.npz"), _cfg(), layout="npz2d")
    assert task.name == "npz2d" and len(task.datasets["train"]) == 4


def test_zero_255_masks_are_refused_naming_file_key_values_and_cases(tmp_path):
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[1, 2:5, 2:5] = 255
    masks[3, 0, 0] = 255
    path = _write(tmp_path / "m255.npz", masks=masks)
    with pytest.raises(DatasetError, match=r"m255\.npz: key 'train_masks' holds values \[255\] outside \{0, 1\}.*"
                                           r"2 case\(s\): t1, t3.*mask > 127"):
        open_task(path, _cfg(), layout="npz2d")


def test_multiclass_cache_values_are_checked_against_its_classes(tmp_path):
    meta = {"label_map": {"background": 0, "a": 1, "b": 2}, "num_classes": 3}
    ok = np.zeros((2, 8, 8), np.uint8)
    ok[0, :2] = 2
    open_task(_write(tmp_path / "ok3.npz", val_masks=ok, meta=meta), _cfg(), layout="npz2d")
    bad = ok.copy()
    bad[1, 0, 0] = 7
    with pytest.raises(DatasetError, match=r"vm7\.npz: key 'val_masks' holds values \[7\] outside 0\.\.2.*v1"):
        open_task(_write(tmp_path / "vm7.npz", val_masks=bad, meta=meta), _cfg(), layout="npz2d")


@pytest.mark.parametrize("images, pattern", [
    (np.zeros((4, 8, 8, 3), np.float32), r"f32\.npz: key 'train_images' is float32 \(4, 8, 8, 3\); expected uint8"),
    (np.zeros((4, 8, 8), np.uint8), r"f32\.npz: key 'train_images' is uint8 \(4, 8, 8\); expected uint8 \(N, H, W"),
])
def test_images_must_be_uint8_nhwc(tmp_path, images, pattern):
    with pytest.raises(DatasetError, match=pattern):
        open_task(_write(tmp_path / "f32.npz", images=images), _cfg(), layout="npz2d")


def test_float_masks_are_refused_naming_the_key(tmp_path):
    masks = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(DatasetError, match=r"fm\.npz: key 'train_masks' is float32 \(4, 8, 8\); expected integer"):
        open_task(_write(tmp_path / "fm.npz", masks=masks), _cfg(), layout="npz2d")
